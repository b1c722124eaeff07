//! Pod workers with real containers: the busybox test image in an agent directory, the pod
//! workers run in this test process against a real server (the Node "pods-node" and its
//! lease simulated, its pods not), containers through `kedge shim`. Needs root (skipped otherwise).
//! Covers: completion (Completed / Error and the pod phase), init containers in order,
//! CrashLoopBackOff with upstream's message, and deletion within the grace period.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::nodes::NodeSpec;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kedge::kubelet::pods::{self, PodRegistry, PodsContext};
use kedge::runtime::images::ImageStore;
use kedge::runtime::shim;
use kube::api::{Api, DeleteParams, PostParams};

const NODE: &str = "pods-node";

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping {test}: needs root to run containers");
    false
}

struct Agent {
    _server: common::Server,
    _logs: common::LogDump,
    _nodes: common::nodes::SimulatedNodes,
    client: kube::Client,
    registry: PodRegistry,
    agent_dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
        // The containers' root filesystems outlive the aborted workers.
        common::agent::unmount_all_under(&self.agent_dir);
    }
}

async fn agent(dir: &Path) -> Agent {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("kedge::kubelet=debug")
        .with_test_writer()
        .try_init();
    let server = common::started_server(&dir.join("server")).await;
    let logs = common::LogDump(vec![dir.join("server/kedge.log")]);
    // The Node and its lease only: the pods are run by the real pod workers below.
    let nodes = common::nodes::SimulatedNodes::start_idle(
        server.kube_client(),
        vec![NodeSpec::new(NODE)],
        Duration::from_secs(2),
    )
    .await;
    shim::set_shim_binary(PathBuf::from(env!("CARGO_BIN_EXE_kedge")));
    let agent_dir = dir.join("agent");
    let images = ImageStore::open(&agent_dir.join("images")).unwrap();
    let archive = {
        // The archive cache is not safe for two tests of one process building it at once.
        static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = BUILD.lock().unwrap();
        common::image::busybox_oci_archive(dir)
    };
    images.import_file(&archive).unwrap();
    let client = server.kube_client();
    let ctx = PodsContext::new(
        client.clone(),
        NODE,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        agent_dir.clone(),
        images,
    );
    let registry = ctx.registry.clone();
    let task = tokio::spawn(pods::run(ctx));
    Agent {
        _server: server,
        _logs: logs,
        _nodes: nodes,
        client,
        registry,
        agent_dir,
        task,
    }
}

fn pod(name: &str, spec: serde_json::Value) -> Pod {
    let mut spec = spec;
    spec["nodeName"] = NODE.into();
    // The pod workers run in this test process, in the machine's own network namespace:
    // host-network pods leave its links alone (the pod network is tested in a test host by
    // tests/pod_network.rs).
    spec["hostNetwork"] = true.into();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .unwrap()
}

fn busybox(name: &str, script: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "image": "busybox:1.35", "command": ["sh", "-c", script]})
}

