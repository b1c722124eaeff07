//! The StatefulSet controller, as upstream's: pods with stable identities `<set>-<ordinal>`
//! ([`identity`]) and stable storage ([`claims`], made before the pod and kept when it
//! goes), created in ordinal order each waiting for its predecessors to be Running and
//! Ready (`OrderedReady`) or all at once (`Parallel`), removed from the highest ordinal
//! down. Template changes become ControllerRevisions ([`super::revisions`]); a
//! `RollingUpdate` replaces pods from the highest ordinal down to `partition`, one at a time,
//! each waiting for the previous to be available; `OnDelete` replaces a pod only once the
//! user deletes it. Status counts replicas per revision, as `kubectl rollout status` reads.

mod claims;
mod identity;

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::events::Recorder;
use super::ownership::claimed_pods;
use super::pods::{is_available, is_deleting, is_running_and_ready, phase};
use super::revisions::{self, HASH_LABEL};
use super::{merge_status, omit_zero, ControllerError};
use identity::{in_range, ordinal, revision_of, start_ordinal};

pub struct Context {
    client: Client,
    recorder: Recorder,
}

pub async fn run(client: Client) {
    let context = Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "statefulset-controller"),
    };
    let results = Controller::new(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client.clone()), watcher::Config::default())
    .owns(
        Api::<ControllerRevision>::all(client),
        watcher::Config::default(),
    )
    .run(reconcile, super::retry_later, Arc::new(context));
    super::drive("statefulset", results).await;
}

/// The revision pods are at, the one they are going to, and the name collisions met.
struct Revisions {
    current: ControllerRevision,
    update: ControllerRevision,
    collision_count: i32,
}

/// Pod counts for the status.
#[derive(Debug, Default, Clone, PartialEq)]
struct Counts {
    replicas: i32,
    ready: i32,
    available: i32,
    current: i32,
    updated: i32,
}

async fn reconcile(
    set: Arc<StatefulSet>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let Some(spec) = set.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let namespace = set.namespace().unwrap_or_default();
    let revision_api: Api<ControllerRevision> = Api::namespaced(context.client.clone(), &namespace);
    let pods = member_pods(&context, &set, spec).await?;
    let history = revisions::history(&revision_api, &*set, &spec.selector).await?;
    let revisions = set_revisions(&revision_api, &set, spec, &history).await?;

    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut counts = count(&pods, min_ready, &revisions);
    let synced = sync(&context, &set, spec, &pods, &revisions).await;
    if matches!(synced, Ok(true)) {
        counts.current -= 1;
    }
    let stored = store_status(&context, &set, spec, counts.clone(), &revisions).await;
    truncate_history(&revision_api, spec, &pods, &history, &revisions).await?;
    synced?;
    stored?;
    if min_ready > 0 && counts.ready != counts.available {
        return Ok(Action::requeue(Duration::from_secs(min_ready as u64)));
    }
    Ok(Action::await_change())
}

/// The set's pods: members by name that it controls or adopts.
async fn member_pods(
    context: &Context,
    set: &StatefulSet,
    spec: &StatefulSetSpec,
) -> Result<Vec<Pod>, ControllerError> {
    claimed_pods(&context.client, set, &spec.selector, |p| {
        identity::is_member(set, p)
    })
    .await
}

/// The current and update revisions (upstream's `getStatefulSetRevisions`): the update
/// revision records the set's template — the latest revision if it already does, an older
/// one renumbered if it does (a rollback), else a new one.
async fn set_revisions(
    api: &Api<ControllerRevision>,
    set: &StatefulSet,
    spec: &StatefulSetSpec,
    history: &[ControllerRevision],
) -> Result<Revisions, ControllerError> {
    let status = set.status.as_ref();
    let mut collision_count = status.and_then(|s| s.collision_count).unwrap_or(0);
    let data = revisions::template_patch(&spec.template);
    let number = revisions::next_number(history);
    let equal = history.iter().rfind(|r| revisions::records(r, &data));
    let update = match (equal, history.last()) {
        (Some(equal), Some(last)) if equal.name_any() == last.name_any() => last.clone(),
        (Some(equal), _) => revisions::renumber(api, equal, number).await?,
        (None, _) => {
            let labels = template_labels(&spec.template);
            let mut revision = revisions::new_revision(set, labels, data.clone(), number);
            // The set's annotations (kubernetes.io/change-cause) are what `kubectl rollout
            // history` shows of a revision.
            revision.metadata.annotations = set.metadata.annotations.clone();
            revisions::create(
                api,
                &set.name_any(),
                revision,
                HASH_LABEL,
                &mut collision_count,
                |c| revisions::data_hash(&data, c),
            )
            .await?
        }
    };
    let current_name = status.and_then(|s| s.current_revision.as_deref());
    let current = history
        .iter()
        .find(|r| Some(r.name_any().as_str()) == current_name)
        .cloned()
        .unwrap_or_else(|| update.clone());
    Ok(Revisions {
        current,
        update,
        collision_count,
    })
}

