//! The Job controller, as upstream's job-controller: runs a Job's pods to completion
//! (`completions` at most `parallelism` at a time, NonIndexed or Indexed), retries failures
//! up to `backoffLimit` with exponential back-off, honours `activeDeadlineSeconds`,
//! `podFailurePolicy` and `suspend`, and reports it all in the Job's status.
//!
//! Counting uses upstream's tracking with finalizers: every pod carries
//! `batch.kubernetes.io/job-tracking`; a finished pod's uid is first recorded in
//! `status.uncountedTerminatedPods`, then its finalizer removed, then it moves to the
//! `succeeded`/`failed` counters — so a pod is counted exactly once even if it is deleted
//! or this controller restarts in between. A Job ends in two steps, as in 1.33: an interim
//! `SuccessCriteriaMet` / `FailureTarget` condition, then `Complete` / `Failed` once no pod
//! is left terminating or uncounted.
//!
//! Owns: Job status and the Job's pods. The TTL of finished Jobs is
//! [`super::ttl_after_finished`]'s.

mod failure_policy;
mod indexes;
mod per_index;
mod sync;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::events::Recorder;
use super::ControllerError;

/// The finalizer that keeps a Job's pod until the controller has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// The label the API's Job selector uses: the Job's uid.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// `spec.managedBy` of the Jobs this controller runs (also when unset).
const MANAGED_BY: &str = "kubernetes.io/job-controller";

struct Context {
    client: Client,
    recorder: Recorder,
}

/// Runs the Job controller, and the sweeper of tracking finalizers on pods whose Job is
/// gone. Never returns.
pub async fn run(client: Client) {
    let context = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "job-controller"),
    });
    let jobs = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .run(reconcile, super::retry_later, context.clone());
    let orphans = Controller::new(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(CONTROLLER_UID),
    )
    .run(release_orphan, super::retry_later, context.clone());
    tokio::join!(
        super::drive("job", jobs),
        super::drive("job-orphans", orphans),
        release_when_deleted(context),
    );
}

/// A deleted Job's pods change nothing themselves: wake the orphan sweeper for them (the
/// sweeper's first pass covers Jobs deleted while this server was not the leader).
async fn release_when_deleted(context: Arc<Context>) {
    let mut events = watcher(
        Api::<Job>::all(context.client.clone()),
        watcher::Config::default(),
    )
    .boxed();
    while let Some(event) = events.next().await {
        let Ok(watcher::Event::Delete(job)) = event else {
            continue;
        };
        let namespace = job.namespace().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
        let uid = job.uid().unwrap_or_default();
        let Ok(list) = pods
            .list(&ListParams::default().labels(&selector(&job)))
            .await
        else {
            continue;
        };
        for pod in list
            .items
            .into_iter()
            .filter(|p| super::ownership::controlled_by(p, &uid))
        {
            if let Err(error) = release_orphan(Arc::new(pod), context.clone()).await {
                tracing::warn!(%error, "releasing the pods of a deleted Job");
            }
        }
    }
}

async fn reconcile(job: Arc<Job>, context: Arc<Context>) -> Result<Action, ControllerError> {
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let jobs: Api<Job> = Api::namespaced(context.client.clone(), &namespace);
    // Read afresh: the cache may not have our own last status write yet.
    let Some(job) = jobs
        .get_opt(&name)
        .await
        .map_err(ControllerError::new(format!(
            "reading Job {namespace}/{name}"
        )))?
    else {
        return Ok(Action::await_change());
    };
    // Finished, or left to another controller (`spec.managedBy`).
    let managed_by = job.spec.as_ref().and_then(|s| s.managed_by.as_deref());
    if is_finished(&job) || managed_by.is_some_and(|m| m != MANAGED_BY) {
        return Ok(Action::await_change());
    }
    let pods_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let uid = job.uid().unwrap_or_default();
    let selector = selector(&job);
    let pods = pods_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(ControllerError::new(format!(
            "listing the pods of Job {namespace}/{name}"
        )))?
        .items
        .into_iter()
        .filter(|pod| super::ownership::controlled_by(pod, &uid))
        .collect();
    sync::Sync::new(&context, jobs, pods_api, job, pods)
        .run()
        .await
}

/// The Job's `matchLabels` as a label selector string (the API generates one from the
/// Job's uid unless `manualSelector` is set).
fn selector(job: &Job) -> String {
    job.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.match_labels.as_ref())
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| format!("{CONTROLLER_UID}={}", job.uid().unwrap_or_default()))
}

/// Whether the Job has its terminal `Complete` or `Failed` condition.
pub fn is_finished(job: &Job) -> bool {
    finished_condition(job).is_some()
}

/// The Job's terminal condition type, `Complete` or `Failed`, if it has one.
pub fn finished_condition(job: &Job) -> Option<&k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

/// Takes the tracking finalizer off a pod, unless already gone.
async fn remove_finalizer(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let finalizers: Vec<&String> = pod
        .finalizers()
        .iter()
        .filter(|f| *f != TRACKING_FINALIZER)
        .collect();
    // None left: the field goes, as upstream's strategic `$deleteFromPrimitiveList` leaves it.
    let finalizers = (!finalizers.is_empty()).then_some(finalizers);
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": pod.resource_version(),
    }});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other.map(|_| ()),
    }
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

/// A pod keeping the tracking finalizer without a Job to count it — orphaned, its Job
/// deleted or replaced by one of the same name, or finished — would never go: release it,
/// as upstream's `cleanupOrphanPod`.
async fn release_orphan(pod: Arc<Pod>, context: Arc<Context>) -> Result<Action, ControllerError> {
    if !has_finalizer(&pod) {
        return Ok(Action::await_change());
    }
    let namespace = pod.namespace().unwrap_or_default();
    let failed = || format!("releasing orphaned pod {namespace}/{}", pod.name_any());
    let owner = pod
        .owner_references()
        .iter()
        .find(|r| r.controller == Some(true));
    if let Some(owner) = owner {
        if owner.kind != "Job" {
            return Ok(Action::await_change());
        }
        let jobs: Api<Job> = Api::namespaced(context.client.clone(), &namespace);
        let job = jobs
            .get_opt(&owner.name)
            .await
            .map_err(ControllerError::new(failed()))?;
        let counting = job.is_some_and(|job| {
            job.uid().as_deref() == Some(owner.uid.as_str()) && !is_finished(&job)
        });
        if counting {
            return Ok(Action::await_change());
        }
    }
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    remove_finalizer(&pods, &pod)
        .await
        .map_err(ControllerError::new(failed()))?;
    Ok(Action::await_change())
}
