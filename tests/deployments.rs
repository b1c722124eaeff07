//! Deployments, ReplicaSets and ReplicationControllers driven through the real kubectl
//! against a server with simulated nodes: rollouts, `kubectl rollout status / history /
//! undo / restart / pause / resume`, scaling, the progress deadline, adoption and release.

mod common;

use std::time::Duration;

use common::nodes::{NodeSpec, SimulatedNodes};
use common::{eventually, server_with_nodes, LogDump, Server};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn cluster(dir: &std::path::Path) -> (Server, SimulatedNodes, LogDump) {
    let node = NodeSpec::new("n1").capacity("16", "32Gi");
    let (server, logs, nodes) = server_with_nodes(dir, vec![node]).await;
    (server, nodes, logs)
}

/// A Deployment whose pods are bound to the simulated node `n1` (no scheduler needed).
fn deployment(
    name: &str,
    replicas: u32,
    image: &str,
    extra_spec: &str,
    pod_annotations: &str,
) -> String {
    format!(
        r#"{{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {{"name": "{name}"}},
        "spec": {{"replicas": {replicas}, "selector": {{"matchLabels": {{"app": "{name}"}}}}, {extra_spec}
          "template": {{"metadata": {{"labels": {{"app": "{name}"}}, "annotations": {{{pod_annotations}}}}},
            "spec": {{"nodeName": "n1", "containers": [{{"name": "c", "image": "{image}"}}]}}}}}}}}"#
    )
}

fn rollout_status(server: &Server, what: &str) -> String {
    server
        .kubectl()
        .ok(&["rollout", "status", what, "--timeout=60s"])
}

