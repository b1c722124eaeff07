//! Static pods on a real node: the pod runs from its file, its mirror pod only reflects it.
//! Deleting the mirror pod brings it back without touching the containers; editing the
//! manifest replaces the pod.

mod common;

use std::time::Duration;

use common::agent::Node;
use common::eventually;
use common::kubectl::Kubectl;

const WAIT: Duration = Duration::from_secs(60);

fn manifest(message: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox:1.35
    command: ["sh", "-c", "echo {message}; sleep 3600"]
"#
    )
}

/// uid, config.mirror hash, phase, restartCount, containerID, startedAt of the mirror pod
/// (None while it does not exist).
fn mirror_state(kubectl: &Kubectl<'_>, name: &str) -> Option<Vec<String>> {
    let out = kubectl.run(
        &[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.metadata.uid}|{.metadata.annotations.kubernetes\\.io/config\\.mirror}|{.status.phase}|{.status.containerStatuses[0].restartCount}|{.status.containerStatuses[0].containerID}|{.status.containerStatuses[0].state.running.startedAt}",
        ],
        None,
    );
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .split('|')
            .map(str::to_string)
            .collect()
    })
}

#[tokio::test]
async fn deleting_the_mirror_pod_keeps_the_containers_and_editing_the_manifest_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]).await;
    // Not borrowed from `node`, which is restarted below.
    let (kubeconfig, netns) = (
        node.server.kubeconfig.clone(),
        node.host.netns().to_path_buf(),
    );
    let kubectl = Kubectl {
        kubeconfig: &kubeconfig,
        binary: "kubectl",
        netns: Some(&netns),
    };
    let file = node.agent_dir().join("pod-manifests/web.yaml");
    std::fs::write(&file, manifest("v1")).unwrap();
    let mirror = format!("web-{}", node.name());

    let mut before = Vec::new();
    eventually(WAIT, "the static pod to run", || {
        let state = mirror_state(&kubectl, &mirror);
        let running = state
            .as_ref()
            .is_some_and(|s| s[2] == "Running" && !s[5].is_empty());
        if running {
            before = state.unwrap();
        }
        async move { running }
    })
    .await;
    assert_eq!(before[3], "0");
    eventually(WAIT, "its output in kubectl logs", || async {
        let out = kubectl.run(&["logs", &mirror], None);
        String::from_utf8_lossy(&out.stdout) == "v1\n"
    })
    .await;

    // The mirror pod deleted: it comes back (a new object), the containers run on.
    kubectl.ok(&["delete", "pod", &mirror]);
    let mut after = Vec::new();
    eventually(WAIT, "the mirror pod to come back with its status", || {
        let state = mirror_state(&kubectl, &mirror);
        let back = state
            .as_ref()
            .is_some_and(|s| s[0] != before[0] && s[2] == "Running" && !s[5].is_empty());
        if back {
            after = state.unwrap();
        }
        async move { back }
    })
    .await;
    assert_eq!(after[1], before[1], "the same static pod (hash)");
    assert_eq!(after[3], "0", "restartCount: {after:?}");
    assert_eq!(after[4], before[4], "the same container: {after:?}");
    assert_eq!(after[5], before[5], "the same start time: {after:?}");
    let log = node.server.log_text();
    assert!(
        !log.contains("stopping a static pod"),
        "nothing was stopped:\n{log}"
    );

    // The agent killed and restarted: it finds the static pod's containers again.
    node.kill_and_restart().await;
    // Past a few sync loops of the restarted agent.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let state = mirror_state(&kubectl, &mirror).expect("the mirror pod");
    assert_eq!(state[1..], after[1..], "after a restart: {state:?}");

    // The manifest edited: a new static pod (new hash) replaces the old one.
    std::fs::write(&file, manifest("v2")).unwrap();
    eventually(WAIT, "the new version to run", || async {
        mirror_state(&kubectl, &mirror).is_some_and(|s| {
            s[1] != before[1] && s[2] == "Running" && s[4] != before[4] && !s[5].is_empty()
        })
    })
    .await;
    eventually(WAIT, "the new version's output", || async {
        let out = kubectl.run(&["logs", &mirror], None);
        String::from_utf8_lossy(&out.stdout) == "v2\n"
    })
    .await;

    // The manifest removed: the pod stops and its mirror goes.
    std::fs::remove_file(&file).unwrap();
    eventually(WAIT, "the mirror pod to go", || async {
        mirror_state(&kubectl, &mirror).is_none()
    })
    .await;
}
