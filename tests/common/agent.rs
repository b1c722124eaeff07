//! Test "hosts" for tests that run real containers (DESIGN.md, "Testing without leaking
//! packets"): each is a network namespace the test creates itself (`kedge-t-<random>`, only
//! `lo` up, its node address on `lo`, no route anywhere; [`TestHost::pair`] joins two with a
//! veth pair), a [`Node`] is a `kedge server` with its node agent running inside one, and an
//! [`Agent`] a `kedge agent` inside one, joined to a server in another.
//!
//! Processes join the namespace with `setns` in a `pre_exec` hook rather than through
//! `ip netns exec`: the latter also makes a private mount namespace, and the agent's overlay
//! and network-namespace bind mounts must stay visible to a restarted agent (and to the
//! test's own cleanup). Owns no server flags beyond the node ones; the control-plane-only
//! servers of every other test are untouched.

use std::collections::HashSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::kubectl::Kubectl;
use super::{LogDump, Server};

/// Port of the API inside a test host: every host has its own port space.
pub const API_PORT: u16 = 6443;

/// Makes `command` run in the network namespace at `netns` (and nothing else changes: same
/// mount namespace, same cgroups).
pub fn enter_netns(command: &mut Command, netns: &Path) {
    let namespace = File::open(netns)
        .unwrap_or_else(|e| panic!("opening the network namespace {}: {e}", netns.display()));
    // SAFETY: setns is async-signal-safe; the closure owns the file, which stays open until
    // the command is dropped (close-on-exec keeps it out of the child program).
    unsafe {
        command.pre_exec(move || {
            if libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `work` on a thread that has joined the network namespace at `netns`: sockets it
/// opens (and threads it starts) live there.
pub fn in_netns<T: Send>(netns: &Path, work: impl FnOnce() -> T + Send) -> T {
    let namespace = File::open(netns)
        .unwrap_or_else(|e| panic!("opening the network namespace {}: {e}", netns.display()));
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: joins a namespace on this thread only; the fd is valid.
                let joined = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
                work()
            })
            .join()
            .expect("the work inside the namespace panicked")
    })
}

/// One network namespace made by the test; deleted (and every process left in it killed)
/// on drop.
pub struct TestHost {
    name: String,
    netns: PathBuf,
    ip: Ipv4Addr,
}

impl TestHost {
    /// A new namespace `kedge-t-<random>` with `lo` up and a node address from TEST-NET-1
    /// (192.0.2.0/24, never routed) on `lo`.
    pub fn new() -> TestHost {
        let suffix = format!("{:08x}", rand::random::<u32>());
        let name = format!("kedge-t-{suffix}");
        ip(&["netns", "add", &name]);
        let host = TestHost {
            netns: PathBuf::from("/run/netns").join(&name),
            ip: Ipv4Addr::new(192, 0, 2, 1 + rand::random::<u8>() % 250),
            name,
        };
        ip(&["-n", &host.name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &host.name,
            "addr",
            "add",
            &format!("{}/32", host.ip),
            "dev",
            "lo",
        ]);
        host
    }

    /// The namespace's name, also the node name of the agent running in it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file (`/run/netns/<name>`).
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// The host's address (on its `lo`): the node's InternalIP.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Two hosts with different addresses, joined by a veth pair with a route to each
    /// other's address (and still none anywhere else).
    pub fn pair() -> (TestHost, TestHost) {
        let first = TestHost::new();
        let second = first.neighbour();
        (first, second)
    }

    /// A new host with another address, joined to this one as in [`TestHost::pair`] (a
    /// client outside a node started by `Node::start`).
    pub fn neighbour(&self) -> TestHost {
        let mut second = TestHost::new();
        while second.ip == self.ip {
            second = TestHost::new();
        }
        let first = self;
        let suffix = &first.name["kedge-t-".len()..];
        let (a, b) = (format!("kva{suffix}"), format!("kvb{suffix}"));
        ip(&[
            "link",
            "add",
            &a,
            "netns",
            &first.name,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &second.name,
        ]);
        for (host, link, peer) in [(first, &a, &second), (&second, &b, first)] {
            ip(&["-n", &host.name, "link", "set", link, "up"]);
            ip(&[
                "-n",
                &host.name,
                "route",
                "add",
                &format!("{}/32", peer.ip),
                "dev",
                link,
                "src",
                &host.ip.to_string(),
            ]);
        }
        second
    }