fn template_labels(template: &PodTemplateSpec) -> BTreeMap<String, String> {
    template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn count(pods: &[Pod], min_ready: i32, revisions: &Revisions) -> Counts {
    let now = Timestamp::now();
    let mut counts = Counts::default();
    for pod in pods {
        counts.replicas += 1;
        if is_running_and_ready(pod) {
            counts.ready += 1;
            if is_available(pod, min_ready, now) {
                counts.available += 1;
            }
        }
        if !is_deleting(pod) {
            let revision = revision_of(pod);
            if revision == revisions.current.name_any() {
                counts.current += 1;
            }
            if revision == revisions.update.name_any() {
                counts.updated += 1;
            }
        }
    }
    counts
}

/// Whether a pod is Running, Ready and has been for `minReadySeconds`.
fn healthy(pod: &Pod, min_ready: i32) -> bool {
    is_running_and_ready(pod) && is_available(pod, min_ready, Timestamp::now())
}

/// Creates, fixes and deletes pods towards the spec (upstream's `updateStatefulSet`).
/// Returns whether a pod was deleted to be updated.
async fn sync(
    context: &Context,
    set: &StatefulSet,
    spec: &StatefulSetSpec,
    pods: &[Pod],
    revisions: &Revisions,
) -> Result<bool, ControllerError> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let start = start_ordinal(set);
    let wanted = identity::replicas(set).max(0) as usize;
    let mut replicas: Vec<Option<&Pod>> = vec![None; wanted];
    let mut condemned: Vec<&Pod> = Vec::new();
    for pod in pods {
        match ordinal(pod) {
            Some(o) if in_range(set, o) => replicas[(o - start) as usize] = Some(pod),
            Some(_) => condemned.push(pod),
            None => {}
        }
    }
    condemned.sort_by_key(|p| Reverse(ordinal(p)));
    // The first pod not available, a missing one counting: the only unhealthy pod a
    // scale-down may remove in OrderedReady mode.
    let first_unhealthy = replicas
        .iter()
        .map(|p| p.filter(|p| healthy(p, min_ready)).is_none().then_some(*p))
        .chain(
            condemned
                .iter()
                .rev()
                .map(|p| (!healthy(p, min_ready)).then_some(Some(*p))),
        )
        .flatten()
        .next()
        .flatten()
        .map(|p| p.name_any());
    let monotonic = spec.pod_management_policy.as_deref() != Some("Parallel");

    for (index, pod) in replicas.iter().enumerate() {
        let ordinal = start + index as i32;
        let wait = process_replica(context, set, spec, revisions, monotonic, *pod, ordinal).await?;
        if wait && monotonic {
            return Ok(false);
        }
    }
    for pod in &condemned {
        if let Some(o) = ordinal(pod) {
            claims::match_retention_policy(context, set, pod, o).await?;
        }
    }
    for pod in &condemned {
        if is_deleting(pod) {
            if monotonic {
                return Ok(false);
            }
            continue;
        }
        let unhealthy = !healthy(pod, min_ready);
        if monotonic && unhealthy && first_unhealthy.as_deref() != Some(&pod.name_any()) {
            return Ok(false);
        }
        delete_pod(context, set, pod).await?;
        if monotonic {
            return Ok(false);
        }
    }

    let strategy = spec.update_strategy.as_ref();
    if strategy.and_then(|s| s.type_.as_deref()) == Some("OnDelete") {
        return Ok(false);
    }
    let partition = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0) as usize;
    let update_name = revisions.update.name_any();
    for target in (partition..wanted).rev() {
        // Created in this pass (Parallel): not available yet.
        let Some(pod) = replicas[target] else {
            return Ok(false);
        };
        if revision_of(pod) != update_name && !is_deleting(pod) {
            delete_pod(context, set, pod).await?;
            return Ok(true);
        }
        if !healthy(pod, min_ready) || is_deleting(pod) {
            return Ok(false);
        }
    }
    Ok(false)
}

