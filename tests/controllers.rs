//! The controllers inside `kedge server`, seen through the real kubectl: what every namespace
//! gets, and which server runs them (the controller-manager Lease).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::kubectl::Kubectl;
use common::{started_server, LogDump, Server};

/// The servers' leader election Lease.
const LEASE: &[&str] = &[
    "get",
    "lease",
    "-n",
    "kube-system",
    "kedge-controller-manager",
];

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// Runs `args` until kubectl succeeds with output `accept` takes, within `timeout`; returns
/// stdout.
async fn eventually_out(
    kubectl: &Kubectl<'_>,
    args: &[&str],
    timeout: Duration,
    accept: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let out = kubectl.run(args, None);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && accept(&stdout) {
            return stdout;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl {args:?} did not give what was expected within {timeout:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A started server in a temporary directory; its log is printed if the test fails.
async fn single_server() -> (tempfile::TempDir, Server, LogDump) {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let logs = LogDump(vec![server.log.clone()]);
    (dir, server, logs)
}

fn kubectl_for(kubeconfig: &Path) -> Kubectl<'_> {
    Kubectl {
        kubeconfig,
        binary: "kubectl",
        netns: None,
    }
}

fn holder(kubectl: &Kubectl<'_>) -> String {
    let mut args = LEASE.to_vec();
    args.extend(["-o", "jsonpath={.spec.holderIdentity}"]);
    kubectl.ok(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_a_default_service_account_and_the_cluster_ca() {
    let (_dir, server, _logs) = single_server().await;
    let kubectl = kubectl_for(&server.kubeconfig);
    let ca = std::fs::read_to_string(server.tls_dir().join("ca.crt")).unwrap();
    let seconds = Duration::from_secs(10);

    // The namespaces made at start get them too.
    eventually_out(
        &kubectl,
        &["get", "sa", "default", "-n", "kube-system"],
        seconds,
        |_| true,
    )
    .await;

    kubectl.ok(&["create", "namespace", "team"]);
    let accounts = eventually_out(
        &kubectl,
        &["get", "serviceaccounts", "-n", "team", "--no-headers"],
        seconds,
        |out| out.starts_with("default "),
    )
    .await;
    assert_eq!(accounts.lines().count(), 1, "{accounts}");
    let ca_data = [
        "get",
        "configmap",
        "kube-root-ca.crt",
        "-n",
        "team",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ];
    let published = eventually_out(&kubectl, &ca_data, seconds, |_| true).await;
    assert_eq!(published, ca);
    let description = kubectl.ok(&[
        "get",
        "configmap",
        "kube-root-ca.crt",
        "-n",
        "team",
        "-o",
        "jsonpath={.metadata.annotations.kubernetes\\.io/description}",
    ]);
    assert!(
        description.starts_with("Contains a CA bundle"),
        "{description}"
    );

    // Deleted: back again. Edited: put back.
    for (kind, name) in [("sa", "default"), ("configmap", "kube-root-ca.crt")] {
        let args = [
            "get",
            kind,
            name,
            "-n",
            "team",
            "-o",
            "jsonpath={.metadata.uid}",
        ];
        let old = kubectl.ok(&args);
        kubectl.ok(&["delete", kind, name, "-n", "team"]);
        eventually_out(&kubectl, &args, seconds, |out| {
            !out.is_empty() && out != old
        })
        .await;
    }
    kubectl.ok(&[
        "patch",
        "configmap",
        "kube-root-ca.crt",
        "-n",
        "team",
        "--type=merge",
        "-p",
        r#"{"data":{"ca.crt":"tampered"}}"#,
    ]);
    eventually_out(&kubectl, &ca_data, seconds, |out| out == ca).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_manager_lease_is_held_by_this_server() {
    let (_dir, server, _logs) = single_server().await;
    let kubectl = kubectl_for(&server.kubeconfig);
    let identity = format!("{}_1", hostname());
    let mut args = LEASE.to_vec();
    args.extend([
        "-o",
        "jsonpath={.spec.holderIdentity} {.spec.leaseDurationSeconds} {.spec.leaseTransitions}",
    ]);
    let lease = eventually_out(&kubectl, &args, Duration::from_secs(10), |_| true).await;
    assert_eq!(lease, format!("{identity} 15 0"));

    // Renewed, but not more often than needed.
    let renewed = |k: &Kubectl<'_>| {
        let mut args = LEASE.to_vec();
        args.extend(["-o", "jsonpath={.spec.renewTime}"]);
        k.ok(&args)
    };
    let first = renewed(&kubectl);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let second = renewed(&kubectl);
    assert_ne!(first, second, "the holder renews its lease");
    let version = |k: &Kubectl<'_>| {
        let mut args = LEASE.to_vec();
        args.extend(["-o", "jsonpath={.metadata.resourceVersion}"]);
        k.ok(&args).parse::<u64>().unwrap()
    };
    let before = version(&kubectl);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let writes = version(&kubectl) - before;
    // Two leases renewed every 5 s when idle: the controller-manager's and the scheduler's.
    assert!(writes <= 6, "{writes} writes in 10 s of idling");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_server_takes_the_lease_when_its_holder_dies() {
    let root = tempfile::tempdir().unwrap();
    let ca = kedge::pki::Ca::generate().unwrap();
    // Three, so that two keep a quorum.
    let mut servers = common::cluster(root.path(), &ca, 3, &[]);
    let _logs = LogDump(servers.iter().map(|s| s.log.clone()).collect());
    for server in &mut servers {
        server.start();
    }
    for server in &mut servers {
        server.wait_ready(Duration::from_secs(60)).await;
    }
    let configs: Vec<_> = servers.iter().map(|s| s.kubeconfig.clone()).collect();
    let kubectls: Vec<Kubectl<'_>> = configs
        .iter()
        .map(|kubeconfig| kubectl_for(kubeconfig))
        .collect();
    let identities: Vec<String> = (1..=3).map(|i| format!("{}_{i}", hostname())).collect();
    let mut args = LEASE.to_vec();
    args.extend(["-o", "jsonpath={.spec.holderIdentity}"]);
    let first = eventually_out(&kubectls[0], &args, Duration::from_secs(20), |out| {
        identities.iter().any(|i| i == out)
    })
    .await;
    // Every server sees one holder, which stays.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for kubectl in &kubectls {
        assert_eq!(holder(kubectl), first);
    }
    let dead = identities.iter().position(|i| *i == first).unwrap();
    servers[dead].kill();
    let survivor = &kubectls[(dead + 1) % 3];
    let started = Instant::now();
    let next = eventually_out(survivor, &args, Duration::from_secs(25), |out| {
        !out.is_empty() && out != first
    })
    .await;
    assert!(identities.contains(&next), "{next}");
    eprintln!("the lease moved in {:?}", started.elapsed());

    // The new leader runs the controllers.
    survivor.ok(&["create", "namespace", "after-failover"]);
    eventually_out(
        survivor,
        &["get", "sa", "default", "-n", "after-failover"],
        Duration::from_secs(10),
        |_| true,
    )
    .await;
}

const GADGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

const CONTENT: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: lab}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: lab}
data: {a: "1"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: lab}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: busybox}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: lab}
spec:
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: example.com/v1
kind: Gadget
metadata: {name: plain, namespace: lab}
---
apiVersion: example.com/v1
kind: Gadget
metadata: {name: held, namespace: lab, finalizers: [example.com/hold]}
"#;

