//! What a CronJob should do now — upstream's `syncCronJob` decisions as pure functions of
//! the CronJob, its schedule and the clock, so that they are tested over fixed times: which
//! start time is due, whether it was missed, already started, forbidden by a running Job
//! or replaces it, and which finished Jobs the history limits drop.

use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::schedule::{self, Schedule, MANY_MISSED};

/// How long after a start time the controller wakes up for it.
const WAKE_DELTA: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No start time is due.
    Wait,
    /// The due start time is past `startingDeadlineSeconds` (`MissSchedule`).
    Missed(Timestamp),
    /// A Job for the due start time exists already.
    AlreadyStarted,
    /// `Forbid` and a Job is still active (`JobAlreadyActive`).
    Forbidden,
    /// Create the Job for `scheduled`, after deleting the active ones if `replace`.
    Start { scheduled: Timestamp, replace: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub step: Step,
    /// More than 100 start times were missed (`TooManyMissedTimes`).
    pub too_many_missed: bool,
    /// When to look again.
    pub requeue: Duration,
}

/// Where scheduling resumes: the last start time, else the CronJob's creation.
fn earliest(cron_job: &CronJob) -> Timestamp {
    cron_job
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .or(cron_job.metadata.creation_timestamp.as_ref())
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
}

/// The name of the Job started for `scheduled`: the CronJob's name and the start time in
/// minutes since the epoch, so that a start time is never run twice.
pub fn job_name(cron_job: &CronJob, scheduled: Timestamp) -> String {
    format!(
        "{}-{}",
        cron_job.name_any(),
        scheduled.as_second().div_euclid(60)
    )
}

/// Decides the step for `now`. Errors on a schedule that cannot be evaluated.
pub fn decide(cron_job: &CronJob, schedule: &Schedule, now: Timestamp) -> Result<Plan, String> {
    let spec = cron_job.spec.as_ref().ok_or("a CronJob without spec")?;
    let mut from = earliest(cron_job);
    if let Some(deadline) = spec.starting_deadline_seconds {
        // Nothing older than the deadline will be started anyway.
        let floor = Timestamp::from_second(now.as_second() - deadline).unwrap_or(from);
        from = from.max(floor);
    }
    let due = schedule::most_recent(schedule, from, now)?;
    let requeue = requeue(cron_job, schedule, now);
    let plan = |step| Plan {
        step,
        too_many_missed: due.missed > MANY_MISSED,
        requeue,
    };
    let Some(scheduled) = due.latest else {
        return Ok(plan(Step::Wait));
    };
    if let Some(deadline) = spec.starting_deadline_seconds {
        if scheduled.as_second() + deadline < now.as_second() {
            return Ok(plan(Step::Missed(scheduled)));
        }
    }
    let status = cron_job.status.clone().unwrap_or_default();
    let active = status.active.unwrap_or_default();
    let name = job_name(cron_job, scheduled);
    let already = active
        .iter()
        .any(|r| r.name.as_deref() == Some(name.as_str()))
        || status.last_schedule_time.as_ref().map(|t| t.0) == Some(scheduled);
    if already {
        return Ok(plan(Step::AlreadyStarted));
    }
    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
    if policy == "Forbid" && !active.is_empty() {
        return Ok(plan(Step::Forbidden));
    }
    Ok(plan(Step::Start {
        scheduled,
        replace: policy == "Replace" && !active.is_empty(),
    }))
}

/// Upstream's `nextScheduleTimeDuration`: until just after the next start time.
fn requeue(cron_job: &CronJob, schedule: &Schedule, now: Timestamp) -> Duration {
    let earliest = earliest(cron_job);
    let after = match schedule::most_recent(schedule, earliest, now) {
        Ok(due) => match due.latest {
            Some(latest) => latest,
            None if due.missed == 0 => earliest,
            None => now,
        },
        Err(_) => now,
    };
    match schedule.next(after) {
        Some(next) => schedule::until(next, now) + WAKE_DELTA,
        None => Duration::from_secs(3600),
    }
}

