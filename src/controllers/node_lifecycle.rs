//! The node lifecycle controller, as upstream's (monitorNodeHealth, TaintNodesByCondition)
//! together with its taint eviction controller:
//! - a node whose kubelet stopped renewing its Lease in `kube-node-lease` (and posting its
//!   Ready heartbeat) for longer than `--node-monitor-grace-period` gets all its conditions
//!   set to Unknown ("Kubelet stopped posting node status."), and its pods Ready=False;
//! - nodes get the taints their conditions call for: `node.kubernetes.io/unreachable` and
//!   `not-ready` (NoExecute and NoSchedule), the pressure taints, and `unschedulable` for a
//!   cordoned node; they are removed when the condition clears;
//! - pods on a node with NoExecute taints they do not tolerate are deleted at once; those
//!   that tolerate them for `tolerationSeconds` are deleted when that time has passed since
//!   the taint was added.
//!
//! Health is judged by when this controller saw a heartbeat change (upstream's probe
//! timestamp), not by the heartbeat's own clock, so that clock skew does not matter.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::events::Recorder;
use crate::scheduler::selector::tolerates;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Condition → (status that taints, taint key), NoSchedule (upstream's
/// nodeConditionToTaintKeyStatusMap besides Ready).
const CONDITION_TAINTS: &[(&str, &str, &str)] = &[
    (
        "MemoryPressure",
        "True",
        "node.kubernetes.io/memory-pressure",
    ),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "True",
        "node.kubernetes.io/network-unavailable",
    ),
];
/// The conditions a kubelet posts that go Unknown with it (upstream's list).
const KUBELET_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// What was last seen of one node's heartbeats, and when it changed.
struct Seen {
    heartbeat: Option<Timestamp>,
    renewed: Option<Timestamp>,
    probed: Instant,
    /// The Ready status at the last pass, to notice a node going not ready.
    ready: String,
}

struct Monitor {
    client: Client,
    grace: Duration,
    nodes: Recorder,
    evictions: Recorder,
    seen: HashMap<String, Seen>,
}

/// Runs the controller; `grace` is `--node-monitor-grace-period`.
pub async fn run(client: Client, grace: Duration) {
    // Upstream checks every 5 s (--node-monitor-period); a short grace is checked oftener.
    let period = (grace / 5).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut monitor = Monitor {
        nodes: Recorder::new(client.clone(), "node-controller"),
        evictions: Recorder::new(client.clone(), "taint-eviction-controller"),
        client,
        grace,
        seen: HashMap::new(),
    };
    loop {
        if let Err(error) = monitor.pass().await {
            tracing::warn!(%error, "node lifecycle pass failed; retrying");
        }
        tokio::time::sleep(period).await;
    }
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    conditions(node).iter().find(|c| c.type_ == "Ready")
}

fn conditions(node: &Node) -> &[NodeCondition] {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
}

fn taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

/// The taints of `node` with this controller's taints as its conditions call for; existing
/// ones are kept as they are (their timeAdded with them).
fn desired_taints(node: &Node, now: &Time) -> Vec<Taint> {
    let status_of = |kind: &str| {
        conditions(node)
            .iter()
            .find(|c| c.type_ == kind)
            .map(|c| c.status.as_str())
    };
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    match status_of("Ready") {
        Some("False") => wanted.extend([(NOT_READY, "NoExecute"), (NOT_READY, "NoSchedule")]),
        Some("Unknown") => wanted.extend([(UNREACHABLE, "NoExecute"), (UNREACHABLE, "NoSchedule")]),
        _ => {}
    }
    for (condition, status, key) in CONDITION_TAINTS {
        if status_of(condition) == Some(status) {
            wanted.push((key, "NoSchedule"));
        }
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        wanted.push((UNSCHEDULABLE, "NoSchedule"));
    }
    let ours = |t: &Taint| {
        [NOT_READY, UNREACHABLE, UNSCHEDULABLE].contains(&t.key.as_str())
            || CONDITION_TAINTS.iter().any(|(_, _, key)| *key == t.key)
    };
    let current = taints(node);
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| !ours(t) || wanted.contains(&(t.key.as_str(), t.effect.as_str())))
        .cloned()
        .collect();
    for (key, effect) in wanted {
        if !out.iter().any(|t| t.key == key && t.effect == effect) {
            out.push(Taint {
                key: key.to_string(),
                effect: effect.to_string(),
                // Upstream stamps the NoExecute ones: evictions count from it.
                time_added: (effect == "NoExecute").then(|| now.clone()),
                value: None,
            });
        }
    }
    out
}

