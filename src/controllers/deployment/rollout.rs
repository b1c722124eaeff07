//! How a Deployment moves between ReplicaSets (upstream's `sync.go`, `rolling.go`,
//! `recreate.go`, `progress.go`): creating the new ReplicaSet, scaling (with the
//! `ScalingReplicaSet` events), the two strategies, cleanup of old revisions, and the status
//! with its Available and Progressing conditions.

use std::cmp::Ordering;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::util::{self, rs_replicas, rs_status};
use super::{progress_check, Sync};
use crate::controllers::ownership::{self, controlled_by, controller_ref};

pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";

/// All desired replicas updated and available, none old, and the spec observed.
pub fn complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let desired = util::replicas(d);
    status.updated_replicas.unwrap_or(0) == desired
        && status.replicas.unwrap_or(0) == desired
        && status.available_replicas.unwrap_or(0) == desired
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// New pods up, ready or available, or old ones gone, since the recorded status.
fn progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

fn timed_out(d: &Deployment, status: &DeploymentStatus) -> bool {
    let Some(deadline) = util::progress_deadline(d) else {
        return false;
    };
    let Some(condition) = util::condition(status, "Progressing") else {
        return false;
    };
    match condition.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => condition
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0.as_second() + i64::from(deadline) < Timestamp::now().as_second()),
    }
}

fn sum(sets: &[&ReplicaSet], field: impl Fn(&ReplicaSet) -> i32) -> i32 {
    sets.iter().map(|rs| field(rs)).sum()
}

fn all<'a>(new: Option<&'a ReplicaSet>, old: &'a [ReplicaSet]) -> Vec<&'a ReplicaSet> {
    old.iter().chain(new).collect()
}

