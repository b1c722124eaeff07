//! The `scale` subresource: an `autoscaling/v1` Scale view of a workload's replica count
//! (deployments, replicasets, statefulsets, replicationcontrollers, and custom resources
//! whose definition has `subresources.scale`), read and written through the object itself
//! — what `kubectl scale` and autoscalers use.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{ApiError, Call};
use crate::api::error::{FieldError, Target};
use crate::api::http::Body;
use crate::api::object;
use crate::api::selector::LabelSelector;
use crate::store::{Consistency, StoreError};

/// Attempts at a scale that keeps losing the compare-and-swap race.
const ATTEMPTS: usize = 10;

/// A workload's selector as text (`app=web,tier in (a,b)`); a ReplicationController's is a
/// plain map.
fn selector_string(selector: Option<&Value>, plain_map: bool) -> String {
    let selector = match selector {
        None => return String::new(),
        Some(map) if plain_map => LabelSelector::from_object(&json!({"matchLabels": map})),
        Some(selector) => LabelSelector::from_object(selector),
    };
    selector.map(|s| s.to_string()).unwrap_or_default()
}

/// The Scale of `object`.
fn scale_of(call: &Call<'_>, object: &Value) -> Value {
    if let Some(paths) = &call.resource.scale {
        return crate::api::crd::scale::scale_of(object, paths);
    }
    let meta = object::metadata(object).cloned().unwrap_or_default();
    let keep = [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ];
    let metadata: serde_json::Map<String, Value> = meta
        .into_iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .collect();
    let plain_map = call.resource.kind == "ReplicationController";
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": object.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": object.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector_string(object.pointer("/spec/selector"), plain_map),
        },
    })
}

fn scale_target(name: &str) -> Target {
    Target {
        qualified_resource: "scale.autoscaling".to_string(),
        group: "autoscaling".to_string(),
        kind: "Scale".to_string(),
        name: name.to_string(),
    }
}

/// The Scale the client wants, from a PUT body or a patch of the current Scale.
fn wanted(call: &Call<'_>, current: &Value, is_patch: bool) -> Result<Value, ApiError> {
    if !is_patch {
        return call.body_json();
    }
    let patch: Value = serde_json::from_slice(&call.body)
        .map_err(|e| ApiError::BadRequest(format!("the patch is not valid JSON: {e}")))?;
    let mut scale = current.clone();
    let content_type = call
        .content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .trim();
    match content_type {
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| ApiError::BadRequest(format!("the JSON patch is malformed: {e}")))?;
            json_patch::patch(&mut scale, &ops)
                .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
        }
        // A Scale has no lists: strategic merge and merge patch agree.
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            json_patch::merge(&mut scale, &patch)
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
            )))
        }
    }
    Ok(scale)
}

pub(super) async fn get(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let name = call.path.name.as_deref().unwrap_or_default();
    let object = call.decode(&call.load(name, Consistency::Linearizable).await?)?;
    Ok(call.ok(StatusCode::OK, &scale_of(call, &object)))
}

/// PUT or PATCH: sets the object's `spec.replicas`.
pub(super) async fn update(call: &Call<'_>, is_patch: bool) -> Result<Response<Body>, ApiError> {
    let name = call.path.name.as_deref().unwrap_or_default().to_string();
    let key = call.key(&name);
    for _ in 0..ATTEMPTS {
        let kv = call.load(&name, Consistency::Linearizable).await?;
        let mut object = call.decode(&kv)?;
        let current = scale_of(call, &object);
        let scale = wanted(call, &current, is_patch)?;
        let expected = object::resource_version(&scale)?;
        if expected.is_some_and(|rv| rv != kv.mod_revision) {
            return Err(ApiError::Conflict {
                target: call.target(&name),
                message: "the object has been modified; please apply your changes to the latest version and try again".to_string(),
            });
        }
        let replicas = match scale.pointer("/spec/replicas") {
            None | Some(Value::Null) => 0,
            Some(value) => value
                .as_i64()
                .filter(|r| i32::try_from(*r).is_ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "Scale in version \"v1\" cannot be handled as a Scale: spec.replicas: expected a 32-bit integer, got {value}"
                    ))
                })?,
        };
        if replicas < 0 {
            return Err(ApiError::Invalid {
                target: scale_target(&name),
                causes: vec![FieldError::invalid_raw(
                    "spec.replicas",
                    &replicas.to_string(),
                    "must be greater than or equal to 0",
                )],
            });
        }
        if current.pointer("/spec/replicas").and_then(Value::as_i64) == Some(replicas) {
            return Ok(call.ok(StatusCode::OK, &current));
        }
        let before = object.clone();
        match &call.resource.scale {
            Some(paths) => crate::api::crd::scale::apply_scale(&mut object, replicas, paths),
            None => object["spec"]["replicas"] = json!(replicas),
        }
        super::create::writer(call).record_update(Some(&before), &mut object);
        // The object with its new count must still be valid (a CRD's maximum, say).
        super::validate(call, &mut object)?;
        let generation = object::metadata(&object)
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64);
        if let (Some(generation), Some(meta)) = (generation, object::metadata_mut(&mut object)) {
            meta.insert("generation".into(), json!(generation + 1));
        }
        if call.dry_run {
            return Ok(call.ok(StatusCode::OK, &scale_of(call, &object)));
        }
        match call.store_update(&key, &mut object, kv.mod_revision).await {
            Ok(()) => return Ok(call.ok(StatusCode::OK, &scale_of(call, &object))),
            Err(StoreError::Conflict { .. }) if expected.is_none() => continue,
            Err(e) => return Err(ApiError::from_store(e, call.target(&name))),
        }
    }
    Err(ApiError::Conflict {
        target: call.target(&name),
        message: "the object kept changing; please try again".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_print_like_upstream() {
        let selector = json!({
            "matchLabels": {"tier": "web", "app": "shop"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "dev"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        });
        assert_eq!(
            selector_string(Some(&selector), false),
            "app=shop,!canary,env in (dev,prod),tier=web"
        );
        assert_eq!(selector_string(Some(&json!({"app": "x"})), true), "app=x");
        assert_eq!(selector_string(None, false), "");
    }
}
