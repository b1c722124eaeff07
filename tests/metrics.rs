//! `kubectl top` through kedge's `metrics.k8s.io`: discovery lists the API, and a process
//! burning CPU in a pod's cgroup shows up in `kubectl top pod`, the host in `kubectl top
//! node`. The server's own agent registers this host as its node and the metrics API reads
//! it; the container dir is written as the kubelet writes it (meta.json, config.json,
//! state.json) around a real process in a real cgroup, until pod workers run containers.

mod common;

use std::time::Duration;

use common::{eventually, free_port, LogDump, Server};
use k8s_openapi::api::core::v1::{Node, Pod};
use kedge::runtime::cgroups::{self, PodResources, QosClass};
use kube::api::PostParams;
use kube::Api;
use serde_json::{json, Value};

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_ascii_lowercase()
}

/// Kills the busy process and removes its cgroup, even when the test fails.
struct Busy {
    child: std::process::Child,
    cgroup: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = cgroups::remove_pod_cgroup(&self.cgroup);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_top_shows_the_node_and_a_busy_pod() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: cgroups need root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(
        dir.path(),
        free_port(),
        &["--kubelet-port".into(), free_port().to_string()],
    )
    .with_local_agent();
    server.start();
    server.wait_ready(Duration::from_secs(30)).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();

    let resources = kubectl.ok(&["api-resources", "--api-group=metrics.k8s.io"]);
    assert!(
        resources.contains("NodeMetrics") && resources.contains("PodMetrics"),
        "{resources}"
    );

    let openapi = kubectl.ok(&["get", "--raw", "/openapi/v3/apis/metrics.k8s.io/v1beta1"]);
    assert!(
        openapi.contains("io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetrics"),
        "{openapi}"
    );
    assert!(kubectl
        .ok(&["get", "--raw", "/openapi/v2"])
        .contains("NodeMetrics"));

    // This host's node, registered by the server's own agent.
    let client = server.kube_client();
    let node_name = hostname();
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(
        Duration::from_secs(30),
        "the agent registers its node",
        || async { nodes.get_opt(&node_name).await.ok().flatten().is_some() },
    )
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "busy", "labels": {"app": "busy"}},
        // Host network: this agent runs in the test's own namespace, where the pod network
        // must not set up its bridge.
        "spec": {"nodeName": node_name, "hostNetwork": true, "containers": [{"name": "spin", "image": "busybox"}]}
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();

    // The container as the kubelet leaves it: its dir, and a process in its cgroup.
    let pod_cgroup = cgroups::qos_cgroup_path(QosClass::BestEffort, &uid);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let container_cgroup = cgroups::container_cgroup_path(&pod_cgroup, &id);
    cgroups::ensure_pod_cgroup(&pod_cgroup, &PodResources::default()).unwrap();
    cgroups::ensure_pod_cgroup(&container_cgroup, &PodResources::default()).unwrap();
    // Memory is charged to the cgroup a page is allocated in (v1 moves no charges with a
    // process), so the shell fills a variable only once it has been moved.
    let child = std::process::Command::new("sh")
        .args([
            "-c",
            "sleep 1; x=$(head -c 4000000 /dev/zero | tr '\\0' a); while :; do :; done",
        ])
        .spawn()
        .unwrap();
    let busy = Busy {
        child,
        cgroup: pod_cgroup.clone(),
    };
    cgroups::add_process(&container_cgroup, busy.child.id()).unwrap();
    let container_dir = dir.path().join("agent/containers").join(&id);
    std::fs::create_dir_all(&container_dir).unwrap();
    std::fs::write(
        container_dir.join("meta.json"),
        json!({"podUid": uid, "namespace": "default", "pod": "busy", "container": "spin",
            "restartCount": 0, "logPath": "/dev/null"})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        container_dir.join("config.json"),
        json!({"linux": {"cgroupsPath": container_cgroup}}).to_string(),
    )
    .unwrap();
    std::fs::write(
        container_dir.join("state.json"),
        json!({"pid": busy.child.id(), "startedAt": "2026-01-01T00:00:00Z"}).to_string(),
    )
    .unwrap();

    // `kubectl top node`: NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%).
    let mut top = String::new();
    eventually(Duration::from_secs(20), "kubectl top node", || {
        let out = kubectl.run(&["top", "node"], None);
        top = String::from_utf8_lossy(&out.stdout).into_owned();
        async move { out.status.success() }
    })
    .await;
    let line = top
        .lines()
        .find(|l| l.starts_with(&node_name))
        .unwrap_or_else(|| panic!("{top}"));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert!(
        top.contains("CPU(cores)") && top.contains("MEMORY(bytes)"),
        "{top}"
    );
    assert!(columns[1].ends_with('m'), "{line}");
    assert!(columns[3].ends_with("Mi"), "{line}");

    // `kubectl top pod`: the spinning container uses CPU (a share of a busy machine; an
    // idle one shows 0) once the window
    // covers its spinning.
    let mut last = String::new();
    eventually(
        Duration::from_secs(30),
        "kubectl top pod shows the spinning",
        || {
            let out = kubectl.ok(&["top", "pod", "-l", "app=busy"]);
            let cpu: u64 = out
                .lines()
                .find(|l| l.starts_with("busy"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|c| c.trim_end_matches('m').parse().ok())
                .unwrap_or(0);
            last = out;
            async move { cpu >= 50 }
        },
    )
    .await;
    assert!(last.contains("MEMORY(bytes)"), "{last}");
    let containers = kubectl.ok(&["top", "pod", "busy", "--containers"]);
    assert!(containers.contains("spin"), "{containers}");
    let all = kubectl.ok(&["top", "pod", "-A"]);
    assert!(all.contains("busy"), "{all}");

    // The raw API in metrics-server's shape.
    let raw: Value = serde_json::from_str(&kubectl.ok(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/busy",
    ]))
    .unwrap();
    assert_eq!(raw["kind"], "PodMetrics");
    assert_eq!(raw["metadata"]["labels"]["app"], "busy");
    assert!(raw["window"].as_str().unwrap().ends_with('s'));
    let memory = raw["containers"][0]["usage"]["memory"].as_str().unwrap();
    let kib: u64 = memory.trim_end_matches("Ki").parse().unwrap_or(0);
    assert!(kib > 3000 || memory.ends_with("Mi"), "{raw}");
    let missing = kubectl.fails(
        &["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes/nope"],
        None,
    );
    assert!(missing.contains("not found"), "{missing}");
    drop(busy);
}
