//! Pod startup benchmark on a real node: a `kedge server` (release build) with its agent in
//! a test network namespace (tests/common/agent.rs), the busybox test image imported. Times
//! create → Running (seen through a watch; the image is present) for 1 pod and for 50 created
//! at once (p50/p99), the server's RSS (control plane and agent are one process) idle and
//! with the 50 pods, and the shims' memory per pod.
//!
//! The anchor, in the same run: the same busybox image started by Debian's `containerd` +
//! `runc` with `ctr run -d` (container start only: image imported and unpacked beforehand),
//! containerd on its own root, state and socket under a temp dir so nothing system-wide
//! changes; its RSS idle and with 50 containers, and `containerd-shim-runc-v2` per container.
//!
//! Run: `sh packaging/deps.sh --bench && cargo bench --bench pods [-- --anchor-only]`.
//! Prints a Markdown report for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::agent::Node;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;

const MANY: usize = 50;
const IMAGE: &str = "docker.io/library/busybox:1.35";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// One batch's latencies, sorted, and its wall time (first start → last running).
struct Batch {
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Batch {
    fn new(mut latencies: Vec<Duration>, wall: Duration) -> Batch {
        latencies.sort();
        Batch { latencies, wall }
    }

    fn p50_p99(&self) -> String {
        format!(
            "{} / {} ms",
            ms(percentile(&self.latencies, 0.5)),
            ms(percentile(&self.latencies, 0.99))
        )
    }
}

/// What each side reports.
struct Figures {
    one: Batch,
    many: Batch,
    idle_rss_kib: u64,
    busy_rss_kib: u64,
    /// Per pod (container): RSS and PSS of its shim, KiB.
    shim_rss_kib: u64,
    shim_pss_kib: u64,
}

/// Proportional set size of `pid` in KiB (shared pages split among their users).
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Processes whose command line contains every one of `words`.
fn processes_with(words: &[&str]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            words.iter().all(|w| cmdline.contains(w))
        })
        .collect()
}

/// Average RSS and PSS (KiB) of `pids`.
fn average_memory(pids: &[u32]) -> (u64, u64) {
    if pids.is_empty() {
        return (0, 0);
    }
    let rss: u64 = pids.iter().map(|p| common::rss_kib(*p)).sum();
    let pss: u64 = pids.iter().map(|p| pss_kib(*p)).sum();
    (rss / pids.len() as u64, pss / pids.len() as u64)
}

// ---- the anchor: containerd + runc through ctr --------------------------------------------

/// A containerd of the benchmark's own: root, state, sockets under `dir`; no CRI plugin.
struct Containerd {
    dir: PathBuf,
    child: Child,
    containers: Vec<String>,
}