async fn wait_for(
    api: &Api<Pod>,
    name: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&Pod) -> bool,
) -> Pod {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(pod) = api.get(name).await {
            if check(&pod) {
                return pod;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name}: {what} not reached in {timeout:?}; status: {}",
                    serde_json::to_string_pretty(&pod.status).unwrap()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn container(pod: &Pod, name: &str) -> ContainerStatus {
    let status = pod.status.as_ref().unwrap();
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_complete_fail_and_run_init_containers_in_order() {
    if !root_or_skip("pods_complete_fail_and_run_init_containers_in_order") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path()).await;
    let api: Api<Pod> = Api::namespaced(agent.client.clone(), "default");
    let pp = PostParams::default();
    api.create(
        &pp,
        &pod(
            "done",
            serde_json::json!({"restartPolicy": "Never",
                "containers": [busybox("c", "echo hello from $(POD_NAME) $HOSTNAME")
                    .as_object().cloned().map(|mut c| {
                        c.insert("env".into(), serde_json::json!([{"name": "POD_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]));
                        serde_json::Value::Object(c)
                    }).unwrap()]}),
        ),
    )
    .await
    .unwrap();
    api.create(
        &pp,
        &pod(
            "fails",
            serde_json::json!({"restartPolicy": "Never", "containers": [busybox("c", "exit 3")]}),
        ),
    )
    .await
    .unwrap();
    api.create(
        &pp,
        &pod(
            "inits",
            serde_json::json!({"restartPolicy": "Never",
                "initContainers": [busybox("first", "sleep 1"), busybox("second", "true")],
                "containers": [busybox("main", "true")]}),
        ),
    )
    .await
    .unwrap();

    let t = Duration::from_secs(90);
    let done = wait_for(&api, "done", t, "Succeeded", |p| phase(p) == "Succeeded").await;
    let c = container(&done, "c");
    let terminated = c.state.unwrap().terminated.unwrap();
    assert_eq!(terminated.exit_code, 0);
    assert_eq!(terminated.reason.as_deref(), Some("Completed"));
    assert!(terminated.container_id.unwrap().starts_with("kedge://"));
    assert_eq!(c.image, "docker.io/library/busybox:1.35");
    assert!(!c.image_id.is_empty());
    let ready = done
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .cloned()
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("False", Some("PodCompleted"))
    );
    // The log (CRI format) has the expanded variable and the pod's hostname (the node's: a
    // host-network pod).
    let log = agent
        .registry
        .log_path("default", "done", "c", false)
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let hostname = kedge::kubelet::hostname().to_ascii_lowercase();
    assert!(
        text.contains(&format!(" stdout F hello from done {hostname}\n")),
        "{text}"
    );

    let fails = wait_for(&api, "fails", t, "Failed", |p| phase(p) == "Failed").await;
    let terminated = container(&fails, "c").state.unwrap().terminated.unwrap();
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (3, Some("Error"))
    );

    let inits = wait_for(&api, "inits", t, "Succeeded", |p| phase(p) == "Succeeded").await;
    let first = container(&inits, "first")
        .state
        .unwrap()
        .terminated
        .unwrap();
    let second = container(&inits, "second")
        .state
        .unwrap()
        .terminated
        .unwrap();
    let main = container(&inits, "main").state.unwrap().terminated.unwrap();
    assert!(first.finished_at.as_ref().unwrap().0 <= second.started_at.as_ref().unwrap().0);
    assert!(second.finished_at.as_ref().unwrap().0 <= main.started_at.as_ref().unwrap().0);
    assert!(container(&inits, "first").ready);
    let _ = agent.agent_dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_back_off_and_graceful_deletion() {
    if !root_or_skip("crash_loop_back_off_and_graceful_deletion") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path()).await;
    let api: Api<Pod> = Api::namespaced(agent.client.clone(), "default");
    let pp = PostParams::default();
    let crash = api
        .create(
            &pp,
            &pod(
                "crash",
                serde_json::json!({"containers": [busybox("c", "exit 1")]}),
            ),
        )
        .await
        .unwrap();
    // Ignores SIGTERM (pid 1 without a handler): killed when the 3 s grace period ends.
    api.create(
        &pp,
        &pod(
            "stubborn",
            serde_json::json!({"terminationGracePeriodSeconds": 3,
                "containers": [busybox("c", "sleep 1000")]}),
        ),
    )
    .await
    .unwrap();
    // Exits on SIGTERM: gone long before its 30 s grace period.
    api.create(
        &pp,
        &pod(
            "polite",
            serde_json::json!({"containers": [busybox("c", "trap 'exit 0' TERM; sleep 1000 & wait")]}),
        ),
    )
    .await
    .unwrap();

    let t = Duration::from_secs(90);
    let uid = crash.metadata.uid.unwrap();
    let looping = wait_for(&api, "crash", t, "CrashLoopBackOff", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
    })
    .await;
    let c = container(&looping, "c");
    let waiting = c.state.unwrap().waiting.unwrap();
    assert_eq!(
        waiting.message.as_deref(),
        Some(
            format!("back-off 10s restarting failed container=c pod=crash_default({uid})").as_str()
        )
    );
    assert!(c.restart_count >= 1);
    assert_eq!(c.last_state.unwrap().terminated.unwrap().exit_code, 1);
    assert_eq!(phase(&looping), "Running");

    for name in ["stubborn", "polite"] {
        wait_for(&api, name, t, "Running", |p| phase(p) == "Running").await;
    }
    let stubborn_dir = agent
        .registry
        .container_dir("default", "stubborn", "c")
        .unwrap();
    let started = Instant::now();
    api.delete("polite", &DeleteParams::default())
        .await
        .unwrap();
    api.delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    let gone = |name: &'static str| {
        let api = api.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while api.get_opt(name).await.unwrap().is_some() {
                assert!(Instant::now() < deadline, "{name} not deleted");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Instant::now()
        }
    };
    let (polite_gone, stubborn_gone) = tokio::join!(gone("polite"), gone("stubborn"));
    let polite = polite_gone - started;
    let stubborn = stubborn_gone - started;
    assert!(polite < Duration::from_secs(10), "polite took {polite:?}");
    assert!(
        stubborn >= Duration::from_secs(3) && stubborn < Duration::from_secs(15),
        "stubborn took {stubborn:?}"
    );
    common::eventually(Duration::from_secs(10), "the container dir removed", || {
        let dir = stubborn_dir.clone();
        async move { !dir.exists() }
    })
    .await;
}