/// Brings one wanted pod towards the spec; returns whether an ordered set must wait
/// (upstream's `processReplica`).
async fn process_replica(
    context: &Context,
    set: &StatefulSet,
    spec: &StatefulSetSpec,
    revisions: &Revisions,
    monotonic: bool,
    pod: Option<&Pod>,
    ordinal: i32,
) -> Result<bool, ControllerError> {
    let Some(pod) = pod else {
        let (template, revision) = versioned_template(set, spec, revisions, ordinal);
        let pod = identity::new_pod(set, &template, ordinal, &revision);
        create_pod(context, set, &pod, ordinal).await?;
        return Ok(true);
    };
    // Failed or Succeeded (evicted, or stopped on a node reboot): replaced once gone.
    if matches!(phase(pod), "Failed" | "Succeeded") {
        if !is_deleting(pod) {
            delete_pod(context, set, pod).await?;
        }
        return Ok(true);
    }
    if phase(pod) == "Pending" {
        claims::create_missing(context, set, &pod.name_any(), ordinal).await?;
    }
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    if monotonic && (is_deleting(pod) || !healthy(pod, min_ready)) {
        return Ok(true);
    }
    claims::match_retention_policy(context, set, pod, ordinal).await?;
    if !identity::identity_matches(set, pod) {
        fix_identity(context, set, pod, ordinal).await?;
    }
    Ok(false)
}

/// The template and revision a new pod of `ordinal` is made from: the current revision
/// below the partition, the update revision elsewhere.
fn versioned_template(
    set: &StatefulSet,
    spec: &StatefulSetSpec,
    revisions: &Revisions,
    ordinal: i32,
) -> (PodTemplateSpec, String) {
    let strategy = spec.update_strategy.as_ref();
    let rolling = strategy.is_none_or(|s| s.type_.as_deref().is_none_or(|t| t == "RollingUpdate"));
    let partition = strategy
        .and_then(|s| s.rolling_update.as_ref())
        .map(|r| r.partition.unwrap_or(0));
    let current_replicas = set
        .status
        .as_ref()
        .and_then(|s| s.current_replicas)
        .unwrap_or(0);
    let use_current = match partition {
        Some(partition) => ordinal < partition,
        None => rolling && ordinal < current_replicas,
    };
    let revision = if use_current {
        &revisions.current
    } else {
        &revisions.update
    };
    let template = revisions::template_of(revision).unwrap_or_else(|| spec.template.clone());
    (template, revision.name_any())
}

async fn create_pod(
    context: &Context,
    set: &StatefulSet,
    pod: &Pod,
    ordinal: i32,
) -> Result<(), ControllerError> {
    let name = pod.name_any();
    claims::create_missing(context, set, &name, ordinal).await?;
    let api: Api<Pod> =
        Api::namespaced(context.client.clone(), &set.namespace().unwrap_or_default());
    match api.create(&PostParams::default(), pod).await {
        Ok(_) => {
            record(context, set, "create", &name, None).await;
            Ok(())
        }
        // Made meanwhile: seen on the next pass.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => {
            record(context, set, "create", &name, Some(&e)).await;
            Err(ControllerError::new(format!("creating pod {name}"))(e))
        }
    }
}

async fn delete_pod(
    context: &Context,
    set: &StatefulSet,
    pod: &Pod,
) -> Result<(), ControllerError> {
    let name = pod.name_any();
    let api: Api<Pod> =
        Api::namespaced(context.client.clone(), &set.namespace().unwrap_or_default());
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {
            record(context, set, "delete", &name, None).await;
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => {
            record(context, set, "delete", &name, Some(&e)).await;
            Err(ControllerError::new(format!("deleting pod {name}"))(e))
        }
    }
}