const CTR_NAMESPACE: &str = "kedge-bench";

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{0}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{0}/containerd-ttrpc.sock\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd runs (sh packaging/deps.sh --bench installs it)");
        let containerd = Containerd {
            dir: dir.to_path_buf(),
            child,
            containers: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !containerd.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", CTR_NAMESPACE])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.ctr_command(args).output().expect("ctr runs")
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `count` containers at once with `ctr run -d` (each in its own new network
    /// namespace, as ctr does by default); each one's latency is its `ctr run` (create and
    /// start, returning once the task runs).
    fn start_batch(&mut self, prefix: &str, count: usize) -> Batch {
        let started = Instant::now();
        let runs: Vec<(String, Instant, Child)> = (0..count)
            .map(|i| {
                let id = format!("{prefix}-{i}");
                let at = Instant::now();
                let child = self
                    .ctr_command(&["run", "-d", IMAGE, &id, "sleep", "3600"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("ctr runs");
                (id, at, child)
            })
            .collect();
        let mut latencies = Vec::new();
        for (id, at, child) in runs {
            let out = child.wait_with_output().unwrap();
            latencies.push(at.elapsed());
            assert!(
                out.status.success(),
                "ctr run {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            self.containers.push(id);
        }
        let wall = started.elapsed();
        let tasks = self.ctr_ok(&["tasks", "ls"]);
        let running = tasks.lines().filter(|l| l.contains("RUNNING")).count();
        assert!(running >= count, "ctr tasks ls:\n{tasks}");
        Batch::new(latencies, wall)
    }

    fn remove_all(&mut self) {
        for id in std::mem::take(&mut self.containers) {
            let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", &id]);
            let _ = self.ctr(&["tasks", "delete", "--force", &id]);
            let _ = self.ctr(&["containers", "delete", &id]);
        }
    }

    fn shims(&self) -> Vec<u32> {
        let socket = self.dir.join("containerd.sock");
        processes_with(&["containerd-shim-runc-v2", &socket.display().to_string()])
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all();
        for shim in self.shims() {
            // SAFETY: a shim of our own containerd.
            unsafe { libc::kill(shim as i32, libc::SIGKILL) };
        }
        // SAFETY: our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // runc leaves a cgroup per namespace in each hierarchy.
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten() {
            let Ok(hierarchy) = hierarchy else { continue };
            let parent = hierarchy.path().join(CTR_NAMESPACE);
            for child in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                if child.path().is_dir() {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            let _ = std::fs::remove_dir(parent);
        }
        // Snapshot mounts, if any are left.
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.display().to_string();
        for point in table.lines().filter_map(|l| l.split(' ').nth(4)) {
            if point.starts_with(&dir) {
                let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn anchor(dir: &Path, archive: &Path) -> Figures {
    let mut containerd = Containerd::start(dir);
    containerd.ctr_ok(&["images", "import", &archive.display().to_string()]);
    // Unpacked once beforehand (import unpacks): startup below never touches the archive.
    let pid = containerd.child.id();
    // A first container warms the page cache and runc's binary, as kedge's warm-up pod does.
    containerd.start_batch("warm", 1);
    containerd.remove_all();
    let idle_rss_kib = common::rss_kib(pid);
    let one = containerd.start_batch("one", 1);
    containerd.remove_all();
    let many = containerd.start_batch("many", MANY);
    std::thread::sleep(Duration::from_secs(2));
    let busy_rss_kib = common::rss_kib(pid);
    let (shim_rss_kib, shim_pss_kib) = average_memory(&containerd.shims());
    containerd.remove_all();
    Figures {
        one,
        many,
        idle_rss_kib,
        busy_rss_kib,
        shim_rss_kib,
        shim_pss_kib,
    }
}

// ---- kedge ---------------------------------------------------------------------------------

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": "busybox:1.35",
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
            }],
        },
    }))
    .unwrap()
}

/// Creates `count` pods at once and returns create-acknowledged → Running (through a watch
/// opened beforehand) for each.
async fn pod_batch(client: kube::Client, prefix: &str, count: usize) -> Batch {
    let pods: Api<Pod> = Api::default_namespaced(client);
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watching = {
        let (running, pods) = (running.clone(), pods.clone());
        tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default().labels("bench=pods"))
                .applied_objects()
                .boxed();
            while let Some(Ok(pod)) = events.next().await {
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                if phase == Some("Running") {
                    let name = pod.metadata.name.unwrap_or_default();
                    running
                        .lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let creating = (0..count).map(|i| {
        let pods = pods.clone();
        let name = format!("{prefix}-{i}");
        async move {
            pods.create(&PostParams::default(), &pod(&name))
                .await
                .unwrap_or_else(|e| panic!("creating {name}: {e}"));
            (name, Instant::now())
        }
    });
    let created: Vec<(String, Instant)> = futures::future::join_all(creating).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while running.lock().unwrap().len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} pods running after 5 minutes",
            running.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watching.abort();
    let running = running.lock().unwrap().clone();
    let latencies = created
        .iter()
        .map(|(name, at)| running[name].saturating_duration_since(*at))
        .collect();
    let wall = running.values().max().copied().unwrap() - started;
    Batch::new(latencies, wall)
}

/// Deletes every benchmark pod and waits until they are gone.
async fn delete_pods(client: kube::Client) {
    let pods: Api<Pod> = Api::default_namespaced(client);
    let selector = ListParams::default().labels("bench=pods");
    pods.delete_collection(&DeleteParams::default(), &selector)
        .await
        .expect("deleting the benchmark pods");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pods.list(&selector).await.unwrap().items.is_empty() {
        assert!(Instant::now() < deadline, "pods not deleted in 2 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn kedge(dir: &Path) -> Figures {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Node::start places the busybox archive in <data-dir>/agent/images (imported at start).
    let node = runtime.block_on(Node::start(dir, &[]));
    let pid = node.server.pid().unwrap();
    // Built inside the node's host (its API listens on that namespace's loopback), on the
    // runtime that polls it.
    let client = || node.server.kube_client();
    node.host.block_on(async {
        pod_batch(client(), "warm", 1).await;
        delete_pods(client()).await;
    });
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss_kib = common::rss_kib(pid);
    let one = node.host.block_on(async {
        let one = pod_batch(client(), "one", 1).await;
        delete_pods(client()).await;
        one
    });
    let many = node
        .host
        .block_on(async { pod_batch(client(), "many", MANY).await });
    std::thread::sleep(Duration::from_secs(2));
    let busy_rss_kib = common::rss_kib(pid);
    // Besides the server, only the shims live in the host's namespace (containers are in
    // their pods').
    let shims: Vec<u32> = node
        .host
        .pids()
        .into_iter()
        .map(|p| p as u32)
        .filter(|p| *p != pid)
        .collect();
    let (shim_rss_kib, shim_pss_kib) = average_memory(&shims);
    node.host.block_on(async { delete_pods(client()).await });
    Figures {
        one,
        many,
        idle_rss_kib,
        busy_rss_kib,
        shim_rss_kib,
        shim_pss_kib,
    }
}

/// How one row of the report reads its figure.
type Cell = dyn Fn(&Figures) -> String;

fn main() {
    let anchor_only = std::env::args().any(|a| a == "--anchor-only");
    let dir = tempfile::tempdir().unwrap();
    let archive = common::image::busybox_oci_archive(dir.path());

    let containerd = anchor(&dir.path().join("containerd"), &archive);
    let kedge = (!anchor_only).then(|| kedge(&dir.path().join("kedge")));

    let cell = |f: &Cell| {
        (
            kedge.as_ref().map(f).unwrap_or_else(|| "not run".into()),
            f(&containerd),
        )
    };
    let rows: [(&str, &Cell); 7] = [
        ("start 1 (p50 / p99)", &|f| f.one.p50_p99()),
        ("start 50 at once (p50 / p99)", &|f| f.many.p50_p99()),
        ("50 at once: first start → last running", &|f| {
            format!("{} ms", ms(f.many.wall))
        }),
        ("daemon RSS idle", &|f| {
            format!("{} MiB", f.idle_rss_kib / 1024)
        }),
        ("daemon RSS with 50 running", &|f| {
            format!("{} MiB", f.busy_rss_kib / 1024)
        }),
        ("shim RSS per pod", &|f| format!("{} KiB", f.shim_rss_kib)),
        ("shim PSS per pod", &|f| format!("{} KiB", f.shim_pss_kib)),
    ];
    println!("| busybox:1.35, image present | kedge (create → Running) | containerd + runc (`ctr run -d`) |");
    println!("| --- | --- | --- |");
    for (label, f) in rows {
        let (k, c) = cell(f);
        println!("| {label} | {k} | {c} |");
    }
}
