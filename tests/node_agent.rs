//! The node agent's Kubernetes side, through the real kubectl: `kedge server` registers its
//! own node (Ready, control-plane role, capacity, system info, events), renews its Lease,
//! takes its Node over after a restart, and mirrors static pods; `kedge agent` joins a
//! server with the K10 token. No containers are needed.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::kubectl::Kubectl;
use common::{eventually, free_port, LogDump, Server, KEDGE};

const WAIT: Duration = Duration::from_secs(40);

fn jsonpath(kubectl: &Kubectl<'_>, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend(what);
    let path = format!("jsonpath={path}");
    args.extend(["-o", &path]);
    kubectl.ok(&args)
}

/// A server running its own agent as node `node`.
fn server_with_agent(dir: &std::path::Path, node: &str) -> Server {
    let args: Vec<String> = [
        "--node-name",
        node,
        "--node-label",
        "zone=test",
        "--kubelet-port",
        &free_port().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Server::new(dir, free_port(), &args).with_local_agent()
}

async fn wait_ready(kubectl: &Kubectl<'_>, node: &str) {
    eventually(WAIT, "the node to be Ready", || async {
        let out = kubectl.run(&["get", "node", node, "--no-headers"], None);
        String::from_utf8_lossy(&out.stdout).contains(" Ready ")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_registers_its_node_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = format!("kedge-node-{}", std::process::id());
    let mut server = server_with_agent(dir.path(), &node);
    server.start();
    server.wait_ready(WAIT).await;
    let _logs = LogDump(vec![server.log.clone()]);
    // Not borrowed from `server`, which is restarted below.
    let kubeconfig = server.kubeconfig.clone();
    let kubectl = Kubectl {
        kubeconfig: &kubeconfig,
        binary: "kubectl",
        netns: None,
    };
    wait_ready(&kubectl, &node).await;

    // NAME STATUS ROLES AGE VERSION, as k3s shows a server's node.
    let row = kubectl.ok(&["get", "nodes", "--no-headers"]);
    let columns: Vec<&str> = row
        .lines()
        .find(|l| l.starts_with(&node))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(columns[1], "Ready", "{row}");
    assert_eq!(columns[2], "control-plane,master", "{row}");
    let version = kubectl.ok(&["version", "-o", "json"]);
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(columns[4], version["serverVersion"]["gitVersion"], "{row}");
    let labels = jsonpath(&kubectl, &["node", &node], "{.metadata.labels}");
    for label in [
        "\"kubernetes.io/os\":\"linux\"",
        "\"kubernetes.io/hostname\":",
        "\"zone\":\"test\"",
        "\"node.kubernetes.io/instance-type\":\"kedge\"",
    ] {
        assert!(labels.contains(label), "{label} in {labels}");
    }
    let wide = kubectl.ok(&["get", "node", &node, "-o", "wide", "--no-headers"]);
    assert!(wide.contains("127.0.0.1"), "INTERNAL-IP: {wide}");
    assert!(wide.contains("kedge://"), "CONTAINER-RUNTIME: {wide}");

    // Compared with runs of spaces as one: kubectl aligns columns by content.
    let described = kubectl.ok(&["describe", "node", &node]);
    let described = described.split_whitespace().collect::<Vec<_>>().join(" ");
    for expected in [
        "Capacity: cpu:",
        "Allocatable: cpu:",
        "pods: 110",
        "ephemeral-storage:",
        "MemoryPressure False",
        "KubeletHasSufficientMemory kubelet has sufficient memory available",
        "KubeletHasSufficientPID",
        "Ready True",
        "KubeletReady kubelet is posting ready status",
        "System Info:",
        "Container Runtime Version: kedge://",
        "Operating System: linux",
        "Architecture:",
        "Kubelet Version: v1.",
        "PodCIDR: 10.42.",
    ] {
        assert!(
            described.contains(expected),
            "{expected:?} in:\n{described}"
        );
    }
    // DiskPressure is measured: under 10% free on the data dir's filesystem, as upstream.
    let fs = nix::sys::statvfs::statvfs(dir.path()).unwrap();
    let pressure = (fs.blocks_available() as u64) * 10 < fs.blocks() as u64;
    let disk = if pressure {
        "DiskPressure True"
    } else {
        "DiskPressure False"
    };
    assert!(described.contains(disk), "{disk:?} in:\n{described}");
    let words = if pressure {
        "KubeletHasDiskPressure kubelet has disk pressure"
    } else {
        "KubeletHasNoDiskPressure kubelet has no disk pressure"
    };
    assert!(described.contains(words), "{words:?} in:\n{described}");
    eventually(WAIT, "the kubelet's events in describe", || async {
        let described = kubectl.ok(&["describe", "node", &node]);
        ["Starting kubelet.", "NodeAllocatableEnforced", "NodeReady"]
            .iter()
            .all(|e| described.contains(e))
    })
    .await;
    let pod_cidr = jsonpath(&kubectl, &["node", &node], "{.spec.podCIDR}");
    assert!(
        pod_cidr.starts_with("10.42."),
        "node IPAM's range: {pod_cidr:?}"
    );

    // The Lease: held by the node, owned by it, renewed.
    let lease = ["lease", "-n", "kube-node-lease", node.as_str()];
    assert_eq!(jsonpath(&kubectl, &lease, "{.spec.holderIdentity}"), node);
    assert_eq!(
        jsonpath(&kubectl, &lease, "{.spec.leaseDurationSeconds}"),
        "40"
    );
    assert_eq!(
        jsonpath(&kubectl, &lease, "{.metadata.ownerReferences[0].kind}"),
        "Node"
    );
    let renewed = jsonpath(&kubectl, &lease, "{.spec.renewTime}");
    eventually(WAIT, "the lease to be renewed", || async {
        jsonpath(&kubectl, &lease, "{.spec.renewTime}") != renewed
    })
    .await;

    // A not-ready taint goes once the node is Ready (the node lifecycle controller's job).
    kubectl.ok(&[
        "taint",
        "node",
        &node,
        "node.kubernetes.io/not-ready:NoSchedule",
    ]);
    eventually(WAIT, "the not-ready taint to go", || async {
        !jsonpath(&kubectl, &["node", &node], "{.spec.taints}").contains("not-ready")
    })
    .await;

    // A restart takes the same Node over, podCIDR kept.
    let uid = jsonpath(&kubectl, &["node", &node], "{.metadata.uid}");
    assert!(server.terminate().success());
    server.start();
    server.wait_ready(WAIT).await;
    eventually(WAIT, "the restarted agent to post its status", || async {
        server.log_text().matches("node registered").count() == 2
    })
    .await;
    wait_ready(&kubectl, &node).await;
    assert_eq!(jsonpath(&kubectl, &["node", &node], "{.metadata.uid}"), uid);
    assert_eq!(
        jsonpath(&kubectl, &["node", &node], "{.spec.podCIDR}"),
        pod_cidr
    );
    let log = server.log_text();
    assert!(log.contains("taking it over"), "{log}");
    assert!(!log.contains("the node agent stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pods_get_mirror_pods() {
    let dir = tempfile::tempdir().unwrap();
    let node = format!("static-{}", std::process::id());
    let mut server = server_with_agent(dir.path(), &node);
    server.start();
    server.wait_ready(WAIT).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    wait_ready(&kubectl, &node).await;

    let manifests = dir.path().join("agent/pod-manifests");
    let manifest = manifests.join("web.yaml");
    // Host network: this agent runs in the test's own namespace, where the pod network
    // must not set up its bridge (tests that run pods use a test host).
    let pod = |image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: kube-system\nspec:\n  hostNetwork: true\n  containers:\n  - name: web\n    image: {image}\n"
        )
    };
    std::fs::write(&manifest, pod("busybox")).unwrap();
    let mirror = format!("web-{node}");
    eventually(WAIT, "the mirror pod", || async {
        kubectl
            .ok(&["get", "pods", "-A", "--no-headers"])
            .lines()
            .any(|l| l.starts_with("kube-system") && l.contains(&mirror))
    })
    .await;
    let what = ["pod", "-n", "kube-system", mirror.as_str()];
    let annotations = jsonpath(&kubectl, &what, "{.metadata.annotations}");
    assert!(
        annotations.contains("\"kubernetes.io/config.source\":\"file\""),
        "{annotations}"
    );
    let hash = jsonpath(
        &kubectl,
        &what,
        "{.metadata.annotations.kubernetes\\.io/config\\.mirror}",
    );
    assert_eq!(hash.len(), 32, "{annotations}");
    assert_eq!(jsonpath(&kubectl, &what, "{.spec.nodeName}"), node);
    assert_eq!(
        jsonpath(&kubectl, &what, "{.metadata.ownerReferences[0].kind}"),
        "Node"
    );

    // A changed manifest replaces the mirror pod.
    std::fs::write(&manifest, pod("busybox:1.36")).unwrap();
    eventually(WAIT, "the mirror pod to follow the manifest", || async {
        let out = kubectl.run(
            &[
                "get",
                "pod",
                "-n",
                "kube-system",
                &mirror,
                "-o",
                "jsonpath={.spec.containers[0].image}",
            ],
            None,
        );
        String::from_utf8_lossy(&out.stdout) == "busybox:1.36"
    })
    .await;

    // Deleted by hand, it comes back; its manifest removed, it goes.
    kubectl.ok(&[
        "delete",
        "pod",
        "-n",
        "kube-system",
        &mirror,
        "--wait=false",
    ]);
    eventually(WAIT, "the mirror pod to come back", || async {
        kubectl
            .run(&["get", "pod", "-n", "kube-system", &mirror], None)
            .status
            .success()
    })
    .await;
    std::fs::remove_file(&manifest).unwrap();
    eventually(WAIT, "the mirror pod to go", || async {
        !kubectl
            .ok(&["get", "pods", "-A", "--no-headers"])
            .contains(&mirror)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kedge_agent_joins_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(&dir.path().join("server"), free_port(), &[]);
    server.start();
    server.wait_ready(WAIT).await;
    let kubectl = server.kubectl();
    let token = std::fs::read_to_string(server.data_dir.join("server/token")).unwrap();
    let agent_dir = dir.path().join("agent-host");
    let agent_log = dir.path().join("agent.log");
    let _logs = LogDump(vec![server.log.clone(), agent_log.clone()]);
    let agent = |token: &str| {
        let log = std::fs::File::create(&agent_log).unwrap();
        Command::new(KEDGE)
            .args(["agent", "--server", &server.url(), "--token", token.trim()])
            .arg("--data-dir")
            .arg(&agent_dir)
            .args(["--node-name", "worker-1", "--node-ip", "127.0.0.1"])
            .args(["--kubelet-port", &free_port().to_string()])
            // It runs in the test's own namespace, which its service proxy must not program
            // (tests whose agents run pods or proxies use a test host).
            .arg("--disable-kube-proxy")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    };

    // A token made for another CA is refused before anything is sent.
    let foreign = format!("K10{}::server:whatever", "0".repeat(64));
    let status = agent(&foreign).wait().unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(&agent_log).unwrap();
    assert!(log.contains("does not match the token's CA hash"), "{log}");

    let mut child = agent(&token);
    wait_ready(&kubectl, "worker-1").await;
    let row = kubectl.ok(&["get", "node", "worker-1", "--no-headers"]);
    assert!(row.contains("<none>"), "an agent has no role: {row}");
    let user = jsonpath(
        &kubectl,
        &["lease", "-n", "kube-node-lease", "worker-1"],
        "{.spec.holderIdentity}",
    );
    assert_eq!(user, "worker-1");
    let key = agent_dir.join("agent/client-kubelet.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let _ = child.kill();
    let _ = child.wait();
}
