//! The Node object of this agent, as upstream's kubelet keeps it: registration (create, or
//! take over the existing Node after a restart), the status posted every
//! `nodeStatusUpdateFrequency` (capacity, allocatable, nodeInfo, addresses, daemon
//! endpoints, and the Ready / MemoryPressure / DiskPressure / PIDPressure conditions whose
//! transitions are recorded as events), and the Lease in `kube-node-lease`.
//!
//! Must not touch: `spec.podCIDR` (node IPAM's) and the taints the node lifecycle
//! controller manages; status goes through the status subresource, labels through merge
//! patches, so neither clobbers what others wrote.

mod host;
mod lease;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    ObjectReference,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

pub use host::go_arch;

use super::{KubeletConfig, KubeletError};
use crate::controllers::events::{EventType, Recorder};

/// `source.component` of the kubelet's events.
pub const COMPONENT: &str = "kubelet";

/// One node agent's view of its Node; cheap to clone.
#[derive(Clone)]
pub struct NodeAgent {
    inner: Arc<Inner>,
}

struct Inner {
    config: KubeletConfig,
    api: Api<Node>,
    recorder: Recorder,
    /// The Node's uid (changes if the Node is deleted and registered again).
    uid: Mutex<String>,
}

/// The labels upstream's kubelet (and k3s on a server) puts on its Node.
fn well_known_labels(config: &KubeletConfig) -> BTreeMap<String, String> {
    let arch = go_arch().to_string();
    let mut labels = BTreeMap::from([
        (
            "kubernetes.io/hostname".to_string(),
            config.node_name.clone(),
        ),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch.clone()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch),
        (
            "node.kubernetes.io/instance-type".to_string(),
            "kedge".to_string(),
        ),
    ]);
    if config.control_plane {
        labels.insert(
            "node-role.kubernetes.io/control-plane".into(),
            "true".into(),
        );
        labels.insert("node-role.kubernetes.io/master".into(), "true".into());
    }
    labels
}

/// Upstream's kubelet annotation, and k3s' informational ones under kedge's name.
fn annotations(config: &KubeletConfig) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
            "true".to_string(),
        ),
        ("kedge.io/hostname".to_string(), config.hostname.clone()),
        (
            "kedge.io/internal-ip".to_string(),
            config.node_ip.to_string(),
        ),
    ])
}

