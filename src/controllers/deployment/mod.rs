//! The Deployment controller (upstream's `pkg/controller/deployment`): a Deployment owns
//! one ReplicaSet per pod template it has had, named `<deployment>-<pod-template-hash>`.
//! Each sync claims the ReplicaSets its selector matches, then — paused or merely scaled —
//! resizes them proportionally, or rolls out the current template (RollingUpdate within
//! maxSurge/maxUnavailable, or Recreate), keeps `revisionHistoryLimit` old ReplicaSets, and
//! records status and the Available / Progressing conditions that `kubectl rollout status`
//! reads. Rollback is kubectl's: it copies an old ReplicaSet's template back.
//!
//! [`util`] holds the arithmetic and annotations, [`rollout`] the strategies and status.

mod rollout;
mod util;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::events::Recorder;
use super::ownership::{controller_of, selects, Claimer};
use super::ControllerError;

struct Context {
    client: Client,
    replica_sets: Store<ReplicaSet>,
    recorder: Recorder,
}

/// Runs the Deployment controller. Never returns.
pub async fn run(client: Client) {
    let (replica_sets, writer) = reflector::store();
    let rs_events = watcher(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects();
    let controller = Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    );
    let deployments = controller.store();
    let mapper = move |rs: ReplicaSet| deployments_to_sync(&rs, &deployments);
    let context = Context {
        recorder: Recorder::new(client.clone(), "deployment-controller"),
        client,
        replica_sets,
    };
    let results = controller
        .watches_stream(rs_events, mapper)
        .run(reconcile, super::retry_soon_on_conflict, Arc::new(context))
        .boxed();
    super::drive("deployment", results).await;
}

/// The Deployments a ReplicaSet change concerns: its controller, else the Deployments of its
/// namespace selecting it (to adopt it).
fn deployments_to_sync(
    rs: &ReplicaSet,
    deployments: &Store<Deployment>,
) -> Vec<ObjectRef<Deployment>> {
    let namespace = rs.namespace().unwrap_or_default();
    if let Some(owner) = controller_of(rs) {
        if owner.kind != "Deployment" {
            return Vec::new();
        }
        return vec![ObjectRef::new(&owner.name).within(&namespace)];
    }
    deployments
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|d| {
            d.spec
                .as_ref()
                .is_some_and(|s| !selector_is_empty(&s.selector) && selects(&s.selector, rs))
        })
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

fn selector_is_empty(s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

/// One sync of one Deployment: the Deployment as this sync has written it so far, and its
/// ReplicaSets.
pub(super) struct Sync<'a> {
    d: Deployment,
    deployments: Api<Deployment>,
    replica_sets: Api<ReplicaSet>,
    client: Client,
    recorder: &'a Recorder,
}

async fn reconcile(d: Arc<Deployment>, context: Arc<Context>) -> Result<Action, ControllerError> {
    let namespace = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let failed = |what: &str| format!("{what} of deployment {namespace}/{name}");
    let mut sync = Sync {
        d: (*d).clone(),
        deployments: Api::namespaced(context.client.clone(), &namespace),
        replica_sets: Api::namespaced(context.client.clone(), &namespace),
        client: context.client.clone(),
        recorder: &context.recorder,
    };
    // A ReplicaSet cache not filled yet would look like a Deployment without ReplicaSets.
    if context.replica_sets.wait_until_ready().await.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let selector = d
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    if selector_is_empty(&selector) {
        sync.recorder
            .warning(
                d.as_ref(),
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            )
            .await;
        let status = sync.d.status.get_or_insert_with(Default::default);
        let generation = sync.d.metadata.generation.unwrap_or(0);
        if status.observed_generation.unwrap_or(0) < generation {
            status.observed_generation = Some(generation);
            sync.write_status()
                .await
                .map_err(ControllerError::new(failed("updating the status")))?;
        }
        return Ok(Action::await_change());
    }

    let candidates: Vec<ReplicaSet> = context
        .replica_sets
        .state()
        .iter()
        .filter(|rs| rs.namespace().as_deref() == Some(namespace.as_str()))
        .map(|rs| (**rs).clone())
        .collect();
    let uid = d.uid().unwrap_or_default();
    let deployments = sync.deployments.clone();
    let can_adopt = || async {
        let fresh = deployments.get(&name).await?;
        Ok(fresh.uid().as_deref() == Some(uid.as_str())
            && fresh.metadata.deletion_timestamp.is_none())
    };
    let owned = Claimer::new(d.as_ref(), &selector)
        .claim(&sync.replica_sets, candidates, can_adopt)
        .await
        .map_err(ControllerError::new(failed("claiming the replica sets")))?;

    let result = sync.sync(owned).await;
    result.map_err(ControllerError::new(failed("syncing")))
}

