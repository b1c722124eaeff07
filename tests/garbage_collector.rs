//! The garbage collector and the API's deletion propagation, through the real kubectl:
//! `kubectl delete --cascade=background|foreground|orphan` of an owner ConfigMap with
//! dependent ConfigMaps and Secrets, blockOwnerDeletion, dangling owner references.

mod common;

use std::time::Duration;

use common::kubectl::Kubectl;
use common::nodes::{NodeSpec, SimulatedNodes};
use common::{eventually, started_server, LogDump};

const WAIT: Duration = Duration::from_secs(20);

fn create_owner(kubectl: &Kubectl<'_>, name: &str) -> String {
    kubectl.ok(&["create", "configmap", name]);
    kubectl.ok(&["get", "configmap", name, "-o", "jsonpath={.metadata.uid}"])
}

/// Creates a `kind` (configmap or secret) `name` owned by the ConfigMap `owner` (`uid`).
fn create_dependent(
    kubectl: &Kubectl<'_>,
    kind: &str,
    name: &str,
    owner: &str,
    uid: &str,
    extra: &str,
) {
    let manifest = format!(
        r#"{{"apiVersion": "v1", "kind": "{kind}", "metadata": {{"name": "{name}", {extra}
            "ownerReferences": [{{"apiVersion": "v1", "kind": "ConfigMap", "name": "{owner}", "uid": "{uid}"
            {block}}}]}}}}"#,
        block = if extra.contains("finalizers") {
            r#", "blockOwnerDeletion": true"#
        } else {
            ""
        },
    );
    kubectl.ok_with(&["create", "-f", "-"], Some(&manifest));
}

fn exists(kubectl: &Kubectl<'_>, kind: &str, name: &str) -> bool {
    kubectl.run(&["get", kind, name], None).status.success()
}

