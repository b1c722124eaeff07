//! The TTL-after-finished controller, as upstream's ttl-after-finished-controller: a
//! finished Job with `spec.ttlSecondsAfterFinished` is deleted (its pods with it, by
//! background propagation) that many seconds after its `Complete` / `Failed` condition.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};

use super::job::finished_condition;
use super::ControllerError;

struct Context {
    client: Client,
}

pub async fn run(client: Client) {
    let context = Arc::new(Context {
        client: client.clone(),
    });
    let results = Controller::new(Api::<Job>::all(client), watcher::Config::default()).run(
        reconcile,
        super::retry_later,
        context,
    );
    super::drive("ttl-after-finished", results).await;
}

/// How long until `job` expires: `None` when it never does (no TTL, not finished),
/// zero when it is due.
pub fn time_left(job: &Job, now: Timestamp) -> Option<Duration> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    if job.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let finished = finished_condition(job)?
        .last_transition_time
        .as_ref()
        .map_or(now, |t| t.0);
    let expires = finished.as_millisecond() + i64::from(ttl) * 1000;
    Some(Duration::from_millis(
        (expires - now.as_millisecond()).max(0) as u64,
    ))
}

async fn reconcile(job: Arc<Job>, context: Arc<Context>) -> Result<Action, ControllerError> {
    let Some(left) = time_left(&job, Timestamp::now()) else {
        return Ok(Action::await_change());
    };
    if !left.is_zero() {
        return Ok(Action::requeue(left));
    }
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let jobs: Api<Job> = Api::namespaced(context.client.clone(), &namespace);
    let failed = || format!("deleting expired Job {namespace}/{name}");
    // The cache may be stale: the TTL may have been changed meanwhile.
    let Some(fresh) = jobs
        .get_opt(&name)
        .await
        .map_err(ControllerError::new(failed()))?
    else {
        return Ok(Action::await_change());
    };
    match time_left(&fresh, Timestamp::now()) {
        Some(left) if left.is_zero() => {}
        Some(left) => return Ok(Action::requeue(left)),
        None => return Ok(Action::await_change()),
    }
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(Preconditions {
            uid: fresh.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match jobs.delete(&name, &params).await {
        Ok(_) => tracing::info!(job = %name, %namespace, "deleted a finished Job past its TTL"),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(error) => return Err(ControllerError::new(failed())(error)),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expires_ttl_seconds_after_the_terminal_condition() {
        let job = |ttl: serde_json::Value, conditions: serde_json::Value| -> Job {
            serde_json::from_value(json!({
                "metadata": {"name": "j"},
                "spec": {"ttlSecondsAfterFinished": ttl, "template": {}},
                "status": {"conditions": conditions},
            }))
            .unwrap()
        };
        let done = json!([{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
        let now: Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        assert_eq!(
            time_left(&job(json!(100), done.clone()), now),
            Some(Duration::from_secs(70))
        );
        assert_eq!(time_left(&job(json!(10), done), now), Some(Duration::ZERO));
        assert_eq!(time_left(&job(json!(10), json!([])), now), None);
        assert_eq!(time_left(&job(json!(null), json!([])), now), None);
    }
}