/// One kubelet condition: (type, status, reason, message), with upstream's exact words.
fn condition_words(kind: &str, bad: bool) -> (&'static str, &'static str, &'static str) {
    match (kind, bad) {
        ("MemoryPressure", false) => (
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        ("MemoryPressure", true) => (
            "True",
            "KubeletHasInsufficientMemory",
            "kubelet has insufficient memory available",
        ),
        ("DiskPressure", false) => (
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        ("DiskPressure", true) => (
            "True",
            "KubeletHasDiskPressure",
            "kubelet has disk pressure",
        ),
        ("PIDPressure", false) => (
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        ("PIDPressure", true) => (
            "True",
            "KubeletHasInsufficientPID",
            "kubelet has insufficient PID available",
        ),
        (_, false) => ("True", "KubeletReady", "kubelet is posting ready status"),
        (_, true) => ("False", "KubeletNotReady", "kubelet is not ready"),
    }
}

/// The event upstream records when a condition changes to `status`.
fn transition_event(kind: &str, status: &str) -> Option<(EventType, &'static str)> {
    Some(match (kind, status) {
        ("MemoryPressure", "False") => (EventType::Normal, "NodeHasSufficientMemory"),
        ("MemoryPressure", "True") => (EventType::Normal, "NodeHasInsufficientMemory"),
        ("DiskPressure", "False") => (EventType::Normal, "NodeHasNoDiskPressure"),
        ("DiskPressure", "True") => (EventType::Normal, "NodeHasDiskPressure"),
        ("PIDPressure", "False") => (EventType::Normal, "NodeHasSufficientPID"),
        ("PIDPressure", "True") => (EventType::Normal, "NodeHasInsufficientPID"),
        ("Ready", "True") => (EventType::Normal, "NodeReady"),
        ("Ready", "False") => (EventType::Normal, "NodeNotReady"),
        _ => return None,
    })
}

/// The conditions as they are now, given those the Node has: lastTransitionTime moves only
/// when the status changes; returns them and the changes to record.
fn conditions(
    previous: &[NodeCondition],
    measured: &[(&str, bool)],
    now: &Time,
) -> (Vec<NodeCondition>, Vec<(String, String)>) {
    let mut out = Vec::new();
    let mut changes = Vec::new();
    for (kind, bad) in measured {
        let (status, reason, message) = condition_words(kind, *bad);
        let before = previous.iter().find(|c| c.type_ == *kind);
        let transition = match before {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => {
                changes.push((kind.to_string(), status.to_string()));
                Some(now.clone())
            }
        };
        out.push(NodeCondition {
            type_: kind.to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: transition.or_else(|| Some(now.clone())),
        });
    }
    (out, changes)
}

impl NodeAgent {
    /// Registers the Node (or takes the existing one over) and records the start events.
    pub async fn start(config: KubeletConfig) -> Result<NodeAgent, KubeletError> {
        let api = Api::<Node>::all(config.client.clone());
        let recorder = Recorder::new(config.client.clone(), COMPONENT);
        let agent = NodeAgent {
            inner: Arc::new(Inner {
                config,
                api,
                recorder,
                uid: Mutex::new(String::new()),
            }),
        };
        agent
            .event(EventType::Normal, "Starting", "Starting kubelet.")
            .await;
        agent.register().await?;
        agent
            .event(
                EventType::Normal,
                "NodeAllocatableEnforced",
                "Updated Node Allocatable limit across pods",
            )
            .await;
        agent.post_status().await?;
        Ok(agent)
    }

    fn config(&self) -> &KubeletConfig {
        &self.inner.config
    }

    /// The registered Node's uid.
    pub fn uid(&self) -> String {
        self.inner.uid.lock().map(|u| u.clone()).unwrap_or_default()
    }

    fn set_uid(&self, node: &Node) {
        if let (Ok(mut uid), Some(new)) = (self.inner.uid.lock(), node.uid()) {
            *uid = new;
        }
    }

    /// An event about this node, referenced as upstream's kubelet does (uid = node name).
    pub(crate) async fn event(&self, kind: EventType, reason: &str, message: &str) {
        let name = &self.config().node_name;
        let reference = ObjectReference {
            kind: Some("Node".into()),
            name: Some(name.clone()),
            uid: Some(name.clone()),
            ..ObjectReference::default()
        };
        self.inner
            .recorder
            .publish(reference, kind, reason, message)
            .await;
    }

    /// Creates the Node, or — it exists already (a restart, or registered before) — merges
    /// this kubelet's labels and annotations into it.
    async fn register(&self) -> Result<(), KubeletError> {
        let config = self.config();
        let name = config.node_name.clone();
        let mut labels = config.labels.clone();
        labels.extend(well_known_labels(config));
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels.clone()),
                annotations: Some(annotations(config)),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: (!config.taints.is_empty()).then(|| config.taints.clone()),
                ..NodeSpec::default()
            }),
            status: None,
        };
        let registered = match self.inner.api.create(&PostParams::default(), &node).await {
            Ok(created) => {
                tracing::info!(node = %name, "registered the node");
                created
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::info!(node = %name, "the node exists; taking it over");
                let patch = json!({"metadata": {
                    "labels": labels,
                    "annotations": annotations(config),
                }});
                self.inner
                    .api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(KubeletError::api(format!("updating Node {name}")))?
            }
            Err(e) => return Err(KubeletError::api(format!("registering Node {name}"))(e)),
        };
        self.set_uid(&registered);
        Ok(())
    }

    /// Measures the host and posts the Node's status; registers again if the Node was
    /// deleted meanwhile.
    async fn post_status(&self) -> Result<(), KubeletError> {
        let name = self.config().node_name.clone();
        let current = match self.inner.api.get_opt(&name).await {
            Ok(Some(node)) => node,
            Ok(None) => {
                tracing::warn!(node = %name, "the Node was deleted; registering it again");
                self.register().await?;
                self.inner
                    .api
                    .get(&name)
                    .await
                    .map_err(KubeletError::api(format!("reading Node {name}")))?
            }
            Err(e) => return Err(KubeletError::api(format!("reading Node {name}"))(e)),
        };
        self.set_uid(&current);
        let previous = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let status = self.measure(&previous);
        let changes = status.1;
        let patch = json!({"status": status.0});
        self.inner
            .api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map_err(KubeletError::api(format!(
                "updating the status of Node {name}"
            )))?;
        for (kind, status) in changes {
            if let Some((event_type, reason)) = transition_event(&kind, &status) {
                let message = format!("Node {name} status is now: {reason}");
                self.event(event_type, reason, &message).await;
            }
        }
        Ok(())
    }

    /// The status to post, and the condition changes since `previous`.
    fn measure(&self, previous: &[NodeCondition]) -> (NodeStatus, Vec<(String, String)>) {
        let config = self.config();
        let now = Time(Timestamp::now());
        let (capacity, allocatable) = host::resources(&config.agent_dir);
        let measured = [
            ("MemoryPressure", host::memory_pressure()),
            ("DiskPressure", host::disk_pressure(&config.agent_dir)),
            ("PIDPressure", false),
            // The agent runs: it is ready once it can post this.
            ("Ready", false),
        ];
        let (conditions, changes) = conditions(previous, &measured, &now);
        let status = NodeStatus {
            capacity: Some(capacity),
            allocatable: Some(allocatable),
            conditions: Some(conditions),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: config.node_ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: config.hostname.clone(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(config.kubelet_port),
                }),
            }),
            node_info: Some(host::system_info(&crate::api::version::git_version())),
            ..NodeStatus::default()
        };
        (status, changes)
    }

    /// Posts the status every `node_status_update_frequency`, forever.
    pub async fn run_status(self) {
        let mut tick = tokio::time::interval(self.config().node_status_update_frequency);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(error) = self.post_status().await {
                tracing::warn!(%error, "posting the node status failed; retrying");
            }
        }
    }

    /// Renews the node's Lease every `node_status_update_frequency`, forever.
    pub async fn run_lease(self) {
        let mut tick = tokio::time::interval(self.config().node_status_update_frequency);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let config = self.config();
            if let Err(error) = lease::renew(&config.client, &config.node_name, &self.uid()).await {
                tracing::warn!(%error, "renewing the node lease failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_keep_their_time_and_are_reported() {
        let then = Time("2020-01-01T00:00:00Z".parse().unwrap());
        let now = Time(Timestamp::now());
        let (first, changes) = conditions(&[], &[("Ready", false), ("DiskPressure", false)], &then);
        assert_eq!(changes.len(), 2);
        assert_eq!(first[0].reason.as_deref(), Some("KubeletReady"));
        assert_eq!(
            first[1].message.as_deref(),
            Some("kubelet has no disk pressure")
        );

        let (same, changes) = conditions(&first, &[("Ready", false), ("DiskPressure", true)], &now);
        assert_eq!(
            changes,
            vec![("DiskPressure".to_string(), "True".to_string())]
        );
        assert_eq!(same[0].last_transition_time, Some(then));
        assert_eq!(same[0].last_heartbeat_time, Some(now.clone()));
        assert_eq!(same[1].last_transition_time, Some(now));
        assert_eq!(same[1].reason.as_deref(), Some("KubeletHasDiskPressure"));
        assert_eq!(
            transition_event("Ready", "True"),
            Some((EventType::Normal, "NodeReady"))
        );
    }
}
