//! The ReplicaSet controller, which also serves ReplicationControllers (as upstream, where an
//! RC is handled as an older API version of a ReplicaSet): keeps `spec.replicas` active pods
//! matching the selector — creating them from the template in slow-start batches, deleting
//! the surplus in upstream's order ([`pods::sort_for_deletion`]) — adopts matching orphans,
//! releases owned pods that stopped matching, and records `status` (replicas,
//! fullyLabeledReplicas, readyReplicas, availableReplicas, observedGeneration and the
//! ReplicaFailure condition).
//!
//! Pods come from a watch cache shared by the sync and the triggers; [`Expectations`] keep a
//! sync from acting on a cache that has not yet seen its previous creations and deletions.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::expectations::Expectations;
use super::ownership::{self, controlled_by, controller_of, selects, Claimer};
use super::pods::{self, PodControl};
use super::ControllerError;

/// Upstream's `BurstReplicas`: at most this many creations or deletions per sync.
const BURST: usize = 500;

/// What the controller needs of a ReplicaSet or a ReplicationController.
trait Replicated:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The event source, as upstream's.
    const COMPONENT: &'static str;
    fn replicas(&self) -> i32;
    fn min_ready_seconds(&self) -> i32;
    fn selector(&self) -> LabelSelector;
    fn template(&self) -> PodTemplateSpec;
    fn replica_status(&self) -> ReplicaSetStatus;
    fn set_replica_status(&mut self, status: ReplicaSetStatus);
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn selector(&self) -> LabelSelector {
        self.spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default()
    }
    fn template(&self) -> PodTemplateSpec {
        self.spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default()
    }
    fn replica_status(&self) -> ReplicaSetStatus {
        self.status.clone().unwrap_or_default()
    }
    fn set_replica_status(&mut self, status: ReplicaSetStatus) {
        self.status = Some(status);
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: self.spec.as_ref().and_then(|s| s.selector.clone()),
            match_expressions: None,
        }
    }
    fn template(&self) -> PodTemplateSpec {
        self.spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default()
    }
    // The two status types have the same fields and JSON names.
    fn replica_status(&self) -> ReplicaSetStatus {
        self.status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }
    fn set_replica_status(&mut self, status: ReplicaSetStatus) {
        self.status = serde_json::to_value(status)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok());
    }
}

struct Context<K: Replicated> {
    client: Client,
    pods: Store<Pod>,
    sets: Store<K>,
    control: PodControl,
    expectations: Arc<Expectations>,
}

/// Runs the ReplicaSet controller. Never returns.
pub async fn run_replica_sets(client: Client) {
    run::<ReplicaSet>(client, "replicaset").await
}

/// Runs the ReplicationController controller. Never returns.
pub async fn run_replication_controllers(client: Client) {
    run::<ReplicationController>(client, "replicationcontroller").await
}

async fn run<K: Replicated>(client: Client, name: &'static str) {
    let (pods, writer) = reflector::store();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    let controller = Controller::new(Api::<K>::all(client.clone()), watcher::Config::default());
    let sets = controller.store();
    let expectations = Arc::new(Expectations::default());
    let mapper = {
        let sets = sets.clone();
        let expectations = expectations.clone();
        move |pod: Pod| owners_to_sync(&pod, &sets, &expectations)
    };
    let context = Context {
        control: PodControl::new(client.clone(), K::COMPONENT),
        client,
        pods,
        sets,
        expectations,
    };
    let results = controller
        .watches_stream(pod_events, mapper)
        .run(
            reconcile::<K>,
            super::retry_soon_on_conflict,
            Arc::new(context),
        )
        .boxed();
    super::drive(name, results).await;
}

/// The sets a pod change concerns: its controller if it has one (noting what the
/// controller expected), else every set of its namespace that selects it (to adopt it).
fn owners_to_sync<K: Replicated>(
    pod: &Pod,
    sets: &Store<K>,
    expectations: &Expectations,
) -> Vec<ObjectRef<K>> {
    let namespace = pod.namespace().unwrap_or_default();
    if let Some(owner) = controller_of(pod) {
        if owner.kind != K::kind(&()) {
            return Vec::new();
        }
        expectations.observe(
            &owner.uid,
            &pod.uid().unwrap_or_default(),
            pod.metadata.deletion_timestamp.is_some(),
        );
        return vec![ObjectRef::new(&owner.name).within(&namespace)];
    }
    sets.state()
        .iter()
        .filter(|set| set.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|set| selects(&set.selector(), pod))
        .map(|set| ObjectRef::from_obj(set.as_ref()))
        .collect()
}