/// `status reason message` of a namespace condition.
fn condition(kubectl: &Kubectl<'_>, namespace: &str, kind: &str) -> String {
    let c = format!("{{.status.conditions[?(@.type==\"{kind}\")]");
    kubectl.ok(&[
        "get",
        "namespace",
        namespace,
        "-o",
        &format!("jsonpath={c}.status}} {c}.reason}} {c}.message}}"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_empties_it_then_removes_it() {
    let (_dir, server, _logs) = single_server().await;
    let kubectl = kubectl_for(&server.kubeconfig);
    kubectl.ok_with(&["apply", "-f", "-"], Some(GADGETS));
    kubectl.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=10s",
        "crd/gadgets.example.com",
    ]);
    kubectl.ok_with(&["apply", "-f", "-"], Some(CONTENT));
    eventually_out(
        &kubectl,
        &["get", "sa", "default", "-n", "lab"],
        Duration::from_secs(10),
        |_| true,
    )
    .await;

    kubectl.ok(&["delete", "namespace", "lab", "--wait=false"]);
    // Everything goes but the gadget held by its finalizer, and the namespace says so.
    let waiting = eventually_out(
        &kubectl,
        &["get", "namespace", "lab", "-o", "jsonpath={.status.phase}"],
        Duration::from_secs(10),
        |_| condition(&kubectl, "lab", "NamespaceFinalizersRemaining").starts_with("True"),
    )
    .await;
    assert_eq!(waiting, "Terminating");
    assert_eq!(
        condition(&kubectl, "lab", "NamespaceFinalizersRemaining"),
        "True SomeFinalizersRemain Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
    );
    assert_eq!(
        condition(&kubectl, "lab", "NamespaceContentRemaining"),
        "True SomeResourcesRemain Some resources are remaining: gadgets.example.com has 1 resource instances"
    );
    assert_eq!(
        condition(&kubectl, "lab", "NamespaceDeletionDiscoveryFailure"),
        "False ResourcesDiscovered All resources successfully discovered"
    );
    let left = kubectl.ok(&[
        "get",
        "configmaps,deployments,services,serviceaccounts,gadgets",
        "-n",
        "lab",
        "-o",
        "name",
    ]);
    assert_eq!(left.trim(), "gadget.example.com/held");
    let described = kubectl.ok(&["describe", "namespace", "lab"]);
    assert!(
        described.contains("Status:       Terminating"),
        "{described}"
    );
    assert!(described.contains("SomeFinalizersRemain"), "{described}");

    // The finalizer done, the namespace goes.
    kubectl.ok(&[
        "patch",
        "gadget",
        "held",
        "-n",
        "lab",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    kubectl.ok(&["wait", "--for=delete", "namespace/lab", "--timeout=20s"]);
    let err = kubectl.fails(&["get", "namespace", "lab"], None);
    assert!(err.contains(r#"namespaces "lab" not found"#), "{err}");
    let gadgets = kubectl.ok(&["get", "gadgets", "-A", "-o", "name"]);
    assert_eq!(gadgets.trim(), "");

    // A namespace of the same name starts empty.
    kubectl.ok(&["create", "namespace", "lab"]);
    let fresh = kubectl.ok(&["get", "configmaps,gadgets", "-n", "lab", "-o", "name"]);
    assert!(
        !fresh.contains("settings") && !fresh.contains("gadget"),
        "{fresh}"
    );
}