impl Sync<'_> {
    /// Upstream's `syncDeployment` after the ReplicaSets are claimed.
    async fn sync(&mut self, owned: Vec<ReplicaSet>) -> Result<Action, kube::Error> {
        if self.d.metadata.deletion_timestamp.is_some() {
            self.sync_status_only(owned).await?;
            return Ok(Action::await_change());
        }
        self.check_paused_conditions().await?;
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused || self.is_scaling_event(&owned).await? {
            self.sync_scaling(owned).await?;
            return Ok(Action::await_change());
        }
        if util::is_rolling(&self.d) {
            self.rollout_rolling(owned).await
        } else {
            self.rollout_recreate(owned).await
        }
    }

    /// Writes the status, keeping the written Deployment (and its resourceVersion).
    async fn write_status(&mut self) -> Result<(), kube::Error> {
        let written = self
            .deployments
            .replace_status(&self.d.name_any(), &PostParams::default(), &self.d)
            .await?;
        self.d = written;
        Ok(())
    }

    /// Sets the Deployment's revision annotation (a metadata patch: this API's status
    /// endpoint changes only status), keeping the status this sync computed.
    async fn set_revision(&mut self, revision: &str) -> Result<(), kube::Error> {
        if self.d.annotations().get(util::REVISION).map(String::as_str) == Some(revision) {
            return Ok(());
        }
        let patch = json!({"metadata": {
            "annotations": {util::REVISION: revision},
            "resourceVersion": self.d.resource_version(),
        }});
        let patched = self
            .deployments
            .patch(
                &self.d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
        self.d.metadata = patched.metadata;
        Ok(())
    }

    /// Upstream's `checkPausedConditions`: Progressing=Unknown DeploymentPaused while paused,
    /// DeploymentResumed once resumed, so a long pause does not count as lack of progress.
    async fn check_paused_conditions(&mut self) -> Result<(), kube::Error> {
        if util::progress_deadline(&self.d).is_none() {
            return Ok(());
        }
        let status = self.d.status.clone().unwrap_or_default();
        let current = util::condition(&status, "Progressing");
        let reason = current.and_then(|c| c.reason.as_deref());
        if reason == Some(rollout::TIMED_OUT) {
            return Ok(());
        }
        let paused_recorded = reason == Some("DeploymentPaused");
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let condition = match (paused, paused_recorded) {
            (true, false) => util::new_condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".to_string(),
            ),
            (false, true) => util::new_condition(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".to_string(),
            ),
            _ => return Ok(()),
        };
        let mut status = status;
        util::set_condition(&mut status, condition);
        self.d.status = Some(status);
        self.write_status().await
    }

    /// Whether the active ReplicaSets were sized for another `spec.replicas` (a scale, not a
    /// template change).
    async fn is_scaling_event(&mut self, owned: &[ReplicaSet]) -> Result<bool, kube::Error> {
        let (new, old) = self.new_and_old(owned.to_vec(), false).await?;
        let desired = util::replicas(&self.d);
        Ok(new
            .iter()
            .chain(old.iter())
            .filter(|rs| util::rs_replicas(rs) > 0)
            .filter_map(|rs| util::annotation_i32(rs, util::DESIRED_REPLICAS))
            .any(|annotated| annotated != desired))
    }

    async fn sync_status_only(&mut self, owned: Vec<ReplicaSet>) -> Result<(), kube::Error> {
        let (new, old) = self.new_and_old(owned, false).await?;
        self.sync_deployment_status(new.as_ref(), &old).await
    }

    /// Upstream's `sync`: scaling (proportionally during a rollout), cleanup while paused,
    /// then the status.
    async fn sync_scaling(&mut self, owned: Vec<ReplicaSet>) -> Result<(), kube::Error> {
        let (mut new, mut old) = self.new_and_old(owned, false).await?;
        self.scale(&mut new, &mut old).await?;
        if self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false) {
            self.cleanup(&old).await?;
        }
        self.sync_deployment_status(new.as_ref(), &old).await
    }

    /// The new ReplicaSet (created when `create` and missing) and the old ones, with the
    /// new one's annotations and the Deployment's revision brought up to date.
    async fn new_and_old(
        &mut self,
        mut owned: Vec<ReplicaSet>,
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), kube::Error> {
        let new_index = util::find_new(&self.d, &owned);
        let existing = new_index.map(|i| owned.remove(i));
        let old = owned;
        let new_revision = old.iter().map(util::revision).max().unwrap_or(0) + 1;
        let new = self
            .new_replica_set(existing, &old, new_revision, create)
            .await?;
        Ok((new, old))
    }
}

/// How long until `d` may have run out of its progress deadline (upstream's
/// `requeueStuckDeployment`), if it is rolling out.
fn progress_check(d: &Deployment) -> Action {
    let Some(deadline) = util::progress_deadline(d) else {
        return Action::await_change();
    };
    let status = d.status.clone().unwrap_or_default();
    let Some(current) = util::condition(&status, "Progressing") else {
        return Action::await_change();
    };
    if rollout::complete(d, &status) || current.reason.as_deref() == Some(rollout::TIMED_OUT) {
        return Action::await_change();
    }
    let from = current
        .last_update_time
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let after = from + i64::from(deadline) - now;
    if after < 1 {
        return Action::requeue(Duration::from_millis(500));
    }
    Action::requeue(Duration::from_secs(after as u64 + 1))
}