async fn reconcile<K: Replicated>(
    set: Arc<K>,
    context: Arc<Context<K>>,
) -> Result<Action, ControllerError> {
    let namespace = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let selector = set.selector();
    let failed = |what: &str| format!("{what} of {} {namespace}/{name}", K::kind(&()));
    // Never act on a pod cache that has not been filled yet (upstream waits for its
    // informers to sync): an empty cache would mean creating every replica again.
    if context.pods.wait_until_ready().await.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }

    let in_cache = context.pods.state();
    let needs_sync = context.expectations.satisfied(&uid, |pod_uid| {
        in_cache
            .iter()
            .any(|p| p.uid().as_deref() == Some(pod_uid) && p.metadata.deletion_timestamp.is_none())
    });
    let active: Vec<Pod> = in_cache
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()) && pods::is_active(p))
        .map(|p| (**p).clone())
        .collect();
    let pod_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let set_api: Api<K> = Api::namespaced(context.client.clone(), &namespace);
    let can_adopt = || async {
        let fresh = set_api.get(&name).await?;
        Ok(fresh.uid().as_deref() == Some(uid.as_str())
            && fresh.meta().deletion_timestamp.is_none())
    };
    let claimed = Claimer::new(set.as_ref(), &selector)
        .claim(&pod_api, active, can_adopt)
        .await
        .map_err(ControllerError::new(failed("claiming the pods")))?;

    let manage_error = if needs_sync && set.meta().deletion_timestamp.is_none() {
        manage_replicas(set.as_ref(), &claimed, &context)
            .await
            .err()
    } else {
        None
    };
    let status = calculate_status(set.as_ref(), &claimed, manage_error.as_ref());
    let updated = update_status(&set_api, set.as_ref(), status)
        .await
        .map_err(ControllerError::new(failed("updating the status")))?;
    if let Some(error) = manage_error {
        return Err(ControllerError::new(failed("managing the replicas"))(error));
    }
    Ok(availability_check(&updated, &claimed))
}

/// When to look again so that pods count as available once `minReadySeconds` passed.
fn availability_check<K: Replicated>(set: &K, claimed: &[Pod]) -> Action {
    let min_ready = set.min_ready_seconds();
    if min_ready <= 0 {
        return Action::await_change();
    }
    let now = Timestamp::now();
    let next = claimed
        .iter()
        .filter(|p| pods::is_ready(p) && !pods::is_available(p, min_ready, now))
        .filter_map(|p| pods::ready_since(p).flatten())
        .map(|since| {
            let due = since.as_second() + i64::from(min_ready) + 1 - now.as_second();
            Duration::from_secs(due.clamp(1, i64::from(min_ready) + 1) as u64)
        })
        .min();
    match next {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    }
}

/// Creates or deletes pods so that `claimed` (the set's active pods) reaches
/// `spec.replicas`.
async fn manage_replicas<K: Replicated>(
    set: &K,
    claimed: &[Pod],
    context: &Context<K>,
) -> Result<(), kube::Error> {
    let uid = set.uid().unwrap_or_default();
    let wanted = set.replicas().max(0) as usize;
    let expectations = &context.expectations;
    if claimed.len() < wanted {
        let count = (wanted - claimed.len()).min(BURST);
        expectations.expect_creations(&uid, count, claimed.iter().filter_map(|p| p.uid()));
        let template = set.template();
        let reference = ownership::controller_ref(set);
        let (created, error) =
            pods::slow_start_batch(count, pods::SLOW_START_INITIAL_BATCH, || {
                context.control.create(set, &template, &reference)
            })
            .await;
        for _ in created..count {
            expectations.creation_failed(&uid);
        }
        return match error {
            Some(e) if ownership::message(&e).contains("because it is being terminated") => Ok(()),
            Some(e) => Err(e),
            None => Ok(()),
        };
    }
    if claimed.len() > wanted {
        let count = (claimed.len() - wanted).min(BURST);
        let mut candidates = claimed.to_vec();
        if count < candidates.len() {
            let related = related_pods(set, context);
            pods::sort_for_deletion(&mut candidates, &related, Timestamp::now());
        }
        candidates.truncate(count);
        expectations.expect_deletions(&uid, candidates.iter().filter_map(|p| p.uid()));
        let uid = &uid;
        let deletions = candidates.iter().map(|pod| async move {
            let result = context.control.delete(set, pod).await;
            if result.is_err() {
                expectations.deletion_failed(uid, &pod.uid().unwrap_or_default());
            }
            result
        });
        let results = futures::future::join_all(deletions).await;
        if let Some(error) = results
            .into_iter()
            .filter_map(Result::err)
            .find(|e| !ownership::gone(e))
        {
            return Err(error);
        }
    }
    Ok(())
}

/// The active pods of every set controlled by the same owner as `set` (a Deployment's
/// ReplicaSets): scaling down prefers pods on nodes crowded with them.
fn related_pods<K: Replicated>(set: &K, context: &Context<K>) -> Vec<Pod> {
    let Some(owner) = controller_of(set) else {
        return Vec::new();
    };
    let namespace = set.namespace();
    let siblings: Vec<LabelSelector> = context
        .sets
        .state()
        .iter()
        .filter(|s| s.namespace() == namespace && controlled_by(s.as_ref(), &owner.uid))
        .map(|s| s.selector())
        .collect();
    context
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace)
        .filter(|p| siblings.iter().any(|s| selects(s, p.as_ref())))
        .map(|p| (**p).clone())
        .collect()
}

