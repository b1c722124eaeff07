//! Per-kind work around writes beyond storing JSON — upstream's registry strategies and
//! built-in admission: a new pod's `Pending` status and QoS class, a Job's generated
//! selector, a Service's ClusterIP and NodePorts (from [`crate::api::services`]), given back
//! when the write fails or the Service goes; a new pod's priority from its PriorityClass
//! ([`super::priority`]).

use serde_json::{json, Value};

use super::{ApiError, Call};
use crate::api::defaults::pod_qos_class;
use crate::api::object;
use crate::api::services::strategy;

fn is(call: &Call<'_>, group: &str, kind: &str) -> bool {
    call.resource.group == group && call.resource.kind == kind
}

/// A new object as the client sent it, before defaulting: mutating admission that must
/// tell what the client gave from what defaulting adds.
pub(super) async fn admit_new(call: &Call<'_>, object: &mut Value) -> Result<(), ApiError> {
    if is(call, "", "Pod") && call.path.subresource.is_none() {
        super::priority::admit_pod(call, object).await?;
    }
    Ok(())
}

/// A new object, named and defaulted, before validation.
pub(super) fn prepare_create(call: &Call<'_>, object: &mut Value) {
    let kind = call.resource.kind.as_str();
    match (call.resource.group.as_str(), kind) {
        ("", "Pod") => {
            let qos = object
                .get("spec")
                .map(pod_qos_class)
                .unwrap_or("BestEffort");
            object["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        ("", "PersistentVolume" | "PersistentVolumeClaim") => {
            object["status"] = json!({"phase": "Pending"});
        }
        ("batch", "Job") => job_selector(object),
        _ => {}
    }
}

/// A Job without `manualSelector` selects its pods by its own uid, as upstream generates.
fn job_selector(job: &mut Value) {
    if job.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let uid = object::meta_str(job, "uid").unwrap_or_default().to_string();
    let name = object::name(job).to_string();
    let Some(spec) = job.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let template_meta = &mut spec["template"]["metadata"];
    if !template_meta.is_object() {
        *template_meta = json!({});
    }
    let labels = &mut template_meta["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        labels[key] = json!(value);
    }
}

/// A valid new object, just before it is stored: allocations.
pub(super) async fn admit_create(call: &Call<'_>, object: &mut Value) -> Result<(), ApiError> {
    if is(call, "", "Service") {
        let target = call.target(object::name(object));
        strategy::prepare_create(&call.api.services, &target, object).await?;
    }
    Ok(())
}

/// A valid changed object, just before it is stored: allocations.
pub(super) async fn admit_update(
    call: &Call<'_>,
    current: &Value,
    object: &mut Value,
) -> Result<(), ApiError> {
    if is(call, "", "Service") && call.path.subresource.is_none() {
        let target = call.target(object::name(object));
        strategy::prepare_update(&call.api.services, &target, current, object).await?;
    }
    Ok(())
}

/// `object` was not stored after all, or is gone: give back what it held and `kept` (the
/// stored version after a failed update, else null) does not.
pub(super) async fn release(call: &Call<'_>, object: &Value, kept: &Value) {
    if is(call, "", "Service") {
        if let Err(e) = call.api.services.release_dropped(object, kept).await {
            tracing::warn!(error = %e, service = object::name(object), "releasing a Service's addresses failed; the reconciler will");
        }
    }
}
