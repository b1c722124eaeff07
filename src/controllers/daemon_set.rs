//! The DaemonSet controller, as upstream's: one pod on every node the DaemonSet's pods
//! belong on ([`placement`]), made when a node appears or starts to qualify, removed when it
//! stops; template changes recorded as ControllerRevisions ([`super::revisions`]) and rolled
//! out per `updateStrategy` ([`plan`]): `RollingUpdate` within `maxUnavailable` /
//! `maxSurge`, or `OnDelete`. Status counts what `kubectl rollout status ds/x` reads.
//!
//! Pods are created unbound, pinned to their node by node affinity; the scheduler binds
//! them.

pub(super) mod placement;
mod plan;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::events::Recorder;
use super::ownership::{claimed_pods, controller_ref};
use super::pods::{from_template, is_available, is_deleting, is_ready, phase};
use super::revisions::{self, POD_REVISION_LABEL};
use super::{merge_status, omit_zero, ControllerError};
use placement::{
    is_updated, pin_to_node, pod_template, should_run, target_node, template_generation,
};
use plan::{by_age, manage, rolling_update, Budget, Placement, Plan};

struct Context {
    client: Client,
    recorder: Recorder,
}

pub async fn run(client: Client) {
    let context = Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "daemonset-controller"),
    };
    let results = Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client.clone()), watcher::Config::default())
    .owns(
        Api::<ControllerRevision>::all(client.clone()),
        watcher::Config::default(),
    )
    .reconcile_all_on(node_changes(client))
    .run(reconcile, super::retry_later, Arc::new(context));
    super::drive("daemonset", results).await;
}

/// A tick whenever a node appears, goes, or changes in what placement looks at (labels,
/// taints, schedulability, conditions) — not on every heartbeat.
fn node_changes(client: Client) -> impl Stream<Item = ()> + Send {
    super::changes(
        watcher(Api::<Node>::all(client), watcher::Config::default()),
        placement_fingerprint,
    )
}

fn placement_fingerprint(node: &Node) -> u64 {
    let conditions: Vec<(&str, &str)> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    let spec = serde_json::to_string(&node.spec).unwrap_or_default();
    super::hash((&node.metadata.labels, spec, conditions))
}