/// Restores the identity labels of a member pod.
async fn fix_identity(
    context: &Context,
    set: &StatefulSet,
    pod: &Pod,
    ordinal: i32,
) -> Result<(), ControllerError> {
    let name = pod.name_any();
    let labels: BTreeMap<&str, String> = identity::identity_labels(&name, ordinal)
        .into_iter()
        .collect();
    let api: Api<Pod> =
        Api::namespaced(context.client.clone(), &set.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"labels": labels}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => {
            record(context, set, "update", &name, Some(&e)).await;
            Err(ControllerError::new(format!("updating pod {name}"))(e))
        }
    }
}

/// The event upstream's `recordPodEvent` writes.
async fn record(
    context: &Context,
    set: &StatefulSet,
    verb: &str,
    pod: &str,
    error: Option<&kube::Error>,
) {
    let set_name = set.name_any();
    let title = format!("{}{}", verb[..1].to_uppercase(), &verb[1..]);
    match error {
        None => {
            let message = format!("{verb} Pod {pod} in StatefulSet {set_name} successful");
            context
                .recorder
                .normal(set, &format!("Successful{title}"), &message)
                .await
        }
        Some(e) => {
            let message = format!("{verb} Pod {pod} in StatefulSet {set_name} failed error: {e}");
            context
                .recorder
                .warning(set, &format!("Failed{title}"), &message)
                .await
        }
    }
}

/// Writes the status when it changed; a rolling update whose pods are all updated and
/// ready completes here (the update revision becomes the current one).
async fn store_status(
    context: &Context,
    set: &StatefulSet,
    spec: &StatefulSetSpec,
    mut counts: Counts,
    revisions: &Revisions,
) -> Result<(), ControllerError> {
    let mut current_revision = revisions.current.name_any();
    let update_revision = revisions.update.name_any();
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    if rolling && counts.updated == counts.replicas && counts.ready == counts.replicas {
        counts.current = counts.updated;
        current_revision = update_revision.clone();
    }
    let generation = set.metadata.generation.unwrap_or(0);
    let old = set.status.clone().unwrap_or_default();
    let unchanged = old.observed_generation.unwrap_or(0) >= generation
        && old.replicas == counts.replicas
        && old.ready_replicas.unwrap_or(0) == counts.ready
        && old.available_replicas.unwrap_or(0) == counts.available
        && old.current_replicas.unwrap_or(0) == counts.current
        && old.updated_replicas.unwrap_or(0) == counts.updated
        && old.current_revision.as_deref().unwrap_or_default() == current_revision
        && old.update_revision.as_deref().unwrap_or_default() == update_revision
        && old.collision_count.unwrap_or(0) == revisions.collision_count;
    if unchanged {
        return Ok(());
    }
    let status = json!({
        "observedGeneration": generation,
        "replicas": counts.replicas,
        "readyReplicas": omit_zero(counts.ready),
        "currentReplicas": omit_zero(counts.current),
        "updatedReplicas": omit_zero(counts.updated),
        "availableReplicas": counts.available,
        "currentRevision": current_revision,
        "updateRevision": update_revision,
        "collisionCount": revisions.collision_count,
    });
    merge_status(&context.client, set, status).await
}

/// Deletes the oldest revisions no pod uses beyond `revisionHistoryLimit`.
async fn truncate_history(
    api: &Api<ControllerRevision>,
    spec: &StatefulSetSpec,
    pods: &[Pod],
    history: &[ControllerRevision],
    revisions: &Revisions,
) -> Result<(), ControllerError> {
    let mut live: HashSet<String> = pods.iter().map(|p| revision_of(p).to_string()).collect();
    live.insert(revisions.current.name_any());
    live.insert(revisions.update.name_any());
    let old: Vec<&ControllerRevision> = history
        .iter()
        .filter(|r| !live.contains(&r.name_any()))
        .collect();
    let limit = spec.revision_history_limit.unwrap_or(10);
    if limit < 0 || old.len() <= limit as usize {
        return Ok(());
    }
    revisions::delete(api, &old[..old.len() - limit as usize]).await
}
