//! The CronJob controller, as upstream's cronjob-controller (v2): starts a Job from the
//! CronJob's template at each start time of its schedule (named `<cronjob>-<minutes since
//! the epoch>`, annotated `batch.kubernetes.io/cronjob-scheduled-timestamp`), honouring
//! `suspend`, `startingDeadlineSeconds` and `concurrencyPolicy`; keeps `status.active`,
//! `lastScheduleTime` and `lastSuccessfulTime`; deletes finished Jobs past the history
//! limits. It wakes up just after the next start time.
//!
//! Owns: CronJob status and the CronJob's Jobs (not their pods: [`super::job`]).

mod decide;
pub mod schedule;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};

use self::decide::Step;
use self::schedule::Schedule;
use super::events::Recorder;
use super::job::finished_condition;
use super::ownership::controller_ref;
use super::ControllerError;

/// The annotation with the start time a Job was created for (RFC 3339, in the CronJob's
/// time zone).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

struct Context {
    client: Client,
    recorder: Recorder,
}

pub async fn run(client: Client) {
    let context = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "cronjob-controller"),
    });
    let results = Controller::new(
        Api::<CronJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client), watcher::Config::default())
    .run(reconcile, super::retry_later, context);
    super::drive("cronjob", results).await;
}

async fn reconcile(
    cron_job: Arc<CronJob>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let namespace = cron_job.namespace().unwrap_or_default();
    let name = cron_job.name_any();
    let api: Api<CronJob> = Api::namespaced(context.client.clone(), &namespace);
    let jobs_api: Api<Job> = Api::namespaced(context.client.clone(), &namespace);
    let describe = format!("CronJob {namespace}/{name}");
    // Read afresh: the cache may not have our own last status write yet.
    let Some(mut cron_job) = api
        .get_opt(&name)
        .await
        .map_err(ControllerError::new(format!("reading {describe}")))?
    else {
        return Ok(Action::await_change());
    };
    let uid = cron_job.uid().unwrap_or_default();
    let jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await
        .map_err(ControllerError::new(format!(
            "listing the Jobs of {describe}"
        )))?
        .items
        .into_iter()
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && r.uid == uid)
        })
        .collect();
    let before = cron_job.status.clone();
    let sync = Sync {
        context: &context,
        jobs_api: &jobs_api,
    };
    sync.track_jobs(&mut cron_job, &jobs).await;
    let outcome = sync.schedule(&mut cron_job).await;
    sync.clean_history(&mut cron_job, &jobs).await;
    if cron_job.status != before {
        api.replace_status(&name, &PostParams::default(), &cron_job)
            .await
            .map_err(ControllerError::new(format!(
                "updating the status of {describe}"
            )))?;
    }
    let requeue = outcome.map_err(ControllerError::new(format!(
        "starting a Job of {describe}"
    )))?;
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

struct Sync<'a> {
    context: &'a Context,
    jobs_api: &'a Api<Job>,
}