impl Sync<'_> {
    /// Upstream's `getNewReplicaSet`.
    pub(super) async fn new_replica_set(
        &mut self,
        existing: Option<ReplicaSet>,
        old: &[ReplicaSet],
        new_revision: i64,
        create: bool,
    ) -> Result<Option<ReplicaSet>, kube::Error> {
        let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        if let Some(existing) = existing {
            let mut copy = existing.clone();
            let annotations_changed =
                util::set_new_rs_annotations(&self.d, &mut copy, new_revision, true);
            let spec = copy.spec.get_or_insert_with(Default::default);
            let min_ready_changed = spec.min_ready_seconds.unwrap_or(0) != min_ready.unwrap_or(0);
            if annotations_changed || min_ready_changed {
                spec.min_ready_seconds = min_ready;
                let updated = self
                    .replica_sets
                    .replace(&copy.name_any(), &PostParams::default(), &copy)
                    .await?;
                return Ok(Some(updated));
            }
            let revision = copy
                .annotations()
                .get(util::REVISION)
                .cloned()
                .unwrap_or_default();
            self.set_revision(&revision).await?;
            let mut status = self.d.status.clone().unwrap_or_default();
            if util::progress_deadline(&self.d).is_some()
                && util::condition(&status, "Progressing").is_none()
            {
                let message = format!("Found new replica set {:?}", copy.name_any());
                util::set_condition(
                    &mut status,
                    util::new_condition("Progressing", "True", "FoundNewReplicaSet", message),
                );
                self.d.status = Some(status);
                self.write_status().await?;
            }
            return Ok(Some(copy));
        }
        if !create {
            return Ok(None);
        }

        let spec = self.d.spec.clone().unwrap_or_default();
        let collision_count = self.d.status.as_ref().and_then(|s| s.collision_count);
        let mut template = spec.template.clone();
        let hash = util::template_hash(&template, collision_count);
        let template_meta = template.metadata.get_or_insert_with(Default::default);
        let labels = template_meta.labels.get_or_insert_with(Default::default);
        labels.insert(util::HASH_LABEL.to_string(), hash.clone());
        let labels = labels.clone();
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(util::HASH_LABEL.to_string(), hash.clone());
        let mut new = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{}-{hash}", self.d.name_any())),
                namespace: self.d.namespace(),
                owner_references: Some(vec![controller_ref(&self.d)]),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: min_ready,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let count = self.new_rs_replicas(&all(Some(&new), old), &new);
        new.spec.as_mut().expect("spec").replicas = Some(count);
        util::set_new_rs_annotations(&self.d, &mut new, new_revision, false);

        let created = match self.replica_sets.create(&PostParams::default(), &new).await {
            Ok(created) => {
                if count > 0 {
                    let message = format!(
                        "Scaled up replica set {} from 0 to {count}",
                        created.name_any()
                    );
                    self.recorder
                        .normal(&self.d, "ScalingReplicaSet", &message)
                        .await;
                }
                created
            }
            Err(e) if ownership::conflict(&e) => {
                // Ours already (a stale cache), or a hash collision: count it and retry.
                let found = self.replica_sets.get(&new.name_any()).await?;
                let ours = controlled_by(&found, &self.d.uid().unwrap_or_default());
                let same = util::equal_ignoring_hash(
                    &found
                        .spec
                        .clone()
                        .unwrap_or_default()
                        .template
                        .unwrap_or_default(),
                    &spec.template,
                );
                if ours && same {
                    return Ok(Some(found));
                }
                let status = self.d.status.get_or_insert_with(Default::default);
                status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                self.write_status().await?;
                return Err(e);
            }
            Err(e) if ownership::message(&e).contains("because it is being terminated") => {
                return Err(e)
            }
            Err(e) => {
                let message = format!(
                    "Failed to create new replica set {:?}: {}",
                    new.name_any(),
                    ownership::message(&e)
                );
                if util::progress_deadline(&self.d).is_some() {
                    let mut status = self.d.status.clone().unwrap_or_default();
                    util::set_condition(
                        &mut status,
                        util::new_condition(
                            "Progressing",
                            "False",
                            "ReplicaSetCreateError",
                            message.clone(),
                        ),
                    );
                    self.d.status = Some(status);
                    let _ = self.write_status().await;
                }
                self.recorder
                    .warning(&self.d, "ReplicaSetCreateError", &message)
                    .await;
                return Err(e);
            }
        };
        self.set_revision(&new_revision.to_string()).await?;
        if util::progress_deadline(&self.d).is_some() {
            let mut status = self.d.status.clone().unwrap_or_default();
            let message = format!("Created new replica set {:?}", created.name_any());
            util::set_condition(
                &mut status,
                util::new_condition("Progressing", "True", "NewReplicaSetCreated", message),
            );
            self.d.status = Some(status);
            self.write_status().await?;
        }
        Ok(Some(created))
    }

    /// Upstream's `NewRSNewReplicas`: how big the new ReplicaSet may be now.
    fn new_rs_replicas(&self, all: &[&ReplicaSet], new: &ReplicaSet) -> i32 {
        let desired = util::replicas(&self.d);
        if !util::is_rolling(&self.d) {
            return desired;
        }
        let current = sum(all, rs_replicas);
        let max_total = desired + util::max_surge(&self.d);
        if current >= max_total {
            return rs_replicas(new);
        }
        let up = (max_total - current).min(desired - rs_replicas(new));
        rs_replicas(new) + up
    }

    /// Resizes `rs` to `scale`, recording a ScalingReplicaSet event; also refreshes its
    /// replica annotations. Whether it was resized.
    async fn scale_rs(&mut self, rs: &mut ReplicaSet, scale: i32) -> Result<bool, kube::Error> {
        let operation = if rs_replicas(rs) < scale {
            "up"
        } else {
            "down"
        };
        self.scale_rs_as(rs, scale, operation).await
    }

    async fn scale_rs_as(
        &mut self,
        rs: &mut ReplicaSet,
        scale: i32,
        operation: &str,
    ) -> Result<bool, kube::Error> {
        let desired = util::replicas(&self.d);
        let max = desired + util::max_surge(&self.d);
        let resize = rs_replicas(rs) != scale;
        if !resize && !util::replicas_annotations_need_update(rs, desired, max) {
            return Ok(false);
        }
        let from = rs_replicas(rs);
        let mut copy = rs.clone();
        copy.spec.get_or_insert_with(Default::default).replicas = Some(scale);
        util::set_replicas_annotations(&mut copy, desired, max);
        *rs = self
            .replica_sets
            .replace(&copy.name_any(), &PostParams::default(), &copy)
            .await?;
        if resize {
            let message = format!(
                "Scaled {operation} replica set {} from {from} to {scale}",
                rs.name_any()
            );
            self.recorder
                .normal(&self.d, "ScalingReplicaSet", &message)
                .await;
        }
        Ok(resize)
    }

    /// Upstream's `scale`: a scaling event (or a paused Deployment) resizes the only active
    /// ReplicaSet, or all of them in proportion to their size.
    pub(super) async fn scale(
        &mut self,
        new: &mut Option<ReplicaSet>,
        old: &mut [ReplicaSet],
    ) -> Result<(), kube::Error> {
        let desired = util::replicas(&self.d);
        let active_count = old
            .iter()
            .chain(new.iter())
            .filter(|rs| rs_replicas(rs) > 0)
            .count();
        if active_count <= 1 {
            // The one active ReplicaSet, or with none the newest one.
            let target = if let Some(rs) = new.as_mut().filter(|rs| rs_replicas(rs) > 0) {
                Some(rs)
            } else if let Some(rs) = old.iter_mut().find(|rs| rs_replicas(rs) > 0) {
                Some(rs)
            } else if new.is_some() {
                new.as_mut()
            } else {
                old.iter_mut().max_by(|a, b| util::by_creation(a, b))
            };
            if let Some(rs) = target {
                if rs_replicas(rs) != desired {
                    self.scale_rs(rs, desired).await?;
                }
            }
            return Ok(());
        }
        if let Some(rs) = new.as_ref() {
            let saturated = rs_replicas(rs) == desired
                && util::annotation_i32(rs, util::DESIRED_REPLICAS) == Some(desired)
                && rs_status(rs).available_replicas.unwrap_or(0) == desired;
            if saturated {
                for rs in old.iter_mut().filter(|rs| rs_replicas(rs) > 0) {
                    self.scale_rs(rs, 0).await?;
                }
                return Ok(());
            }
        }
        if !util::is_rolling(&self.d) {
            return Ok(());
        }
        let mut sets: Vec<&mut ReplicaSet> = old
            .iter_mut()
            .chain(new.iter_mut())
            .filter(|rs| rs_replicas(rs) > 0)
            .collect();
        let total: i32 = sets.iter().map(|rs| rs_replicas(rs)).sum();
        let allowed = if desired > 0 {
            desired + util::max_surge(&self.d)
        } else {
            0
        };
        let to_add = allowed - total;
        let operation = match to_add.cmp(&0) {
            Ordering::Greater => {
                // Larger first; among equals, newer first.
                sets.sort_by(|a, b| {
                    rs_replicas(b)
                        .cmp(&rs_replicas(a))
                        .then_with(|| util::by_creation(b, a))
                });
                "up"
            }
            Ordering::Less => {
                // Larger first; among equals, older first.
                sets.sort_by(|a, b| {
                    rs_replicas(b)
                        .cmp(&rs_replicas(a))
                        .then_with(|| util::by_creation(a, b))
                });
                "down"
            }
            Ordering::Equal => "",
        };
        let mut added = 0;
        let mut sizes: Vec<i32> = Vec::new();
        for rs in &sets {
            if to_add != 0 {
                let proportion = self.proportion(rs, to_add, added);
                sizes.push(rs_replicas(rs) + proportion);
                added += proportion;
            } else {
                sizes.push(rs_replicas(rs));
            }
        }
        for (i, rs) in sets.into_iter().enumerate() {
            let mut size = sizes[i];
            if i == 0 && to_add != 0 {
                size = (size + to_add - added).max(0);
            }
            self.scale_rs_as(rs, size, operation).await?;
        }
        Ok(())
    }

    /// Upstream's `GetProportion`.
    fn proportion(&self, rs: &ReplicaSet, to_add: i32, added: i32) -> i32 {
        if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let desired = util::replicas(&self.d);
        let fraction = if desired == 0 {
            -rs_replicas(rs)
        } else {
            let deployment_replicas = desired + util::max_surge(&self.d);
            let annotated = util::annotation_i32(rs, util::MAX_REPLICAS)
                .unwrap_or_else(|| self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
            if annotated == 0 {
                0
            } else {
                let size = f64::from(rs_replicas(rs)) * f64::from(deployment_replicas)
                    / f64::from(annotated);
                size.round() as i32 - rs_replicas(rs)
            }
        };
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    /// Deletes the oldest old ReplicaSets beyond `revisionHistoryLimit` that are scaled to
    /// zero and settled.
    pub(super) async fn cleanup(&mut self, old: &[ReplicaSet]) -> Result<(), kube::Error> {
        let Some(limit) = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .filter(|l| *l != i32::MAX)
        else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let surplus = cleanable.len() as i64 - i64::from(limit);
        if surplus <= 0 {
            return Ok(());
        }
        cleanable.sort_by(|a, b| {
            util::revision(a)
                .cmp(&util::revision(b))
                .then_with(|| util::by_creation(a, b))
        });
        for rs in cleanable.into_iter().take(surplus as usize) {
            let status = rs_status(rs);
            if status.replicas != 0
                || rs_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0)
            {
                continue;
            }
            match self
                .replica_sets
                .delete(&rs.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(e) if ownership::gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Upstream's `calculateStatus`: counts from the ReplicaSets, and Available.
    fn calculate_status(&self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> DeploymentStatus {
        let sets = all(new, old);
        let available = sum(&sets, |rs| rs_status(rs).available_replicas.unwrap_or(0));
        let total = sum(&sets, rs_replicas);
        let current = self.d.status.clone().unwrap_or_default();
        let mut status = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(sum(&sets, |rs| rs_status(rs).replicas)),
            updated_replicas: Some(new.map(|rs| rs_status(rs).replicas).unwrap_or(0)),
            ready_replicas: Some(sum(&sets, |rs| rs_status(rs).ready_replicas.unwrap_or(0))),
            available_replicas: Some(available),
            unavailable_replicas: Some((total - available).max(0)),
            collision_count: current.collision_count,
            conditions: current.conditions.clone(),
            terminating_replicas: current.terminating_replicas,
        };
        let desired = util::replicas(&self.d);
        let condition = if available >= desired - util::max_unavailable(&self.d) {
            util::new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".to_string(),
            )
        } else {
            util::new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".to_string(),
            )
        };
        util::set_condition(&mut status, condition);
        status
    }

    async fn write_if_changed(&mut self, status: DeploymentStatus) -> Result<(), kube::Error> {
        if self.d.status.as_ref() == Some(&status) {
            return Ok(());
        }
        self.d.status = Some(status);
        self.write_status().await
    }

    pub(super) async fn sync_deployment_status(
        &mut self,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<(), kube::Error> {
        let status = self.calculate_status(new, old);
        self.write_if_changed(status).await
    }

    /// Upstream's `syncRolloutStatus`: the status with the Progressing condition (and the
    /// ReplicaSets' ReplicaFailure), and when to look again for the progress deadline.
    async fn sync_rollout_status(
        &mut self,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<Action, kube::Error> {
        let mut status = self.calculate_status(new, old);
        let deadline = util::progress_deadline(&self.d);
        if deadline.is_none() {
            util::remove_condition(&mut status, "Progressing");
        }
        let recorded = self.d.status.clone().unwrap_or_default();
        let current = util::condition(&recorded, "Progressing").cloned();
        let finished = status.replicas == status.updated_replicas
            && current
                .as_ref()
                .is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
        if deadline.is_some() && !finished {
            let name = self.d.name_any();
            let subject = |what: &str| match new {
                Some(rs) => format!("ReplicaSet {:?} {what}", rs.name_any()),
                None => format!("Deployment {name:?} {what}"),
            };
            if complete(&self.d, &status) {
                let condition = util::new_condition(
                    "Progressing",
                    "True",
                    NEW_RS_AVAILABLE,
                    subject("has successfully progressed."),
                );
                util::set_condition(&mut status, condition);
            } else if progressing(&self.d, &status) {
                let mut condition = util::new_condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    subject("is progressing."),
                );
                // Progress refreshes lastUpdateTime even with the same reason.
                if let Some(current) = &current {
                    if current.status == "True" {
                        condition.last_transition_time = current.last_transition_time.clone();
                    }
                    util::remove_condition(&mut status, "Progressing");
                }
                util::set_condition(&mut status, condition);
            } else if timed_out(&self.d, &status) {
                let condition = util::new_condition(
                    "Progressing",
                    "False",
                    TIMED_OUT,
                    subject("has timed out progressing."),
                );
                util::set_condition(&mut status, condition);
            }
        }
        let failure = new
            .into_iter()
            .chain(old.iter())
            .filter_map(|rs| {
                rs_status(rs)
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "ReplicaFailure")
            })
            .next();
        match failure {
            Some(c) => util::set_condition(
                &mut status,
                k8s_openapi::api::apps::v1::DeploymentCondition {
                    type_: c.type_,
                    status: c.status,
                    last_update_time: c.last_transition_time.clone(),
                    last_transition_time: c.last_transition_time,
                    reason: c.reason,
                    message: c.message,
                },
            ),
            None => util::remove_condition(&mut status, "ReplicaFailure"),
        }
        self.write_if_changed(status).await?;
        Ok(progress_check(&self.d))
    }

    /// Upstream's `rolloutRolling`.
    pub(super) async fn rollout_rolling(
        &mut self,
        owned: Vec<ReplicaSet>,
    ) -> Result<Action, kube::Error> {
        let (new, mut old) = self.new_and_old(owned, true).await?;
        let Some(mut new) = new else {
            return self.sync_rollout_status(None, &old).await;
        };
        if self.reconcile_new(&mut new, &old).await? {
            return self.sync_rollout_status(Some(&new), &old).await;
        }
        if self.reconcile_old(&new, &mut old).await? {
            return self.sync_rollout_status(Some(&new), &old).await;
        }
        if complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(Some(&new), &old).await
    }

    async fn reconcile_new(
        &mut self,
        new: &mut ReplicaSet,
        old: &[ReplicaSet],
    ) -> Result<bool, kube::Error> {
        let desired = util::replicas(&self.d);
        let current = rs_replicas(new);
        if current == desired {
            return Ok(false);
        }
        let target = if current > desired {
            desired
        } else {
            let snapshot = new.clone();
            self.new_rs_replicas(&all(Some(&snapshot), old), &snapshot)
        };
        self.scale_rs(new, target).await
    }

    async fn reconcile_old(
        &mut self,
        new: &ReplicaSet,
        old: &mut [ReplicaSet],
    ) -> Result<bool, kube::Error> {
        let old_count: i32 = old.iter().map(rs_replicas).sum();
        if old_count == 0 {
            return Ok(false);
        }
        let all_count = old_count + rs_replicas(new);
        let min_available = util::replicas(&self.d) - util::max_unavailable(&self.d);
        let new_unavailable = rs_replicas(new) - rs_status(new).available_replicas.unwrap_or(0);
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        // Unhealthy old replicas go first, whatever availability says.
        old.sort_by(util::by_creation);
        let mut cleaned = 0;
        for rs in old.iter_mut() {
            if cleaned >= max_scaled_down {
                break;
            }
            let replicas = rs_replicas(rs);
            let available = rs_status(rs).available_replicas.unwrap_or(0);
            if replicas == 0 || replicas == available {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(replicas - available);
            self.scale_rs(rs, replicas - down).await?;
            cleaned += down;
        }
        // Then as many as availability allows.
        let available: i32 = old
            .iter()
            .chain(std::iter::once(new))
            .map(|rs| rs_status(rs).available_replicas.unwrap_or(0))
            .sum();
        let mut scaled = 0;
        if available > min_available {
            let budget = available - min_available;
            for rs in old.iter_mut() {
                if scaled >= budget {
                    break;
                }
                let replicas = rs_replicas(rs);
                if replicas == 0 {
                    continue;
                }
                let down = replicas.min(budget - scaled);
                self.scale_rs(rs, replicas - down).await?;
                scaled += down;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    /// Upstream's `rolloutRecreate`: old ReplicaSets to zero, wait for their pods to stop,
    /// then the new one to full size.
    pub(super) async fn rollout_recreate(
        &mut self,
        owned: Vec<ReplicaSet>,
    ) -> Result<Action, kube::Error> {
        let (mut new, mut old) = self.new_and_old(owned.clone(), false).await?;
        let mut scaled_down = false;
        for rs in old.iter_mut().filter(|rs| rs_replicas(rs) > 0) {
            scaled_down |= self.scale_rs(rs, 0).await?;
        }
        if scaled_down {
            return self.sync_rollout_status(new.as_ref(), &old).await;
        }
        if self.old_pods_running(new.as_ref(), &old).await? {
            self.sync_rollout_status(new.as_ref(), &old).await?;
            // Pods stopping are not watched here: look again shortly.
            return Ok(Action::requeue(std::time::Duration::from_secs(1)));
        }
        if new.is_none() {
            (new, old) = self.new_and_old(owned, true).await?;
        }
        if let Some(rs) = new.as_mut() {
            let desired = util::replicas(&self.d);
            self.scale_rs(rs, desired).await?;
        }
        if complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(new.as_ref(), &old).await
    }

    /// Whether pods of old ReplicaSets are still there (and not finished).
    async fn old_pods_running(
        &self,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<bool, kube::Error> {
        if old.iter().any(|rs| rs_status(rs).replicas > 0) {
            return Ok(true);
        }
        let old_uids: Vec<String> = old.iter().filter_map(|rs| rs.uid()).collect();
        let new_uid = new.and_then(|rs| rs.uid());
        let pods: Api<Pod> =
            Api::namespaced(self.client.clone(), &self.d.namespace().unwrap_or_default());
        let listed = pods.list(&ListParams::default()).await?;
        Ok(listed.items.iter().any(|pod| {
            let owner = ownership::controller_of(pod).map(|r| r.uid.clone());
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            owner.is_some_and(|uid| old_uids.contains(&uid) && Some(&uid) != new_uid.as_ref())
                && !matches!(phase, Some("Failed") | Some("Succeeded"))
        }))
    }
}
