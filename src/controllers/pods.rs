//! Pods as workload controllers see them (upstream's `controller_utils.go`): which count
//! (active, ready, available after `minReadySeconds`), which to delete first when scaling
//! down, and [`PodControl`], which creates pods from a template with the owner's controller
//! reference and deletes them, recording upstream's events on the owner
//! (`SuccessfulCreate` "Created pod: x", `SuccessfulDelete` "Deleted pod: x", and the
//! `FailedCreate` / `FailedDelete` warnings). [`slow_start_batch`] issues many creations the
//! way upstream does: 1, 2, 4, … at a time, stopping at the first failing batch.
//!
//! Shared by every controller that owns pods (ReplicaSet/ReplicationController, and the
//! StatefulSet, DaemonSet and Job controllers).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::future::Future;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Resource, ResourceExt};

use super::events::Recorder;
use super::ownership::{gone, message};

/// Upstream's first slow-start batch size.
pub const SLOW_START_INITIAL_BATCH: usize = 1;
/// Annotation that makes a pod cheaper (lower) or dearer to delete when scaling down.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Whether a pod still counts for its owner: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    let phase = phase(pod);
    phase != "Succeeded" && phase != "Failed" && pod.metadata.deletion_timestamp.is_none()
}

/// The pod's phase, "" when unknown.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Being deleted but not finished (upstream's `CountTerminatingPods`).
pub fn is_terminating(pod: &Pod) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && pod.metadata.deletion_timestamp.is_some()
}

/// Whether the pod has been deleted (finished or not) and waits to go away.
pub fn is_deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Whether the pod runs and is Ready (upstream's statefulset `isRunningAndReady`).
pub fn is_running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && is_ready(pod)
}

/// When the pod last became Ready, if it is Ready.
pub fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for more than `min_ready_seconds` at `now` (or Ready at all when it is 0).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since
            .checked_add(SignedDuration::from_secs(i64::from(min_ready_seconds)))
            .is_ok_and(|t| t < now),
    }
}

/// The pod a controller creates from `template`: the template's labels, annotations,
/// finalizers and spec, named `<owner>-<random>` by the API, controlled by `owner`.
pub fn from_template(template: &PodTemplateSpec, owner: &OwnerReference) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", owner.name)),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Creates and deletes an owner's pods, recording events on the owner.
pub struct PodControl {
    client: Client,
    recorder: Recorder,
}

impl PodControl {
    /// `component` is the controller's event source (`replicaset-controller`, ...).
    pub fn new(client: Client, component: &str) -> PodControl {
        PodControl {
            recorder: Recorder::new(client.clone(), component),
            client,
        }
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Creates a pod from `template` controlled by `owner` (whose reference is
    /// `controller_ref`).
    pub async fn create<K: Resource<DynamicType = ()>>(
        &self,
        owner: &K,
        template: &PodTemplateSpec,
        controller_ref: &OwnerReference,
    ) -> Result<Pod, kube::Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &owner.namespace().unwrap_or_default());
        create(
            &api,
            &self.recorder,
            owner,
            &from_template(template, controller_ref),
        )
        .await
    }

    /// Deletes `pod` of `owner`. A pod already gone is an error the caller may ignore
    /// ([`gone`]), without an event.
    pub async fn delete<K: Resource<DynamicType = ()>>(
        &self,
        owner: &K,
        pod: &Pod,
    ) -> Result<(), kube::Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        delete(&api, &self.recorder, owner, pod).await
    }
}

/// Creates `pod` (made by [`from_template`], perhaps adjusted) through `api` and records
/// upstream's `SuccessfulCreate` / `FailedCreate` on `owner`.
pub async fn create<K: Resource<DynamicType = ()>>(
    api: &Api<Pod>,
    recorder: &Recorder,
    owner: &K,
    pod: &Pod,
) -> Result<Pod, kube::Error> {
    match api.create(&PostParams::default(), pod).await {
        Ok(created) => {
            let text = format!("Created pod: {}", created.name_any());
            recorder.normal(owner, "SuccessfulCreate", &text).await;
            Ok(created)
        }
        Err(error) => {
            // Nothing can be created in a terminating namespace: not worth a warning.
            if !message(&error).contains("because it is being terminated") {
                let text = format!("Error creating: {}", message(&error));
                recorder.warning(owner, "FailedCreate", &text).await;
            }
            Err(error)
        }
    }
}