    /// A command that runs inside this host.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        enter_netns(&mut command, &self.netns);
        command
    }

    /// Runs `future` to completion on a thread inside this host, on its own runtime (for
    /// kube-rs clients and HTTP checks that must reach `127.0.0.1` of the host).
    pub fn block_on<F: std::future::Future + Send>(&self, future: F) -> F::Output
    where
        F::Output: Send,
    {
        in_netns(&self.netns, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(future)
        })
    }

    /// The live processes in this host's namespace.
    pub fn pids(&self) -> Vec<i32> {
        let inode = std::fs::metadata(&self.netns).map(|m| (m.dev(), m.ino()));
        inode
            .map(|i| pids_in(&HashSet::from([i])))
            .unwrap_or_default()
    }

    /// SIGKILLs every process in this host's namespace.
    pub fn kill_all(&self) {
        kill_in_namespaces(std::slice::from_ref(&self.netns));
    }
}

impl Default for TestHost {
    fn default() -> Self {
        TestHost::new()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.kill_all();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2's ip runs (install iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGKILLs every process whose network namespace is one of `namespaces` (as `ip netns
/// pids`, by the namespace file's inode), and waits up to 5 s for them to be gone.
pub fn kill_in_namespaces(namespaces: &[PathBuf]) {
    let inodes: HashSet<(u64, u64)> = namespaces
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    if inodes.is_empty() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids_in(&inodes);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // SAFETY: plain kill(2) on a process of the test's own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Live (non-zombie) processes in any of the namespaces `inodes`.
pub fn pids_in(inodes: &HashSet<(u64, u64)>) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| inodes.contains(&(m.dev(), m.ino())))
        })
        .filter(|pid| {
            // A zombie keeps its namespace link until reaped; it needs no killing.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// A `kedge server` with its node agent, inside its own [`TestHost`], the busybox test
/// image (`docker.io/library/busybox:1.35`, `image: busybox:1.35` in pods) imported. Its log is printed if the test fails; on drop the server,
/// its shims and containers are killed and its mounts and pod cgroups removed.
pub struct Node {
    pub server: Server,
    pub host: TestHost,
    logs: LogDump,
}

impl Node {
    /// Starts the node in `data_dir` and waits until the API is ready, the node is `Ready`
    /// and the `default` namespace's ServiceAccount exists (pods can be created).
    pub async fn start(data_dir: &Path, extra_args: &[&str]) -> Node {
        // Archives in <agent>/images are imported when the agent starts (air-gap, as k3s).
        super::image::busybox_oci_archive(&data_dir.join("agent/images"));
        let host = TestHost::new();
        let args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        let mut server = Server::new(data_dir, API_PORT, &args).with_agent(&host);
        server.start();
        let mut node = Node {
            logs: LogDump(vec![server.log.clone()]),
            server,
            host,
        };
        node.wait_ready(Duration::from_secs(60)).await;
        node
    }

    /// The node's name (that of its host).
    pub fn name(&self) -> &str {
        self.host.name()
    }

    /// `<data-dir>/agent`.
    pub fn agent_dir(&self) -> PathBuf {
        self.server.data_dir.join("agent")
    }

    /// The kubectl on PATH as the admin, run inside the node's host.
    pub fn kubectl(&self) -> Kubectl<'_> {
        self.server.kubectl()
    }

    /// Waits for the API, the node's `Ready` condition and the default ServiceAccount.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let node = format!("node/{}", self.name());
        let checks: [(&str, Vec<&str>); 3] = [
            ("the API", vec!["get", "--raw", "/readyz"]),
            (
                "the node to be Ready",
                vec![
                    "get",
                    &node,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ],
            ),
            (
                "the default ServiceAccount",
                vec!["get", "serviceaccount", "default", "-o", "name"],
            ),
        ];
        let deadline = Instant::now() + timeout;
        for (what, args) in checks {
            loop {
                let out = self.kubectl().run(&args, None);
                let stdout = String::from_utf8_lossy(&out.stdout);
                let done =
                    out.status.success() && (what != "the node to be Ready" || stdout == "True");
                if done {
                    break;
                }
                self.server.assert_running();
                assert!(
                    Instant::now() < deadline,
                    "timed out after {timeout:?} waiting for {what}: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    /// SIGKILLs the server (agent included) and starts it again in the same host; the
    /// shims and containers it started keep running.
    pub async fn kill_and_restart(&mut self) {
        self.server.kill();
        self.server.start();
        self.wait_ready(Duration::from_secs(60)).await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.server.kill();
        clean_up_agent(&self.server.data_dir, &self.host);
    }
}

/// After an agent process in `host` with data dir `data_dir` is killed: kills its shims
/// (in the host's namespace) and containers (in their pods'), removes its pod cgroups and
/// unmounts everything under the data dir.
fn clean_up_agent(data_dir: &Path, host: &TestHost) {
    let mut namespaces: Vec<PathBuf> = mounts_under(data_dir)
        .into_iter()
        .filter(|(_, fstype)| fstype == "nsfs")
        .map(|(path, _)| path)
        .collect();
    namespaces.push(host.netns().to_path_buf());
    kill_in_namespaces(&namespaces);
    remove_pod_cgroups(&data_dir.join("agent/pods"));
    remove_agent_cgroup_parents();
    unmount_all_under(data_dir);
}

/// Unmounts everything under `dir`, deepest first, detached: overlay rootfs, netns files,
/// tmpfs volumes.
pub fn unmount_all_under(dir: &Path) {
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    for (path, _) in mounts {
        let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A `kedge agent` joined to a server with its token, inside its own [`TestHost`] as node
/// `host.name()` at `host.ip()`, with the busybox test image. Its log is printed if the test
/// fails; on drop it is killed and cleaned up like a [`Node`].
pub struct Agent {
    pub host: TestHost,
    pub data_dir: PathBuf,
    child: std::process::Child,
    _logs: LogDump,
}

impl Agent {
    /// Starts `kedge agent --server server_url --token token` in `host`.
    pub fn start(data_dir: &Path, host: TestHost, server_url: &str, token: &str) -> Agent {
        super::image::busybox_oci_archive(&data_dir.join("agent/images"));
        let log_path = data_dir.join("agent.log");
        let log = File::create(&log_path).unwrap();
        let child = host
            .command(super::KEDGE)
            .args(["agent", "--server", server_url, "--token", token.trim()])
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--node-name",
                host.name(),
                "--node-ip",
                &host.ip().to_string(),
            ])
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("kedge agent starts");
        Agent {
            host,
            data_dir: data_dir.to_path_buf(),
            child,
            _logs: LogDump(vec![log_path]),
        }
    }

    /// The node's name (that of its host).
    pub fn name(&self) -> &str {
        self.host.name()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        clean_up_agent(&self.data_dir, &self.host);
    }
}

/// Mount points (and their file system types) at or under `dir`, from the test's own mount
/// namespace (the agent's, too).
pub fn mounts_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| {
            // "<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> ..."
            let fields: Vec<&str> = line.split(' ').collect();
            let point = PathBuf::from(unescape_octal(fields.get(4)?));
            let dash = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(dash + 1)?.to_string();
            point.starts_with(&dir).then_some((point, fstype))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(code) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the cgroups `kedge/.../pod<uid>` of the pods under `pods_dir` (one folder per pod
/// uid), in every hierarchy (v1 controllers and the v2 unified one), deepest first.
fn remove_pod_cgroups(pods_dir: &Path) {
    let Ok(pods) = std::fs::read_dir(pods_dir) else {
        return;
    };
    let uids: Vec<String> = pods
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let roots = cgroup_hierarchies().into_iter().map(|h| h.join("kedge"));
    for root in roots {
        for uid in &uids {
            for class in ["", "burstable", "besteffort"] {
                remove_cgroup_tree(&root.join(class).join(format!("pod{uid}")));
            }
        }
    }
}

/// The agent's cgroup parents (`kedge`, `kedge/burstable`, `kedge/besteffort`), deepest
/// first, relative to a hierarchy.
const AGENT_CGROUP_PARENTS: &[&str] = &["kedge/burstable", "kedge/besteffort", "kedge"];

/// Those of the agent's cgroup parents that existed before this test process started an
/// agent (the first call tells): a kedge running on this machine made them, and they stay.
pub fn preexisting_agent_cgroups() -> &'static Vec<PathBuf> {
    static PREEXISTING: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
    PREEXISTING.get_or_init(|| {
        cgroup_hierarchies()
            .into_iter()
            .flat_map(|h| AGENT_CGROUP_PARENTS.iter().map(move |p| h.join(p)))
            .filter(|p| p.is_dir())
            .collect()
    })
}

/// Removes the agent's cgroup parents that this test process's nodes created, once empty:
/// rmdir fails on a cgroup with children or processes, so those of nodes still running
/// stay, and the last node to stop removes them.
pub fn remove_agent_cgroup_parents() {
    let preexisting = preexisting_agent_cgroups();
    for hierarchy in cgroup_hierarchies() {
        for parent in AGENT_CGROUP_PARENTS {
            let dir = hierarchy.join(parent);
            if !preexisting.contains(&dir) {
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}

/// Removes the cgroups at `paths` (relative to a hierarchy, deepest first) in every
/// hierarchy where they are empty; for cgroups only tests create (`kedge-test-<id>/<id>`,
/// then `kedge-test-<id>`): a cgroup still in use fails rmdir and stays.
pub fn remove_empty_cgroups(paths: &[&str]) {
    for hierarchy in cgroup_hierarchies() {
        for path in paths {
            let _ = std::fs::remove_dir(hierarchy.join(path));
        }
    }
}

/// The cgroup hierarchies' roots: each v1 controller's mount and the v2 unified one.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    roots
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.filter_map(|e| e.ok()) {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&child.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}