/// When a pod on a node with `taints` is to be evicted: `Some(now-or-past)` at once for an
/// untolerated NoExecute taint, `Some(t)` when its shortest tolerationSeconds runs out, `None`
/// when it tolerates them forever (or there are none).
fn eviction_time(pod: &Pod, taints: &[Taint]) -> Option<Timestamp> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut earliest: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let added = taint
            .time_added
            .as_ref()
            .map_or_else(Timestamp::now, |t| t.0);
        let matching: Vec<_> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Timestamp::UNIX_EPOCH);
        }
        // Tolerated forever by any toleration without a limit.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let seconds = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let at = added
            .checked_add(SignedDuration::from_secs(seconds))
            .unwrap_or(added);
        earliest = Some(earliest.map_or(at, |e| e.min(at)));
    }
    earliest
}

impl Monitor {
    async fn pass(&mut self) -> Result<(), kube::Error> {
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await?;
        let leases = Api::<Lease>::namespaced(self.client.clone(), "kube-node-lease")
            .list(&ListParams::default())
            .await?;
        let renewals: HashMap<String, Timestamp> = leases
            .items
            .iter()
            .filter_map(|l| {
                let renewed = l.spec.as_ref()?.renew_time.as_ref()?.0;
                Some((l.name_any(), renewed))
            })
            .collect();
        self.seen
            .retain(|name, _| nodes.items.iter().any(|n| n.name_any() == *name));
        for node in nodes.items {
            let name = node.name_any();
            let node = self
                .check_health(node, renewals.get(&name).copied())
                .await?;
            self.taint(&node).await?;
            self.evict(&node).await?;
        }
        Ok(())
    }

