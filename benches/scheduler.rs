//! Scheduler benchmark, against a real `kedge server` (release build): 500 simulated nodes
//! (mixed zones, disk types, a tenth tainted; their kubelets only renew leases, so bound
//! pods stay Pending, as in kube-scheduler's scheduler_perf), then 5,000 pods created at
//! concurrency 64 with mixed requests, node selectors, node affinity, tolerations and
//! preferred pod anti-affinity. Reports pods/s (first creation → last binding), p50/p99
//! scheduling latency (create acknowledged → binding seen through a watch) and the server's
//! RSS.
//!
//! Run: `cargo bench --bench scheduler [-- --quick]` (quick: 100 nodes, 1,000 pods). Prints a
//! Markdown report for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nodes::{NodeSpec, SimulatedNodes};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;

const NAMESPACE: &str = "default";
const CONCURRENCY: usize = 64;
const ZONES: usize = 5;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn nodes(count: usize) -> Vec<NodeSpec> {
    (0..count)
        .map(|i| {
            let mut node = NodeSpec::new(&format!("node-{i:04}"))
                .capacity(if i % 2 == 0 { "8" } else { "4" }, "16Gi")
                .label(
                    "topology.kubernetes.io/zone",
                    &format!("zone-{}", i % ZONES),
                )
                .label("disktype", if i % 3 == 0 { "ssd" } else { "hdd" });
            if i % 10 == 9 {
                node = node.taint("dedicated", "infra", "NoSchedule");
            }
            node
        })
        .collect()
}

/// Pod `i` of the mix: every pod requests cpu and memory; a fifth select a zone, a tenth
/// require an SSD node, a tenth tolerate the infra taint, a twentieth prefer to stay away
/// from pods of their app.
fn pod(i: usize) -> Pod {
    let cpu = ["100m", "250m", "500m"][i % 3];
    let memory = ["128Mi", "256Mi", "512Mi"][i % 4 % 3];
    let mut spec = json!({
        "containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
    });
    if i % 5 == 0 {
        spec["nodeSelector"] =
            json!({"topology.kubernetes.io/zone": format!("zone-{}", i / 5 % ZONES)});
    }
    if i % 10 == 1 {
        spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "disktype", "operator": "In", "values": ["ssd"]}]}]}}});
    }
    if i % 10 == 2 {
        spec["tolerations"] = json!([{"key": "dedicated", "operator": "Equal",
            "value": "infra", "effect": "NoSchedule"}]);
    }
    if i % 20 == 3 {
        spec["affinity"] = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"app": format!("app-{}", i % 7)}}}}]}});
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i:05}"), "labels": {"app": format!("app-{}", i % 7)}},
        "spec": spec,
    }))
    .unwrap()
}

async fn bench(quick: bool) {
    let (node_count, pod_count) = if quick { (100, 1000) } else { (500, 5000) };
    let dir = tempfile::tempdir().unwrap();
    let server = common::started_server(dir.path()).await;
    let pid = server.pid().unwrap();
    let client = server.kube_client();

    let registering = Instant::now();
    let _nodes =
        SimulatedNodes::start_idle(client.clone(), nodes(node_count), Duration::from_secs(10))
            .await;
    let registered = registering.elapsed();
    let idle_rss = common::rss_kib(pid);

    // Binding times, from a watch opened before the first pod.
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let watching = {
        let (bound, pods) = (bound.clone(), pods.clone());
        tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(Ok(pod)) = events.next().await {
                if pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some()
                {
                    let name = pod.metadata.name.unwrap_or_default();
                    bound
                        .lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (pods, next, created) = (pods.clone(), next.clone(), created.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= pod_count {
                        return;
                    }
                    let pod = pod(i);
                    let name = pod.metadata.name.clone().unwrap();
                    pods.create(&PostParams::default(), &pod)
                        .await
                        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
                    created.lock().unwrap().insert(name, Instant::now());
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let all_created = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while bound.lock().unwrap().len() < pod_count {
        assert!(
            Instant::now() < deadline,
            "only {} of {pod_count} pods bound after 10 minutes",
            bound.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watching.abort();
    let bound = bound.lock().unwrap().clone();
    let created = created.lock().unwrap().clone();
    let last_bound = bound.values().max().copied().unwrap();
    let wall = last_bound - started;
    let mut latencies: Vec<Duration> = created
        .iter()
        .map(|(name, at)| bound[name].saturating_duration_since(*at))
        .collect();
    latencies.sort();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy_rss = common::rss_kib(pid);

    let mut per_node: HashMap<String, usize> = HashMap::new();
    for pod in pods.list(&Default::default()).await.unwrap() {
        if let Some(node) = pod.spec.and_then(|s| s.node_name) {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let most = per_node.values().max().copied().unwrap_or(0);
    let least = per_node.values().min().copied().unwrap_or(0);

    println!("| scheduler: {node_count} nodes, {pod_count} pods | kedge |");
    println!("| --- | --- |");
    println!(
        "| nodes registered (create + status + lease, sequential) | {:.1} s |",
        registered.as_secs_f64()
    );
    println!(
        "| pods created (concurrency {CONCURRENCY}) | {:.1} s |",
        all_created.as_secs_f64()
    );
    println!(
        "| first creation → last binding | {:.1} s = {:.0} pods/s |",
        wall.as_secs_f64(),
        pod_count as f64 / wall.as_secs_f64()
    );
    println!(
        "| scheduling latency (created → bound) p50 / p99 | {} / {} ms |",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99))
    );
    println!(
        "| pods per node, least / most ({} nodes used) | {least} / {most} |",
        per_node.len()
    );
    println!(
        "| server RSS with the nodes, before / after the pods | {} / {} MiB |",
        idle_rss / 1024,
        busy_rss / 1024
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
