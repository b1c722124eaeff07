//! The DaemonSet controller against a real server with simulated nodes, seen through
//! kubectl: one pod per eligible node (node selector, taints), following nodes as they come,
//! change labels or get tainted; pods pinned by node affinity with the default DaemonSet
//! tolerations; rolling updates (maxUnavailable, maxSurge), OnDelete, and `kubectl rollout
//! status/history/undo`. The server's scheduler binds the pods.

mod common;

use std::time::Duration;

use common::kubectl::Kubectl;
use common::nodes::{NodeSpec, SimulatedNodes};
use common::{eventually, server_with_nodes, LogDump, Server};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

async fn cluster(nodes: Vec<NodeSpec>) -> (tempfile::TempDir, Server, LogDump, SimulatedNodes) {
    let dir = tempfile::tempdir().unwrap();
    let (server, logs, nodes) = server_with_nodes(dir.path(), nodes).await;
    (dir, server, logs, nodes)
}

fn daemon_set(name: &str, extra_pod_spec: &str, extra_spec: &str) -> String {
    format!(
        r#"{{"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {{"name": "{name}"}},
        "spec": {{"selector": {{"matchLabels": {{"app": "{name}"}}}}, {extra_spec}
          "template": {{"metadata": {{"labels": {{"app": "{name}"}}}},
            "spec": {{"terminationGracePeriodSeconds": 1, {extra_pod_spec}
              "containers": [{{"name": "c", "image": "busybox:1"}}]}}}}}}}}"#
    )
}

/// `<node>=<image>` of the running (not terminating) pods labelled `app=<app>`, sorted.
fn pods_by_node(kubectl: &Kubectl, app: &str) -> Vec<String> {
    let out = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName}={.spec.containers[0].image}={.metadata.deletionTimestamp} {end}",
    ]);
    let mut pods: Vec<String> = out
        .split_whitespace()
        .filter(|p| p.ends_with('='))
        .map(|p| p.trim_end_matches('=').to_string())
        .collect();
    pods.sort();
    pods
}

async fn pods_become(kubectl: &Kubectl<'_>, app: &str, want: &[&str]) {
    eventually(WAIT, &format!("{app} pods on {want:?}"), || async {
        pods_by_node(kubectl, app) == want
    })
    .await;
}