async fn reconcile(ds: Arc<DaemonSet>, context: Arc<Context>) -> Result<Action, ControllerError> {
    let Some(spec) = ds.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    if spec
        .selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.is_empty())
        && spec
            .selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty())
    {
        let message = "This daemon set is selecting all pods. A non-empty selector is required.";
        context
            .recorder
            .warning(&*ds, "SelectingAll", message)
            .await;
        return Ok(Action::await_change());
    }
    // Its pods and revisions may be going too: nothing reliable to count.
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = ds.namespace().unwrap_or_default();
    let revision_api: Api<ControllerRevision> = Api::namespaced(context.client.clone(), &namespace);
    let nodes = Api::<Node>::all(context.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(ControllerError::new("listing nodes"))?
        .items;
    let pods = daemon_pods(&context, &ds, spec).await?;
    let (hash, old) = construct_history(&context, &revision_api, &ds, spec).await?;

    let generation = template_generation(&ds);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = Timestamp::now();
    let updated = |p: &Pod| is_updated(p, &hash, generation.as_deref());
    let available = |p: &Pod| is_available(p, min_ready, now);
    let placement = Placement {
        nodes: nodes
            .iter()
            .map(|n| (n.name_any(), should_run(&ds, n)))
            .collect(),
        pods: by_node(&pods),
    };
    let surge = budget(spec, 0).max_surge > 0;
    let mut plan = manage(&placement, surge, updated, available);
    let mut acted = !(plan.create_on.is_empty() && plan.delete.is_empty());
    // Like upstream's expectations: a rolling update step waits for the last pass's
    // creations and deletions to show.
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    if !acted && rolling {
        let desired = placement.nodes.values().filter(|(run, _)| *run).count();
        plan = rolling_update(&placement, &budget(spec, desired), updated, available);
        acted = !(plan.create_on.is_empty() && plan.delete.is_empty());
    }
    let synced = sync_nodes(&context, &ds, &plan, &hash).await;
    let stored = store_status(
        &context,
        &ds,
        &placement,
        &hash,
        generation.as_deref(),
        min_ready,
    )
    .await;
    cleanup_history(&revision_api, spec, &pods, old).await?;
    synced?;
    stored?;
    if acted {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    if min_ready > 0 {
        return Ok(Action::requeue(Duration::from_secs(min_ready as u64)));
    }
    Ok(Action::await_change())
}

/// The DaemonSet's pods: those it controls or adopts.
async fn daemon_pods(
    context: &Context,
    ds: &DaemonSet,
    spec: &DaemonSetSpec,
) -> Result<Vec<Pod>, ControllerError> {
    claimed_pods(&context.client, ds, &spec.selector, |_| true).await
}

/// Pods by the node they are for; finished pods already being deleted are done with.
fn by_node(pods: &[Pod]) -> BTreeMap<String, Vec<&Pod>> {
    let mut out: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in pods {
        if is_deleting(pod) && matches!(phase(pod), "Failed" | "Succeeded") {
            continue;
        }
        if let Some(node) = target_node(pod) {
            out.entry(node).or_default().push(pod);
        }
    }
    out
}

/// `maxSurge` and `maxUnavailable` for `desired` pods (percentages rounded up); when both
/// come to 0, one pod may be unavailable, as upstream.
fn budget(spec: &DaemonSetSpec, desired: usize) -> Budget {
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let scaled = |value: Option<&IntOrString>, default: usize| match value {
        None => default,
        Some(IntOrString::Int(n)) => (*n).max(0) as usize,
        Some(IntOrString::String(s)) => {
            let percent: usize = s.trim_end_matches('%').parse().unwrap_or(0);
            (percent * desired).div_ceil(100)
        }
    };
    let max_surge = scaled(rolling.and_then(|r| r.max_surge.as_ref()), 0);
    let mut max_unavailable = scaled(rolling.and_then(|r| r.max_unavailable.as_ref()), 1);
    if desired > 0 && max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    Budget {
        max_surge,
        max_unavailable,
        desired,
    }
}

/// The current revision's hash (creating or renumbering it as needed) and the older
/// revisions (upstream's `constructHistory`).
async fn construct_history(
    context: &Context,
    api: &Api<ControllerRevision>,
    ds: &DaemonSet,
    spec: &DaemonSetSpec,
) -> Result<(String, Vec<ControllerRevision>), ControllerError> {
    let history = revisions::history(api, ds, &spec.selector).await?;
    let data = revisions::template_patch(&spec.template);
    let (current, old): (Vec<_>, Vec<_>) = history
        .into_iter()
        .partition(|r| revisions::records(r, &data));
    let number = revisions::next_number(&old);
    let current = match current.into_iter().max_by_key(|r| r.revision) {
        Some(current) if current.revision < number => {
            revisions::renumber(api, &current, number).await?
        }
        Some(current) => current,
        None => {
            let status = ds.status.as_ref();
            let initial = status.and_then(|s| s.collision_count).unwrap_or(0);
            let mut collision_count = initial;
            let labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            let mut revision = revisions::new_revision(ds, labels, data, number);
            revision.metadata.annotations = ds.metadata.annotations.clone();
            let template = spec.template.clone();
            let created = revisions::create(
                api,
                &ds.name_any(),
                revision,
                POD_REVISION_LABEL,
                &mut collision_count,
                |c| revisions::template_hash(&template, c),
            )
            .await?;
            if collision_count != initial {
                store_collision_count(context, ds, collision_count).await?;
            }
            created
        }
    };
    let hash = current
        .labels()
        .get(POD_REVISION_LABEL)
        .cloned()
        .unwrap_or_else(|| current.name_any());
    Ok((hash, old))
}

async fn store_collision_count(
    context: &Context,
    ds: &DaemonSet,
    count: i32,
) -> Result<(), ControllerError> {
    let api: Api<DaemonSet> =
        Api::namespaced(context.client.clone(), &ds.namespace().unwrap_or_default());
    api.patch_status(
        &ds.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"collisionCount": count}})),
    )
    .await
    .map(|_| ())
    .map_err(ControllerError::new(format!(
        "counting a revision name collision of DaemonSet {}",
        ds.name_any()
    )))
}