impl Sync<'_> {
    /// Brings `status.active` and `lastSuccessfulTime` up to date with the Jobs.
    async fn track_jobs(&self, cron_job: &mut CronJob, jobs: &[Job]) {
        let recorder = &self.context.recorder;
        for job in jobs {
            let uid = job.uid().unwrap_or_default();
            let listed = is_active(cron_job, &uid);
            let finished = finished_condition(job).map(|c| c.type_.clone());
            match finished {
                None if !listed => {
                    let message = format!(
                        "Saw a job that the controller did not create or forgot: {}",
                        job.name_any()
                    );
                    recorder
                        .warning(&*cron_job, "UnexpectedJob", &message)
                        .await;
                }
                Some(ref kind) if listed => {
                    remove_active(cron_job, &uid);
                    let message =
                        format!("Saw completed job: {}, condition: {kind}", job.name_any());
                    recorder
                        .normal(&*cron_job, "SawCompletedJob", &message)
                        .await;
                }
                _ => {}
            }
            if finished.as_deref() == Some("Complete") {
                let completed = job.status.as_ref().and_then(|s| s.completion_time.clone());
                let status = cron_job.status.get_or_insert_with(Default::default);
                if let Some(completed) = completed {
                    if status
                        .last_successful_time
                        .as_ref()
                        .is_none_or(|t| t.0 < completed.0)
                    {
                        status.last_successful_time = Some(completed);
                    }
                }
            }
        }
        let active = cron_job
            .status
            .as_ref()
            .and_then(|s| s.active.clone())
            .unwrap_or_default();
        for reference in active {
            let uid = reference.uid.clone().unwrap_or_default();
            if jobs
                .iter()
                .any(|j| j.uid().as_deref() == Some(uid.as_str()))
            {
                continue;
            }
            // Not in the list: make sure it is really gone before forgetting it.
            let name = reference.name.clone().unwrap_or_default();
            if let Ok(None) = self.jobs_api.get_opt(&name).await {
                let message = format!("Active job went missing: {name}");
                recorder.normal(&*cron_job, "MissingJob", &message).await;
                remove_active(cron_job, &uid);
            }
        }
    }

    /// Starts the due Job, if any; returns when to look again.
    async fn schedule(&self, cron_job: &mut CronJob) -> Result<Option<Duration>, kube::Error> {
        let recorder = &self.context.recorder;
        if cron_job.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let spec = cron_job.spec.clone().unwrap_or_default();
        if let Some(zone) = &spec.time_zone {
            if let Err(error) = schedule::time_zone(zone) {
                let message = format!("invalid timeZone: {zone:?}: {error}");
                recorder
                    .warning(&*cron_job, "UnknownTimeZone", &message)
                    .await;
                return Ok(None);
            }
        }
        if spec.suspend == Some(true) {
            return Ok(None);
        }
        if spec.schedule.contains("TZ") {
            let message = format!(
                "CRON_TZ or TZ used in schedule {:?} is not officially supported, see https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/ for more details",
                spec.schedule
            );
            recorder
                .warning(&*cron_job, "UnsupportedSchedule", &message)
                .await;
        }
        let schedule = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            Ok(schedule) => schedule,
            Err(error) => {
                let message = format!("unparseable schedule: {:?} : {error}", spec.schedule);
                recorder
                    .warning(&*cron_job, "UnparseableSchedule", &message)
                    .await;
                return Ok(None);
            }
        };
        let plan = match decide::decide(cron_job, &schedule, Timestamp::now()) {
            Ok(plan) => plan,
            Err(error) => {
                let message = format!("invalid schedule: {} : {error}", spec.schedule);
                recorder
                    .warning(&*cron_job, "InvalidSchedule", &message)
                    .await;
                return Ok(None);
            }
        };
        if plan.too_many_missed {
            recorder
                .warning(&*cron_job, "TooManyMissedTimes", "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew")
                .await;
        }
        let requeue = Some(plan.requeue);
        let (scheduled, replace) = match plan.step {
            Step::Wait | Step::AlreadyStarted => return Ok(requeue),
            Step::Missed(scheduled) => {
                let message = format!(
                    "Missed scheduled time to start a job: {}",
                    rfc1123z(scheduled)
                );
                recorder.warning(&*cron_job, "MissSchedule", &message).await;
                return Ok(requeue);
            }
            Step::Forbidden => {
                recorder
                    .normal(&*cron_job, "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid")
                    .await;
                return Ok(requeue);
            }
            Step::Start { scheduled, replace } => (scheduled, replace),
        };
        if replace {
            let active = cron_job
                .status
                .as_ref()
                .and_then(|s| s.active.clone())
                .unwrap_or_default();
            for reference in active {
                let name = reference.name.clone().unwrap_or_default();
                if let Some(job) = self.jobs_api.get_opt(&name).await? {
                    self.delete_job(cron_job, &job).await?;
                }
            }
        }
        let job = new_job(cron_job, &schedule, scheduled);
        let created = match self.jobs_api.create(&PostParams::default(), &job).await {
            Ok(created) => {
                let message = format!("Created job {}", created.name_any());
                recorder
                    .normal(&*cron_job, "SuccessfulCreate", &message)
                    .await;
                created
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // Created before, by us or someone else: adopt it into the status only if ours.
                let existing = self.jobs_api.get(&job.name_any()).await?;
                let uid = existing.uid().unwrap_or_default();
                if !controlled(&existing, cron_job) || is_active(cron_job, &uid) {
                    return Ok(requeue);
                }
                existing
            }
            Err(error) => {
                let message = format!("Error creating job: {error}");
                recorder.warning(&*cron_job, "FailedCreate", &message).await;
                return Err(error);
            }
        };
        let status = cron_job.status.get_or_insert_with(Default::default);
        status
            .active
            .get_or_insert_with(Vec::new)
            .push(reference(&created));
        status.last_schedule_time = Some(Time(scheduled));
        Ok(requeue)
    }

    /// Deletes the finished Jobs past the history limits.
    async fn clean_history(&self, cron_job: &mut CronJob, jobs: &[Job]) {
        for job in decide::over_history(cron_job, jobs) {
            let _ = self.delete_job(cron_job, &job).await;
        }
    }

    /// Deletes a Job (its pods with it) and forgets it, with upstream's events.
    async fn delete_job(&self, cron_job: &mut CronJob, job: &Job) -> Result<(), kube::Error> {
        let recorder = &self.context.recorder;
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match self.jobs_api.delete(&job.name_any(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                let message = format!("Deleted job: {error}");
                recorder.warning(&*cron_job, "FailedDelete", &message).await;
                return Err(error);
            }
        }
        remove_active(cron_job, &job.uid().unwrap_or_default());
        let message = format!("Deleted job {}", job.name_any());
        recorder
            .normal(&*cron_job, "SuccessfulDelete", &message)
            .await;
        Ok(())
    }
}

