//! Simulated nodes: what the scheduler and controllers see of kubelets, without containers.
//! [`SimulatedNodes::start`] registers Node objects with capacity, renews their Leases in
//! `kube-node-lease`, and plays each node's kubelet for the pods bound to it: marks them
//! Running and Ready (with a pod IP from the node's `spec.podCIDR` when it has one), and
//! finishes their deletion. A node can be [silenced](SimulatedNodes::silence) to simulate
//! its loss.
//!
//! Pods steer their simulated life with annotations (on the pod template of a workload):
//! - `sim.kedge.io/ready: "false"` — runs but never becomes Ready;
//! - `sim.kedge.io/exit-code: "N"` — the container exits with N after
//!   `sim.kedge.io/run-seconds` (default 1): the pod Succeeded/Failed under restartPolicy
//!   Never; under OnFailure a non-zero exit restarts the container (restartCount grows).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

pub const READY_ANNOTATION: &str = "sim.kedge.io/ready";
pub const EXIT_CODE_ANNOTATION: &str = "sim.kedge.io/exit-code";
pub const RUN_SECONDS_ANNOTATION: &str = "sim.kedge.io/run-seconds";

/// One node to simulate.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub labels: BTreeMap<String, String>,
    /// Taints as `{key, value, effect}` JSON objects.
    pub taints: Vec<Value>,
    pub unschedulable: bool,
}

impl NodeSpec {
    /// A node with 4 CPUs, 8 GiB and room for 110 pods.
    pub fn new(name: &str) -> NodeSpec {
        NodeSpec {
            name: name.to_string(),
            cpu: "4".to_string(),
            memory: "8Gi".to_string(),
            pods: 110,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            unschedulable: false,
        }
    }

    pub fn capacity(mut self, cpu: &str, memory: &str) -> NodeSpec {
        self.cpu = cpu.to_string();
        self.memory = memory.to_string();
        self
    }

    pub fn pods(mut self, pods: u32) -> NodeSpec {
        self.pods = pods;
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> NodeSpec {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> NodeSpec {
        self.taints
            .push(json!({"key": key, "value": value, "effect": effect}));
        self
    }

    pub fn unschedulable(mut self) -> NodeSpec {
        self.unschedulable = true;
        self
    }

    fn object(&self) -> Node {
        let mut labels = self.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), self.name.clone());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert("kubernetes.io/arch".into(), std::env::consts::ARCH.into());
        serde_json::from_value(json!({
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": self.taints, "unschedulable": self.unschedulable},
        }))
        .expect("a valid Node")
    }

    fn status(&self, index: usize) -> Value {
        let resources = json!({
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": self.pods.to_string(),
            "ephemeral-storage": "100Gi",
        });
        json!({
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": node_address(index)},
                {"type": "Hostname", "address": self.name},
            ],
            "nodeInfo": {
                "architecture": std::env::consts::ARCH,
                "operatingSystem": "linux",
                "osImage": "Simulated",
                "kernelVersion": "6.0.0",
                "kubeletVersion": "v1.33.0-sim",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "sim://1.0",
                "machineID": format!("sim-{index}"),
                "systemUUID": format!("sim-{index}"),
                "bootID": format!("sim-{index}"),
            },
            "conditions": conditions(),
        })
    }
}

