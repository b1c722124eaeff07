//! update (PUT) and patch: read the stored object, compute the new one (a merge, JSON or
//! strategic merge patch, or a server-side apply, which also creates what is missing),
//! keep what only the server may change, record field ownership, and write it back with
//! compare-and-swap, retrying when another write got in between (unless the client named
//! the resourceVersion it expects).

use http::{Response, StatusCode};
use serde_json::Value;

use super::create::{self, Ownership};
use super::{
    check_type_and_namespace, generation_fields, hooks, validate, validate_update, ApiError, Call,
};
use crate::api::error::FieldError;
use crate::api::http::Body;
use crate::api::object;
use crate::api::patch::{self, managed, schema, schema::Node, strategic};
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
    /// A server-side apply of this configuration.
    Apply { config: &'a Value, force: bool },
}

/// The patch types served for kinds strategic merge does not know (custom resources).
const WITHOUT_STRATEGIC: &str =
    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml";

fn is_status(call: &Call<'_>) -> bool {
    call.path.subresource.as_deref() == Some("status")
}

/// `pods/<name>/ephemeralcontainers`: where `kubectl debug` adds containers to a pod.
fn is_ephemeral_containers(call: &Call<'_>) -> bool {
    call.path.subresource.as_deref() == Some("ephemeralcontainers")
}

/// `namespaces/<name>/finalize`: where the namespace controller says its part is done.
fn is_finalize(call: &Call<'_>) -> bool {
    call.path.subresource.as_deref() == Some("finalize")
}

