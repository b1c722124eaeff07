//! create: validate, fill in what the server owns (uid, creationTimestamp, generation, a
//! generated name), store.

use http::{Response, StatusCode};
use serde_json::{Map, Value};

use super::{check_type_and_namespace, name_required, spec, validate, ApiError, Call};
use crate::api::error::Target;
use crate::api::http::Body;
use crate::api::object;
use crate::store::Consistency;

/// Fields of metadata only the server sets.
const SERVER_OWNED: &[&str] = &[
    "uid",
    "creationTimestamp",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "selfLink",
];

/// Namespaced objects need their namespace to exist and not be going away.
async fn check_namespace(call: &Call<'_>, namespace: &str) -> Result<(), ApiError> {
    let namespaces = call
        .api
        .registry
        .get("", "v1", "namespaces")
        .ok_or_else(|| ApiError::Internal("namespaces are not registered".to_string()))?;
    let target = Target::new(&namespaces, namespace);
    let kv = call
        .api
        .store
        .get(&namespaces.key(None, namespace), Consistency::Linearizable)
        .await
        .map_err(|e| ApiError::from_store(e, target.clone()))?
        .ok_or(ApiError::NotFound(target))?;
    let ns = object::decode(&kv)?;
    if ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
        return Err(ApiError::Forbidden(format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        )));
    }
    Ok(())
}

/// Fills in what a new object gets from the server.
pub(crate) fn prepare_new(object: &mut Value, has_status_subresource: bool, kind: &str) {
    let has_spec = spec(object).is_some();
    let map = object.as_object_mut().expect("an object");
    if has_status_subresource {
        // Status is written through the status subresource, not on create.
        map.remove("status");
    }
    if kind == "Namespace" {
        map.insert("status".into(), serde_json::json!({"phase": "Active"}));
        let spec = map
            .entry("spec")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(spec) = spec.as_object_mut() {
            spec.entry("finalizers")
                .or_insert_with(|| serde_json::json!(["kubernetes"]));
        }
    }
    let meta = map
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("metadata checked");
    for field in SERVER_OWNED {
        meta.remove(*field);
    }
    meta.insert("uid".into(), Value::String(object::new_uid()));
    meta.insert("creationTimestamp".into(), Value::String(object::now()));
    if has_spec {
        meta.insert("generation".into(), Value::from(1));
    }
}

pub(super) async fn create(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    if !call.resource.stored {
        return Err(ApiError::Unavailable(format!(
            "{} are answered by the authorization layer, which this kedge server does not run yet",
            call.resource.plural
        )));
    }
    let mut object = call.body_json()?;
    check_type_and_namespace(call, &mut object)?;
    let meta = object::metadata(&object).cloned().unwrap_or_default();
    let generate = meta
        .get("generateName")
        .and_then(Value::as_str)
        .filter(|g| !g.is_empty())
        .map(str::to_string);
    let given = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    if given.is_none() && generate.is_none() {
        return Err(name_required(call));
    }
    if let Some(namespace) = call.namespace() {
        check_namespace(call, namespace).await?;
    }
    let status_subresource = call.resource.subresources.iter().any(|s| s == "status");
    prepare_new(&mut object, status_subresource, &call.resource.kind);
    crate::api::defaults::apply(&call.resource.kind, &mut object);
    // A generated name may collide; upstream retries a few times.
    for _ in 0..5 {
        let name = match (&given, &generate) {
            (Some(name), _) => name.clone(),
            (None, Some(prefix)) => object::generate_name(prefix),
            (None, None) => unreachable!("checked above"),
        };
        object::metadata_mut(&mut object)
            .expect("metadata")
            .insert("name".into(), Value::String(name.clone()));
        validate(call, &mut object)?;
        match call
            .api
            .store
            .create(&call.key(&name), object::encode(&object))
            .await
        {
            Ok(kv) => {
                object::set_resource_version(&mut object, kv.mod_revision);
                return Ok(call.ok(StatusCode::CREATED, &object));
            }
            Err(crate::store::StoreError::AlreadyExists { .. }) if given.is_none() => continue,
            Err(e) => return Err(ApiError::from_store(e, call.target(&name))),
        }
    }
    Err(ApiError::AlreadyExists(
        call.target(generate.as_deref().unwrap_or_default()),
    ))
}
