//! Status of one Job sync with upstream's tracking finalizers
//! (`trackJobStatusAndRemoveFinalizers`): newly finished pods go to
//! `status.uncountedTerminatedPods`, lose their finalizer, then move to the counters; the
//! terminal condition comes once nothing is in flight.

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::UncountedTerminatedPods;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::ResourceExt;

use super::{ensure_condition, failed_from, Sync};
use crate::controllers::job::{has_finalizer, remove_finalizer};
use crate::controllers::pods;
use crate::controllers::ControllerError;

impl Sync<'_> {
    /// Upstream's `trackJobStatusAndRemoveFinalizers`: record newly finished pods as
    /// uncounted, remove their finalizers, move them to the counters, and set the terminal
    /// condition once nothing is left in flight.
    pub(super) async fn track(&mut self, mut needs_flush: bool) -> Result<(), ControllerError> {
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
        if let Some(failed) = &self.failed_indexes {
            let text = failed.to_string();
            let status = self.status();
            if status.failed_indexes.as_deref() != Some(text.as_str()) {
                status.failed_indexes = Some(text);
                needs_flush = true;
            }
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
