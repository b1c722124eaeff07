//! create: validate, fill in what the server owns (uid, creationTimestamp, generation, a
//! generated name), store.

use http::{Response, StatusCode};
use serde_json::{Map, Value};

use super::{check_type_and_namespace, hooks, name_required, spec, validate, ApiError, Call};
use crate::api::error::Target;
use crate::api::http::Body;
use crate::api::object;
use crate::api::patch::managed::{self, Entry, Writer};
use crate::api::patch::schema::{self, Node};
use crate::store::Consistency;

/// Who owns the fields of a new object.
pub(super) enum Ownership {
    /// A create (or update) records its writer as the manager of every field it set.
    Update,
    /// An apply that creates the object: the entries it computed.
    Apply(Vec<Entry>),
}

/// The field manager of this request and what it writes: the `fieldManager` parameter,
/// else the User-Agent up to its first `/`, as upstream.
pub(super) fn writer<'a>(call: &'a Call<'_>) -> Writer<'a> {
    let resource = &call.resource;
    let manager = call.query("fieldManager").unwrap_or_else(|| {
        let agent = call.user_agent.as_deref().unwrap_or_default();
        agent.split('/').next().unwrap_or_default()
    });
    Writer {
        manager,
        api_version: resource.api_version(),
        subresource: call.path.subresource.as_deref(),
        status_subresource: resource.subresources.iter().any(|s| s == "status"),
        node: schema::root(&resource.group, &resource.version, &resource.kind)
            .unwrap_or(Node::Deduced),
    }
}

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

/// Kinds with a spec whose strategy upstream does not track generations for.
const WITHOUT_GENERATION: &[&str] = &[
    "Namespace",
    "Node",
    "Service",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "ResourceQuota",
    "LimitRange",
    "Lease",
    "CSIDriver",
    "CSINode",
    "VolumeAttachment",
    "CertificateSigningRequest",
    "IPAddress",
    "ServiceCIDR",
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
    if has_spec && !WITHOUT_GENERATION.contains(&kind) {
        meta.insert("generation".into(), Value::from(1));
    }
}

pub(super) async fn create(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let object = call.body_json()?;
    store_new(call, object, Ownership::Update).await
}

/// Creates `object` (a create's body, or what an apply to a missing object computed):
/// checks, server-owned metadata, managedFields per `ownership`, then the store.
pub(super) async fn store_new(
    call: &Call<'_>,
    mut object: Value,
    ownership: Ownership,
) -> Result<Response<Body>, ApiError> {
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
    if call.resource.crd.is_some() {
        // Custom resources always track generations, spec or not.
        object::metadata_mut(&mut object)
            .expect("metadata checked")
            .insert("generation".into(), Value::from(1));
    }
    hooks::admit_new(call, &mut object).await?;
    crate::api::defaults::apply(&call.resource.kind, &mut object);
    match ownership {
        Ownership::Update => writer(call).record_update(None, &mut object),
        Ownership::Apply(entries) => managed::set_entries(&mut object, entries),
    }
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
        hooks::prepare_create(call, &mut object);
        validate(call, &mut object)?;
        if call.dry_run {
            // Nothing is allocated or stored.
            return Ok(call.ok(StatusCode::CREATED, &object));
        }
        hooks::admit_create(call, &mut object).await?;
        let result = call
            .api
            .store
            .create(&call.key(&name), object::encode(&object))
            .await;
        if result.is_err() {
            hooks::release(call, &object, &Value::Null).await;
        }
        match result {
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
