mod common;
use std::time::{Duration, Instant};
use bytes::Bytes;
use common::*;
use kedge::store::Command;
fn wb(pid: u32) -> u64 { std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap().lines().find_map(|l| l.strip_prefix("write_bytes: ")).unwrap().trim().parse().unwrap() }
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes() {
    let c: usize = std::env::var("C").unwrap_or("1".into()).parse().unwrap();
    let secs: u64 = std::env::var("SECS").unwrap_or("60".into()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(dir.path(), free_port(), &[]);
    server.start();
    server.wait_ready(Duration::from_secs(30)).await;
    let store = store_client(&server);
    let pid = server.pid().unwrap();
    for i in 0..5000 { store.propose(&Command::Create { key: format!("/r/k{i:05}"), value: Bytes::from(vec![b'x'; 1536]) }).await.unwrap(); }
    std::process::Command::new("sync").status().unwrap();
    let s0 = store.status().await.unwrap();
    let w0 = wb(pid);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = vec![];
    for w in 0..c {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { let mut n = 0u64; let mut i = w;
            while Instant::now() < deadline { store.propose(&Command::Update { key: format!("/r/k{:05}", (i*7919)%5000), value: Bytes::from(vec![b'a' + (i%26) as u8; 1536]), expected_mod_revision: None }).await.unwrap(); n += 1; i += c; }
            n }));
    }
    let mut n = 0; for t in tasks { n += t.await.unwrap(); }
    std::process::Command::new("sync").status().unwrap();
    let w1 = wb(pid);
    let s1 = store.status().await.unwrap();
    let snaps = server.log_text().matches("built a store snapshot").count();
    eprintln!("c={c} updates={n} total={:.0} B/update log={:.0} B/update syncs/update={:.3} snapshots={snaps}", (w1-w0) as f64 / n as f64, (s1.log_bytes - s0.log_bytes) as f64 / n as f64, (s1.log_syncs-s0.log_syncs) as f64 / n as f64);
    let sz = |p: &str| std::fs::metadata(dir.path().join(p)).map(|m| m.len()).unwrap_or(0);
    eprintln!("state.redb size {} snapshot {} rev {} compact {}", sz("server/db/state.redb"), sz("server/db/snapshots/current.snap"), s1.revision, s1.compact_revision);
}
