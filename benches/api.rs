//! API benchmark, against a real `kedge server` over HTTPS (HTTP/2, admin certificate):
//! create 10,000 ConfigMaps at concurrency 64 (objects/s, p50/p99 latency), list them all
//! (time, bytes, server RSS before and after), and fan one update out to 100 concurrent
//! watchers (p50/p99 delivery latency over 20 updates).
//!
//! Run: `cargo bench --bench api [-- --quick]`. Prints a Markdown report for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use kedge::client::HttpsClient;

const TIMEOUT: Duration = Duration::from_secs(30);
const NAMESPACE: &str = "bench";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn config_map(i: usize) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": format!("cm-{i:05}"), "labels": {"app": "bench", "shard": (i % 16).to_string()}},
            "data": {"config.yaml": "x".repeat(256), "index": i.to_string()},
        })
        .to_string(),
    )
}

/// Creates `count` ConfigMaps with `concurrency` requests in flight; the latencies, sorted,
/// and the wall time.
async fn create_all(
    client: &HttpsClient,
    base: &str,
    count: usize,
    concurrency: usize,
) -> (Vec<Duration>, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{base}/api/v1/namespaces/{NAMESPACE}/configmaps");
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, url) = (client.clone(), next.clone(), url.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return latencies;
                    }
                    let sent = Instant::now();
                    let response = client
                        .post(&url, "application/json", config_map(i), TIMEOUT)
                        .await
                        .expect("create");
                    assert_eq!(
                        response.status,
                        201,
                        "{}",
                        String::from_utf8_lossy(&response.body)
                    );
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    let wall = started.elapsed();
    latencies.sort();
    (latencies, wall)
}

/// Opens `count` watches on the namespace's ConfigMaps, updates one ConfigMap `updates` times
/// (each after every watcher saw the last), and returns every delivery latency, sorted.
async fn watch_fan_out(
    client: &HttpsClient,
    base: &str,
    count: usize,
    updates: usize,
) -> Vec<Duration> {
    let sent_at = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicUsize::new(0));
    let clock = Instant::now();
    let list = client
        .get(
            &format!("{base}/api/v1/namespaces/{NAMESPACE}/configmaps?limit=1"),
            TIMEOUT,
        )
        .await
        .unwrap();
    let revision = serde_json::from_slice::<serde_json::Value>(&list.body).unwrap()["metadata"]
        ["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("{base}/api/v1/namespaces/{NAMESPACE}/configmaps?watch=true&resourceVersion={revision}&fieldSelector=metadata.name%3Dcm-00000");
    let mut watchers = Vec::new();
    for _ in 0..count {
        let response = client.open(&url, TIMEOUT).await.expect("watch");
        assert_eq!(response.status(), 200);
        let (sent_at, delivered) = (sent_at.clone(), delivered.clone());
        watchers.push(tokio::spawn(async move {
            let mut body = response.into_body();
            let mut latencies = Vec::new();
            let mut buffer = Vec::new();
            while latencies.len() < updates {
                let Some(frame) = body.frame().await else {
                    break;
                };
                let Ok(data) = frame.expect("watch stream").into_data() else {
                    continue;
                };
                buffer.extend_from_slice(&data);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    buffer.drain(..=end);
                    let now = clock.elapsed().as_nanos() as u64;
                    latencies.push(Duration::from_nanos(now - sent_at.load(Ordering::SeqCst)));
                    delivered.fetch_add(1, Ordering::SeqCst);
                }
            }
            latencies
        }));
    }
    // Every watch is registered once its first event arrives; give them a moment to settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let target = format!("{base}/api/v1/namespaces/{NAMESPACE}/configmaps/cm-00000");
    for update in 0..updates {
        let patch = Bytes::from(
            serde_json::json!({"data": {"index": format!("update-{update}")}}).to_string(),
        );
        sent_at.store(clock.elapsed().as_nanos() as u64, Ordering::SeqCst);
        let response = client
            .request(
                http::Method::PATCH,
                &target,
                Some("application/merge-patch+json"),
                patch,
                TIMEOUT,
            )
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        let want = count * (update + 1);
        let deadline = Instant::now() + TIMEOUT;
        while delivered.load(Ordering::SeqCst) < want {
            assert!(
                Instant::now() < deadline,
                "watchers did not all see update {update}"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let mut latencies = Vec::new();
    for watcher in watchers {
        latencies.extend(watcher.await.unwrap());
    }
    latencies.sort();
    latencies
}

async fn bench(quick: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = common::started_server(dir.path()).await;
    let pid = server.pid().expect("running");
    let client = server.admin_client();
    let base = server.url();
    let namespace = Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{NAMESPACE}"}}}}"#
    ));
    client
        .post(
            &format!("{base}/api/v1/namespaces"),
            "application/json",
            namespace,
            TIMEOUT,
        )
        .await
        .unwrap();
    let count = if quick { 2_000 } else { 10_000 };
    let idle_rss = common::rss_kib(pid);

    let (latencies, wall) = create_all(&client, &base, count, 64).await;
    let after_create_rss = common::rss_kib(pid);

    let list_url = format!("{base}/api/v1/namespaces/{NAMESPACE}/configmaps");
    let started = Instant::now();
    let listed = client.get(&list_url, TIMEOUT).await.unwrap();
    let list_time = started.elapsed();
    let items = serde_json::from_slice::<serde_json::Value>(&listed.body).unwrap()["items"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(items, count);
    let after_list_rss = common::rss_kib(pid);

    let deliveries = watch_fan_out(&client, &base, 100, if quick { 5 } else { 20 }).await;

    println!(
        "## API (`cargo bench --bench api{}`)\n",
        if quick { " -- --quick" } else { "" }
    );
    println!("| measurement | value |");
    println!("| --- | --- |");
    println!(
        "| create {count} ConfigMaps, concurrency 64 | {:.0} objects/s |",
        count as f64 / wall.as_secs_f64()
    );
    println!(
        "| create latency p50 / p99 | {} / {} ms |",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99))
    );
    println!(
        "| list all {count} (one request) | {} ms, {:.1} MB |",
        ms(list_time),
        listed.body.len() as f64 / 1e6
    );
    println!(
        "| server RSS idle / after creates / after list | {} / {} / {} MB |",
        idle_rss / 1024,
        after_create_rss / 1024,
        after_list_rss / 1024
    );
    println!(
        "| watch fan-out to 100 watchers, delivery p50 / p99 | {} / {} ms ({} deliveries) |",
        ms(percentile(&deliveries, 0.5)),
        ms(percentile(&deliveries, 0.99)),
        deliveries.len()
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(quick));
}
