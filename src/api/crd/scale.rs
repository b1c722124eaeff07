//! The `/scale` subresource of custom resources: an `autoscaling/v1` Scale read from and
//! written to the paths of the definition's `subresources.scale`.

use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::jsonpath::JsonPath;
use crate::api::error::{ApiError, FieldError, Target};
use crate::api::http::{json as json_response, Body};
use crate::api::object;
use crate::api::registry::{ResourceType, ScalePaths};
use crate::api::request::{ResourcePath, Verb};
use crate::api::rest::Api;
use crate::store::{Consistency, StoreError};

/// Attempts at a write that keeps losing the compare-and-swap race.
const ATTEMPTS: usize = 10;

fn first(object: &Value, path: &str) -> Option<Value> {
    let path = JsonPath::parse(path).ok()?;
    path.find(object).into_iter().next().cloned()
}

/// The Scale of `object`: its replicas at `specReplicasPath`, observed replicas at
/// `statusReplicasPath` and selector at `labelSelectorPath` (0, 0 and none when missing).
pub fn scale_of(object: &Value, paths: &ScalePaths) -> Value {
    let meta = object::metadata(object).cloned().unwrap_or_default();
    let mut scale_meta = Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(value) = meta.get(field) {
            scale_meta.insert(field.to_string(), value.clone());
        }
    }
    let replicas = |path: &str| {
        first(object, path)
            .and_then(|v| v.as_i64())
            .unwrap_or_default()
    };
    let mut status = json!({"replicas": replicas(&paths.status_replicas)});
    if let Some(selector) = paths
        .label_selector
        .as_deref()
        .and_then(|p| first(object, p))
        .and_then(|v| v.as_str().map(str::to_string))
    {
        status["selector"] = json!(selector);
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": replicas(&paths.spec_replicas)},
        "status": status,
    })
}

/// Writes `replicas` at the object's `specReplicasPath`, making the maps on the way.
pub fn apply_scale(object: &mut Value, replicas: i64, paths: &ScalePaths) {
    let Some(fields) = JsonPath::parse(&paths.spec_replicas).ok().and_then(|p| {
        p.fields()
            .map(|f| f.into_iter().map(str::to_string).collect::<Vec<_>>())
    }) else {
        return;
    };
    let Some((last, parents)) = fields.split_last() else {
        return;
    };
    let mut at = object;
    for field in parents {
        if !at.get(field).is_some_and(Value::is_object) {
            at[field.as_str()] = json!({});
        }
        at = &mut at[field.as_str()];
    }
    at[last.as_str()] = json!(replicas);
}

/// What a request asks the Scale to become.
fn requested(
    verb: Verb,
    content_type: Option<&str>,
    body: &[u8],
    current: &Value,
) -> Result<Value, ApiError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    if verb == Verb::Update {
        return Ok(body);
    }
    let mut scale = current.clone();
    match content_type.map(|c| c.split(';').next().unwrap_or_default().trim()) {
        Some("application/json-patch+json") => {
            let patch: json_patch::Patch = serde_json::from_value(body)
                .map_err(|e| ApiError::BadRequest(format!("the JSON patch is malformed: {e}")))?;
            json_patch::patch(&mut scale, &patch).map_err(|e| {
                ApiError::Unprocessable(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
        }
        Some("application/merge-patch+json" | "application/strategic-merge-patch+json") => {
            json_patch::merge(&mut scale, &body)
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
            )))
        }
    }
    Ok(scale)
}

/// Serves GET, PUT and PATCH of `<resource>/<name>/scale`.
pub async fn serve(
    api: &Api,
    resource: &ResourceType,
    path: &ResourcePath,
    verb: Verb,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let paths = resource.scale.as_ref().ok_or(ApiError::UnknownResource)?;
    let name = path.name.clone().unwrap_or_default();
    let key = resource.key(path.namespace.as_deref(), &name);
    let target = Target {
        kind: "Scale".to_string(),
        ..Target::new(resource, &name)
    };
    if !matches!(verb, Verb::Get | Verb::Update | Verb::Patch) {
        return Err(ApiError::MethodNotAllowed);
    }
    for _ in 0..ATTEMPTS {
        let kv = api
            .store
            .get(&key, Consistency::Linearizable)
            .await
            .map_err(|e| ApiError::from_store(e, target.clone()))?
            .ok_or_else(|| ApiError::NotFound(Target::new(resource, &name)))?;
        let mut object = object::decode(&kv)?;
        let current = scale_of(&object, paths);
        if verb == Verb::Get {
            return Ok(json_response(StatusCode::OK, &current));
        }
        let wanted = requested(verb, content_type, body, &current)?;
        let expected = object::resource_version(&wanted)?;
        if expected.is_some_and(|rv| rv != kv.mod_revision) {
            return Err(ApiError::Conflict {
                target: target.clone(),
                message: "the object has been modified; please apply your changes to the latest version and try again".to_string(),
            });
        }
        let replicas = match wanted.pointer("/spec/replicas") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_i64()
                .filter(|r| *r >= 0)
                .ok_or_else(|| ApiError::Invalid {
                    target: target.clone(),
                    causes: vec![FieldError {
                        reason: "FieldValueInvalid",
                        field: "spec.replicas".to_string(),
                        message: format!(
                            "Invalid value: {}: must be greater than or equal to 0",
                            super::fields::go_value(v)
                        ),
                    }],
                })?,
        };
        let before = object.get("spec").cloned();
        apply_scale(&mut object, replicas, paths);
        if object.get("spec") != before.as_ref() {
            if let Some(meta) = object::metadata_mut(&mut object) {
                let generation = meta.get("generation").and_then(Value::as_i64).unwrap_or(0);
                meta.insert("generation".into(), json!(generation + 1));
            }
        }
        match api
            .store
            .update(&key, object::encode(&object), Some(kv.mod_revision))
            .await
        {
            Ok(written) => {
                object::set_resource_version(&mut object, written.mod_revision);
                return Ok(json_response(StatusCode::OK, &scale_of(&object, paths)));
            }
            Err(StoreError::Conflict { .. }) if expected.is_none() => continue,
            Err(e) => return Err(ApiError::from_store(e, target)),
        }
    }
    Err(ApiError::Conflict {
        target,
        message: "the object kept changing; please try again".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> ScalePaths {
        ScalePaths {
            spec_replicas: ".spec.replicas".to_string(),
            status_replicas: ".status.replicas".to_string(),
            label_selector: Some(".status.selector".to_string()),
        }
    }

    #[test]
    fn scale_reads_and_writes_the_paths() {
        let mut object = json!({
            "metadata": {"name": "w1", "namespace": "default", "resourceVersion": "7", "labels": {"a": "b"}},
            "spec": {"replicas": 2},
            "status": {"replicas": 1, "selector": "app=w"}
        });
        let scale = scale_of(&object, &paths());
        assert_eq!(scale["kind"], "Scale");
        assert_eq!(scale["apiVersion"], "autoscaling/v1");
        assert_eq!(scale["metadata"]["name"], "w1");
        assert!(scale["metadata"].get("labels").is_none());
        assert_eq!(scale["spec"]["replicas"], 2);
        assert_eq!(scale["status"], json!({"replicas": 1, "selector": "app=w"}));
        apply_scale(&mut object, 5, &paths());
        assert_eq!(object["spec"]["replicas"], 5);
        let mut bare = json!({"metadata": {"name": "w2"}});
        assert_eq!(scale_of(&bare, &paths())["spec"]["replicas"], 0);
        apply_scale(&mut bare, 3, &paths());
        assert_eq!(bare["spec"]["replicas"], 3);
    }
}