/// Applies `patch` to `current`, an object of type `node` (`None`: not in the strategic
/// merge table).
fn apply_patch(
    content_type: &str,
    current: &Value,
    patch: &Value,
    node: Option<Node>,
) -> Result<Value, ApiError> {
    let mut patched = current.clone();
    match content_type {
        "application/merge-patch+json" => json_patch::merge(&mut patched, patch),
        "application/strategic-merge-patch+json" => {
            let node = node
                .ok_or_else(|| ApiError::UnsupportedMediaType(WITHOUT_STRATEGIC.to_string()))?;
            patched = strategic::patch(current, patch, node).map_err(|e| {
                if e.unprocessable() {
                    ApiError::Unprocessable(e.to_string())
                } else {
                    ApiError::BadRequest(e.to_string())
                }
            })?;
        }
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::BadRequest(format!("the JSON patch is malformed: {e}")))?;
            json_patch::patch(&mut patched, &ops)
                .map_err(|e| ApiError::Unprocessable(format!("the server rejected our request due to an error in our request: {e}")))?;
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml".to_string(),
            ))
        }
    }
    Ok(patched)
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
    if let Some(name) = new
        .pointer("/metadata/name")
        .filter(|n| !n.is_string() && !n.is_null())
    {
        return Err(ApiError::BadRequest(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: metadata.name: expected a string, got {name}",
            kind = call.resource.kind,
            version = call.resource.version,
        )));
    }
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
    if is_ephemeral_containers(call) {
        // The ephemeralcontainers endpoint changes spec.ephemeralContainers and nothing else.
        let mut merged = current.clone();
        let ephemeral = new.pointer("/spec/ephemeralContainers").cloned();
        if let Some(spec) = merged.get_mut("spec").and_then(Value::as_object_mut) {
            match ephemeral {
                Some(list) => spec.insert("ephemeralContainers".into(), list),
                None => spec.remove("ephemeralContainers"),
            };
        }
        return Ok(merged);
    }
    if is_finalize(call) {
        // The finalize endpoint changes spec.finalizers and nothing else.
        let mut merged = current.clone();
        let finalizers = new.pointer("/spec/finalizers").cloned();
        match (
            merged.get_mut("spec").and_then(Value::as_object_mut),
            finalizers,
        ) {
            (Some(spec), Some(finalizers)) => {
                spec.insert("finalizers".into(), finalizers);
            }
            (Some(spec), None) => {
                spec.remove("finalizers");
            }
            (None, finalizers) => {
                merged["spec"] = serde_json::json!({"finalizers": finalizers});
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
    if generation_fields(&call.resource, &new) != generation_fields(&call.resource, current) {
        if let Some(generation) = current_meta.get("generation").and_then(Value::as_i64) {
            object::metadata_mut(&mut new)
                .expect("metadata")
                .insert("generation".into(), Value::from(generation + 1));
        }
    }
    Ok(new)
}

/// Whether an object marked for deletion has no finalizers left and may go. A namespace also
/// waits for its `spec.finalizers` (the namespace controller's `kubernetes`), as upstream.
fn finalized(object: &Value) -> bool {
    let spec_finalizers = object
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let namespace_waits =
        object.get("kind").and_then(Value::as_str) == Some("Namespace") && spec_finalizers;
    object::is_marked_for_deletion(object) && !object::has_finalizers(object) && !namespace_waits
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
    let writer = create::writer(call);
    let node = schema::root(
        &call.resource.group,
        &call.resource.version,
        &call.resource.kind,
    );
    let expected = match &change {
        Change::Replace(body) => object::resource_version(body)?,
        Change::Patch { patch, .. } => object::resource_version(patch)?,
        Change::Apply { config, .. } => object::resource_version(config)?,
    };
    for _ in 0..ATTEMPTS {
        let loaded = call.load(&name, Consistency::Linearizable).await;
        let current_kv: KeyValue = match (loaded, &change) {
            (Err(ApiError::NotFound(_)), Change::Apply { config, force }) if !is_status(call) => {
                // Apply creates what does not exist yet.
                let applied = match patch::apply::apply(&writer, None, config, *force) {
                    Ok(applied) => applied,
                    Err(conflicts) => return Ok(conflict_response(&conflicts)),
                };
                let mut object = applied.object;
                name_from_url(call, &mut object)?;
                return create::store_new(call, object, Ownership::Apply(applied.entries)).await;
            }
            (loaded, _) => loaded?,
        };
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
        let current = call.decode(&current_kv)?;
        let (proposed, entries) = match &change {
            Change::Replace(body) => ((*body).clone(), None),
            Change::Patch {
                content_type,
                patch,
            } => (apply_patch(content_type, &current, patch, node)?, None),
            Change::Apply { config, force } => {
                match patch::apply::apply(&writer, Some(&current), config, *force) {
                    Ok(applied) => (applied.object, Some(applied.entries)),
                    Err(conflicts) => return Ok(conflict_response(&conflicts)),
                }
            }
        };
        let mut new = reconcile(call, &current, proposed)?;
        crate::api::defaults::apply(&call.resource.kind, &mut new);
        match entries {
            Some(entries) => managed::set_entries(&mut new, entries),
            None => writer.record_update(Some(&current), &mut new),
        }
        validate(call, &mut new)?;
        validate_update(call, &current, &new)?;
        if call.dry_run {
            return Ok(call.ok(StatusCode::OK, &new));
        }
        hooks::admit_update(call, &current, &mut new).await?;
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
        let result = call
            .store_update(&key, &mut new, current_kv.mod_revision)
            .await;
        if result.is_err() {
            hooks::release(call, &new, &current).await;
        }
        match result {
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

/// The 409 of an apply that would change fields other managers own.
fn conflict_response(conflicts: &patch::apply::Conflicts) -> Response<Body> {
    let (code, status) = conflicts.status();
    crate::api::status::render(code, &status)
}

/// Gives an object created by apply the name on the URL, or says it differs.
fn name_from_url(call: &Call<'_>, object: &mut Value) -> Result<(), ApiError> {
    let name = call.path.name.as_deref().unwrap_or_default();
    let meta = object::metadata_mut(object)
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".to_string()))?;
    match meta.get("name").and_then(Value::as_str) {
        Some(body) if !body.is_empty() && body != name => Err(ApiError::BadRequest(format!(
            "the name of the object ({body}) does not match the name on the URL ({name})"
        ))),
        _ => {
            meta.insert("name".into(), Value::String(name.to_string()));
            Ok(())
        }
    }
}

/// The configuration of an apply request: YAML (JSON is YAML too), an object, without
/// managedFields.
fn apply_config(call: &Call<'_>) -> Result<Value, ApiError> {
    if call.query("fieldManager").unwrap_or_default().is_empty() {
        return Err(super::invalid_options(
            "PatchOptions",
            FieldError::required("fieldManager", "is required for apply patch"),
        ));
    }
    let config: Value = serde_yaml_ng::from_slice(&call.body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?;
    if !config.is_object() {
        return Err(ApiError::BadRequest(
            "the apply configuration must be an object".to_string(),
        ));
    }
    if config
        .pointer("/metadata/managedFields")
        .is_some_and(|m| !m.is_null())
    {
        return Err(ApiError::BadRequest(
            "metadata.managedFields must be nil".to_string(),
        ));
    }
    Ok(config)
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
    let force = call.query("force");
    if content_type == "application/apply-patch+yaml" {
        let config = apply_config(call)?;
        let force = super::query_bool(force);
        return apply(
            call,
            Change::Apply {
                config: &config,
                force,
            },
        )
        .await;
    }
    if force.is_some() {
        return Err(super::invalid_options(
            "PatchOptions",
            FieldError::forbidden("force", "may not be specified for non-apply patch"),
        ));
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
        let configmap = schema::root("", "v1", "ConfigMap");
        let merged = apply_patch(
            "application/merge-patch+json",
            &current,
            &json!({"metadata": {"labels": {"x": null, "z": "3"}}}),
            configmap,
        )
        .unwrap();
        assert_eq!(merged["metadata"]["labels"], json!({"y": "2", "z": "3"}));
        let strategic = apply_patch(
            "application/strategic-merge-patch+json",
            &current,
            &json!({"$setElementOrder/foo": [], "data": {"k2": "v2"}}),
            configmap,
        )
        .unwrap();
        assert_eq!(strategic["data"], json!({"k": "v", "k2": "v2"}));
        assert!(strategic.get("$setElementOrder/foo").is_none());
        let patched = apply_patch(
            "application/json-patch+json",
            &current,
            &json!([{"op": "replace", "path": "/data/k", "value": "w"}]),
            configmap,
        )
        .unwrap();
        assert_eq!(patched["data"]["k"], "w");
        assert!(apply_patch(
            "application/json-patch+json",
            &current,
            &json!([{"op": "remove", "path": "/nope"}]),
            configmap,
        )
        .is_err());
        assert!(matches!(
            apply_patch("text/plain", &current, &json!({}), configmap),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        // Strategic merge needs the kind's merge keys; custom resources have none.
        let unknown = apply_patch(
            "application/strategic-merge-patch+json",
            &current,
            &json!({}),
            None,
        )
        .unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
        );
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
        // A namespace also waits for the namespace controller's finalizer.
        let terminating = |finalizers: Value| {
            json!({"kind": "Namespace", "metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"},
                   "spec": {"finalizers": finalizers}})
        };
        assert!(!finalized(&terminating(json!(["kubernetes"]))));
        assert!(finalized(&terminating(json!([]))));
    }
}
