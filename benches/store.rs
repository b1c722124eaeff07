//! Store benchmark: durable writes to kedge (1 and 3 servers on loopback) and to a real etcd
//! (Debian's etcd-server, started here with its data in a temp dir), side by side in one run,
//! both over TLS with client certificates.
//!
//! Workload: 5,000 keys of 1.5 KiB, then random whole-value updates at concurrency 1, 16
//! and 256. Also bytes written to disk per acknowledged update (`/proc/<pid>/io`), bytes/s
//! written while idle, idle RSS, and the time from exec to ready.
//!
//! Run: `make bench`, or `cargo bench --features bench --bench store -- [--quick]
//! [--idle-seconds N]`. Prints a Markdown report for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{cluster, free_port, rss_kib, server_identity_client, Server};
use kedge::pki::Ca;
use kedge::raft::remote::RemoteServer;
use kedge::store::Command as StoreCommand;

const KEYS: usize = 5_000;
const VALUE_BYTES: usize = 1536;

/// Something that can take durable puts.
trait Target: Send + Sync {
    fn put(&self, key: String, value: Bytes) -> futures::future::BoxFuture<'_, ()>;
}

struct KedgeTarget(RemoteServer);

impl Target for KedgeTarget {
    fn put(&self, key: String, value: Bytes) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let command = StoreCommand::Update {
                key: key.clone(),
                value: value.clone(),
                expected_mod_revision: None,
            };
            let outcome = self
                .0
                .propose(&command)
                .await
                .expect("kedge update")
                .outcome;
            if matches!(outcome, kedge::store::CommandOutcome::NotFound) {
                self.0
                    .propose(&StoreCommand::Create { key, value })
                    .await
                    .expect("kedge create");
            }
        })
    }
}

struct EtcdTarget(etcd_client::Client);

impl Target for EtcdTarget {
    fn put(&self, key: String, value: Bytes) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut kv = self.0.kv_client();
            kv.put(key, value.to_vec(), None).await.expect("etcd put");
        })
    }
}

fn key(i: usize) -> String {
    format!("/registry/configmaps/bench/key-{i:05}")
}

fn value(seed: usize) -> Bytes {
    // Different bytes every write, so nothing dedups or compresses to nothing.
    let mut state = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let bytes: Vec<u8> = (0..VALUE_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b'a' + (state % 26) as u8
        })
        .collect();
    Bytes::from(bytes)
}