/// The node conditions of a healthy kubelet, heartbeat now.
fn conditions() -> Value {
    let now = Time(Timestamp::now());
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    json!([
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        condition(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        condition(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}

fn node_address(index: usize) -> String {
    format!("172.30.{}.{}", index / 250, index % 250 + 1)
}

/// The simulated kubelets of a set of nodes; they stop when this is dropped.
pub struct SimulatedNodes {
    client: Client,
    silenced: Arc<Mutex<HashSet<String>>>,
    revived: Arc<Mutex<HashSet<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Shared by the simulation tasks.
struct Kubelets {
    client: Client,
    nodes: HashMap<String, (usize, NodeSpec)>,
    silenced: Arc<Mutex<HashSet<String>>>,
    /// Revived nodes whose kubelet is to post its status again at the next heartbeat.
    revived: Arc<Mutex<HashSet<String>>>,
    /// Pods already started, by uid.
    started: Mutex<HashSet<String>>,
    /// Next pod IP host part per node.
    next_ip: Mutex<HashMap<String, u32>>,
}

impl SimulatedNodes {
    /// Registers `nodes` (Ready, leases renewed every `heartbeat`) and starts playing their
    /// kubelets against the server `client` reaches.
    pub async fn start(
        client: Client,
        nodes: Vec<NodeSpec>,
        heartbeat: Duration,
    ) -> SimulatedNodes {
        let node_api: Api<Node> = Api::all(client.clone());
        for (index, spec) in nodes.iter().enumerate() {
            node_api
                .create(&PostParams::default(), &spec.object())
                .await
                .unwrap_or_else(|e| panic!("registering node {}: {e}", spec.name));
            node_api
                .patch_status(
                    &spec.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": spec.status(index)})),
                )
                .await
                .unwrap_or_else(|e| panic!("node {} status: {e}", spec.name));
        }
        let silenced = Arc::new(Mutex::new(HashSet::new()));
        let revived = Arc::new(Mutex::new(HashSet::new()));
        let kubelets = Arc::new(Kubelets {
            client: client.clone(),
            nodes: nodes
                .into_iter()
                .enumerate()
                .map(|(i, spec)| (spec.name.clone(), (i, spec)))
                .collect(),
            silenced: silenced.clone(),
            revived: revived.clone(),
            started: Mutex::new(HashSet::new()),
            next_ip: Mutex::new(HashMap::new()),
        });
        for name in kubelets.nodes.keys() {
            kubelets.renew_lease(name).await;
        }
        let tasks = vec![
            tokio::spawn(kubelets.clone().heartbeats(heartbeat)),
            tokio::spawn(kubelets.clone().watch_nodes()),
            tokio::spawn(kubelets.watch_pods()),
        ];
        SimulatedNodes {
            client,
            silenced,
            revived,
            tasks,
        }
    }

    /// Stops `node`'s kubelet: no more heartbeats, pod updates or deletions — a lost node.
    pub fn silence(&self, node: &str) {
        self.silenced.lock().unwrap().insert(node.to_string());
    }

    /// Brings a silenced node back.
    pub fn revive(&self, node: &str) {
        self.silenced.lock().unwrap().remove(node);
        self.revived.lock().unwrap().insert(node.to_string());
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

impl Drop for SimulatedNodes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Kubelets {
    fn alive(&self, node: &str) -> bool {
        self.nodes.contains_key(node) && !self.silenced.lock().unwrap().contains(node)
    }

    async fn renew_lease(&self, node: &str) {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": node},
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": 40,
                "renewTime": MicroTime(Timestamp::now()),
            },
        });
        let result = leases
            .patch(
                node,
                &PatchParams::apply("kubelet").force(),
                &Patch::Apply(lease),
            )
            .await;
        if let Err(error) = result {
            eprintln!("simulated kubelet {node}: lease renewal failed: {error}");
        }
    }

    async fn heartbeats(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            for node in self.nodes.keys() {
                if self.alive(node) {
                    self.renew_lease(node).await;
                    if self.revived.lock().unwrap().remove(node) {
                        self.post_ready(node).await;
                    }
                }
            }
        }
    }

    /// Posts Ready again when something (the node lifecycle controller) marked a live node
    /// otherwise, as a kubelet's next status update would.
    async fn watch_nodes(self: Arc<Self>) {
        let api: Api<Node> = Api::all(self.client.clone());
        let mut nodes = watcher(api.clone(), watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(event) = nodes.next().await {
            let Ok(node) = event else { continue };
            let name = node.name_any();
            if !self.alive(&name) {
                continue;
            }
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .is_some_and(|c| c.status == "True");
            if !ready {
                self.post_ready(&name).await;
            }
        }
    }

    /// Posts a healthy kubelet's node conditions.
    async fn post_ready(&self, node: &str) {
        let _ = Api::<Node>::all(self.client.clone())
            .patch_status(
                node,
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": {"conditions": conditions()}})),
            )
            .await;
    }

    async fn watch_pods(self: Arc<Self>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let mut pods = watcher(api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(event) = pods.next().await {
            let pod = match event {
                Ok(pod) => pod,
                Err(error) => {
                    eprintln!("simulated kubelets: pod watch: {error}");
                    continue;
                }
            };
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            if !self.alive(&node) {
                continue;
            }
            if pod.metadata.deletion_timestamp.is_some() {
                self.finish_deletion(&pod).await;
            } else if self
                .started
                .lock()
                .unwrap()
                .insert(pod.uid().unwrap_or_default())
            {
                self.clone().start_pod(pod, &node).await;
            }
        }
    }

    /// What a kubelet does once a pod's containers are stopped: remove it for good.
    async fn finish_deletion(&self, pod: &Pod) {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let _ = api.delete(&pod.name_any(), &params).await;
    }

    fn pod_ip(&self, node: &Node, index: usize) -> String {
        let host = {
            let mut next = self.next_ip.lock().unwrap();
            let counter = next.entry(node.name_any()).or_insert(1);
            *counter += 1;
            *counter
        };
        match node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
            Some(cidr) => {
                let network = cidr.split('/').next().unwrap_or(cidr);
                let octets: Vec<&str> = network.split('.').collect();
                format!(
                    "{}.{}.{}.{}",
                    octets[0],
                    octets[1],
                    octets[2],
                    host % 254 + 1
                )
            }
            None => format!("10.244.{index}.{}", host % 254 + 1),
        }
    }

    async fn start_pod(self: Arc<Self>, pod: Pod, node_name: &str) {
        let (index, _) = &self.nodes[node_name];
        let node = Api::<Node>::all(self.client.clone())
            .get(node_name)
            .await
            .ok()
            .unwrap_or_default();
        let ip = self.pod_ip(&node, *index);
        let annotations = pod.annotations();
        let ready = annotations.get(READY_ANNOTATION).map(String::as_str) != Some("false");
        let exit_code: Option<i32> = annotations
            .get(EXIT_CODE_ANNOTATION)
            .and_then(|v| v.parse().ok());
        let run_seconds: u64 = annotations
            .get(RUN_SECONDS_ANNOTATION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let now = Time(Timestamp::now());
        let status = json!({
            "phase": "Running",
            "hostIP": node_address(*index),
            "hostIPs": [{"ip": node_address(*index)}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": now,
            "conditions": pod_conditions(ready, &now),
            "containerStatuses": container_statuses(&pod, ready, json!({"running": {"startedAt": now}}), 0),
        });
        let patched = self.patch_status(&pod, status).await;
        if patched && exit_code.is_some() {
            tokio::spawn(
                self.clone()
                    .run_to_exit(pod, exit_code.unwrap_or(0), run_seconds),
            );
        }
    }

    /// The container of `pod` exits with `code` every `seconds`: the pod ends, or (under
    /// OnFailure, failing) restarts.
    async fn run_to_exit(self: Arc<Self>, pod: Pod, code: i32, seconds: u64) {
        let restart_policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".to_string());
        let mut restarts = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            if !self.alive(&node) {
                return;
            }
            let now = Time(Timestamp::now());
            let reason = if code == 0 { "Completed" } else { "Error" };
            let terminated = json!({"terminated": {
                "exitCode": code, "reason": reason, "startedAt": now, "finishedAt": now,
            }});
            let restarts_in_place =
                restart_policy == "Always" || (restart_policy == "OnFailure" && code != 0);
            if restarts_in_place {
                restarts += 1;
                let status = json!({
                    "conditions": pod_conditions(false, &now),
                    "containerStatuses": container_statuses(&pod, false, json!({"running": {"startedAt": now}}), restarts)
                        .as_array().unwrap().iter().map(|s| {
                            let mut s = s.clone();
                            s["lastState"] = terminated.clone();
                            s
                        }).collect::<Vec<_>>(),
                });
                if !self.patch_status(&pod, status).await {
                    return;
                }
                continue;
            }
            let status = json!({
                "phase": if code == 0 { "Succeeded" } else { "Failed" },
                "conditions": pod_conditions(false, &now),
                "containerStatuses": container_statuses(&pod, false, terminated, restarts),
            });
            self.patch_status(&pod, status).await;
            return;
        }
    }

    async fn patch_status(&self, pod: &Pod, status: Value) -> bool {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        api.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .map_err(|e| eprintln!("simulated kubelet: pod {} status: {e}", pod.name_any()))
        .is_ok()
    }
}

fn pod_conditions(ready: bool, now: &Time) -> Value {
    let ready = if ready { "True" } else { "False" };
    let condition = |kind: &str, status: &str| json!({"type": kind, "status": status, "lastTransitionTime": now});
    json!([
        condition("PodReadyToStartContainers", "True"),
        condition("Initialized", "True"),
        condition("Ready", ready),
        condition("ContainersReady", ready),
        condition("PodScheduled", "True"),
    ])
}

fn container_statuses(pod: &Pod, ready: bool, state: Value, restarts: i32) -> Value {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    Value::Array(
        containers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "name": c.name,
                    "image": c.image,
                    "imageID": format!("sim://{}", c.image.as_deref().unwrap_or_default()),
                    "containerID": format!("sim://{}-{i}", pod.uid().unwrap_or_default()),
                    "ready": ready,
                    "started": state.get("running").is_some(),
                    "restartCount": restarts,
                    "state": state,
                })
            })
            .collect(),
    )
}