async fn gone(kubectl: &Kubectl<'_>, kind: &str, name: &str) {
    eventually(WAIT, &format!("{kind} {name} to be collected"), || async {
        !exists(kubectl, kind, name)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_owner_deletes_or_orphans_its_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();

    // Background (kubectl's default): the owner goes at once, the collector takes the rest.
    let uid = create_owner(&kubectl, "owner");
    create_dependent(&kubectl, "ConfigMap", "dep-cm", "owner", &uid, "");
    create_dependent(&kubectl, "Secret", "dep-secret", "owner", &uid, "");
    kubectl.ok(&["delete", "configmap", "owner"]);
    gone(&kubectl, "configmap", "dep-cm").await;
    gone(&kubectl, "secret", "dep-secret").await;

    // Foreground: the owner waits, marked for deletion, for its blocking dependent.
    let uid = create_owner(&kubectl, "fg-owner");
    create_dependent(
        &kubectl,
        "ConfigMap",
        "fg-blocker",
        "fg-owner",
        &uid,
        r#""finalizers": ["example.com/hold"],"#,
    );
    create_dependent(&kubectl, "ConfigMap", "fg-dep", "fg-owner", &uid, "");
    kubectl.ok(&[
        "delete",
        "configmap",
        "fg-owner",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let finalizers = kubectl.ok(&[
        "get",
        "configmap",
        "fg-owner",
        "-o",
        "jsonpath={.metadata.finalizers}",
    ]);
    assert!(finalizers.contains("foregroundDeletion"), "{finalizers}");
    gone(&kubectl, "configmap", "fg-dep").await;
    eventually(
        WAIT,
        "the blocking dependent to be marked for deletion",
        || async {
            !kubectl
                .ok(&[
                    "get",
                    "configmap",
                    "fg-blocker",
                    "-o",
                    "jsonpath={.metadata.deletionTimestamp}",
                ])
                .is_empty()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(exists(&kubectl, "configmap", "fg-owner"), "the owner waits");
    kubectl.ok(&[
        "patch",
        "configmap",
        "fg-blocker",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    gone(&kubectl, "configmap", "fg-blocker").await;
    gone(&kubectl, "configmap", "fg-owner").await;

    // Orphan: the dependents stay, without their reference to the owner.
    let uid = create_owner(&kubectl, "orphan-owner");
    create_dependent(&kubectl, "Secret", "orphan-dep", "orphan-owner", &uid, "");
    kubectl.ok(&["delete", "configmap", "orphan-owner", "--cascade=orphan"]);
    gone(&kubectl, "configmap", "orphan-owner").await;
    let refs = kubectl.ok(&[
        "get",
        "secret",
        "orphan-dep",
        "-o",
        "jsonpath={.metadata.ownerReferences}",
    ]);
    assert_eq!(refs, "", "orphaned dependents lose their owner reference");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(exists(&kubectl, "secret", "orphan-dep"));

    // Dangling references: an object whose owner never existed is collected; one with a
    // live owner besides keeps living, without the dangling reference.
    create_dependent(&kubectl, "ConfigMap", "stray", "ghost", "0000-ghost", "");
    gone(&kubectl, "configmap", "stray").await;
    let uid = create_owner(&kubectl, "live-owner");
    let manifest = format!(
        r#"{{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {{"name": "half-owned",
            "ownerReferences": [
              {{"apiVersion": "v1", "kind": "ConfigMap", "name": "live-owner", "uid": "{uid}"}},
              {{"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": "0000-ghost"}}]}}}}"#
    );
    kubectl.ok_with(&["create", "-f", "-"], Some(&manifest));
    eventually(WAIT, "the dangling reference to be dropped", || async {
        kubectl.ok(&[
            "get",
            "configmap",
            "half-owned",
            "-o",
            "jsonpath={.metadata.ownerReferences[*].name}",
        ]) == "live-owner"
    })
    .await;

    // A reference to an object by name but with another uid is dangling too.
    kubectl.ok(&["delete", "configmap", "live-owner"]);
    gone(&kubectl, "configmap", "half-owned").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_references_across_namespaces_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    let uid = create_owner(&kubectl, "home");
    let reference = format!(
        r#""ownerReferences": [{{"apiVersion": "v1", "kind": "ConfigMap", "name": "home", "uid": "{uid}"}}]"#
    );

    // A namespaced owner is looked for in the dependent's namespace only: absent there.
    kubectl.ok(&["create", "namespace", "elsewhere"]);
    let manifest = format!(
        r#"{{"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {{"name": "abroad", "namespace": "elsewhere", {reference}}}}}"#
    );
    kubectl.ok_with(&["create", "-f", "-"], Some(&manifest));
    eventually(
        WAIT,
        "the cross-namespace dependent to be collected",
        || async {
            !kubectl
                .run(&["get", "configmap", "-n", "elsewhere", "abroad"], None)
                .status
                .success()
        },
    )
    .await;
    let events = kubectl.ok(&["get", "events", "-n", "elsewhere"]);
    assert!(
        events.contains("OwnerRefInvalidNamespace")
            && events.contains(r#"does not exist in namespace "elsewhere""#),
        "{events}"
    );

    // A cluster-scoped object naming a namespaced owner is left alone, with a warning.
    let manifest = format!(
        r#"{{"apiVersion": "v1", "kind": "Namespace", "metadata": {{"name": "adopted", {reference}}}}}"#
    );
    kubectl.ok_with(&["create", "-f", "-"], Some(&manifest));
    eventually(WAIT, "the OwnerRefInvalidNamespace warning", || async {
        kubectl
            .ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=adopted",
            ])
            .contains("OwnerRefInvalidNamespace")
    })
    .await;
    assert!(exists(&kubectl, "namespace", "adopted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_propagation_policies_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    kubectl.ok(&["create", "configmap", "c"]);
    let error = kubectl.fails(
        &[
            "delete",
            "--raw",
            "/api/v1/namespaces/default/configmaps/c?propagationPolicy=Sometimes",
        ],
        None,
    );
    assert!(
        error.contains(r#"propagationPolicy: Unsupported value: "Sometimes": supported values: "Foreground", "Background", "Orphan", "nil""#),
        "{error}"
    );
    let error = kubectl.fails(
        &[
            "delete",
            "--raw",
            "/api/v1/namespaces/default/configmaps/c?propagationPolicy=Orphan&orphanDependents=true",
        ],
        None,
    );
    assert!(
        error.contains("orphanDependents and deletionPropagation cannot be both set"),
        "{error}"
    );
    assert!(kubectl
        .run(&["get", "configmap", "c"], None)
        .status
        .success());
    // A valid policy goes through.
    kubectl.ok(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/configmaps/c?propagationPolicy=Background",
    ]);
}

/// A Deployment of `replicas` simulated pods labelled `app=<name>`.
fn deployment(name: &str, replicas: u32) -> String {
    format!(
        r#"{{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {{"name": "{name}"}},
        "spec": {{"replicas": {replicas}, "selector": {{"matchLabels": {{"app": "{name}"}}}},
          "template": {{"metadata": {{"labels": {{"app": "{name}"}}}},
            "spec": {{"containers": [{{"name": "c", "image": "busybox"}}]}}}}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_deployment_cascades_to_its_replica_sets_and_pods() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let _nodes = SimulatedNodes::start(
        server.kube_client(),
        vec![NodeSpec::new("n1")],
        Duration::from_secs(2),
    )
    .await;
    let kubectl = server.kubectl();
    let count = |what: &str, app: &str| {
        kubectl
            .ok(&["get", what, "-l", &format!("app={app}"), "--no-headers"])
            .lines()
            .count()
    };
    for app in ["fg", "bg", "keep"] {
        kubectl.ok_with(&["apply", "-f", "-"], Some(&deployment(app, 2)));
    }
    for app in ["fg", "bg", "keep"] {
        eventually(WAIT, &format!("{app}'s pods to run"), || async {
            kubectl
                .ok(&[
                    "get",
                    "pods",
                    "-l",
                    &format!("app={app}"),
                    "--field-selector=status.phase=Running",
                    "--no-headers",
                ])
                .lines()
                .count()
                == 2
        })
        .await;
    }

    // Foreground: by the time the Deployment is gone, so are its ReplicaSet and pods.
    kubectl.ok(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--timeout=30s",
    ]);
    assert_eq!(count("replicasets", "fg"), 0);
    assert_eq!(count("pods", "fg"), 0);

    // Background: the Deployment goes at once, the rest follows.
    kubectl.ok(&["delete", "deployment", "bg"]);
    eventually(WAIT, "bg's ReplicaSet and pods to be collected", || async {
        count("replicasets", "bg") == 0 && count("pods", "bg") == 0
    })
    .await;

    // Orphan: the ReplicaSet stays, without owner, and keeps its pods.
    kubectl.ok(&["delete", "deployment", "keep", "--cascade=orphan"]);
    let owners = kubectl.ok(&[
        "get",
        "replicasets",
        "-l",
        "app=keep",
        "-o",
        "jsonpath={.items[*].metadata.ownerReferences}",
    ]);
    assert_eq!(owners, "");
    assert_eq!(count("replicasets", "keep"), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count("pods", "keep"), 2);
}