fn replica_sets(server: &Server, app: &str) -> Vec<String> {
    server
        .kubectl()
        .ok(&["get", "rs", "-l", &format!("app={app}"), "-o", "name"])
        .lines()
        .map(|l| l.trim_start_matches("replicaset.apps/").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_out_rolls_back_restarts_pauses_and_scales() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _nodes, _logs) = cluster(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&deployment("web", 3, "busybox:1", "", "")),
    );
    let out = rollout_status(&server, "deployment/web");
    assert!(
        out.ends_with("deployment \"web\" successfully rolled out\n"),
        "{out}"
    );
    let first = replica_sets(&server, "web");
    assert_eq!(first.len(), 1, "{first:?}");
    let hash = first[0].strip_prefix("web-").unwrap();
    assert!(
        (1..=10).contains(&hash.len()) && hash.chars().all(|c| "456789bcdf".contains(c)),
        "{hash}"
    );
    let labels = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.labels.pod-template-hash}",
    ]);
    assert_eq!(labels.split_whitespace().collect::<Vec<_>>(), vec![hash; 3]);
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=Deployment",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains(&format!("Scaled up replica set {} from 0 to 3", first[0])),
        "{events}"
    );
    let status = kubectl.ok(&["get", "deployment", "web", "-o", "jsonpath={.status.replicas} {.status.updatedReplicas} {.status.readyReplicas} {.status.availableReplicas} {.status.observedGeneration} {.metadata.annotations.deployment\\.kubernetes\\.io/revision}"]);
    assert_eq!(status, "3 3 3 3 1 1");
    let conditions = kubectl.ok(&["get", "deployment", "web", "-o", "jsonpath={range .status.conditions[*]}{.type}={.status}/{.reason}: {.message}{\"\\n\"}{end}"]);
    assert!(
        conditions.contains(
            "Available=True/MinimumReplicasAvailable: Deployment has minimum availability."
        ),
        "{conditions}"
    );
    assert!(
        conditions.contains(&format!("Progressing=True/NewReplicaSetAvailable: ReplicaSet \"{}\" has successfully progressed.", first[0])),
        "{conditions}"
    );

    // A new image: a second revision, the old ReplicaSet scaled to zero and kept.
    kubectl.ok(&["set", "image", "deployment/web", "c=busybox:2"]);
    let out = rollout_status(&server, "deployment/web");
    assert!(
        out.ends_with("deployment \"web\" successfully rolled out\n"),
        "{out}"
    );
    let sets = kubectl.ok(&["get", "rs", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.metadata.annotations.deployment\\.kubernetes\\.io/revision}={.spec.replicas}{\" \"}{end}"]);
    let mut sets: Vec<&str> = sets.split_whitespace().collect();
    sets.sort();
    assert_eq!(sets, ["1=0", "2=3"]);
    let history = kubectl.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.starts_with("deployment.apps/web"), "{history}");
    assert!(
        history.contains("REVISION  CHANGE-CAUSE\n1         <none>\n2         <none>\n"),
        "{history}"
    );
    let first_revision = kubectl.ok(&["rollout", "history", "deployment/web", "--revision=1"]);
    assert!(first_revision.contains("busybox:1"), "{first_revision}");
    assert!(
        first_revision.starts_with("deployment.apps/web with revision #1\n"),
        "{first_revision}"
    );

    // Undo: revision 1's template comes back as revision 3.
    let undo = kubectl.ok(&["rollout", "undo", "deployment/web"]);
    assert_eq!(undo, "deployment.apps/web rolled back\n");
    rollout_status(&server, "deployment/web");
    let image = kubectl.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "busybox:1");
    assert!(replica_sets(&server, "web").contains(&first[0]));
    let history = kubectl.ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("\n2         <none>\n3         <none>\n"),
        "{history}"
    );
    let revisions = kubectl.ok(&["get", "rs", first[0].as_str(), "-o", "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision} {.metadata.annotations.deployment\\.kubernetes\\.io/revision-history}"]);
    assert_eq!(revisions, "3 1");
    let undo_to = kubectl.ok(&["rollout", "undo", "deployment/web", "--to-revision=2"]);
    assert_eq!(undo_to, "deployment.apps/web rolled back\n");
    rollout_status(&server, "deployment/web");
    let image = kubectl.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "busybox:2");

    // Restart: a new template annotation, a new ReplicaSet.
    kubectl.ok(&["rollout", "restart", "deployment/web"]);
    rollout_status(&server, "deployment/web");
    assert_eq!(replica_sets(&server, "web").len(), 3);
    let pods = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}",
    ]);
    assert_eq!(pods.split_whitespace().count(), 3, "{pods}");

    // Paused: template changes wait; scaling does not.
    kubectl.ok(&["rollout", "pause", "deployment/web"]);
    kubectl.ok(&["set", "image", "deployment/web", "c=busybox:3"]);
    kubectl.ok(&["scale", "deployment/web", "--replicas=4"]);
    eventually(TIMEOUT, "paused deployment scaled", || async {
        kubectl.ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.availableReplicas}",
        ]) == "4"
    })
    .await;
    assert_eq!(replica_sets(&server, "web").len(), 3);
    let progressing = kubectl.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}",
    ]);
    assert_eq!(progressing, "DeploymentPaused");
    kubectl.ok(&["rollout", "resume", "deployment/web"]);
    let out = rollout_status(&server, "deployment/web");
    assert!(
        out.ends_with("deployment \"web\" successfully rolled out\n"),
        "{out}"
    );
    let images = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    eventually(TIMEOUT, "old pods gone", || async {
        let images = kubectl.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ]);
        images.split_whitespace().collect::<Vec<_>>() == ["busybox:3"; 4]
    })
    .await;
    drop(images);

    // revisionHistoryLimit: only the newest old ReplicaSet stays.
    kubectl.ok(&[
        "patch",
        "deployment/web",
        "-p",
        r#"{"spec": {"revisionHistoryLimit": 1}}"#,
    ]);
    eventually(TIMEOUT, "old replica sets cleaned up", || async {
        replica_sets(&server, "web").len() == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_and_progress_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _nodes, _logs) = cluster(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();

    // Pods that never become ready: the rollout times out.
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&deployment(
            "stuck",
            2,
            "busybox",
            r#""progressDeadlineSeconds": 3,"#,
            r#""sim.kedge.io/ready": "false""#,
        )),
    );
    let out = kubectl.run(
        &["rollout", "status", "deployment/stuck", "--timeout=60s"],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("Waiting for deployment \"stuck\" rollout to finish: 0 of 2 updated replicas are available...\n"),
        "{stdout}"
    );
    assert_eq!(
        stderr,
        "error: deployment \"stuck\" exceeded its progress deadline\n"
    );
    let conditions = kubectl.ok(&["get", "deployment", "stuck", "-o", "jsonpath={range .status.conditions[*]}{.type}={.status}/{.reason}: {.message}{\"\\n\"}{end}"]);
    assert!(conditions.contains("Available=False/MinimumReplicasUnavailable: Deployment does not have minimum availability."), "{conditions}");
    assert!(
        conditions.contains("Progressing=False/ProgressDeadlineExceeded: ReplicaSet \"stuck-"),
        "{conditions}"
    );
    assert!(
        conditions.contains("\" has timed out progressing."),
        "{conditions}"
    );
    let unavailable = kubectl.ok(&[
        "get",
        "deployment",
        "stuck",
        "-o",
        "jsonpath={.status.unavailableReplicas}",
    ]);
    assert_eq!(unavailable, "2");

    // Recreate: the old pods go before any new one is created.
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&deployment(
            "re",
            2,
            "busybox:1",
            r#""strategy": {"type": "Recreate"},"#,
            "",
        )),
    );
    rollout_status(&server, "deployment/re");
    kubectl.ok(&["set", "image", "deployment/re", "c=busybox:2"]);
    let out = rollout_status(&server, "deployment/re");
    assert!(
        out.ends_with("deployment \"re\" successfully rolled out\n"),
        "{out}"
    );
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=re",
        "-o",
        "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
    ]);
    let lines: Vec<&str> = events.lines().collect();
    assert_eq!(lines.len(), 3, "{events}");
    assert!(
        lines[1].starts_with("Scaled down replica set re-") && lines[1].ends_with(" from 2 to 0"),
        "{events}"
    );
    assert!(
        lines[2].starts_with("Scaled up replica set re-") && lines[2].ends_with(" from 0 to 2"),
        "{events}"
    );
}

