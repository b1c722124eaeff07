//! `batch/v1` defaults: Job parallelism, completions, backoff; CronJob policies.

use serde_json::{json, Value};

use super::core::template_at;
use super::{default, object_at};

pub(super) fn job(object: &mut Value) {
    job_spec(object_at(object, "/spec"));
    template_at(object, "/spec/template");
}

fn job_spec(spec: &mut Value) {
    let unset = |spec: &Value, field: &str| spec.get(field).is_none_or(Value::is_null);
    if unset(spec, "completions") && unset(spec, "parallelism") {
        spec["completions"] = json!(1);
    }
    default(spec, "parallelism", json!(1));
    let backoff = if unset(spec, "backoffLimitPerIndex") {
        6
    } else {
        i32::MAX
    };
    default(spec, "backoffLimit", json!(backoff));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    let replacement = if unset(spec, "podFailurePolicy") {
        "TerminatingOrFailed"
    } else {
        "Failed"
    };
    default(spec, "podReplacementPolicy", json!(replacement));
}

pub(super) fn cron_job(object: &mut Value) {
    let spec = object_at(object, "/spec");
    default(spec, "concurrencyPolicy", json!("Allow"));
    default(spec, "suspend", json!(false));
    default(spec, "successfulJobsHistoryLimit", json!(3));
    default(spec, "failedJobsHistoryLimit", json!(1));
    if spec.pointer("/jobTemplate/spec").is_some() {
        job_spec(object_at(spec, "/jobTemplate/spec"));
    }
    template_at(object, "/spec/jobTemplate/spec/template");
}
