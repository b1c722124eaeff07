//! The node lifecycle and node IPAM controllers, on simulated nodes and through the real
//! kubectl: a silenced node goes Unknown and is tainted unreachable, its pods go not ready
//! and are evicted after their tolerationSeconds, the taints go when it is back; a cordoned
//! node is tainted unschedulable; every node gets its own pod range, released with it.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::kubectl::Kubectl;
use common::nodes::{NodeSpec, SimulatedNodes};
use common::{eventually, free_port, LogDump, Server};

const WAIT: Duration = Duration::from_secs(30);

fn jsonpath(kubectl: &Kubectl<'_>, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend(what);
    let path = format!("jsonpath={path}");
    args.extend(["-o", &path]);
    kubectl.ok(&args)
}

fn pod(name: &str, node: &str, tolerations: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
        "spec": {{"nodeName": "{node}", "containers": [{{"name": "c", "image": "busybox"}}],
                  "tolerations": {tolerations}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_nodes_are_tainted_and_their_pods_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(
        dir.path(),
        free_port(),
        &["--node-monitor-grace-period".into(), "4s".into()],
    );
    server.start();
    server.wait_ready(WAIT).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let nodes = SimulatedNodes::start(
        server.kube_client(),
        vec![
            NodeSpec::new("n1"),
            NodeSpec::new("n2"),
            NodeSpec::new("n3"),
        ],
        Duration::from_secs(1),
    )
    .await;
    let kubectl = server.kubectl();

    // Node IPAM: a /24 of 10.42.0.0/16 each, never the same.
    eventually(WAIT, "every node to get a pod range", || async {
        jsonpath(&kubectl, &["nodes"], "{.items[*].spec.podCIDR}")
            .split_whitespace()
            .count()
            == 3
    })
    .await;
    let ranges: Vec<String> = jsonpath(&kubectl, &["nodes"], "{.items[*].spec.podCIDR}")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let unique: HashSet<&String> = ranges.iter().collect();
    assert_eq!(unique.len(), 3, "{ranges:?}");
    assert!(
        ranges
            .iter()
            .all(|r| r.starts_with("10.42.") && r.ends_with(".0/24")),
        "{ranges:?}"
    );
    let n3_range = jsonpath(&kubectl, &["node", "n3"], "{.spec.podCIDRs[0]}");
    assert_eq!(
        n3_range,
        jsonpath(&kubectl, &["node", "n3"], "{.spec.podCIDR}")
    );

    // Pods on n1: one tolerating unreachability for 2 s, one with the API's default 300 s.
    let short = r#"[{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
        "effect": "NoExecute", "tolerationSeconds": 2}]"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(&pod("fragile", "n1", short)));
    kubectl.ok_with(&["apply", "-f", "-"], Some(&pod("patient", "n1", "[]")));
    eventually(WAIT, "the pods to run", || async {
        jsonpath(&kubectl, &["pods"], "{.items[*].status.phase}") == "Running Running"
    })
    .await;

    // The node is lost: Unknown, tainted, its pods not ready; the fragile pod is evicted.
    nodes.silence("n1");
    eventually(WAIT, "n1 to be Unknown", || async {
        jsonpath(
            &kubectl,
            &["node", "n1"],
            r#"{.status.conditions[?(@.type=="Ready")].status}"#,
        ) == "Unknown"
    })
    .await;
    eventually(WAIT, "n1 to be tainted unreachable", || async {
        kubectl
            .ok(&["describe", "node", "n1"])
            .contains("node.kubernetes.io/unreachable:NoExecute")
    })
    .await;
    let described = kubectl.ok(&["describe", "node", "n1"]);
    for expected in [
        "node.kubernetes.io/unreachable:NoSchedule",
        "NodeStatusUnknown",
        "Kubelet stopped posting node status.",
        "NodeNotReady",
    ] {
        assert!(described.contains(expected), "{expected}: {described}");
    }
    eventually(WAIT, "the fragile pod to be evicted", || async {
        !jsonpath(
            &kubectl,
            &["pod", "fragile"],
            "{.metadata.deletionTimestamp}",
        )
        .is_empty()
    })
    .await;
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=fragile",
    ]);
    assert!(
        events.contains("TaintManagerEviction")
            && events.contains("Marking for deletion Pod default/fragile"),
        "{events}"
    );
    assert_eq!(
        jsonpath(
            &kubectl,
            &["pod", "fragile"],
            r#"{.status.conditions[?(@.type=="DisruptionTarget")].reason}"#
        ),
        "DeletionByTaintManager"
    );
    let patient = kubectl.ok(&["describe", "pod", "patient"]);
    assert!(patient.contains("Node is not ready"), "{patient}");
    assert_eq!(
        jsonpath(
            &kubectl,
            &["pod", "patient"],
            r#"{.status.conditions[?(@.type=="Ready")].status}"#
        ),
        "False"
    );
    assert_eq!(
        jsonpath(
            &kubectl,
            &["pod", "patient"],
            "{.metadata.deletionTimestamp}"
        ),
        "",
        "a pod tolerating the taint for 300 s stays"
    );

    // Back again: Ready, the taints gone.
    nodes.revive("n1");
    eventually(WAIT, "n1's taints to go", || async {
        jsonpath(&kubectl, &["node", "n1"], "{.spec.taints}").is_empty()
    })
    .await;

    // Cordoned: tainted unschedulable, until uncordoned.
    kubectl.ok(&["cordon", "n2"]);
    eventually(WAIT, "n2 to be tainted unschedulable", || async {
        kubectl
            .ok(&["describe", "node", "n2"])
            .contains("node.kubernetes.io/unschedulable:NoSchedule")
    })
    .await;
    kubectl.ok(&["uncordon", "n2"]);
    eventually(WAIT, "n2's taint to go", || async {
        jsonpath(&kubectl, &["node", "n2"], "{.spec.taints}").is_empty()
    })
    .await;

    // A deleted node's range goes to the next node.
    kubectl.ok(&["delete", "node", "n3"]);
    kubectl.ok_with(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n4"}}"#),
    );
    eventually(WAIT, "n4 to get n3's released range", || async {
        jsonpath(&kubectl, &["node", "n4"], "{.spec.podCIDR}") == n3_range
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nodes_deployment_pod_is_evicted_and_runs_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(
        dir.path(),
        free_port(),
        &["--node-monitor-grace-period".into(), "4s".into()],
    );
    server.start();
    server.wait_ready(WAIT).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let nodes = SimulatedNodes::start(
        server.kube_client(),
        vec![NodeSpec::new("n1"), NodeSpec::new("n2")],
        Duration::from_secs(1),
    )
    .await;
    let kubectl = server.kubectl();
    let deployment = r#"{"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
          "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}],
              "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                               "effect": "NoExecute", "tolerationSeconds": 1}]}}}}"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(deployment));
    let running = || async {
        jsonpath(
            &kubectl,
            &[
                "pods",
                "-l",
                "app=web",
                "--field-selector=status.phase=Running",
            ],
            "{.items[*].spec.nodeName}",
        )
    };
    eventually(WAIT, "the deployment's pod to run", || async {
        !running().await.is_empty()
    })
    .await;
    let lost = running().await;
    let other = if lost == "n1" { "n2" } else { "n1" };

    nodes.silence(&lost);
    eventually(
        WAIT,
        "a replacement pod running on the other node",
        || async {
            let pods = kubectl.ok(&["get", "pods", "-l", "app=web", "-o", "wide", "--no-headers"]);
            pods.lines()
                .any(|l| l.contains("Running") && l.contains(other) && !l.contains("Terminating"))
                && pods
                    .lines()
                    .any(|l| l.contains("Terminating") && l.contains(&lost))
        },
    )
    .await;
    let events = kubectl.ok(&["get", "events"]);
    assert!(events.contains("TaintManagerEviction"), "{events}");
}
