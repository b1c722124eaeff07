//! Persistent volumes against a real server, through kubectl: static binding (smallest fit,
//! Retain), claim protection while a pod uses it, the default `local-path` StorageClass and
//! its provisioner (a volume pinned to the selected node, its directory under the data dir,
//! deleted with the claim).

mod common;

use std::time::Duration;

use common::{eventually, started_server, LogDump};
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn volume(name: &str, size: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {{"name": "{name}"}},
        "spec": {{"capacity": {{"storage": "{size}"}}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "manual", "hostPath": {{"path": "/tmp/{name}"}}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_bind_to_the_smallest_fitting_volume() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    for (name, size) in [("big", "5Gi"), ("small", "1Gi"), ("tiny", "100Mi")] {
        kubectl.ok_with(&["apply", "-f", "-"], Some(&volume(name, size)));
    }
    eventually(Duration::from_secs(10), "volumes Available", || async {
        kubectl.ok(&["get", "pv", "-o", "jsonpath={.items[*].status.phase}"])
            == "Available Available Available"
    })
    .await;
    let claim = r#"{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "500Mi"}}}}"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(claim));
    eventually(Duration::from_secs(10), "claim Bound", || async {
        let row = kubectl.ok(&["get", "pvc", "data", "--no-headers"]);
        row.split_whitespace().take(4).collect::<Vec<_>>() == ["data", "Bound", "small", "1Gi"]
    })
    .await;
    let pvc = json(&kubectl.ok(&["get", "pvc", "data", "-o", "json"]));
    assert_eq!(
        pvc["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"],
        "yes"
    );
    assert_eq!(
        pvc["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"],
        "yes"
    );
    assert_eq!(
        pvc["metadata"]["finalizers"][0],
        "kubernetes.io/pvc-protection"
    );
    assert_eq!(pvc["status"]["accessModes"][0], "ReadWriteOnce");
    let pv = kubectl.ok(&["get", "pv", "small", "--no-headers"]);
    assert!(
        pv.contains("Bound") && pv.contains("default/data") && pv.contains("Retain"),
        "{pv}"
    );
    let pv = json(&kubectl.ok(&["get", "pv", "small", "-o", "json"]));
    assert_eq!(
        pv["metadata"]["finalizers"][0],
        "kubernetes.io/pv-protection"
    );
    assert_eq!(pv["spec"]["claimRef"]["uid"], pvc["metadata"]["uid"]);

    // A pod using the claim holds it while it is being deleted.
    let pod = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}}"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(pod));
    kubectl.ok(&["delete", "pvc", "data", "--wait=false"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let row = kubectl.ok(&["get", "pvc", "data", "--no-headers"]);
    assert!(row.contains("Terminating"), "{row}");
    kubectl.ok(&["delete", "pod", "user", "--grace-period=0", "--force"]);
    eventually(Duration::from_secs(10), "claim gone", || async {
        !kubectl.run(&["get", "pvc", "data"], None).status.success()
    })
    .await;
    // Retain: the volume is Released and stays.
    eventually(Duration::from_secs(10), "volume Released", || async {
        kubectl.ok(&["get", "pv", "small", "-o", "jsonpath={.status.phase}"]) == "Released"
    })
    .await;

    // A claim without a class and no fitting volume says why it waits.
    let classless = r#"{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "huge"},
        "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Ti"}}}}"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(classless));
    eventually(Duration::from_secs(10), "FailedBinding event", || async {
        kubectl
            .ok(&["describe", "pvc", "huge"])
            .contains("no persistent volumes available for this claim and no storage class is set")
    })
    .await;

    // A volume that comes after its claim is bound to it at once (not at the next resync).
    let early = r#"{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "early"},
        "spec": {"storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "10Gi"}}}}"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(early));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        kubectl.ok(&["get", "pvc", "early", "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );
    kubectl.ok_with(&["apply", "-f", "-"], Some(&volume("late", "10Gi")));
    eventually(Duration::from_secs(5), "early bound to late", || async {
        kubectl.ok(&["get", "pvc", "early", "-o", "jsonpath={.spec.volumeName}"]) == "late"
    })
    .await;
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_path_provisions_on_the_selected_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    eventually(Duration::from_secs(10), "the default class", || async {
        kubectl.run(&["get", "sc"], None).status.success()
            && kubectl
                .ok(&["get", "sc", "--no-headers"])
                .starts_with("local-path (default)")
    })
    .await;
    let row = kubectl.ok(&["get", "sc", "--no-headers"]);
    assert!(
        row.contains("rancher.io/local-path")
            && row.contains("Delete")
            && row.contains("WaitForFirstConsumer"),
        "{row}"
    );

    // No class named: the default one is filled in, and the claim waits for a consumer.
    let claim = r#"{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "cache"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}}"#;
    let dry_run = kubectl.ok_with(
        &[
            "create",
            "--dry-run=server",
            "-f",
            "-",
            "-o",
            "jsonpath={.spec.storageClassName}",
        ],
        Some(claim),
    );
    assert_eq!(dry_run, "local-path");
    kubectl.ok_with(&["apply", "-f", "-"], Some(claim));
    assert_eq!(
        kubectl.ok(&[
            "get",
            "pvc",
            "cache",
            "-o",
            "jsonpath={.spec.storageClassName}"
        ]),
        "local-path"
    );
    eventually(Duration::from_secs(10), "WaitForFirstConsumer", || async {
        kubectl
            .ok(&["describe", "pvc", "cache"])
            .contains("waiting for first consumer to be created before binding")
    })
    .await;
    assert_eq!(
        kubectl.ok(&["get", "pvc", "cache", "-o", "jsonpath={.status.phase}"]),
        "Pending"
    );

    // The scheduler's pick, by hand: this host's node, whose directory this server keeps.
    let node = hostname();
    kubectl.ok(&[
        "annotate",
        "pvc",
        "cache",
        &format!("volume.kubernetes.io/selected-node={node}"),
    ]);
    eventually(Duration::from_secs(10), "claim Bound", || async {
        kubectl.ok(&["get", "pvc", "cache", "-o", "jsonpath={.status.phase}"]) == "Bound"
    })
    .await;
    let pvc = json(&kubectl.ok(&["get", "pvc", "cache", "-o", "json"]));
    let uid = pvc["metadata"]["uid"].as_str().unwrap().to_string();
    let name = format!("pvc-{uid}");
    assert_eq!(pvc["spec"]["volumeName"], name.as_str());
    assert_eq!(
        pvc["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"],
        "rancher.io/local-path"
    );
    let pv = json(&kubectl.ok(&["get", "pv", &name, "-o", "json"]));
    let path = dir.path().join("storage").join(&uid);
    assert_eq!(pv["spec"]["hostPath"]["path"], path.to_str().unwrap());
    assert_eq!(pv["spec"]["hostPath"]["type"], "DirectoryOrCreate");
    assert_eq!(pv["spec"]["capacity"]["storage"], "2Gi");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(
        pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
        "rancher.io/local-path"
    );
    let term =
        &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
    assert_eq!(term["key"], "kubernetes.io/hostname");
    assert_eq!(term["operator"], "In");
    assert_eq!(term["values"][0], node.as_str());
    assert!(path.is_dir(), "{} made", path.display());
    let describe = kubectl.ok(&["describe", "pvc", "cache"]);
    assert!(
        describe.contains("ProvisioningSucceeded")
            && describe.contains(&format!("Successfully provisioned volume {name}")),
        "{describe}"
    );
    assert!(describe.contains("ExternalProvisioning"), "{describe}");

    // Delete reclaim: the claim goes, so do the volume and its directory.
    kubectl.ok(&["delete", "pvc", "cache"]);
    eventually(Duration::from_secs(10), "volume deleted", || async {
        !kubectl.run(&["get", "pv", &name], None).status.success()
    })
    .await;
    assert!(!path.exists(), "{} removed", path.display());
}

/// The whole WaitForFirstConsumer flow: the scheduler picks the pod's node and marks the
/// claim with it, the provisioner makes a volume there, the binder binds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gets_its_claim_provisioned_on_its_node() {
    use common::nodes::{NodeSpec, SimulatedNodes};
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
    let objects = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"},
         "spec": {"containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}}]}"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(objects));
    eventually(
        Duration::from_secs(20),
        "claim Bound, pod Running",
        || async {
            kubectl.ok(&["get", "pvc", "data", "-o", "jsonpath={.status.phase}"]) == "Bound"
                && kubectl.ok(&["get", "pod", "user", "-o", "jsonpath={.status.phase}"])
                    == "Running"
        },
    )
    .await;
    let volume = kubectl.ok(&["get", "pvc", "data", "-o", "jsonpath={.spec.volumeName}"]);
    let node = kubectl.ok(&[
        "get",
        "pv",
        &volume,
        "-o",
        "jsonpath={.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]}",
    ]);
    assert_eq!(node, "n1");
    assert_eq!(
        kubectl.ok(&["get", "pod", "user", "-o", "jsonpath={.spec.nodeName}"]),
        "n1"
    );
}
