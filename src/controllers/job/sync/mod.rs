//! One sync of one Job (upstream's `syncJob`): count what finished, decide whether the Job
//! is done, create or delete pods, and write status with the tracking-finalizer protocol.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

mod manage;
mod track;

use super::failure_policy;
use super::indexes::{self, Indexes};
use super::per_index;
use super::{has_finalizer, Context};
use crate::controllers::pods;
use crate::controllers::ControllerError;

/// First wait before replacing a failed pod; doubles with each failure in a row.
const FAILURE_BACKOFF: Duration = Duration::from_secs(10);
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(360);
/// Pods created or deleted in one sync at most, as upstream.
const MAX_POD_CHANGES: i32 = 500;

pub(super) struct Sync<'a> {
    context: &'a Context,
    jobs: Api<Job>,
    pods_api: Api<Pod>,
    job: Job,
    pods: Vec<Pod>,
    uncounted_succeeded: BTreeSet<String>,
    uncounted_failed: BTreeSet<String>,
    succeeded: i32,
    failed: i32,
    active: i32,
    ready: i32,
    terminating: i32,
    /// Where the Job is heading: an interim or terminal condition.
    finished: Option<JobCondition>,
    /// Indexed Jobs: the completed indexes in status before this sync, and with this sync's.
    prev_succeeded_indexes: Indexes,
    succeeded_indexes: Indexes,
    /// Indexed Jobs with `backoffLimitPerIndex`: the indexes failed for good.
    failed_indexes: Option<Indexes>,
    requeue: Option<Duration>,
}

impl<'a> Sync<'a> {
    pub(super) fn new(
        context: &'a Context,
        jobs: Api<Job>,
        pods_api: Api<Pod>,
        job: Job,
        pods: Vec<Pod>,
    ) -> Self {
        let uncounted = job
            .status
            .as_ref()
            .and_then(|s| s.uncounted_terminated_pods.clone())
            .unwrap_or_default();
        let set = |uids: Option<Vec<String>>| uids.unwrap_or_default().into_iter().collect();
        Sync {
            context,
            jobs,
            pods_api,
            job,
            pods,
            uncounted_succeeded: set(uncounted.succeeded),
            uncounted_failed: set(uncounted.failed),
            succeeded: 0,
            failed: 0,
            active: 0,
            ready: 0,
            terminating: 0,
            finished: None,
            prev_succeeded_indexes: Indexes::default(),
            succeeded_indexes: Indexes::default(),
            failed_indexes: None,
            requeue: None,
        }
    }

    fn spec(&self) -> &JobSpec {
        self.job.spec.as_ref().expect("a stored Job has a spec")
    }

    fn status(&mut self) -> &mut JobStatus {
        self.job.status.get_or_insert_with(JobStatus::default)
    }

    fn describe(&self) -> String {
        format!(
            "Job {}/{}",
            self.job.namespace().unwrap_or_default(),
            self.job.name_any()
        )
    }

    fn indexed(&self) -> bool {
        self.spec().completion_mode.as_deref() == Some("Indexed")
    }

    /// Whether indexes are retried each up to their own limit (`backoffLimitPerIndex`).
    fn per_index(&self) -> bool {
        self.indexed() && self.spec().backoff_limit_per_index.is_some()
    }

    fn completions(&self) -> Option<i32> {
        self.spec().completions
    }

    fn suspended(&self) -> bool {
        self.spec().suspend == Some(true)
    }

    /// A pod's completion index if this is an Indexed Job and the index is in range.
    fn valid_index(&self, pod: &Pod) -> Option<i32> {
        indexes::of_pod(pod.metadata.annotations.as_ref())
            .filter(|i| *i < self.completions().unwrap_or(0))
    }

    /// Upstream's `isPodFailed`: Failed, or (unless only failed pods are replaced) deleted
    /// before succeeding — orphans never reach Failed.
    fn is_failed(&self, pod: &Pod) -> bool {
        if pods::phase(pod) == "Failed" {
            return true;
        }
        if self.only_replace_failed() {
            return false;
        }
        pod.metadata.deletion_timestamp.is_some() && pods::phase(pod) != "Succeeded"
    }

    fn only_replace_failed(&self) -> bool {
        self.spec().pod_replacement_policy.as_deref() == Some("Failed")
            || self.spec().pod_failure_policy.is_some()
    }

    /// Whether a failed pod counts against `backoffLimit` under the pod failure policy.
    fn counts_failure(&self, pod: &Pod) -> bool {
        match &self.spec().pod_failure_policy {
            Some(policy) => failure_policy::judge(policy, pod).counts,
            None => true,
        }
    }

    /// Finished pods not yet in the status or its uncounted lists.
    fn new_finished(&self, failed: bool) -> Vec<&Pod> {
        let uncounted = if failed {
            &self.uncounted_failed
        } else {
            &self.uncounted_succeeded
        };
        self.pods
            .iter()
            .filter(|p| has_finalizer(p) && !uncounted.contains(&p.uid().unwrap_or_default()))
            .filter(|p| !self.indexed() || self.valid_index(p).is_some())
            .filter(|p| {
                if failed {
                    self.is_failed(p)
                } else {
                    pods::phase(p) == "Succeeded"
                }
            })
            .collect()
    }

