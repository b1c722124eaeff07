//! update (PUT) and patch: read the stored object, compute the new one, keep what only the
//! server may change, and write it back with compare-and-swap, retrying when another write
//! got in between (unless the client named the resourceVersion it expects).

use http::{Response, StatusCode};
use serde_json::Value;

use super::{check_type_and_namespace, spec, validate, ApiError, Call};
use crate::api::http::Body;
use crate::api::object;
use crate::store::{Consistency, KeyValue, StoreError};

/// Metadata fields that keep their stored value whatever the client sends.
const PRESERVED: &[&str] = &[
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
];
/// Attempts at an update that keeps losing the compare-and-swap race.
const ATTEMPTS: usize = 10;

/// How the new object is computed from the stored one.
enum Change<'a> {
    /// A whole object (PUT), with the resourceVersion it expects, if any.
    Replace(&'a Value),
    /// A patch of the given content type.
    Patch {
        content_type: &'a str,
        patch: &'a Value,
    },
}

fn is_status(call: &Call<'_>) -> bool {
    call.path.subresource.as_deref() == Some("status")
}

/// Applies `patch` to `current`.
fn apply_patch(content_type: &str, current: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut patched = current.clone();
    match content_type {
        "application/merge-patch+json" => json_patch::merge(&mut patched, patch),
        // Maps merge the same way in both; lists are replaced until per-field merge keys
        // arrive with the OpenAPI-driven strategic merge.
        "application/strategic-merge-patch+json" => json_patch::merge(&mut patched, &strip_directives(patch)),
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::BadRequest(format!("the JSON patch is malformed: {e}")))?;
            json_patch::patch(&mut patched, &ops)
                .map_err(|e| ApiError::Unprocessable(format!("the server rejected our request due to an error in our request: {e}")))?;
        }
        "application/apply-patch+yaml" => {
            return Err(ApiError::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (server-side apply is not served yet)".to_string(),
            ))
        }
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
            )))
        }
    }
    Ok(patched)
}

/// Drops strategic-merge directives (`$patch`, `$setElementOrder/...`, `$retainKeys`,
/// `$deleteFromPrimitiveList/...`), which a plain merge would store as fields.
fn strip_directives(patch: &Value) -> Value {
    match patch {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Turns the client's new object into what is stored: server-owned metadata from `current`,
/// status (or everything but status) per endpoint, generation bumped on spec changes.
fn reconcile(call: &Call<'_>, current: &Value, mut new: Value) -> Result<Value, ApiError> {
    let name = call.path.name.as_deref().unwrap_or_default();
    if !new.is_object() {
        return Err(ApiError::BadRequest(
            "the object must be a JSON object".to_string(),
        ));
    }
    check_type_and_namespace(call, &mut new)?;
    match object::meta_str(&new, "name") {
        None | Some("") => {
            object::metadata_mut(&mut new)
                .expect("metadata")
                .insert("name".into(), Value::String(name.to_string()));
        }
        Some(body) if body != name => {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({body}) does not match the name on the URL ({name})"
            )))
        }
        Some(_) => {}
    }
    if is_status(call) {
        // The status endpoint changes status and nothing else.
        let mut merged = current.clone();
        match new.get("status") {
            Some(status) => merged["status"] = status.clone(),
            None => {
                merged.as_object_mut().expect("an object").remove("status");
            }
        }
        return Ok(merged);
    }
    let current_meta = object::metadata(current).cloned().unwrap_or_default();
    let meta = object::metadata_mut(&mut new).expect("metadata");
    for field in PRESERVED {
        match current_meta.get(*field) {
            Some(value) => meta.insert(field.to_string(), value.clone()),
            None => meta.remove(*field),
        };
    }
    if call.resource.subresources.iter().any(|s| s == "status") {
        let map = new.as_object_mut().expect("an object");
        match current.get("status") {
            Some(status) => map.insert("status".into(), status.clone()),
            None => map.remove("status"),
        };
    }
    if spec(&new) != spec(current) {
        if let Some(generation) = current_meta.get("generation").and_then(Value::as_i64) {
            object::metadata_mut(&mut new)
                .expect("metadata")
                .insert("generation".into(), Value::from(generation + 1));
        }
    }
    Ok(new)
}

/// Whether an object marked for deletion has no finalizers left and may go.
fn finalized(object: &Value) -> bool {
    object::is_marked_for_deletion(object) && !object::has_finalizers(object)
}

fn without_resource_version(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object::metadata_mut(&mut object) {
        meta.remove("resourceVersion");
    }
    object
}