#[derive(Clone, Copy)]
struct RunStats {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// `ops` updates of random keys by `concurrency` workers.
async fn run(target: Arc<dyn Target>, concurrency: usize, ops: usize, seed: usize) -> RunStats {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let target = target.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= ops {
                        return latencies;
                    }
                    let i = (n * 7919 + seed) % KEYS;
                    let t = Instant::now();
                    target.put(key(i), value(n + seed)).await;
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(ops);
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    RunStats {
        per_second: ops as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

async fn preload(target: Arc<dyn Target>) {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let target = target.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= KEYS {
                        return;
                    }
                    target.put(key(i), value(i)).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
}

fn write_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .expect("read /proc/<pid>/io (run as root)");
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("write_bytes in /proc/<pid>/io")
}

/// Bytes written to disk per acknowledged update under sustained load at `concurrency` for
/// `window` (long enough to include the store's periodic checkpoints).
async fn bytes_per_update(
    target: Arc<dyn Target>,
    pids: &[u32],
    concurrency: usize,
    window: Duration,
) -> f64 {
    // Let earlier writes drain out of the page cache first, so they are not counted here.
    sync_disks();
    let before: u64 = pids.iter().map(|p| write_bytes(*p)).sum();
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + window;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (target, done) = (target.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = w;
                while Instant::now() < deadline {
                    target
                        .put(key((n * 7919) % KEYS), value(n + 1_000_000))
                        .await;
                    done.fetch_add(1, Ordering::Relaxed);
                    n += concurrency;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    sync_disks();
    let after: u64 = pids.iter().map(|p| write_bytes(*p)).sum();
    (after - before) as f64 / done.load(Ordering::Relaxed) as f64
}

fn sync_disks() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(500));
}

/// A real etcd cluster on loopback: TLS with client certificates for clients and peers,
/// like kedge.
struct Etcd {
    members: Vec<Child>,
    client_urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start(ca: &Ca, size: usize) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let serving = ca
            .issue_peer(
                "etcd",
                &[],
                &["127.0.0.1".into(), "localhost".into()],
                Duration::from_secs(86400),
            )
            .unwrap();
        ca.save(&tls).unwrap();
        serving.save(&tls, "server").unwrap();
        let file = |name: &str| tls.join(name).display().to_string();
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let client_urls: Vec<String> = ports
            .iter()
            .map(|(c, _)| format!("https://127.0.0.1:{c}"))
            .collect();
        let peer_urls: Vec<String> = ports
            .iter()
            .map(|(_, p)| format!("https://127.0.0.1:{p}"))
            .collect();
        let initial = (0..size)
            .map(|i| format!("m{i}={}", peer_urls[i]))
            .collect::<Vec<_>>()
            .join(",");
        let members = (0..size)
            .map(|i| {
                let log = std::fs::File::create(dir.path().join(format!("etcd-{i}.log"))).unwrap();
                Command::new("/usr/bin/etcd")
                    .args(["--name", &format!("m{i}"), "--data-dir"])
                    .arg(dir.path().join(format!("data-{i}")))
                    .args([
                        "--listen-client-urls",
                        &client_urls[i],
                        "--advertise-client-urls",
                        &client_urls[i],
                    ])
                    .args([
                        "--listen-peer-urls",
                        &peer_urls[i],
                        "--initial-advertise-peer-urls",
                        &peer_urls[i],
                    ])
                    .args([
                        "--initial-cluster",
                        &initial,
                        "--initial-cluster-state",
                        "new",
                    ])
                    .args([
                        "--cert-file",
                        &file("server.crt"),
                        "--key-file",
                        &file("server.key"),
                    ])
                    .args(["--trusted-ca-file", &file("ca.crt"), "--client-cert-auth"])
                    .args([
                        "--peer-cert-file",
                        &file("server.crt"),
                        "--peer-key-file",
                        &file("server.key"),
                    ])
                    .args([
                        "--peer-trusted-ca-file",
                        &file("ca.crt"),
                        "--peer-client-cert-auth",
                    ])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("etcd from Debian's etcd-server package (make bench installs it)")
            })
            .collect();
        Etcd {
            members,
            client_urls,
            _dir: dir,
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Child::id).collect()
    }

    /// A client of the leader (so that, as with kedge, no write takes an extra hop).
    async fn connect_leader(&self, ca: &Ca) -> etcd_client::Client {
        let client_cert = ca
            .issue_client("bench", &[], Duration::from_secs(86400))
            .unwrap();
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(ca.cert_pem()))
            .identity(etcd_client::Identity::from_pem(
                &client_cert.cert_pem,
                &client_cert.key_pem,
            ));
        let options = etcd_client::ConnectOptions::new().with_tls(tls);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for url in &self.client_urls {
                let Ok(mut client) =
                    etcd_client::Client::connect([url.as_str()], Some(options.clone())).await
                else {
                    continue;
                };
                if let Ok(status) = client.status().await {
                    let header = status.header().map(|h| h.member_id());
                    if status.leader() != 0 && header == Some(status.leader()) {
                        return client;
                    }
                }
            }
            assert!(Instant::now() < deadline, "etcd did not elect a leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}

struct Report {
    lines: Vec<String>,
}

impl Report {
    fn row(&mut self, cells: &[String]) {
        self.lines.push(format!("| {} |", cells.join(" | ")));
    }

    fn header(&mut self, cells: &[&str]) {
        self.lines.push(format!("| {} |", cells.join(" | ")));
        self.lines
            .push(format!("|{}", " --- |".repeat(cells.len())));
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

struct Settings {
    quick: bool,
    idle_seconds: u64,
}

impl Settings {
    fn from_args() -> Settings {
        let args: Vec<String> = std::env::args().collect();
        let idle_seconds = args
            .iter()
            .position(|a| a == "--idle-seconds")
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        Settings {
            quick: args.iter().any(|a| a == "--quick"),
            idle_seconds,
        }
    }

    /// How long bytes per update are measured for.
    fn window(&self) -> Duration {
        Duration::from_secs(if self.quick { 12 } else { 75 })
    }

    /// Updates per run at a concurrency.
    fn ops(&self, concurrency: usize) -> usize {
        let full = match concurrency {
            1 => 2_000,
            16 => 10_000,
            _ => 20_000,
        };
        if self.quick {
            full / 10
        } else {
            full
        }
    }
}

const CONCURRENCY: [usize; 3] = [1, 16, 256];

/// Starts `count` kedge servers sharing one CA; returns them with a client of the leader and
/// the time from exec to all ready.
async fn kedge_cluster(root: &Path, count: usize) -> (Vec<Server>, Ca, RemoteServer, Duration) {
    let ca = Ca::generate().unwrap();
    let mut servers = cluster(&root.join(format!("kedge-{count}")), &ca, count, &[]);
    let started = Instant::now();
    for server in &mut servers {
        server.start();
    }
    for server in &mut servers {
        server.wait_ready(Duration::from_secs(60)).await;
    }
    let ready_after = started.elapsed();
    let client = server_identity_client(&ca);
    let any = RemoteServer::new(client.clone(), &servers[0].url());
    let leader = any.status().await.unwrap().leader.expect("a leader") as usize;
    let leader = RemoteServer::new(client, &servers[leader - 1].url());
    (servers, ca, leader, ready_after)
}

fn main() {
    let settings = Settings::from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(settings));
}

/// Throughput runs at every concurrency, and bytes per update at 1 and 64.
async fn measure(
    name: &'static str,
    target: Arc<dyn Target>,
    pids: &[u32],
    settings: &Settings,
    results: &mut BTreeMap<(&'static str, usize), RunStats>,
    bytes: &mut BTreeMap<(&'static str, usize), f64>,
) {
    preload(target.clone()).await;
    for c in CONCURRENCY {
        results.insert((name, c), run(target.clone(), c, settings.ops(c), c).await);
    }
    for c in [1, 64] {
        bytes.insert(
            (name, c),
            bytes_per_update(target.clone(), pids, c, settings.window()).await,
        );
    }
}

async fn bench(settings: Settings) {
    let root = tempfile::tempdir().unwrap();
    let mut results = BTreeMap::new();
    let mut bytes = BTreeMap::new();

    let (kedge1, _, leader, kedge_ready) = kedge_cluster(root.path(), 1).await;
    let kedge_pid = kedge1[0].pid().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kedge_idle_rss = rss_kib(kedge_pid);
    measure(
        "kedge-1",
        Arc::new(KedgeTarget(leader)),
        &[kedge_pid],
        &settings,
        &mut results,
        &mut bytes,
    )
    .await;
    let kedge_loaded_rss = rss_kib(kedge_pid);

    let etcd_ca = Ca::generate().unwrap();
    let exec = Instant::now();
    let etcd1 = Etcd::start(&etcd_ca, 1);
    let client = etcd1.connect_leader(&etcd_ca).await;
    let etcd_ready = exec.elapsed();
    let etcd_pid = etcd1.pids()[0];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let etcd_idle_rss = rss_kib(etcd_pid);
    measure(
        "etcd-1",
        Arc::new(EtcdTarget(client)),
        &[etcd_pid],
        &settings,
        &mut results,
        &mut bytes,
    )
    .await;
    let etcd_loaded_rss = rss_kib(etcd_pid);

    {
        let (kedge3, _, leader3, _) = kedge_cluster(root.path(), 3).await;
        let pids: Vec<u32> = kedge3.iter().filter_map(Server::pid).collect();
        measure(
            "kedge-3",
            Arc::new(KedgeTarget(leader3)),
            &pids,
            &settings,
            &mut results,
            &mut bytes,
        )
        .await;
    }
    {
        let etcd3 = Etcd::start(&etcd_ca, 3);
        let client = etcd3.connect_leader(&etcd_ca).await;
        measure(
            "etcd-3",
            Arc::new(EtcdTarget(client)),
            &etcd3.pids(),
            &settings,
            &mut results,
            &mut bytes,
        )
        .await;
    }

    // Idle: after a settle period (a checkpoint lands within 30 s of the last write), what
    // reaches the disk per second, for both single servers in the same window.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let (kedge_before, etcd_before) = (write_bytes(kedge_pid), write_bytes(etcd_pid));
    tokio::time::sleep(Duration::from_secs(settings.idle_seconds)).await;
    let idle =
        |before: u64, pid: u32| (write_bytes(pid) - before) as f64 / settings.idle_seconds as f64;
    let (kedge_idle, etcd_idle) = (idle(kedge_before, kedge_pid), idle(etcd_before, etcd_pid));
    drop(kedge1);
    drop(etcd1);

    let mut report = Report { lines: Vec::new() };
    report.lines.push("Durable updates of 1.5 KiB values over 5,000 keys, TLS with client certificates on loopback, leader addressed directly:".into());
    report.lines.push(String::new());
    report.header(&[
        "cluster",
        "concurrency",
        "kedge updates/s",
        "kedge p50 / p99 ms",
        "etcd updates/s",
        "etcd p50 / p99 ms",
        "kedge / etcd throughput",
    ]);
    for (k, e, label) in [
        ("kedge-1", "etcd-1", "1 replica"),
        ("kedge-3", "etcd-3", "3 replicas"),
    ] {
        for c in CONCURRENCY {
            let (kr, er) = (results[&(k, c)], results[&(e, c)]);
            report.row(&[
                label.into(),
                c.to_string(),
                format!("{:.0}", kr.per_second),
                format!("{} / {}", ms(kr.p50), ms(kr.p99)),
                format!("{:.0}", er.per_second),
                format!("{} / {}", ms(er.p50), ms(er.p99)),
                format!("{:.2}", kr.per_second / er.per_second),
            ]);
        }
    }
    report.lines.push(String::new());
    report.lines.push(format!(
        "Bytes written to disk per acknowledged update (/proc/<pid>/io write_bytes summed over the cluster's processes, {} s of sustained updates each):",
        settings.window().as_secs()
    ));
    report.lines.push(String::new());
    report.header(&[
        "cluster",
        "kedge, concurrency 1",
        "etcd, concurrency 1",
        "kedge, concurrency 64",
        "etcd, concurrency 64",
    ]);
    for (k, e, label) in [
        ("kedge-1", "etcd-1", "1 replica"),
        ("kedge-3", "etcd-3", "3 replicas"),
    ] {
        report.row(&[
            label.into(),
            format!("{:.0} B", bytes[&(k, 1)]),
            format!("{:.0} B", bytes[&(e, 1)]),
            format!("{:.0} B", bytes[&(k, 64)]),
            format!("{:.0} B", bytes[&(e, 64)]),
        ]);
    }
    report.lines.push(String::new());
    report.header(&["single server", "kedge", "etcd"]);
    report.row(&[
        "exec to ready".into(),
        ms(kedge_ready) + " ms",
        ms(etcd_ready) + " ms",
    ]);
    report.row(&[
        "RSS idle after start".into(),
        format!("{kedge_idle_rss} KiB"),
        format!("{etcd_idle_rss} KiB"),
    ]);
    report.row(&[
        "RSS after the write runs".into(),
        format!("{kedge_loaded_rss} KiB"),
        format!("{etcd_loaded_rss} KiB"),
    ]);
    report.row(&[
        format!("written while idle ({} s)", settings.idle_seconds),
        format!("{kedge_idle:.1} B/s"),
        format!("{etcd_idle:.1} B/s"),
    ]);
    println!("{}", report.lines.join("\n"));
}
