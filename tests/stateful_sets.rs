//! The StatefulSet controller against a real server with simulated nodes, seen through
//! kubectl: ordered creation with stable names, hostnames and claims, reverse-order scale
//! down that keeps the claims, rolling updates with a partition, `kubectl rollout
//! status/history/undo`, Parallel pod management and OnDelete.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::kubectl::Kubectl;
use common::nodes::{NodeSpec, SimulatedNodes};
use common::{eventually, server_with_nodes, LogDump, Server};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

const WAIT: Duration = Duration::from_secs(60);

async fn cluster() -> (tempfile::TempDir, Server, LogDump, SimulatedNodes) {
    let dir = tempfile::tempdir().unwrap();
    let (server, logs, nodes) = server_with_nodes(dir.path(), vec![NodeSpec::new("n1")]).await;
    (dir, server, logs, nodes)
}

/// A StatefulSet of busybox pods (scheduled onto the simulated node `n1`).
fn stateful_set(name: &str, replicas: u32, extra_spec: &str, pod_annotations: &str) -> String {
    format!(
        r#"{{"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {{"name": "{name}"}},
        "spec": {{"replicas": {replicas}, "serviceName": "{name}",
          "selector": {{"matchLabels": {{"app": "{name}"}}}},
          "template": {{"metadata": {{"labels": {{"app": "{name}"}}, "annotations": {{{pod_annotations}}}}},
            "spec": {{"terminationGracePeriodSeconds": 1,
              "containers": [{{"name": "c", "image": "busybox:1"}}]}}}}
          {extra_spec}}}}}"#
    )
}

/// What a watch on the pods labelled `app=<app>` saw, in order: ("add"|"delete", pod, whether
/// the pod's predecessor (ordinal - 1) was Ready at that moment).
type Seen = Arc<Mutex<Vec<(String, String, bool)>>>;

fn watch_pods(client: kube::Client, app: &str) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let config = watcher::Config::default().labels(&format!("app={app}"));
    let task = tokio::spawn(async move {
        let mut ready: BTreeMap<String, bool> = BTreeMap::new();
        let mut events = watcher(Api::<Pod>::default_namespaced(client), config).boxed();
        while let Some(Ok(event)) = events.next().await {
            let (pod, deleted) = match event {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
                watcher::Event::Delete(p) => (p, true),
                _ => continue,
            };
            let name = pod.name_any();
            let (set, ordinal) = name.rsplit_once('-').unwrap();
            let ordinal: i32 = ordinal.parse().unwrap();
            let previous = ready.get(&format!("{set}-{}", ordinal - 1)).copied();
            let previous_ready = previous.unwrap_or(ordinal == 0);
            if deleted {
                ready.remove(&name);
                log.lock()
                    .unwrap()
                    .push(("delete".into(), name, previous_ready));
                continue;
            }
            let is_ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready.insert(name.clone(), is_ready).is_none() {
                log.lock()
                    .unwrap()
                    .push(("add".into(), name, previous_ready));
            }
        }
    });
    (seen, task)
}

fn jsonpath(kubectl: &Kubectl, args: &[&str], path: &str) -> String {
    let mut all = args.to_vec();
    let output = format!("jsonpath={path}");
    all.extend(["-o", &output]);
    kubectl.ok(&all)
}