/// The status upstream's `calculateStatus` computes from the set's active pods.
fn calculate_status<K: Replicated>(
    set: &K,
    claimed: &[Pod],
    manage_error: Option<&kube::Error>,
) -> ReplicaSetStatus {
    let mut status = set.replica_status();
    let template_labels = set
        .template()
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    let now = Timestamp::now();
    let min_ready = set.min_ready_seconds();
    let fully_labeled = claimed
        .iter()
        .filter(|p| {
            let labels = p.labels();
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .count();
    let ready = claimed.iter().filter(|p| pods::is_ready(p)).count();
    let available = claimed
        .iter()
        .filter(|p| pods::is_available(p, min_ready, now))
        .count();
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let failure = conditions.iter().position(|c| c.type_ == "ReplicaFailure");
    match (manage_error, failure) {
        (Some(error), None) => {
            let diff = claimed.len() as i64 - i64::from(set.replicas());
            let reason = match diff {
                d if d < 0 => "FailedCreate",
                d if d > 0 => "FailedDelete",
                _ => "",
            };
            conditions.push(ReplicaSetCondition {
                type_: "ReplicaFailure".to_string(),
                status: "True".to_string(),
                reason: Some(reason.to_string()),
                message: Some(ownership::message(error)),
                last_transition_time: Some(Time(now)),
            });
        }
        (None, Some(index)) => {
            conditions.remove(index);
        }
        _ => {}
    }
    if status.conditions.as_ref().is_some_and(Vec::is_empty) {
        status.conditions = None;
    }
    status.replicas = claimed.len() as i32;
    status.fully_labeled_replicas = Some(fully_labeled as i32);
    status.ready_replicas = Some(ready as i32);
    status.available_replicas = Some(available as i32);
    status
}

/// Writes `status` unless the set already shows it for its generation; one retry on a
/// conflict, as upstream.
async fn update_status<K: Replicated>(
    api: &Api<K>,
    set: &K,
    mut status: ReplicaSetStatus,
) -> Result<K, kube::Error> {
    let generation = set.meta().generation.unwrap_or(0);
    let current = set.replica_status();
    let same = |a: Option<i32>, b: Option<i32>| a.unwrap_or(0) == b.unwrap_or(0);
    if current.replicas == status.replicas
        && same(
            current.fully_labeled_replicas,
            status.fully_labeled_replicas,
        )
        && same(current.ready_replicas, status.ready_replicas)
        && same(current.available_replicas, status.available_replicas)
        && current.observed_generation == Some(generation)
        && current.conditions.clone().unwrap_or_default()
            == status.conditions.clone().unwrap_or_default()
    {
        return Ok(set.clone());
    }
    status.observed_generation = Some(generation);
    let mut object = set.clone();
    object.set_replica_status(status.clone());
    match api
        .replace_status(&set.name_any(), &PostParams::default(), &object)
        .await
    {
        Err(e) if ownership::conflict(&e) => {
            let mut fresh = api.get(&set.name_any()).await?;
            fresh.set_replica_status(status);
            api.replace_status(&set.name_any(), &PostParams::default(), &fresh)
                .await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn replica_set(replicas: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": "rs", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "a"}},
                "template": {"metadata": {"labels": {"app": "a", "tier": "t"}}}},
        }))
        .unwrap()
    }

    fn pod(labels: serde_json::Value, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": labels},
            "status": {"phase": "Running", "conditions": [{"type": "Ready",
                "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    #[test]
    fn status_counts_labels_readiness_and_records_the_failure() {
        let pods = [
            pod(json!({"app": "a", "tier": "t"}), true),
            pod(json!({"app": "a"}), false),
        ];
        let error = kube::Error::Api(Box::new(kube::core::Status::failure(
            "pods \"rs-x\" is forbidden: exceeded quota",
            "Forbidden",
        )));
        let status = calculate_status(&replica_set(3), &pods, Some(&error));
        assert_eq!(status.replicas, 2);
        assert_eq!(status.fully_labeled_replicas, Some(1));
        assert_eq!(status.ready_replicas, Some(1));
        assert_eq!(status.available_replicas, Some(1));
        let failure = &status.conditions.as_ref().unwrap()[0];
        assert_eq!(failure.type_, "ReplicaFailure");
        assert_eq!(failure.reason.as_deref(), Some("FailedCreate"));
        assert_eq!(
            failure.message.as_deref(),
            Some("pods \"rs-x\" is forbidden: exceeded quota")
        );

        let mut failed = replica_set(3);
        failed.status = Some(status);
        let recovered = calculate_status(&failed, &pods, None);
        assert_eq!(recovered.conditions, None);
    }
}
