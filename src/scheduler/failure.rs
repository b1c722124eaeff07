//! What follows a decision that placed nothing, as upstream's PostFilter and
//! `handleSchedulingFailure`: evict the preemption victims (a `DisruptionTarget`
//! condition, a graceful delete and a `Preempted` event on each), take the nomination away
//! from less important pods nominated to the same node, then tell the user — a
//! `FailedScheduling` event and the `PodScheduled=False` condition with the same text,
//! and `status.nominatedNodeName`.
//!
//! Runs in the background: every write is best effort, logged when it fails, and the pod
//! is tried again anyway.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};

use super::queue::key;
use super::run::SCHEDULER_NAME;
use super::{Preemption, Unschedulable};
use crate::controllers::events::{reference, EventType, Recorder};

/// What the loop decided about a pod no node takes now.
pub struct Failure {
    /// The pod as last seen (before any nomination of this decision).
    pub pod: Pod,
    pub why: Unschedulable,
    /// Less important pods that lose their nomination to this pod's node.
    pub denominated: Vec<Pod>,
}

pub async fn report(client: Client, recorder: Arc<Recorder>, failure: Failure) {
    let Failure {
        pod,
        why,
        denominated,
    } = failure;
    let message = why.to_string();
    let nominate = match &why.preemption {
        Preemption::Nominated(victims) => {
            for victim in &victims.pods {
                evict(&client, &recorder, &pod, victim, &victims.node).await;
            }
            for other in &denominated {
                set_nominated_node(&client, other, None).await;
            }
            Some(Some(victims.node.as_str()))
        }
        Preemption::Failed(_) => Some(None),
        Preemption::NotEligible(_) => None,
    };
    recorder
        .warning(&pod, "FailedScheduling", &truncate(&message))
        .await;
    update_status(&client, &pod, &message, nominate).await;
}

/// Upstream's `truncateMessage`: event notes are limited to 1024 bytes.
fn truncate(message: &str) -> String {
    const MAX: usize = 1024;
    if message.len() <= MAX {
        return message.to_string();
    }
    let mut end = MAX - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

fn pods(client: &Client, pod: &Pod) -> Api<Pod> {
    Api::namespaced(client.clone(), &key(pod).0)
}

fn nominated_node(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Writes `PodScheduled=False` and, when `nominate` says so, `nominatedNodeName` — only
/// when something changed, as upstream's `updatePod`.
async fn update_status(client: &Client, pod: &Pod, message: &str, nominate: Option<Option<&str>>) {
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    let same_condition = current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message)
    });
    let same_nomination = nominate.is_none_or(|n| n == nominated_node(pod));
    if same_condition && same_nomination {
        return;
    }
    let now = Time(Timestamp::now());
    let transition = match current {
        Some(c) if c.status == "False" => c.last_transition_time.clone().unwrap_or(now),
        _ => now,
    };
    let mut status = json!({"conditions": [{
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": null,
        "lastTransitionTime": transition,
    }]});
    if let Some(node) = nominate {
        status["nominatedNodeName"] = node.map_or(Value::Null, |n| json!(n));
    }
    let result = pods(client, pod)
        .patch_status(
            &key(pod).1,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": status})),
        )
        .await;
    if let Err(error) = result {
        tracing::debug!(pod = ?key(pod), %error, "recording why a pod is unschedulable failed");
    }
}

async fn set_nominated_node(client: &Client, pod: &Pod, node: Option<&str>) {
    let result = pods(client, pod)
        .patch_status(
            &key(pod).1,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nominatedNodeName": node}})),
        )
        .await;
    if let Err(error) = result {
        tracing::debug!(pod = ?key(pod), %error, "clearing a nomination failed");
    }
}

/// Evicts one victim of `preemptor` on `node`, as upstream's `PrepareCandidate`.
async fn evict(client: &Client, recorder: &Recorder, preemptor: &Pod, victim: &Pod, node: &str) {
    let api = pods(client, victim);
    let name = key(victim).1;
    let condition = json!({"status": {"conditions": [{
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "PreemptionByScheduler",
        "message": format!("{SCHEDULER_NAME}: preempting to accommodate a higher priority pod"),
        "lastTransitionTime": Time(Timestamp::now()),
    }]}});
    if let Err(error) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(condition))
        .await
    {
        tracing::debug!(pod = ?key(victim), %error, "marking a preemption victim failed");
    }
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => {
            tracing::warn!(pod = ?key(victim), %error, "deleting a preemption victim failed");
            return;
        }
    }
    let uid = preemptor.metadata.uid.as_deref().unwrap_or_default();
    recorder
        .publish(
            reference(victim),
            EventType::Normal,
            "Preempted",
            &format!("Preempted by pod {uid} on node {node}"),
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_like_upstream() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(600);
        let cut = truncate(&long);
        assert!(cut.len() <= 1024 && cut.ends_with("..."));
    }
}