async fn rolled_out(kubectl: &Kubectl<'_>, target: &str) -> String {
    let out = kubectl.ok(&["rollout", "status", target, "--timeout=60s"]);
    out.lines().last().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_pods_with_stable_names_and_claims_scale_down_in_reverse() {
    let (_dir, server, _logs, _nodes) = cluster().await;
    let kubectl = server.kubectl();
    let (seen, _watch) = watch_pods(server.kube_client(), "web");
    let claims = r#", "volumeClaimTemplates": [{"metadata": {"name": "www"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]"#;
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&stateful_set("web", 3, claims, "")),
    );

    assert_eq!(
        rolled_out(&kubectl, "sts/web").await,
        "partitioned roll out complete: 3 new pods have been updated..."
    );
    let added: Vec<(String, String, bool)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(what, _, _)| what == "add")
        .cloned()
        .collect();
    let names: Vec<&str> = added.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(names, ["web-0", "web-1", "web-2"]);
    assert!(
        added.iter().all(|(_, _, previous_ready)| *previous_ready),
        "each pod waited for its predecessor to be Ready: {added:?}"
    );

    let claims = kubectl.ok(&["get", "pvc", "-o", "name"]);
    assert_eq!(
        claims.lines().collect::<Vec<_>>(),
        [
            "persistentvolumeclaim/www-web-0",
            "persistentvolumeclaim/www-web-1",
            "persistentvolumeclaim/www-web-2"
        ]
    );
    assert_eq!(
        jsonpath(
            &kubectl,
            &["get", "pvc", "www-web-1"],
            "{.metadata.labels.app}"
        ),
        "web"
    );
    let pod = |path: &str| jsonpath(&kubectl, &["get", "pod", "web-1"], path);
    assert_eq!(pod("{.spec.hostname}.{.spec.subdomain}"), "web-1.web");
    assert_eq!(
        pod("{.metadata.labels.statefulset\\.kubernetes\\.io/pod-name}"),
        "web-1"
    );
    assert_eq!(
        pod("{.metadata.labels.apps\\.kubernetes\\.io/pod-index}"),
        "1"
    );
    assert_eq!(
        pod("{.spec.volumes[0].persistentVolumeClaim.claimName}"),
        "www-web-1"
    );
    let update_revision = jsonpath(&kubectl, &["get", "sts", "web"], "{.status.updateRevision}");
    assert_eq!(
        pod("{.metadata.labels.controller-revision-hash}"),
        update_revision
    );
    assert_eq!(
        jsonpath(
            &kubectl,
            &["get", "sts", "web"],
            "{.status.replicas} {.status.readyReplicas} {.status.currentReplicas} {.status.updatedReplicas} {.status.availableReplicas} {.status.currentRevision}"
        ),
        format!("3 3 3 3 3 {update_revision}")
    );
    assert_eq!(pod("{.metadata.ownerReferences[0].kind}"), "StatefulSet");

    kubectl.ok(&["scale", "sts", "web", "--replicas=1"]);
    eventually(WAIT, "scaled down to web-0", || async {
        kubectl.ok(&["get", "pods", "-l", "app=web", "-o", "name"]) == "pod/web-0\n"
    })
    .await;
    let deleted: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(what, _, _)| what == "delete")
        .map(|(_, name, _)| name.clone())
        .collect();
    assert_eq!(deleted, ["web-2", "web-1"], "highest ordinal first");
    assert_eq!(
        kubectl.ok(&["get", "pvc", "-o", "name"]).lines().count(),
        3,
        "claims are kept on scale-down"
    );
    let events = kubectl.ok(&["describe", "sts", "web"]);
    for message in [
        "create Claim www-web-0 Pod web-0 in StatefulSet web success",
        "create Pod web-0 in StatefulSet web successful",
        "create Pod web-2 in StatefulSet web successful",
        "delete Pod web-2 in StatefulSet web successful",
        "delete Pod web-1 in StatefulSet web successful",
    ] {
        assert!(events.contains(message), "{message} in {events}");
    }

    kubectl.ok(&["delete", "sts", "web", "--cascade=orphan"]);
    assert_eq!(
        kubectl.ok(&["get", "pvc", "-o", "name"]).lines().count(),
        3,
        "claims are kept when the set goes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_with_partition_history_and_undo() {
    let (_dir, server, _logs, _nodes) = cluster().await;
    let kubectl = server.kubectl();
    kubectl.ok_with(&["apply", "-f", "-"], Some(&stateful_set("db", 3, "", "")));
    rolled_out(&kubectl, "sts/db").await;
    let first = jsonpath(&kubectl, &["get", "sts", "db"], "{.status.currentRevision}");

    kubectl.ok(&[
        "patch",
        "sts",
        "db",
        "-p",
        r#"{"spec": {"updateStrategy": {"rollingUpdate": {"partition": 2}}}}"#,
    ]);
    kubectl.ok(&[
        "annotate",
        "sts",
        "db",
        "kubernetes.io/change-cause=image 2",
    ]);
    kubectl.ok(&["set", "image", "sts/db", "c=busybox:2"]);
    assert_eq!(
        rolled_out(&kubectl, "sts/db").await,
        "partitioned roll out complete: 1 new pods have been updated..."
    );
    let images = || {
        jsonpath(
            &kubectl,
            &["get", "pods", "-l", "app=db"],
            "{range .items[*]}{.metadata.name}={.spec.containers[0].image} {end}",
        )
    };
    assert_eq!(images(), "db-0=busybox:1 db-1=busybox:1 db-2=busybox:2 ");
    let status = jsonpath(
        &kubectl,
        &["get", "sts", "db"],
        "{.status.currentRevision} {.status.updatedReplicas} {.status.currentReplicas}",
    );
    assert_eq!(status, format!("{first} 1 2"));

    kubectl.ok(&[
        "patch",
        "sts",
        "db",
        "-p",
        r#"{"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}}"#,
    ]);
    assert_eq!(
        rolled_out(&kubectl, "sts/db").await,
        "partitioned roll out complete: 3 new pods have been updated..."
    );
    eventually(WAIT, "the update revision becomes current", || async {
        let revisions = jsonpath(
            &kubectl,
            &["get", "sts", "db"],
            "{.status.currentRevision} {.status.updateRevision}",
        );
        let (current, update) = revisions.split_once(' ').unwrap();
        current == update && current != first
    })
    .await;
    assert_eq!(images(), "db-0=busybox:2 db-1=busybox:2 db-2=busybox:2 ");

    let history = kubectl.ok(&["rollout", "history", "sts/db"]);
    assert_eq!(
        history,
        "statefulset.apps/db \nREVISION  CHANGE-CAUSE\n1         <none>\n2         image 2\n\n"
    );
    let detail = kubectl.ok(&["rollout", "history", "sts/db", "--revision=1"]);
    assert!(detail.contains("Image:\tbusybox:1"), "{detail}");

    assert_eq!(
        kubectl.ok(&["rollout", "undo", "sts/db"]).trim(),
        "statefulset.apps/db rolled back"
    );
    eventually(WAIT, "rolled back to busybox:1", || async {
        images() == "db-0=busybox:1 db-1=busybox:1 db-2=busybox:1 "
            && jsonpath(&kubectl, &["get", "sts", "db"], "{.status.updatedReplicas}") == "3"
    })
    .await;
    assert_eq!(
        jsonpath(&kubectl, &["get", "sts", "db"], "{.status.updateRevision}"),
        first,
        "the first revision is reused"
    );
    let history = kubectl.ok(&["rollout", "history", "sts/db"]);
    assert_eq!(
        history,
        "statefulset.apps/db \nREVISION  CHANGE-CAUSE\n2         image 2\n3         <none>\n\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_management_on_delete_updates_and_claim_retention() {
    let (_dir, server, _logs, _nodes) = cluster().await;
    let kubectl = server.kubectl();
    // Never Ready: Parallel creates them all the same.
    let spec = r#", "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "OnDelete"},
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"},
        "volumeClaimTemplates": [{"metadata": {"name": "data"},
          "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]"#;
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&stateful_set(
            "q",
            3,
            spec,
            r#""sim.kedge.io/ready": "false""#,
        )),
    );
    eventually(WAIT, "all three pods at once", || async {
        kubectl
            .ok(&["get", "pods", "-l", "app=q", "-o", "name"])
            .lines()
            .count()
            == 3
    })
    .await;
    assert_eq!(
        jsonpath(
            &kubectl,
            &["get", "pvc", "data-q-0"],
            "{.metadata.ownerReferences[0].kind}"
        ),
        "StatefulSet"
    );
    let out = kubectl.run(&["rollout", "status", "sts/q"], None);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: rollout status is only available for RollingUpdate strategy type"
    );

    kubectl.ok(&["set", "image", "sts/q", "c=busybox:2"]);
    eventually(WAIT, "a new update revision", || async {
        let revisions = jsonpath(
            &kubectl,
            &["get", "sts", "q"],
            "{.status.currentRevision} {.status.updateRevision}",
        );
        let (current, update) = revisions.split_once(' ').unwrap();
        current != update
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let image = |pod: &str| {
        jsonpath(
            &kubectl,
            &["get", "pod", pod],
            "{.spec.containers[0].image}",
        )
    };
    assert_eq!(
        image("q-1"),
        "busybox:1",
        "OnDelete leaves running pods alone"
    );
    let uid = jsonpath(&kubectl, &["get", "pod", "q-1"], "{.metadata.uid}");
    kubectl.ok(&["delete", "pod", "q-1", "--wait=false"]);
    eventually(WAIT, "q-1 recreated at the update revision", || async {
        let out = kubectl.run(
            &[
                "get",
                "pod",
                "q-1",
                "-o",
                "jsonpath={.metadata.uid} {.spec.containers[0].image}",
            ],
            None,
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        out.status.success() && !text.starts_with(&uid) && text.ends_with("busybox:2")
    })
    .await;
    assert_eq!(image("q-0"), "busybox:1");

    kubectl.ok(&["scale", "sts", "q", "--replicas=2"]);
    // whenScaled: Delete — the claim of q-2 is owned by q-2, and goes with it.
    let claims = || kubectl.ok(&["get", "pvc", "-o", "name"]);
    eventually(WAIT, "q-2 and its claim gone", || async {
        let pods = kubectl.ok(&["get", "pods", "-l", "app=q", "-o", "name"]);
        !pods.contains("q-2")
            && claims() == "persistentvolumeclaim/data-q-0\npersistentvolumeclaim/data-q-1\n"
    })
    .await;
    // whenDeleted: Delete — the remaining claims go with the set.
    kubectl.ok(&["delete", "sts", "q", "--wait=false"]);
    eventually(WAIT, "the claims gone with the set", || async {
        claims().is_empty()
    })
    .await;
}