fn status(kubectl: &Kubectl, name: &str) -> String {
    kubectl.ok(&[
        "get",
        "ds",
        name,
        "-o",
        "jsonpath={.status.desiredNumberScheduled} {.status.currentNumberScheduled} {.status.numberReady} {.status.updatedNumberScheduled} {.status.numberAvailable} {.status.numberMisscheduled}",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_per_eligible_node_following_labels_taints_and_new_nodes() {
    let (_dir, server, _logs, _nodes) = cluster(vec![
        NodeSpec::new("n1").label("role", "agent"),
        NodeSpec::new("n2").label("role", "agent"),
        NodeSpec::new("n3"),
        NodeSpec::new("n4")
            .label("role", "agent")
            .taint("dedicated", "db", "NoSchedule"),
    ])
    .await;
    let kubectl = server.kubectl();
    let spec = daemon_set("agent", r#""nodeSelector": {"role": "agent"},"#, "");
    kubectl.ok_with(&["apply", "-f", "-"], Some(&spec));
    let out = kubectl.ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    assert_eq!(
        out.lines().last().unwrap(),
        "daemon set \"agent\" successfully rolled out"
    );
    assert_eq!(
        pods_by_node(&kubectl, "agent"),
        ["n1=busybox:1", "n2=busybox:1"]
    );
    assert_eq!(status(&kubectl, "agent"), "2 2 2 2 2 0");

    let pod = kubectl.ok(&["get", "pods", "-l", "app=agent", "-o", "json"]);
    let pod: serde_json::Value = serde_json::from_str(&pod).unwrap();
    let pod = &pod["items"][0];
    let node = pod["spec"]["nodeName"].as_str().unwrap();
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
        json!({"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}]})
    );
    let tolerations: Vec<String> = pod["spec"]["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}:{}:{}",
                t["key"].as_str().unwrap(),
                t["operator"].as_str().unwrap(),
                t["effect"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        tolerations,
        [
            "node.kubernetes.io/not-ready:Exists:NoExecute",
            "node.kubernetes.io/unreachable:Exists:NoExecute",
            "node.kubernetes.io/disk-pressure:Exists:NoSchedule",
            "node.kubernetes.io/memory-pressure:Exists:NoSchedule",
            "node.kubernetes.io/pid-pressure:Exists:NoSchedule",
            "node.kubernetes.io/unschedulable:Exists:NoSchedule",
        ]
    );
    assert!(pod["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("agent-"));
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "DaemonSet");
    let hash = pod["metadata"]["labels"]["controller-revision-hash"]
        .as_str()
        .unwrap();
    assert!(kubectl
        .ok(&["get", "controllerrevisions", "-o", "name"])
        .contains(&format!("controllerrevision.apps/agent-{hash}")));

    kubectl.ok(&["label", "node", "n3", "role=agent"]);
    pods_become(
        &kubectl,
        "agent",
        &["n1=busybox:1", "n2=busybox:1", "n3=busybox:1"],
    )
    .await;
    kubectl.ok(&["label", "node", "n1", "role-"]);
    pods_become(&kubectl, "agent", &["n2=busybox:1", "n3=busybox:1"]).await;
    // A NoExecute taint evicts the daemon pod; a NoSchedule one lets it stay.
    kubectl.ok(&["taint", "node", "n2", "maintenance=now:NoExecute"]);
    kubectl.ok(&["taint", "node", "n3", "maintenance=soon:NoSchedule"]);
    pods_become(&kubectl, "agent", &["n3=busybox:1"]).await;
    // A node that joins gets its pod.
    let _more = SimulatedNodes::start(
        server.kube_client(),
        vec![NodeSpec::new("n5").label("role", "agent")],
        Duration::from_secs(2),
    )
    .await;
    pods_become(&kubectl, "agent", &["n3=busybox:1", "n5=busybox:1"]).await;
    // n3 no longer takes new daemon pods: its pod counts as misscheduled, as upstream.
    eventually(WAIT, "status counts n5, and n3 as misscheduled", || async {
        status(&kubectl, "agent") == "1 1 1 1 1 1"
    })
    .await;
    let table = kubectl.ok(&["get", "ds", "agent", "--no-headers"]);
    assert_eq!(
        table.split_whitespace().take(6).collect::<Vec<_>>(),
        ["agent", "1", "1", "1", "1", "1"]
    );
    let described = kubectl.ok(&["describe", "ds", "agent"]);
    assert!(
        described.contains("SuccessfulCreate") && described.contains("Created pod: agent-"),
        "{described}"
    );
    assert!(described.contains("Deleted pod: agent-"), "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_updates_history_undo_and_on_delete() {
    let (_dir, server, _logs, _nodes) = cluster(vec![
        NodeSpec::new("n1"),
        NodeSpec::new("n2"),
        NodeSpec::new("n3"),
    ])
    .await;
    let kubectl = server.kubectl();
    kubectl.ok_with(&["apply", "-f", "-"], Some(&daemon_set("log", "", "")));
    kubectl.ok(&["rollout", "status", "ds/log", "--timeout=60s"]);
    let all = |image: &str| -> Vec<String> {
        ["n1", "n2", "n3"]
            .iter()
            .map(|n| format!("{n}={image}"))
            .collect()
    };

    kubectl.ok(&[
        "annotate",
        "ds",
        "log",
        "kubernetes.io/change-cause=to busybox 2",
    ]);
    kubectl.ok(&["set", "image", "ds/log", "c=busybox:2"]);
    let out = kubectl.ok(&["rollout", "status", "ds/log", "--timeout=60s"]);
    assert_eq!(
        out.lines().last().unwrap(),
        "daemon set \"log\" successfully rolled out"
    );
    pods_become(
        &kubectl,
        "log",
        &all("busybox:2")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    let history = kubectl.ok(&["rollout", "history", "ds/log"]);
    assert_eq!(
        history,
        "daemonset.apps/log \nREVISION  CHANGE-CAUSE\n1         <none>\n2         to busybox 2\n\n"
    );

    // With surge, new pods start beside the old ones.
    kubectl.ok(&[
        "patch",
        "ds",
        "log",
        "-p",
        r#"{"spec": {"updateStrategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}}"#,
    ]);
    assert_eq!(
        kubectl.ok(&["rollout", "undo", "ds/log"]).trim(),
        "daemonset.apps/log rolled back"
    );
    let out = kubectl.ok(&["rollout", "status", "ds/log", "--timeout=60s"]);
    assert_eq!(
        out.lines().last().unwrap(),
        "daemon set \"log\" successfully rolled out"
    );
    pods_become(
        &kubectl,
        "log",
        &all("busybox:1")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    let history = kubectl.ok(&["rollout", "history", "ds/log"]);
    assert!(
        history.ends_with("2         to busybox 2\n3         <none>\n\n"),
        "{history}"
    );

    kubectl.ok(&[
        "patch",
        "ds",
        "log",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/updateStrategy", "value": {"type": "OnDelete"}}]"#,
    ]);
    kubectl.ok(&["set", "image", "ds/log", "c=busybox:3"]);
    let out = kubectl.run(&["rollout", "status", "ds/log"], None);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: rollout status is only available for RollingUpdate strategy type"
    );
    eventually(WAIT, "the new template observed", || async {
        status(&kubectl, "log") == "3 3 3  3 0"
    })
    .await;
    assert_eq!(pods_by_node(&kubectl, "log"), all("busybox:1"));
    let on_n2 = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=log",
        "--field-selector",
        "spec.nodeName=n2",
        "-o",
        "name",
    ]);
    kubectl.ok(&["delete", on_n2.trim(), "--wait=false"]);
    pods_become(
        &kubectl,
        "log",
        &["n1=busybox:1", "n2=busybox:3", "n3=busybox:1"],
    )
    .await;
}