    pub(super) async fn run(mut self) -> Result<Action, ControllerError> {
        let status = self.job.status.clone().unwrap_or_default();
        let active_pods: Vec<Pod> = self
            .pods
            .iter()
            .filter(|p| pods::is_active(p))
            .cloned()
            .collect();
        self.active = active_pods.len() as i32;
        self.ready = active_pods.iter().filter(|p| pods::is_ready(p)).count() as i32;
        self.terminating = self.pods.iter().filter(|p| pods::is_terminating(p)).count() as i32;
        let new_succeeded = self.new_finished(false).len() as i32;
        let new_failed = self
            .new_finished(true)
            .into_iter()
            .filter(|p| self.counts_failure(p))
            .count() as i32;
        self.succeeded =
            status.succeeded.unwrap_or(0) + new_succeeded + self.uncounted_succeeded.len() as i32;
        self.failed = status.failed.unwrap_or(0) + new_failed + self.uncounted_failed.len() as i32;

        if status.start_time.is_none() && !self.suspended() {
            self.status().start_time = Some(Time(Timestamp::now()));
        }

        self.decide_failure();
        if self.indexed() {
            self.count_indexes();
            if self.per_index() {
                self.count_failed_indexes();
            }
        }

        let mut suspend_changed = false;
        let mut result = Ok(());
        if self.finished.is_some() {
            let (deleted, outcome) = self.delete_pods(&active_pods, false).await;
            if deleted != self.active {
                // Pods left to stop: not done yet.
                self.finished = None;
            }
            self.active -= deleted;
            self.terminating += deleted;
            result = outcome;
        } else {
            let mut managed = false;
            if self.job.metadata.deletion_timestamp.is_none() {
                result = self.manage(&active_pods).await;
                managed = true;
            }
            let complete = match self.completions() {
                None => self.succeeded > 0 && self.active == 0,
                Some(completions) => self.succeeded >= completions && self.active == 0,
            };
            if complete {
                self.finished = Some(condition(
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ));
            } else if managed {
                suspend_changed = self.suspend_condition().await;
            }
        }

        let needs_update = suspend_changed
            || status.active.unwrap_or(0) != self.active
            || status.ready != Some(self.ready)
            || status.terminating != Some(self.terminating);
        let (active, ready, terminating) = (self.active, self.ready, self.terminating);
        let status = self.status();
        status.active = Some(active);
        status.ready = Some(ready);
        status.terminating = Some(terminating);
        self.track(needs_update).await?;
        result.map_err(ControllerError::new(format!(
            "managing the pods of {}",
            self.describe()
        )))?;
        Ok(match self.requeue {
            Some(after) => Action::requeue(after),
            None => Action::await_change(),
        })
    }