fn is_active(cron_job: &CronJob, uid: &str) -> bool {
    cron_job
        .status
        .as_ref()
        .and_then(|s| s.active.as_ref())
        .is_some_and(|a| a.iter().any(|r| r.uid.as_deref() == Some(uid)))
}

fn remove_active(cron_job: &mut CronJob, uid: &str) {
    if let Some(active) = cron_job.status.as_mut().and_then(|s| s.active.as_mut()) {
        active.retain(|r| r.uid.as_deref() != Some(uid));
    }
    // An empty list is left out, as upstream's `omitempty`.
    if let Some(status) = cron_job.status.as_mut() {
        if status.active.as_ref().is_some_and(Vec::is_empty) {
            status.active = None;
        }
    }
}

fn controlled(job: &Job, cron_job: &CronJob) -> bool {
    job.owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == cron_job.metadata.uid.as_ref())
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some(Job::api_version(&()).into_owned()),
        kind: Some(Job::kind(&()).into_owned()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// The Job for start time `scheduled`: the template's labels, annotations and spec, owned
/// by the CronJob.
fn new_job(cron_job: &CronJob, schedule: &Schedule, scheduled: Timestamp) -> Job {
    let template = cron_job
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    // Without spec.timeZone the annotation is in UTC, as upstream's time.LoadLocation("").
    let zone = match &cron_job.spec.as_ref().and_then(|s| s.time_zone.clone()) {
        Some(_) => schedule.zone().clone(),
        None => jiff::tz::TimeZone::UTC,
    };
    annotations.insert(SCHEDULED_TIMESTAMP.to_string(), rfc3339(scheduled, &zone));
    Job {
        metadata: ObjectMeta {
            name: Some(decide::job_name(cron_job, scheduled)),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cron_job)]),
            ..ObjectMeta::default()
        },
        spec: Some(template.spec.unwrap_or_default()),
        status: None,
    }
}

/// Go's RFC 3339 form: `Z` for UTC, else the offset.
fn rfc3339(t: Timestamp, zone: &jiff::tz::TimeZone) -> String {
    let zoned = t.to_zoned(zone.clone());
    if zoned.offset().seconds() == 0 {
        zoned.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// Go's RFC 1123 with numeric zone, in UTC, as upstream's `MissSchedule` message.
fn rfc1123z(t: Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_as_go_formats_them() {
        let t: Timestamp = "2026-01-11T08:00:00Z".parse().unwrap();
        assert_eq!(rfc3339(t, &jiff::tz::TimeZone::UTC), "2026-01-11T08:00:00Z");
        let berlin = schedule::time_zone("Europe/Berlin").unwrap();
        assert_eq!(rfc3339(t, &berlin), "2026-01-11T09:00:00+01:00");
        assert_eq!(rfc1123z(t), "Sun, 11 Jan 2026 08:00:00 +0000");
    }
}