async fn apply(call: &Call<'_>, change: Change<'_>) -> Result<Response<Body>, ApiError> {
    let name = call.path.name.as_deref().unwrap_or_default().to_string();
    let key = call.key(&name);
    let target = || call.target(&name);
    let expected = match &change {
        Change::Replace(body) => object::resource_version(body)?,
        Change::Patch { patch, .. } => object::resource_version(patch)?,
    };
    for _ in 0..ATTEMPTS {
        let current_kv: KeyValue = call.load(&name, Consistency::Linearizable).await?;
        if expected.is_some_and(|rv| rv != current_kv.mod_revision) {
            return Err(ApiError::from_store(
                StoreError::Conflict {
                    key: key.clone(),
                    expected: expected.unwrap_or_default(),
                    current: Box::new(current_kv),
                },
                target(),
            ));
        }
        let current = object::decode(&current_kv)?;
        let proposed = match &change {
            Change::Replace(body) => (*body).clone(),
            Change::Patch {
                content_type,
                patch,
            } => apply_patch(content_type, &current, patch)?,
        };
        let mut new = reconcile(call, &current, proposed)?;
        crate::api::defaults::apply(&call.resource.kind, &mut new);
        validate(call, &mut new)?;
        if without_resource_version(&new) == without_resource_version(&current) {
            // Nothing changed: no write, same resourceVersion, as upstream.
            return Ok(call.ok(StatusCode::OK, &current));
        }
        if finalized(&new) {
            return match call
                .api
                .store
                .delete(&key, Some(current_kv.mod_revision))
                .await
            {
                Ok(_) => Ok(call.ok(StatusCode::OK, &new)),
                Err(StoreError::Conflict { .. }) if expected.is_none() => continue,
                Err(e) => Err(ApiError::from_store(e, target())),
            };
        }
        match call
            .store_update(&key, &mut new, current_kv.mod_revision)
            .await
        {
            Ok(()) => return Ok(call.ok(StatusCode::OK, &new)),
            Err(StoreError::Conflict { .. }) if expected.is_none() => continue,
            Err(e) => return Err(ApiError::from_store(e, target())),
        }
    }
    Err(ApiError::Conflict {
        target: target(),
        message: "the object kept changing; please try again".to_string(),
    })
}

pub(super) async fn update(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let body = call.body_json()?;
    apply(call, Change::Replace(&body)).await
}

pub(super) async fn patch(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let content_type = call
        .content_type
        .as_deref()
        .map(|c| c.split(';').next().unwrap_or_default().trim().to_string())
        .unwrap_or_default();
    if call.body.is_empty() {
        return Err(ApiError::BadRequest("the patch is empty".to_string()));
    }
    let patch: Value = serde_json::from_slice(&call.body)
        .map_err(|e| ApiError::BadRequest(format!("the patch is not valid JSON: {e}")))?;
    apply(
        call,
        Change::Patch {
            content_type: &content_type,
            patch: &patch,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn patches_of_each_type_apply() {
        let current =
            json!({"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "data": {"k": "v"}});
        let merged = apply_patch(
            "application/merge-patch+json",
            &current,
            &json!({"metadata": {"labels": {"x": null, "z": "3"}}}),
        )
        .unwrap();
        assert_eq!(merged["metadata"]["labels"], json!({"y": "2", "z": "3"}));
        let strategic = apply_patch(
            "application/strategic-merge-patch+json",
            &current,
            &json!({"$setElementOrder/foo": [], "data": {"k2": "v2"}}),
        )
        .unwrap();
        assert_eq!(strategic["data"], json!({"k": "v", "k2": "v2"}));
        assert!(strategic.get("$setElementOrder/foo").is_none());
        let patched = apply_patch(
            "application/json-patch+json",
            &current,
            &json!([{"op": "replace", "path": "/data/k", "value": "w"}]),
        )
        .unwrap();
        assert_eq!(patched["data"]["k"], "w");
        assert!(apply_patch(
            "application/json-patch+json",
            &current,
            &json!([{"op": "remove", "path": "/nope"}])
        )
        .is_err());
        assert!(matches!(
            apply_patch("text/plain", &current, &json!({})),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn objects_marked_for_deletion_go_when_finalizers_are_gone() {
        assert!(finalized(
            &json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": []}})
        ));
        assert!(!finalized(
            &json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["x"]}})
        ));
        assert!(!finalized(&json!({"metadata": {}})));
    }
}
