//! delete and deletecollection: immediate for most objects; marked with a
//! deletionTimestamp (and removed once their finalizers are gone) for objects with
//! finalizers, namespaces (emptied first by the namespace controller, which then finalizes
//! them), and pods bound to a node (which the node's agent
//! stops first).

use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::read::{collect, Selectors};
use super::{ApiError, Call};
use crate::api::http::Body;
use crate::api::object;
use crate::store::{Consistency, StoreError};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Preconditions {
    uid: Option<String>,
    resource_version: Option<String>,
}

/// The parts of DeleteOptions kedge acts on.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeleteOptions {
    preconditions: Option<Preconditions>,
    grace_period_seconds: Option<i64>,
    /// `["All"]` (kubectl sends it in the body, not the query).
    #[serde(default)]
    dry_run: Vec<String>,
}

impl DeleteOptions {
    pub(super) fn is_dry_run(&self) -> bool {
        !self.dry_run.is_empty()
    }
}

fn options(call: &Call<'_>) -> Result<DeleteOptions, ApiError> {
    let mut options: DeleteOptions = if call.body.is_empty() {
        DeleteOptions::default()
    } else {
        serde_json::from_value(call.body_json()?)
            .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))?
    };
    if let Some(value) = options.dry_run.iter().find(|v| *v != "All") {
        return Err(super::invalid_options(
            "DeleteOptions",
            crate::api::error::FieldError::unsupported("dryRun", value, &["All"]),
        ));
    }
    if call.dry_run {
        options.dry_run = vec!["All".to_string()];
    }
    if let Some(grace) = call.query("gracePeriodSeconds") {
        options.grace_period_seconds =
            Some(grace.parse().map_err(|_| {
                ApiError::BadRequest(format!("invalid gracePeriodSeconds {grace:?}"))
            })?);
    }
    Ok(options)
}

fn check_preconditions(
    call: &Call<'_>,
    name: &str,
    object: &Value,
    options: &DeleteOptions,
) -> Result<(), ApiError> {
    let Some(pre) = &options.preconditions else {
        return Ok(());
    };
    let failed = |what: &str, wanted: &str, actual: &str| {
        ApiError::Conflict {
        target: call.target(name),
        message: format!("Precondition failed: {what} in precondition: {wanted}, {what} in object meta: {actual}"),
    }
    };
    if let Some(uid) = &pre.uid {
        let actual = object::meta_str(object, "uid").unwrap_or_default();
        if uid != actual {
            return Err(failed("UID", uid, actual));
        }
    }
    if let Some(rv) = &pre.resource_version {
        let actual = object::meta_str(object, "resourceVersion").unwrap_or_default();
        if rv != actual {
            return Err(failed("ResourceVersion", rv, actual));
        }
    }
    Ok(())
}

/// How long a pod bound to a node gets to stop, or `None` to delete it at once.
fn pod_grace(object: &Value, options: &DeleteOptions) -> Option<i64> {
    let bound = object
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        object.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !bound || finished {
        return None;
    }
    let grace = options
        .grace_period_seconds
        .or_else(|| {
            object
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30);
    (grace > 0).then_some(grace)
}

/// Deletes (or marks for deletion) one object; returns it as it ends up.
pub(super) async fn delete_one(
    call: &Call<'_>,
    name: &str,
    options: &DeleteOptions,
) -> Result<Value, ApiError> {
    let key = call.key(name);
    let target = || call.target(name);
    loop {
        let kv = call.load(name, Consistency::Linearizable).await?;
        let mut current = call.decode(&kv)?;
        check_preconditions(call, name, &current, options)?;
        let is_namespace = call.resource.kind == "Namespace";
        let grace = if call.resource.kind == "Pod" {
            pod_grace(&current, options)
        } else {
            None
        };
        if object::has_finalizers(&current) || is_namespace || grace.is_some() {
            if object::is_marked_for_deletion(&current) {
                return Ok(current);
            }
            object::mark_for_deletion(&mut current, grace.unwrap_or(0));
            if is_namespace {
                current["status"] = json!({"phase": "Terminating"});
            }
            if options.is_dry_run() {
                return Ok(current);
            }
            match call.store_update(&key, &mut current, kv.mod_revision).await {
                Ok(()) => return Ok(current),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, target())),
            }
        }
        if options.is_dry_run() {
            return Ok(current);
        }
        match call.api.store.delete(&key, Some(kv.mod_revision)).await {
            Ok(_) => {
                super::hooks::release(call, &current, &Value::Null).await;
                return Ok(current);
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, target())),
        }
    }
}

pub(super) async fn delete(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let name = call.path.name.as_deref().unwrap_or_default();
    let options = options(call)?;
    let object = delete_one(call, name, &options).await?;
    Ok(call.ok(StatusCode::OK, &object))
}

pub(super) async fn delete_collection(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let options = options(call)?;
    let selectors = Selectors::parse(call)?;
    let listing = collect(call, &selectors, 0).await?;
    let mut deleted = Vec::new();
    for item in &listing.items {
        match delete_one(call, object::name(item), &options).await {
            Ok(object) => deleted.push(object),
            // Gone meanwhile: that is what was asked.
            Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": call.resource.list_kind,
        "apiVersion": call.resource.api_version(),
        "metadata": {"resourceVersion": listing.revision.to_string()},
        "items": deleted,
    });
    Ok(call.ok(StatusCode::OK, &list))
}