/// The finished Jobs past `successfulJobsHistoryLimit` / `failedJobsHistoryLimit`, oldest
/// first.
pub fn over_history(cron_job: &CronJob, jobs: &[Job]) -> Vec<Job> {
    let spec = cron_job.spec.clone().unwrap_or_default();
    let mut doomed = Vec::new();
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit),
        ("Failed", spec.failed_jobs_history_limit),
    ] {
        let Some(limit) = limit else { continue };
        let mut finished: Vec<&Job> = jobs
            .iter()
            .filter(|j| {
                crate::controllers::job::finished_condition(j).is_some_and(|c| c.type_ == kind)
            })
            .collect();
        // Oldest start first; Jobs that never started count as the newest.
        finished.sort_by_key(|j| {
            let start = j
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0);
            (start.is_none(), start, j.name_any())
        });
        let excess = finished.len().saturating_sub(limit.max(0) as usize);
        doomed.extend(finished.into_iter().take(excess).cloned());
    }
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn cron_job(spec: serde_json::Value, status: serde_json::Value) -> CronJob {
        let mut spec_full =
            json!({"schedule": "*/10 * * * *", "jobTemplate": {"spec": {"template": {}}}});
        spec_full
            .as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "metadata": {"name": "backup", "creationTimestamp": "2026-01-01T10:05:00Z"},
            "spec": spec_full,
            "status": status,
        }))
        .unwrap()
    }

    fn plan(cj: &CronJob, now: &str) -> Plan {
        let schedule = Schedule::parse(&cj.spec.as_ref().unwrap().schedule, Some("UTC")).unwrap();
        decide(cj, &schedule, at(now)).unwrap()
    }

    #[test]
    fn starts_the_latest_due_time_once() {
        let cj = cron_job(json!({}), json!({}));
        let early = plan(&cj, "2026-01-01T10:09:00Z");
        assert_eq!(early.step, Step::Wait);
        assert_eq!(early.requeue, Duration::from_secs(60) + WAKE_DELTA);
        let due = plan(&cj, "2026-01-01T10:10:01Z");
        let scheduled = at("2026-01-01T10:10:00Z");
        assert_eq!(
            due.step,
            Step::Start {
                scheduled,
                replace: false
            }
        );
        assert_eq!(due.requeue, Duration::from_secs(599) + WAKE_DELTA);
        assert_eq!(job_name(&cj, scheduled), "backup-29454370");
        // Several missed: only the latest starts.
        assert_eq!(
            plan(&cj, "2026-01-01T10:45:00Z").step,
            Step::Start {
                scheduled: at("2026-01-01T10:40:00Z"),
                replace: false
            }
        );
        let started = cron_job(
            json!({}),
            json!({"lastScheduleTime": "2026-01-01T10:10:00Z"}),
        );
        assert_eq!(plan(&started, "2026-01-01T10:12:00Z").step, Step::Wait);
    }

    #[test]
    fn starting_deadline_and_too_many_missed() {
        let cj = cron_job(json!({"startingDeadlineSeconds": 30}), json!({}));
        assert_eq!(
            plan(&cj, "2026-01-01T10:10:20Z").step,
            Step::Start {
                scheduled: at("2026-01-01T10:10:00Z"),
                replace: false
            }
        );
        // 10:10 is 50s past: the deadline floor hides it, nothing is due.
        assert_eq!(plan(&cj, "2026-01-01T10:10:50Z").step, Step::Wait);
        let long = cron_job(json!({"startingDeadlineSeconds": 100000}), json!({}));
        let late = plan(&long, "2026-01-02T10:05:00Z");
        assert!(late.too_many_missed);
        assert_eq!(
            late.step,
            Step::Start {
                scheduled: at("2026-01-02T10:00:00Z"),
                replace: false
            }
        );
        let no_deadline = cron_job(json!({}), json!({}));
        assert!(plan(&no_deadline, "2026-01-02T10:05:00Z").too_many_missed);
    }

    #[test]
    fn concurrency_policies() {
        let active = json!({"active": [{"name": "backup-29454370", "kind": "Job"}],
                            "lastScheduleTime": "2026-01-01T10:10:00Z"});
        let scheduled = at("2026-01-01T10:20:00Z");
        let allow = cron_job(json!({"concurrencyPolicy": "Allow"}), active.clone());
        assert_eq!(
            plan(&allow, "2026-01-01T10:20:00Z").step,
            Step::Start {
                scheduled,
                replace: false
            }
        );
        let forbid = cron_job(json!({"concurrencyPolicy": "Forbid"}), active.clone());
        assert_eq!(plan(&forbid, "2026-01-01T10:20:00Z").step, Step::Forbidden);
        let replace = cron_job(json!({"concurrencyPolicy": "Replace"}), active);
        assert_eq!(
            plan(&replace, "2026-01-01T10:20:00Z").step,
            Step::Start {
                scheduled,
                replace: true
            }
        );
        let idle = cron_job(
            json!({"concurrencyPolicy": "Forbid"}),
            json!({"lastScheduleTime": "2026-01-01T10:10:00Z"}),
        );
        assert_eq!(
            plan(&idle, "2026-01-01T10:20:00Z").step,
            Step::Start {
                scheduled,
                replace: false
            }
        );
    }

    #[test]
    fn history_limits_drop_the_oldest_finished_jobs() {
        let job = |name: &str, kind: &str, start: &str| -> Job {
            serde_json::from_value(json!({"metadata": {"name": name}, "status": {
                "startTime": start,
                "conditions": [{"type": kind, "status": "True"}]}}))
            .unwrap()
        };
        let jobs = vec![
            job("s3", "Complete", "2026-01-01T10:30:00Z"),
            job("s1", "Complete", "2026-01-01T10:10:00Z"),
            job("s2", "Complete", "2026-01-01T10:20:00Z"),
            job("f1", "Failed", "2026-01-01T10:05:00Z"),
            job("f2", "Failed", "2026-01-01T10:25:00Z"),
            serde_json::from_value(json!({"metadata": {"name": "running"}})).unwrap(),
        ];
        let cj = cron_job(
            json!({"successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1}),
            json!({}),
        );
        let names: Vec<String> = over_history(&cj, &jobs)
            .iter()
            .map(|j| j.name_any())
            .collect();
        assert_eq!(names, ["s1", "s2", "f1"]);
        let none = cron_job(
            json!({"successfulJobsHistoryLimit": 0, "failedJobsHistoryLimit": 0}),
            json!({}),
        );
        assert_eq!(over_history(&none, &jobs).len(), 5);
    }
}