/// Deletes `pod` (gracefully) through `api` and records upstream's `SuccessfulDelete` /
/// `FailedDelete` on `owner`. A pod already gone is an error the caller may ignore
/// ([`gone`]), without an event.
pub async fn delete<K: Resource<DynamicType = ()>>(
    api: &Api<Pod>,
    recorder: &Recorder,
    owner: &K,
    pod: &Pod,
) -> Result<(), kube::Error> {
    match api.delete(&pod.name_any(), &DeleteParams::default()).await {
        Ok(_) => {
            let text = format!("Deleted pod: {}", pod.name_any());
            recorder.normal(owner, "SuccessfulDelete", &text).await;
            Ok(())
        }
        Err(error) if gone(&error) => Err(error),
        Err(error) => {
            let text = format!("Error deleting: {}", message(&error));
            recorder.warning(owner, "FailedDelete", &text).await;
            Err(error)
        }
    }
}

/// Calls `call` `count` times, in batches of `initial`, then twice as many each time a whole
/// batch succeeded; stops after the first batch with a failure. Returns how many calls
/// succeeded and the first error.
pub async fn slow_start_batch<F, Fut, T>(
    count: usize,
    initial: usize,
    call: F,
) -> (usize, Option<kube::Error>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut remaining = count;
    let mut successes = 0;
    let mut batch = remaining.min(initial);
    while batch > 0 {
        let results = futures::future::join_all((0..batch).map(|_| call())).await;
        let mut first_error = None;
        for result in results {
            match result {
                Ok(_) => successes += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if first_error.is_some() {
            return (successes, first_error);
        }
        remaining -= batch;
        batch = (2 * batch).min(remaining);
    }
    (successes, None)
}

/// Orders `pods` so that the ones to delete first come first, as upstream's
/// `ActivePodsWithRanks`: unscheduled before scheduled; Pending before Unknown before
/// Running; not ready before ready; lower `pod-deletion-cost` first; pods on nodes crowded
/// with `related` pods first; ready for less time before more (on a log2 scale); more
/// container restarts first; newer before older (log2 scale); then by uid.
pub fn sort_for_deletion(pods: &mut [Pod], related: &[Pod], now: Timestamp) {
    let mut on_node: HashMap<String, usize> = HashMap::new();
    for pod in related.iter().filter(|p| is_active(p)) {
        *on_node.entry(node_of(pod).to_string()).or_default() += 1;
    }
    pods.sort_by(|a, b| {
        let rank = |p: &Pod| on_node.get(node_of(p)).copied().unwrap_or(0);
        deletion_order(a, b, rank(a), rank(b), now)
    });
}

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

fn deletion_order(a: &Pod, b: &Pod, rank_a: usize, rank_b: usize, now: Timestamp) -> Ordering {
    let phase_ordinal = |p: &Pod| match phase(p) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    };
    let cost = |p: &Pod| -> i32 {
        p.annotations()
            .get(DELETION_COST)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (node_a, node_b) = (node_of(a), node_of(b));
    if node_a != node_b && (node_a.is_empty() || node_b.is_empty()) {
        return if node_a.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    phase_ordinal(a)
        .cmp(&phase_ordinal(b))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(|| cost(a).cmp(&cost(b)))
        .then_with(|| rank_b.cmp(&rank_a))
        .then_with(|| {
            if !(is_ready(a) && is_ready(b)) {
                return Ordering::Equal;
            }
            let since = |p: &Pod| ready_since(p).flatten();
            newer_first(since(a), since(b), now, a, b)
        })
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            newer_first(created(a), created(b), now, a, b)
        })
}

/// Later (or unknown) times first, comparing log2 of their age so that pods of about the
/// same age are told apart by uid, not by milliseconds.
fn newer_first(
    a: Option<Timestamp>,
    b: Option<Timestamp>,
    now: Timestamp,
    pod_a: &Pod,
    pod_b: &Pod,
) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (Some(ta), Some(tb)) = (a, b) else {
        // Unknown time first.
        return if a.is_none() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    };
    let log_age = |t: Timestamp| -> i64 {
        let nanos = now.as_nanosecond() - t.as_nanosecond();
        if nanos <= 0 {
            -1
        } else {
            (nanos as f64).log2() as i64
        }
    };
    match log_age(ta).cmp(&log_age(tb)) {
        Ordering::Equal => pod_a.uid().cmp(&pod_b.uid()),
        other => other,
    }
}