    /// Marks the node's conditions Unknown when its heartbeats stopped for longer than the
    /// grace period; returns the node as it is now.
    async fn check_health(
        &mut self,
        node: Node,
        renewed: Option<Timestamp>,
    ) -> Result<Node, kube::Error> {
        let name = node.name_any();
        let heartbeat = ready_condition(&node)
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0);
        let now = Instant::now();
        let seen = self.seen.entry(name.clone()).or_insert_with(|| Seen {
            heartbeat,
            renewed,
            probed: now,
            ready: "True".to_string(),
        });
        if seen.heartbeat != heartbeat || seen.renewed != renewed {
            seen.heartbeat = heartbeat;
            seen.renewed = renewed;
            seen.probed = now;
        }
        let stale = now.duration_since(seen.probed) > self.grace;
        let ready_before = std::mem::take(&mut seen.ready);
        let mut node = node;
        let status = ready_condition(&node).map(|c| c.status.clone());
        if stale && status.as_deref() != Some("Unknown") {
            node = self.mark_unknown(&node).await?;
        }
        let ready_now = ready_condition(&node)
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "Unknown".to_string());
        if ready_before == "True" && ready_now != "True" {
            self.nodes
                .normal(
                    &node,
                    "NodeNotReady",
                    &format!("Node {name} status is now: NodeNotReady"),
                )
                .await;
            self.mark_pods_not_ready(&name).await?;
        }
        if let Some(seen) = self.seen.get_mut(&name) {
            seen.ready = ready_now;
        }
        Ok(node)
    }

    async fn mark_unknown(&self, node: &Node) -> Result<Node, kube::Error> {
        let name = node.name_any();
        let now = Time(Timestamp::now());
        let mut updated: Vec<NodeCondition> = Vec::new();
        for kind in KUBELET_CONDITIONS {
            let current = conditions(node).iter().find(|c| c.type_ == *kind);
            let condition = match current {
                Some(c) if c.status == "Unknown" => continue,
                Some(c) => NodeCondition {
                    status: "Unknown".into(),
                    reason: Some("NodeStatusUnknown".into()),
                    message: Some("Kubelet stopped posting node status.".into()),
                    last_transition_time: Some(now.clone()),
                    ..c.clone()
                },
                None => NodeCondition {
                    type_: kind.to_string(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                    last_transition_time: Some(now.clone()),
                },
            };
            updated.push(condition);
        }
        tracing::info!(node = %name, "node stopped posting its status; marking it unknown");
        Api::<Node>::all(self.client.clone())
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": {"conditions": updated}})),
            )
            .await
    }

    /// Upstream's MarkPodsNotReady: the pods of a node that is not ready are not either.
    async fn mark_pods_not_ready(&self, node: &str) -> Result<(), kube::Error> {
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await?;
        let now = Time(Timestamp::now());
        for pod in pods.items {
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
            if ready.is_none_or(|c| c.status == "False") {
                continue;
            }
            let patch = json!({"status": {"conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": now},
            ]}});
            let api =
                Api::<Pod>::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            match api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                )
                .await
            {
                Ok(_) => {
                    self.nodes
                        .warning(&pod, "NodeNotReady", "Node is not ready")
                        .await
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn taint(&self, node: &Node) -> Result<(), kube::Error> {
        let wanted = desired_taints(node, &Time(Timestamp::now()));
        if wanted == taints(node) {
            return Ok(());
        }
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": if wanted.is_empty() { serde_json::Value::Null } else { json!(wanted) }},
        });
        match Api::<Node>::all(self.client.clone())
            .patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Changed meanwhile: the next pass sees it anew.
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes the node's pods whose tolerance of its NoExecute taints ran out.
    async fn evict(&self, node: &Node) -> Result<(), kube::Error> {
        let taints = taints(node);
        if !taints.iter().any(|t| t.effect == "NoExecute") {
            return Ok(());
        }
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", node.name_any())))
            .await?;
        let now = Timestamp::now();
        for pod in pods.items {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if eviction_time(&pod, &taints).is_none_or(|at| at > now) {
                continue;
            }
            let namespace = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            self.evictions
                .normal(
                    &pod,
                    "TaintManagerEviction",
                    &format!("Marking for deletion Pod {namespace}/{name}"),
                )
                .await;
            // Upstream's addConditionAndDeletePod: say why before deleting.
            let api = Api::<Pod>::namespaced(self.client.clone(), &namespace);
            let condition = json!({"status": {"conditions": [{
                "type": "DisruptionTarget", "status": "True",
                "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint",
                "lastTransitionTime": Time(now),
            }]}});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(condition))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => continue,
                Err(e) => return Err(e),
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: pod.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {
                    tracing::info!(pod = %format!("{namespace}/{name}"), node = %node.name_any(), "evicted a pod that does not tolerate its node's taints")
                }
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, unschedulable: bool, taints: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"unschedulable": unschedulable, "taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready}]},
        }))
        .unwrap()
    }
    use serde_json::Value;

    fn keys(taints: &[Taint]) -> Vec<String> {
        taints
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect()
    }

    #[test]
    fn conditions_and_cordons_become_taints_and_others_are_kept() {
        let now = Time(Timestamp::now());
        let own = json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]);
        assert_eq!(
            keys(&desired_taints(&node("Unknown", true, own.clone()), &now)),
            [
                "dedicated:NoSchedule",
                "node.kubernetes.io/unreachable:NoExecute",
                "node.kubernetes.io/unreachable:NoSchedule",
                "node.kubernetes.io/unschedulable:NoSchedule"
            ]
        );
        assert_eq!(
            keys(&desired_taints(&node("False", false, json!([])), &now)),
            [
                "node.kubernetes.io/not-ready:NoExecute",
                "node.kubernetes.io/not-ready:NoSchedule"
            ]
        );
        let tainted = json!([{"key": UNREACHABLE, "effect": "NoExecute"}, own[0]]);
        assert_eq!(
            keys(&desired_taints(&node("True", false, tainted), &now)),
            ["dedicated:NoSchedule"]
        );
    }

    #[test]
    fn pods_go_at_once_after_their_toleration_or_never() {
        let added = Timestamp::now();
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(added)),
            value: None,
        };
        let pod = |tolerations: Value| -> Pod {
            serde_json::from_value(json!({"spec": {"containers": [], "tolerations": tolerations}}))
                .unwrap()
        };
        assert_eq!(
            eviction_time(&pod(json!([])), std::slice::from_ref(&taint)),
            Some(Timestamp::UNIX_EPOCH)
        );
        let limited = pod(json!([{"key": UNREACHABLE, "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 3}]));
        assert_eq!(
            eviction_time(&limited, std::slice::from_ref(&taint)),
            Some(added + SignedDuration::from_secs(3))
        );
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_time(&forever, &[taint]), None);
    }
}
