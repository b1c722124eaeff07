//! The simulated-node harness the controller and scheduler tests stand on, checked through
//! kubectl: nodes show Ready, a pod bound to one runs, gets an IP and is deleted for good.

mod common;

use std::time::Duration;

use common::nodes::{NodeSpec, SimulatedNodes};
use common::{eventually, started_server, LogDump};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_nodes_register_and_run_bound_pods() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let _nodes = SimulatedNodes::start(
        server.kube_client(),
        vec![
            NodeSpec::new("sim-1"),
            NodeSpec::new("sim-2").capacity("2", "4Gi"),
        ],
        Duration::from_secs(2),
    )
    .await;
    let kubectl = server.kubectl();
    let nodes = kubectl.ok(&["get", "nodes", "--no-headers"]);
    assert_eq!(nodes.lines().count(), 2, "{nodes}");
    assert!(
        nodes
            .lines()
            .all(|l| l.split_whitespace().nth(1) == Some("Ready")),
        "{nodes}"
    );
    assert!(kubectl
        .ok(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            "sim-2",
            "-o",
            "jsonpath={.spec.holderIdentity}"
        ])
        .contains("sim-2"));

    let pod = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bound"},
        "spec": {"nodeName": "sim-2", "containers": [{"name": "c", "image": "busybox"}]}}"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(pod));
    eventually(Duration::from_secs(20), "pod running", || async {
        let out = kubectl.ok(&["get", "pod", "bound", "--no-headers"]);
        out.split_whitespace().collect::<Vec<_>>()[1..3] == ["1/1", "Running"]
    })
    .await;
    let ip = kubectl.ok(&["get", "pod", "bound", "-o", "jsonpath={.status.podIP}"]);
    // From the node's pod range (node IPAM gives every node a /24 of 10.42.0.0/16).
    assert!(ip.starts_with("10.42."), "{ip}");

    kubectl.ok(&["delete", "pod", "bound", "--wait=true", "--timeout=20s"]);
    let left = kubectl.run(&["get", "pod", "bound"], None);
    assert!(!left.status.success());
}
