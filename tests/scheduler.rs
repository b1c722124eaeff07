//! The scheduler inside `kedge server`, against simulated nodes, as a user sees it through
//! kubectl: pending pods get bound and run, where they fit; those that fit nowhere say
//! why, in upstream's words, until a node that fits appears; important pods preempt.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::nodes::{NodeSpec, SimulatedNodes};
use common::{eventually, started_server, LogDump, Server};

const HEARTBEAT: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(30);

/// A pod manifest with one container requesting `cpu`, plus `spec` fields merged in.
fn pod(name: &str, cpu: &str, spec: serde_json::Value) -> String {
    let mut pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]},
    });
    if let serde_json::Value::Object(extra) = spec {
        for (k, v) in extra {
            pod["spec"][k] = v;
        }
    }
    pod.to_string()
}

fn create(server: &Server, manifest: &str) {
    server
        .kubectl()
        .ok_with(&["create", "-f", "-"], Some(manifest));
}

/// `pod name → node name` for every pod of the namespace, "" when unbound.
fn placements(server: &Server) -> BTreeMap<String, String> {
    let out = server.kubectl().ok(&[
        "get",
        "pods",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.nodeName}{\"\\n\"}{end}",
    ]);
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(p, n)| (p.to_string(), n.to_string()))
        .collect()
}

/// The `STATUS` column of `kubectl get pod`.
fn phase(server: &Server, pod: &str) -> String {
    let out = server.kubectl().ok(&["get", "pod", pod, "--no-headers"]);
    out.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

async fn running(server: &Server, pod: &str) {
    eventually(WAIT, &format!("pod {pod} running"), || async {
        phase(server, pod) == "Running"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_pods_are_bound_spread_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let _nodes = SimulatedNodes::start(
        server.kube_client(),
        vec![
            NodeSpec::new("n1"),
            NodeSpec::new("n2"),
            NodeSpec::new("n3"),
        ],
        HEARTBEAT,
    )
    .await;
    for i in 0..6 {
        create(
            &server,
            &pod(&format!("web-{i}"), "500m", serde_json::json!({})),
        );
    }
    for i in 0..6 {
        running(&server, &format!("web-{i}")).await;
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for node in placements(&server).values() {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    assert_eq!(
        per_node,
        [("n1", 2), ("n2", 2), ("n3", 2)]
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect(),
        "least-allocated scoring spreads identical pods"
    );

    let node = &placements(&server)["web-0"];
    let describe = server.kubectl().ok(&["describe", "pod", "web-0"]);
    let scheduled = describe
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["Normal", "Scheduled"]))
        .unwrap_or_else(|| panic!("no Scheduled event:\n{describe}"));
    assert!(
        scheduled.contains("default-scheduler")
            && scheduled.contains(&format!("Successfully assigned default/web-0 to {node}")),
        "{describe}"
    );
    let condition = server.kubectl().ok(&[
        "get",
        "pod",
        "web-0",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].status}",
    ]);
    assert_eq!(condition, "True");
    let holder = server.kubectl().ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "kube-scheduler",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert!(!holder.is_empty(), "the scheduler holds its lease");
}