fn restarts(pod: &Pod) -> (i32, i32) {
    let status = pod.status.as_ref();
    let regular = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    let sidecars: Vec<&str> = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let sidecar = status
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| sidecars.contains(&c.name.as_str()))
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    (regular, sidecar)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_in(phase: &str, ready: &str, since: &str) -> Pod {
        serde_json::from_value(json!({"status": {"phase": phase, "conditions": [
            {"type": "Ready", "status": ready, "lastTransitionTime": since}]}}))
        .unwrap()
    }

    #[test]
    fn readiness_and_availability() {
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let p = pod_in("Running", "True", "2026-01-01T00:00:00Z");
        assert!(is_running_and_ready(&p));
        assert!(is_available(&p, 0, now));
        assert!(!is_available(&p, 11, now));
        let p = pod_in("Running", "False", "2026-01-01T00:00:00Z");
        assert!(!is_ready(&p) && !is_available(&p, 0, now));
        assert!(!is_running_and_ready(&pod_in(
            "Pending",
            "True",
            "2026-01-01T00:00:00Z"
        )));
    }

    fn pod(name: &str, node: &str, phase: &str, ready: bool, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": name, "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase, "conditions": [{"type": "Ready",
                "status": if ready {"True"} else {"False"},
                "lastTransitionTime": created}]},
        }))
        .unwrap()
    }

    #[test]
    fn deletion_order_prefers_unscheduled_pending_unready_and_newer_pods() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let mut pods = vec![
            pod("old-ready", "n1", "Running", true, "2026-01-01T08:00:00Z"),
            pod("new-ready", "n1", "Running", true, "2026-01-01T11:59:00Z"),
            pod("unready", "n1", "Running", false, "2026-01-01T08:00:00Z"),
            pod("pending", "n1", "Pending", false, "2026-01-01T08:00:00Z"),
            pod("unscheduled", "", "Pending", false, "2026-01-01T08:00:00Z"),
        ];
        sort_for_deletion(&mut pods, &[], now);
        let names: Vec<_> = pods.iter().map(|p| p.name_any()).collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending",
                "unready",
                "new-ready",
                "old-ready"
            ]
        );
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let now: Timestamp = "2026-01-01T12:00:10Z".parse().unwrap();
        let p = pod("p", "n1", "Running", true, "2026-01-01T12:00:00Z");
        assert!(is_available(&p, 0, now));
        assert!(is_available(&p, 9, now));
        assert!(!is_available(&p, 10, now));
    }

    #[tokio::test]
    async fn slow_start_doubles_batches_and_stops_at_a_failure() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let (ok, err) = slow_start_batch(10, 1, || async {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n >= 4 {
                Err(kube::Error::LinesCodecMaxLineLengthExceeded)
            } else {
                Ok(())
            }
        })
        .await;
        // Batches 1, 2, then 4 of which only the first succeeds.
        assert_eq!(ok, 4);
        assert!(err.is_some());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 7);
    }
}