fn replica_set(name: &str, replicas: u32) -> String {
    format!(
        r#"{{"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {{"name": "{name}"}},
        "spec": {{"replicas": {replicas}, "selector": {{"matchLabels": {{"app": "{name}"}}}},
          "template": {{"metadata": {{"labels": {{"app": "{name}", "tier": "x"}}}},
            "spec": {{"nodeName": "n1", "containers": [{{"name": "c", "image": "busybox"}}]}}}}}}}}"#
    )
}

fn owners(server: &Server, selector: &str) -> Vec<String> {
    let out = server.kubectl().ok(&[
        "get",
        "pods",
        "-l",
        selector,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.metadata.ownerReferences[*].name}{\"\\n\"}{end}",
    ]);
    out.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_set_adopts_replaces_releases_and_scales_down() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _nodes, _logs) = cluster(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    let orphan = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orphan", "labels": {"app": "front"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(orphan));
    kubectl.ok_with(&["apply", "-f", "-"], Some(&replica_set("front", 3)));
    eventually(TIMEOUT, "three ready replicas", || async {
        kubectl.ok(&[
            "get",
            "rs",
            "front",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ]) == "3"
    })
    .await;
    let pods = owners(&server, "app=front");
    assert_eq!(pods.len(), 3, "{pods:?}");
    assert!(pods.contains(&"orphan=front".to_string()), "{pods:?}");
    let reference = kubectl.ok(&["get", "pod", "orphan", "-o", "jsonpath={.metadata.ownerReferences[0].kind} {.metadata.ownerReferences[0].controller} {.metadata.ownerReferences[0].blockOwnerDeletion}"]);
    assert_eq!(reference, "ReplicaSet true true");
    let status = kubectl.ok(&["get", "rs", "front", "-o", "jsonpath={.status.replicas} {.status.fullyLabeledReplicas} {.status.readyReplicas} {.status.availableReplicas} {.status.observedGeneration}"]);
    // The adopted pod lacks the template's `tier` label.
    assert_eq!(status, "3 2 3 3 1");
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=front",
        "-o",
        "jsonpath={range .items[*]}{.reason} {.message}{\"\\n\"}{end}",
    ]);
    assert_eq!(
        events
            .lines()
            .filter(|l| l.starts_with("SuccessfulCreate Created pod: front-"))
            .count(),
        2,
        "{events}"
    );

    // A deleted pod is replaced; a relabeled one is released and replaced.
    kubectl.ok(&["delete", "pod", "orphan", "--wait=true"]);
    let created = pods
        .iter()
        .find(|p| p.starts_with("front-"))
        .unwrap()
        .split('=')
        .next()
        .unwrap()
        .to_string();
    kubectl.ok(&["label", "pod", &created, "app=gone", "--overwrite"]);
    eventually(TIMEOUT, "replacements", || async {
        owners(&server, "app=front").len() == 3
            && kubectl.ok(&[
                "get",
                "rs",
                "front",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ]) == "3"
    })
    .await;
    eventually(TIMEOUT, "released pod", || async {
        owners(&server, "app=gone") == [format!("{created}=")]
    })
    .await;

    // Scaling down deletes the surplus, with events.
    kubectl.ok(&["scale", "rs", "front", "--replicas=1"]);
    eventually(TIMEOUT, "one pod left", || async {
        owners(&server, "app=front").len() == 1
            && kubectl.ok(&["get", "rs", "front", "-o", "jsonpath={.status.replicas}"]) == "1"
    })
    .await;
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=front",
        "-o",
        "jsonpath={range .items[*]}{.reason} {.message}{\"\\n\"}{end}",
    ]);
    assert_eq!(
        events
            .lines()
            .filter(|l| l.starts_with("SuccessfulDelete Deleted pod: front-"))
            .count(),
        2,
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_controller_keeps_its_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _nodes, _logs) = cluster(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    let rc = r#"{"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "old"},
        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "old"}},
          "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}}}"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(rc));
    kubectl.ok(&["scale", "rc", "old", "--replicas=3"]);
    eventually(TIMEOUT, "three ready", || async {
        let out = kubectl.ok(&["get", "rc", "old", "--no-headers"]);
        out.split_whitespace().collect::<Vec<_>>()[1..4] == ["3", "3", "3"]
    })
    .await;
    let pods = owners(&server, "app=old");
    assert_eq!(pods.len(), 3);
    assert!(
        pods.iter()
            .all(|p| p.starts_with("old-") && p.ends_with("=old")),
        "{pods:?}"
    );
    let kind = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=old",
        "-o",
        "jsonpath={.items[0].metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(kind, "ReplicationController");
    let described = kubectl.ok(&["describe", "rc", "old"]);
    assert!(described.contains("SuccessfulCreate"), "{described}");
    assert!(described.contains("Created pod: old-"), "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_adopts_a_matching_replica_set_and_replaces_deleted_pods() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _nodes, _logs) = cluster(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    // A ReplicaSet running exactly the template the Deployment will have.
    let rs = r#"{"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "adopted", "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
          "template": {"metadata": {"labels": {"app": "web"}, "annotations": {}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox:1"}]}}}}"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(rs));
    eventually(TIMEOUT, "replica set ready", || async {
        kubectl.ok(&[
            "get",
            "rs",
            "adopted",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ]) == "2"
    })
    .await;
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&deployment("web", 2, "busybox:1", "", "")),
    );
    let out = rollout_status(&server, "deployment/web");
    assert!(
        out.ends_with("deployment \"web\" successfully rolled out\n"),
        "{out}"
    );
    assert_eq!(replica_sets(&server, "web"), ["adopted"]);
    let owner = kubectl.ok(&["get", "rs", "adopted", "-o", "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name} {.metadata.annotations.deployment\\.kubernetes\\.io/revision}"]);
    assert_eq!(owner, "Deployment/web 1");

    // A deleted pod comes back; a scale down goes through the one ReplicaSet.
    let pod = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    kubectl.ok(&["delete", "pod", &pod, "--wait=true"]);
    eventually(TIMEOUT, "replacement pod ready", || async {
        let pods = owners(&server, "app=web");
        pods.len() == 2
            && !pods.iter().any(|p| p.starts_with(&format!("{pod}=")))
            && kubectl.ok(&[
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.status.availableReplicas}",
            ]) == "2"
    })
    .await;
    kubectl.ok(&["scale", "deployment/web", "--replicas=1"]);
    eventually(TIMEOUT, "scaled down", || async {
        kubectl.ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.replicas}/{.status.availableReplicas}",
        ]) == "1/1"
    })
    .await;
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=Deployment",
        "-o",
        "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
    ]);
    assert_eq!(events, "Scaled down replica set adopted from 2 to 1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_during_a_rollout_is_proportional() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _nodes, _logs) = cluster(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&deployment("web", 4, "busybox:1", "", "")),
    );
    rollout_status(&server, "deployment/web");
    let old = replica_sets(&server, "web").remove(0);
    // The new pods never become ready: the rollout stops at 3 old + 2 new (maxSurge 1,
    // maxUnavailable 1 of 4).
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&deployment(
            "web",
            4,
            "busybox:2",
            "",
            r#""sim.kedge.io/ready": "false""#,
        )),
    );
    let sizes = || async {
        kubectl.ok(&[
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.spec.replicas}{\" \"}{end}",
        ])
    };
    eventually(TIMEOUT, "rollout stuck at 3 old and 2 new", || async {
        let out = sizes().await;
        out.contains(&format!("{old}=3 "))
            && out
                .split_whitespace()
                .any(|s| !s.starts_with(&old) && s.ends_with("=2"))
    })
    .await;
    kubectl.ok(&["scale", "deployment/web", "--replicas=8"]);
    eventually(
        TIMEOUT,
        "proportional scale up to 6 old and 4 new",
        || async {
            let out = sizes().await;
            out.contains(&format!("{old}=6 "))
                && out
                    .split_whitespace()
                    .any(|s| !s.starts_with(&old) && s.ends_with("=4"))
        },
    )
    .await;
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=Deployment",
        "-o",
        "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains(&format!("Scaled up replica set {old} from 3 to 6\n")),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_deployment_is_scheduled_and_rolled_out() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _nodes, _logs) = cluster(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    kubectl.ok(&[
        "create",
        "deployment",
        "hello",
        "--image=busybox:1",
        "--replicas=3",
    ]);
    let out = rollout_status(&server, "deployment/hello");
    assert!(
        out.ends_with("deployment \"hello\" successfully rolled out\n"),
        "{out}"
    );
    let nodes = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=hello",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    assert_eq!(nodes, "n1 n1 n1");
    kubectl.ok(&["set", "image", "deployment/hello", "busybox=busybox:2"]);
    let out = rollout_status(&server, "deployment/hello");
    assert!(
        out.ends_with("deployment \"hello\" successfully rolled out\n"),
        "{out}"
    );
    let ready = kubectl.ok(&["get", "deployment", "hello", "--no-headers"]);
    assert_eq!(
        ready.split_whitespace().collect::<Vec<_>>()[1..4],
        ["3/3", "3", "3"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_creates_no_extra_pods() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _nodes, _logs) = cluster(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    server.kubectl().ok_with(
        &["apply", "-f", "-"],
        Some(&deployment("web", 3, "busybox:1", "", "")),
    );
    rollout_status(&server, "deployment/web");
    server.terminate();
    server.start();
    server.wait_ready(TIMEOUT).await;
    // Long enough for the controllers to have started and synced everything once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kubectl = server.kubectl();
    let pods = kubectl.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    assert_eq!(pods.lines().count(), 3, "{pods}");
    assert_eq!(replica_sets(&server, "web").len(), 1);
    rollout_status(&server, "deployment/web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_with_a_deployment_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _nodes, _logs) = cluster(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    kubectl.ok(&["create", "namespace", "team"]);
    kubectl.ok_with(
        &["apply", "-n", "team", "-f", "-"],
        Some(&deployment("web", 2, "busybox:1", "", "")),
    );
    kubectl.ok(&[
        "rollout",
        "status",
        "-n",
        "team",
        "deployment/web",
        "--timeout=60s",
    ]);
    kubectl.ok(&[
        "delete",
        "namespace",
        "team",
        "--wait=true",
        "--timeout=60s",
    ]);
    let left = kubectl.run(&["get", "namespace", "team"], None);
    assert!(!left.status.success());
    let events = kubectl.ok(&[
        "get",
        "events",
        "-A",
        "--field-selector",
        "reason=FailedCreate",
        "-o",
        "name",
    ]);
    assert_eq!(events, "");
}