/// Deletes the oldest revisions no pod uses beyond `revisionHistoryLimit`.
async fn cleanup_history(
    api: &Api<ControllerRevision>,
    spec: &DaemonSetSpec,
    pods: &[Pod],
    mut old: Vec<ControllerRevision>,
) -> Result<(), ControllerError> {
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let Some(excess) = old.len().checked_sub(limit).filter(|n| *n > 0) else {
        return Ok(());
    };
    let live: HashSet<&String> = pods
        .iter()
        .filter_map(|p| p.labels().get(POD_REVISION_LABEL))
        .collect();
    revisions::sort(&mut old);
    let doomed: Vec<&ControllerRevision> = old
        .iter()
        .filter(|r| {
            r.labels()
                .get(POD_REVISION_LABEL)
                .is_none_or(|h| !live.contains(h))
        })
        .take(excess)
        .collect();
    revisions::delete(api, &doomed).await
}

/// Creates and deletes pods as planned, with upstream's events.
async fn sync_nodes(
    context: &Context,
    ds: &DaemonSet,
    plan: &Plan,
    hash: &str,
) -> Result<(), ControllerError> {
    let namespace = ds.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    for (pod, node, failed) in &plan.finished {
        if *failed {
            let message = format!(
                "Found failed daemon pod {namespace}/{pod} on node {node}, will try to kill it"
            );
            context
                .recorder
                .warning(ds, "FailedDaemonPod", &message)
                .await;
        } else {
            let message = format!("Found succeeded daemon pod {namespace}/{pod} on node {node}, will try to delete it");
            context
                .recorder
                .normal(ds, "SucceededDaemonPod", &message)
                .await;
        }
    }
    let template = pod_template(ds, hash);
    let mut first_error = None;
    for node in &plan.create_on {
        let mut pod = from_template(&template, &controller_ref(ds));
        pin_to_node(pod.spec.get_or_insert_with(Default::default), node);
        match api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                let message = format!("Created pod: {}", created.name_any());
                context
                    .recorder
                    .normal(ds, "SuccessfulCreate", &message)
                    .await;
            }
            Err(e) => {
                context
                    .recorder
                    .warning(ds, "FailedCreate", &format!("Error creating: {e}"))
                    .await;
                first_error.get_or_insert(ControllerError::new(format!(
                    "creating a daemon pod for node {node}"
                ))(e));
            }
        }
    }
    for name in &plan.delete {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                let message = format!("Deleted pod: {name}");
                context
                    .recorder
                    .normal(ds, "SuccessfulDelete", &message)
                    .await;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => {
                context
                    .recorder
                    .warning(ds, "FailedDelete", &format!("Error deleting: {e}"))
                    .await;
                first_error.get_or_insert(ControllerError::new(format!(
                    "deleting daemon pod {name}"
                ))(e));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Counts the nodes per state and writes the status when it changed (upstream's
/// `updateDaemonSetStatus`).
async fn store_status(
    context: &Context,
    ds: &DaemonSet,
    placement: &Placement<'_>,
    hash: &str,
    generation: Option<&str>,
    min_ready: i32,
) -> Result<(), ControllerError> {
    let now = Timestamp::now();
    let (mut desired, mut current, mut misscheduled, mut ready, mut updated, mut available) =
        (0, 0, 0, 0, 0, 0);
    for (node, (should_run, _)) in &placement.nodes {
        let oldest = placement
            .pods
            .get(node)
            .and_then(|pods| pods.iter().min_by(|a, b| by_age(a, b)));
        match (should_run, oldest) {
            (true, None) => desired += 1,
            (true, Some(pod)) => {
                desired += 1;
                current += 1;
                if is_ready(pod) {
                    ready += 1;
                    if is_available(pod, min_ready, now) {
                        available += 1;
                    }
                }
                if is_updated(pod, hash, generation) {
                    updated += 1;
                }
            }
            (false, Some(_)) => misscheduled += 1,
            (false, None) => {}
        }
    }
    let unavailable = desired - available;
    let generation = ds.metadata.generation.unwrap_or(0);
    let old = ds.status.clone().unwrap_or_default();
    let unchanged = old.desired_number_scheduled == desired
        && old.current_number_scheduled == current
        && old.number_misscheduled == misscheduled
        && old.number_ready == ready
        && old.updated_number_scheduled.unwrap_or(0) == updated
        && old.number_available.unwrap_or(0) == available
        && old.number_unavailable.unwrap_or(0) == unavailable
        && old.observed_generation.unwrap_or(0) >= generation;
    if unchanged {
        return Ok(());
    }
    let status = json!({
        "observedGeneration": generation,
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "updatedNumberScheduled": omit_zero(updated),
        "numberAvailable": omit_zero(available),
        "numberUnavailable": omit_zero(unavailable),
    });
    merge_status(&context.client, ds, status).await
}
