//! Pods of one Job sync (upstream's `manageJob`): as many as parallelism and the remaining
//! completions ask for, after the failure back-off; stopped when suspended or too many.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::{finish_time, Sync, FAILURE_BACKOFF, MAX_FAILURE_BACKOFF, MAX_POD_CHANGES};
use crate::controllers::job::indexes::COMPLETION_INDEX;
use crate::controllers::job::per_index;
use crate::controllers::job::{remove_finalizer, TRACKING_FINALIZER};
use crate::controllers::ownership::{controller_ref, gone};
use crate::controllers::pods;

impl Sync<'_> {
    /// Deletes `victims`; returns how many went. Pods the Job is done with keep their
    /// finalizers until counted (as failed); pods stopped by `suspend` or a lower
    /// parallelism are `released` first, so that they never count as failures.
    pub(super) async fn delete_pods(
        &self,
        victims: &[Pod],
        released: bool,
    ) -> (i32, Result<(), kube::Error>) {
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
                // Already gone: nothing left to stop.
                Err(error) if gone(&error) => deleted += 1,
                Err(error) => result = Err(error),
            }
        }
        (deleted, result)
    }

    /// Upstream's `manageJob`: stop everything when suspended, else as many pods as
    /// parallelism and the remaining completions ask for, after the failure back-off.
    pub(super) async fn manage(&mut self, active_pods: &[Pod]) -> Result<(), kube::Error> {
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
        let missing = (want - terminating - self.active).min(MAX_POD_CHANGES);
        if missing <= 0 {
            return Ok(());
        }
        // Per-index Jobs back off per index, below; the others as a whole.
        if !self.per_index() {
            if let Some(wait) = self.failure_backoff() {
                self.requeue_after(wait);
                return Ok(());
            }
        }
        let to_index: Vec<Option<i32>> = if self.indexed() {
            let pending = self.pending_indexes(active_pods, missing);
            self.ready_indexes(pending).into_iter().map(Some).collect()
        } else {
            vec![None; missing as usize]
        };
        let owner = controller_ref(&self.job);
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
        let failed = self.failed_indexes.clone().unwrap_or_default();
        (0..self.completions().unwrap_or(0))
            .filter(|i| !self.succeeded_indexes.contains(*i) && !failed.contains(*i))
            .filter(|i| !running.contains(i))
            .take(count.max(0) as usize)
            .collect()
    }

    /// Per index, the failure count for its next pod and its last failure (ms).
    fn index_failures(&self) -> BTreeMap<i32, (i32, i64)> {
        per_index::last_failures(self.pods.iter().filter_map(|p| {
            let counted = self.is_failed(p) && self.counts_failure(p);
            counted.then(|| Some((self.valid_index(p)?, p, finish_time(p))))?
        }))
    }

    /// Of `pending`, the indexes past their own failure back-off (all, without
    /// `backoffLimitPerIndex`); wakes up for the others.
    fn ready_indexes(&mut self, pending: Vec<i32>) -> Vec<i32> {
        if !self.per_index() {
            return pending;
        }
        let failures = self.index_failures();
        let now = Timestamp::now().as_millisecond();
        let mut ready = Vec::new();
        for index in pending {
            let left = failures.get(&index).and_then(|(count, at)| {
                per_index::backoff_left(*count, *at, now, FAILURE_BACKOFF, MAX_FAILURE_BACKOFF)
            });
            match left {
                Some(wait) => self.requeue_after(wait),
                None => ready.push(index),
            }
        }
        ready
    }

    fn new_pod(&self, owner: OwnerReference, index: Option<i32>) -> Pod {
        let mut template = self.spec().template.clone();
        let meta = template.metadata.get_or_insert_with(Default::default);
        let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
        if !finalizers.iter().any(|f| f == TRACKING_FINALIZER) {
            finalizers.push(TRACKING_FINALIZER.to_string());
        }
        let name = self.job.name_any();
        let Some(index) = index else {
            return pods::from_template(&template, &owner);
        };
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.to_string(), index.to_string());
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.to_string(), index.to_string());
        if self.per_index() {
            let failures = self
                .index_failures()
                .get(&index)
                .map_or(0, |(count, _)| *count);
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(per_index::FAILURE_COUNT.to_string(), failures.to_string());
        }
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
        let mut pod = pods::from_template(&template, &owner);
        pod.metadata.generate_name = Some(format!("{name}-{index}-"));
        pod
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
}