    /// Sets `finished` to where failure leads, if anywhere: an earlier `FailureTarget`, a
    /// `FailJob` rule, the back-off limit, or the active deadline.
    fn decide_failure(&mut self) {
        let conditions = self
            .job
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let find = |kind: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == kind && c.status == "True")
                .cloned()
        };
        if let Some(met) = find("SuccessCriteriaMet") {
            self.finished = Some(met);
            return;
        }
        if let Some(target) = find("FailureTarget") {
            self.finished = Some(failed_from(&target));
            return;
        }
        if let Some(policy) = &self.spec().pod_failure_policy {
            let message = self
                .pods
                .iter()
                .filter(|p| self.is_failed(p))
                .find_map(|p| failure_policy::judge(policy, p).fail_job);
            if let Some(message) = message {
                self.finished = Some(condition(
                    "FailureTarget",
                    "True",
                    "PodFailurePolicy",
                    &message,
                ));
                return;
            }
        }
        let backoff_limit = self.spec().backoff_limit.unwrap_or(6);
        if self.failed > backoff_limit || self.past_backoff_limit_on_failure(backoff_limit) {
            self.finished = Some(condition(
                "FailureTarget",
                "True",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ));
            return;
        }
        let Some(deadline) = self.spec().active_deadline_seconds else {
            return;
        };
        let Some(start) = self.job.status.as_ref().and_then(|s| s.start_time.clone()) else {
            return;
        };
        if self.suspended() {
            return;
        }
        let elapsed = Timestamp::now().as_millisecond() - start.0.as_millisecond();
        let allowed = deadline * 1000;
        if elapsed >= allowed {
            self.finished = Some(condition(
                "FailureTarget",
                "True",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ));
        } else {
            self.requeue_after(Duration::from_millis((allowed - elapsed) as u64));
        }
    }

    /// Under `restartPolicy: OnFailure` pods do not fail, containers restart: their
    /// restarts count against the limit instead.
    fn past_backoff_limit_on_failure(&self, limit: i32) -> bool {
        let restart_policy = self
            .spec()
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref());
        if restart_policy != Some("OnFailure") {
            return false;
        }
        let restarts: i32 = self
            .pods
            .iter()
            .filter(|p| matches!(pods::phase(p), "Running" | "Pending"))
            .filter_map(|p| p.status.as_ref())
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            })
            .map(|c| c.restart_count)
            .sum();
        if limit == 0 {
            restarts > 0
        } else {
            restarts >= limit
        }
    }

    fn count_indexes(&mut self) {
        let completions = self.completions().unwrap_or(0);
        let text = self
            .job
            .status
            .as_ref()
            .and_then(|s| s.completed_indexes.clone())
            .unwrap_or_default();
        self.prev_succeeded_indexes = Indexes::parse(&text, completions);
        let mut all = self.prev_succeeded_indexes.clone();
        for pod in &self.pods {
            if pods::phase(pod) == "Succeeded" {
                if let Some(index) = self.valid_index(pod) {
                    all.insert(index);
                }
            }
        }
        self.succeeded = all.len() as i32;
        self.succeeded_indexes = all;
    }

    /// Upstream's `calculateFailedIndexes` and the failures it leads to: too many failed
    /// indexes, or every index finished with some failed.
    fn count_failed_indexes(&mut self) {
        let completions = self.completions().unwrap_or(0);
        let text = self
            .job
            .status
            .as_ref()
            .and_then(|s| s.failed_indexes.clone())
            .unwrap_or_default();
        let mut failed = Indexes::parse(&text, completions);
        for pod in self
            .pods
            .iter()
            .filter(|p| has_finalizer(p) && self.is_failed(p))
        {
            if let Some(index) = self.valid_index(pod) {
                if per_index::fails_index(self.spec(), pod) {
                    failed.insert(index);
                }
            }
        }
        if self.finished.is_none() {
            let max = self.spec().max_failed_indexes;
            if max.is_some_and(|max| failed.len() as i32 > max) {
                self.finished = Some(condition(
                    "FailureTarget",
                    "True",
                    "MaxFailedIndexesExceeded",
                    "Job has exceeded the specified maximal number of failed indexes",
                ));
            } else if failed.len() > 0
                && failed.len() + self.succeeded_indexes.len() >= completions as usize
            {
                self.finished = Some(condition(
                    "FailureTarget",
                    "True",
                    "FailedIndexes",
                    "Job has failed indexes",
                ));
            }
        }
        self.failed_indexes = Some(failed);
    }

    fn requeue_after(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    /// The `Suspended` condition follows `spec.suspend`; resuming restarts the clock of
    /// `activeDeadlineSeconds`. Returns whether it changed.
    async fn suspend_condition(&mut self) -> bool {
        let (status, reason, message, event, event_message) = if self.suspended() {
            (
                "True",
                "JobSuspended",
                "Job suspended",
                "Suspended",
                "Job suspended",
            )
        } else {
            (
                "False",
                "JobResumed",
                "Job resumed",
                "Resumed",
                "Job resumed",
            )
        };
        let conditions = self.status().conditions.get_or_insert_with(Vec::new);
        if !ensure_condition(conditions, condition("Suspended", status, reason, message)) {
            return false;
        }
        if status == "False" {
            self.status().start_time = Some(Time(Timestamp::now()));
        }
        self.context
            .recorder
            .normal(&self.job, event, event_message)
            .await;
        true
    }
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> JobCondition {
    let now = Time(Timestamp::now());
    JobCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// The `Failed` condition a `FailureTarget` leads to.
fn failed_from(target: &JobCondition) -> JobCondition {
    condition(
        "Failed",
        "True",
        target.reason.as_deref().unwrap_or(""),
        target.message.as_deref().unwrap_or(""),
    )
}

/// Upstream's `ensureJobConditionStatus`: updates a condition of that type when anything
/// differs, adds it unless it would be a new `False` one. Returns whether it changed.
fn ensure_condition(conditions: &mut Vec<JobCondition>, wanted: JobCondition) -> bool {
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == wanted.type_) {
        if existing.status != wanted.status
            || existing.reason != wanted.reason
            || existing.message != wanted.message
        {
            *existing = wanted;
            return true;
        }
        return false;
    }
    if wanted.status != "False" {
        conditions.push(wanted);
        return true;
    }
    false
}

/// When a pod finished, in milliseconds: its containers' last `finishedAt`, else when it
/// stopped being ready, else now.
fn finish_time(pod: &Pod) -> i64 {
    let status = pod.status.as_ref();
    let finished = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0.as_millisecond())
        .max();
    let ready_changed = || {
        status?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")?
            .last_transition_time
            .as_ref()
            .map(|t| t.0.as_millisecond())
    };
    finished
        .or_else(ready_changed)
        .unwrap_or_else(|| Timestamp::now().as_millisecond())
}
