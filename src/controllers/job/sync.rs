//! One sync of one Job (upstream's `syncJob`): count what finished, decide whether the Job
//! is done, create or delete pods, and write status with the tracking-finalizer protocol.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::failure_policy;
use super::indexes::{self, Indexes, COMPLETION_INDEX};
use super::{has_finalizer, remove_finalizer, Context, TRACKING_FINALIZER};
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

    fn requeue_after(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    /// Deletes `victims`; returns how many went. Pods the Job is done with keep their
    /// finalizers until counted (as failed); pods stopped by `suspend` or a lower
    /// parallelism are `released` first, so that they never count as failures.
    async fn delete_pods(&self, victims: &[Pod], released: bool) -> (i32, Result<(), kube::Error>) {
        let mut deleted = 0;
        let mut result = Ok(());
        for pod in victims {
            if released {
                if let Err(error) = remove_finalizer(&self.pods_api, pod).await {
                    result = Err(error);
                    continue;
                }
            }
            match pods::delete(&self.pods_api, &self.context.recorder, &self.job, pod).await {
                Ok(()) => deleted += 1,
                Err(error) => result = Err(error),
            }
        }
        (deleted, result)
    }

    /// Upstream's `manageJob`: stop everything when suspended, else as many pods as
    /// parallelism and the remaining completions ask for, after the failure back-off.
    async fn manage(&mut self, active_pods: &[Pod]) -> Result<(), kube::Error> {
        if self.suspended() {
            let (deleted, result) = self.delete_pods(active_pods, true).await;
            self.active -= deleted;
            self.terminating += deleted;
            self.ready -= active_pods[..deleted as usize]
                .iter()
                .filter(|p| pods::is_ready(p))
                .count() as i32;
            return result;
        }
        let parallelism = self.spec().parallelism.unwrap_or(1);
        let want = match self.completions() {
            None if self.succeeded > 0 => self.active,
            None => parallelism,
            Some(completions) => (completions - self.succeeded).clamp(0, parallelism),
        };
        if self.active > want {
            // Not-ready pods go first, then the newest.
            let mut victims = active_pods.to_vec();
            victims.sort_by_key(|p| (pods::is_ready(p), std::cmp::Reverse(p.creation_timestamp())));
            victims.truncate((self.active - want).min(MAX_POD_CHANGES) as usize);
            let (deleted, result) = self.delete_pods(&victims, true).await;
            self.active -= deleted;
            self.terminating += deleted;
            return result;
        }
        let terminating = if self.only_replace_failed() {
            self.terminating
        } else {
            0
        };
        let mut missing = (want - terminating - self.active).min(MAX_POD_CHANGES);
        if missing <= 0 {
            return Ok(());
        }
        if let Some(wait) = self.failure_backoff() {
            self.requeue_after(wait);
            return Ok(());
        }
        let mut to_index: Vec<Option<i32>> = vec![None; missing as usize];
        if self.indexed() {
            to_index = self
                .pending_indexes(active_pods, missing)
                .into_iter()
                .map(Some)
                .collect();
            missing = to_index.len() as i32;
        }
        let _ = missing;
        let owner = pods::controller_ref(&self.job);
        let mut result = Ok(());
        for index in to_index {
            let pod = self.new_pod(owner.clone(), index);
            match pods::create(&self.pods_api, &self.context.recorder, &self.job, &pod).await {
                Ok(_) => self.active += 1,
                Err(error) => {
                    // Slow start: one failure stops this round; the retry comes later.
                    result = Err(error);
                    break;
                }
            }
        }
        result
    }

    /// The lowest indexes neither completed nor running.
    fn pending_indexes(&self, active_pods: &[Pod], count: i32) -> Vec<i32> {
        let running: BTreeSet<i32> = active_pods
            .iter()
            .filter_map(|p| self.valid_index(p))
            .collect();
        (0..self.completions().unwrap_or(0))
            .filter(|i| !self.succeeded_indexes.contains(*i) && !running.contains(i))
            .take(count.max(0) as usize)
            .collect()
    }

    fn new_pod(
        &self,
        owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
        index: Option<i32>,
    ) -> Pod {
        let mut template = self.spec().template.clone();
        let meta = template.metadata.get_or_insert_with(Default::default);
        let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
        if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
            finalizers.push(TRACKING_FINALIZER.to_string());
        }
        let name = self.job.name_any();
        let Some(index) = index else {
            return pods::from_template(&template, owner, format!("{name}-"));
        };
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.to_string(), index.to_string());
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.to_string(), index.to_string());
        if let Some(spec) = template.spec.as_mut() {
            spec.hostname = Some(format!("{name}-{index}"));
            for container in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                let env = container.env.get_or_insert_with(Vec::new);
                if !env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                    env.push(EnvVar {
                        name: "JOB_COMPLETION_INDEX".to_string(),
                        value: None,
                        value_from: Some(EnvVarSource {
                            field_ref: Some(ObjectFieldSelector {
                                api_version: None,
                                field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                            }),
                            ..EnvVarSource::default()
                        }),
                    });
                }
            }
        }
        pods::from_template(&template, owner, format!("{name}-{index}-"))
    }

    /// How long to wait before replacing failed pods: 10s doubling with each failure since
    /// the last success, counted from the last failure (upstream's back-off record, here
    /// rebuilt from the pods, which stay until the Job goes).
    fn failure_backoff(&self) -> Option<Duration> {
        let mut finished: Vec<(i64, bool)> = self
            .pods
            .iter()
            .filter_map(|p| match pods::phase(p) {
                "Succeeded" => Some((finish_time(p), false)),
                "Failed" => Some((finish_time(p), true)),
                _ => None,
            })
            .collect();
        finished.sort();
        let failures = finished
            .iter()
            .rev()
            .take_while(|(_, failed)| *failed)
            .count() as u32;
        let (last, _) = *finished.last()?;
        if failures == 0 {
            return None;
        }
        let backoff = FAILURE_BACKOFF
            .saturating_mul(2u32.saturating_pow(failures - 1))
            .min(MAX_FAILURE_BACKOFF);
        let elapsed =
            Duration::from_millis((Timestamp::now().as_millisecond() - last).max(0) as u64);
        backoff.checked_sub(elapsed).filter(|d| !d.is_zero())
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

    /// Upstream's `trackJobStatusAndRemoveFinalizers`: record newly finished pods as
    /// uncounted, remove their finalizers, move them to the counters, and set the terminal
    /// condition once nothing is left in flight.
    async fn track(&mut self, mut needs_flush: bool) -> Result<(), ControllerError> {
        let with_finalizer: BTreeSet<String> = self
            .pods
            .iter()
            .filter(|p| has_finalizer(p))
            .filter_map(|p| p.uid())
            .collect();
        needs_flush |= self.count_uncounted(&with_finalizer);
        let indexed = self.indexed();
        let mut release = Vec::new();
        let mut new_indexes = Vec::new();
        let finished_failing = self
            .finished
            .as_ref()
            .is_some_and(|c| c.type_ != "SuccessCriteriaMet");
        for pod in self.pods.iter().filter(|p| has_finalizer(p)) {
            let uid = pod.uid().unwrap_or_default();
            let failed = self.is_failed(pod);
            let removable = self.job.metadata.deletion_timestamp.is_some()
                || self.finished.is_some()
                || pods::phase(pod) == "Succeeded"
                || failed;
            if !removable {
                continue;
            }
            release.push(pod.clone());
            if pods::phase(pod) == "Succeeded" && !self.uncounted_failed.contains(&uid) {
                if indexed {
                    if let Some(index) = self.valid_index(pod) {
                        if !self.prev_succeeded_indexes.contains(index) {
                            new_indexes.push(index);
                            needs_flush = true;
                        }
                    }
                } else if self.uncounted_succeeded.insert(uid) {
                    needs_flush = true;
                }
            } else if (failed || finished_failing)
                && !self.uncounted_failed.contains(&uid)
                && (!indexed || self.valid_index(pod).is_some())
                && self.counts_failure(pod)
            {
                self.uncounted_failed.insert(uid);
                needs_flush = true;
            }
        }
        if indexed {
            let mut completed = self.prev_succeeded_indexes.clone();
            for index in new_indexes {
                completed.insert(index);
            }
            let text = completed.to_string();
            let status = self.status();
            if status.completed_indexes.as_deref().unwrap_or("") != text {
                needs_flush = true;
            }
            status.succeeded = Some(completed.len() as i32);
            status.completed_indexes = Some(text);
        }
        if let Some(finished) = self.finished.clone() {
            let conditions = self.status().conditions.get_or_insert_with(Vec::new);
            match finished.type_.as_str() {
                "FailureTarget" => {
                    conditions.push(finished.clone());
                    needs_flush = true;
                    self.finished = Some(failed_from(&finished));
                }
                "SuccessCriteriaMet" => {
                    if !conditions.iter().any(|c| c.type_ == "SuccessCriteriaMet") {
                        conditions.push(finished.clone());
                        needs_flush = true;
                    }
                    let mut complete = finished.clone();
                    complete.type_ = "Complete".to_string();
                    complete.last_transition_time = Some(Time(Timestamp::now()));
                    self.finished = Some(complete);
                }
                _ => {}
            }
        }

        // 1. Uncounted uids go to status before any finalizer goes.
        if needs_flush {
            self.write_uncounted();
            self.flush().await?;
            needs_flush = false;
        }
        // 2. Finalizers off.
        let mut still_held = with_finalizer;
        let mut release_error = None;
        for pod in &release {
            match remove_finalizer(&self.pods_api, pod).await {
                Ok(()) => {
                    still_held.remove(&pod.uid().unwrap_or_default());
                }
                Err(error) => release_error = Some(error),
            }
        }
        // 3. Released pods move to the counters.
        needs_flush |= self.count_uncounted(&still_held);
        self.write_uncounted();
        let finishing = release_error.is_none() && self.enact_finished();
        if needs_flush || finishing {
            self.flush().await?;
            if finishing {
                self.record_finished().await;
            }
        }
        match release_error {
            Some(error) => Err(ControllerError::new(format!(
                "removing the tracking finalizers of {}'s pods",
                self.describe()
            ))(error)),
            None => Ok(()),
        }
    }

    /// Moves uncounted uids whose pods no longer hold the finalizer to the counters.
    fn count_uncounted(&mut self, with_finalizer: &BTreeSet<String>) -> bool {
        let before = (self.uncounted_succeeded.len(), self.uncounted_failed.len());
        self.uncounted_succeeded
            .retain(|uid| with_finalizer.contains(uid));
        self.uncounted_failed
            .retain(|uid| with_finalizer.contains(uid));
        let succeeded = (before.0 - self.uncounted_succeeded.len()) as i32;
        let failed = (before.1 - self.uncounted_failed.len()) as i32;
        let indexed = self.indexed();
        let status = self.status();
        if !indexed {
            status.succeeded = Some(status.succeeded.unwrap_or(0) + succeeded);
        }
        status.failed = Some(status.failed.unwrap_or(0) + failed);
        succeeded + failed > 0
    }

    fn write_uncounted(&mut self) {
        // Empty lists are left out, as upstream's `omitempty`.
        let list =
            |uids: &BTreeSet<String>| (!uids.is_empty()).then(|| uids.iter().cloned().collect());
        let uncounted = UncountedTerminatedPods {
            succeeded: list(&self.uncounted_succeeded),
            failed: list(&self.uncounted_failed),
        };
        self.status().uncounted_terminated_pods = Some(uncounted);
    }

    /// Adds the terminal condition once no pod is uncounted or terminating.
    fn enact_finished(&mut self) -> bool {
        let Some(finished) = self.finished.clone() else {
            return false;
        };
        if !self.uncounted_succeeded.is_empty()
            || !self.uncounted_failed.is_empty()
            || self.terminating > 0
        {
            return false;
        }
        let now = Time(Timestamp::now());
        let status = self.status();
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let mut terminal = finished.clone();
        terminal.last_probe_time = Some(now.clone());
        terminal.last_transition_time = Some(now.clone());
        ensure_condition(conditions, terminal);
        if finished.type_ == "Complete" {
            status.completion_time = Some(now);
        }
        true
    }

    async fn record_finished(&self) {
        let Some(finished) = &self.finished else {
            return;
        };
        let recorder = &self.context.recorder;
        if finished.type_ == "Complete" {
            let succeeded = self
                .job
                .status
                .as_ref()
                .and_then(|s| s.succeeded)
                .unwrap_or(0);
            if self.completions().is_some_and(|c| succeeded > c) {
                recorder
                    .warning(
                        &self.job,
                        "TooManySucceededPods",
                        "Too many succeeded pods running after completion count reached",
                    )
                    .await;
            }
            recorder
                .normal(&self.job, "Completed", "Job completed")
                .await;
        } else {
            recorder
                .warning(
                    &self.job,
                    finished.reason.as_deref().unwrap_or(""),
                    finished.message.as_deref().unwrap_or(""),
                )
                .await;
        }
    }

    async fn flush(&mut self) -> Result<(), ControllerError> {
        let name = self.job.name_any();
        // Zero counters are left out, as upstream's `omitempty` (ready and terminating are
        // pointers there, and shown).
        let status = self.status();
        for counter in [
            &mut status.active,
            &mut status.succeeded,
            &mut status.failed,
        ] {
            if *counter == Some(0) {
                *counter = None;
            }
        }
        let written = self
            .jobs
            .replace_status(&name, &PostParams::default(), &self.job)
            .await
            .map_err(ControllerError::new(format!(
                "updating the status of {}",
                self.describe()
            )))?;
        self.job = written;
        Ok(())
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
