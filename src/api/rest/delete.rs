//! delete and deletecollection: immediate for most objects; marked with a
//! deletionTimestamp (and removed once their finalizers are gone) for objects with
//! finalizers, namespaces (emptied first by the namespace controller, which then finalizes
//! them), and pods bound to a node (which the node's agent
//! stops first).
//!
//! Also the API half of garbage collection, as upstream's generic registry: a delete's
//! propagation policy (`propagationPolicy`, or the deprecated `orphanDependents`) becomes the
//! `orphan` or `foregroundDeletion` finalizer, which keeps the owner until the garbage
//! collector has orphaned or deleted its dependents.

use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::read::{collect, Selectors};
use super::{ApiError, Call};
use crate::api::http::Body;
use crate::api::object::{self, FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
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
    propagation_policy: Option<String>,
    orphan_dependents: Option<bool>,
}

impl DeleteOptions {
    pub(super) fn is_dry_run(&self) -> bool {
        !self.dry_run.is_empty()
    }

    /// Upstream's ValidateDeleteOptions: one policy, of the three known ones, and dryRun
    /// `All` only.
    pub(super) fn validate(&self) -> Result<(), ApiError> {
        use crate::api::error::FieldError;
        let invalid = |cause| Err(super::invalid_options("DeleteOptions", cause));
        if let Some(value) = self.dry_run.iter().find(|v| *v != "All") {
            return invalid(FieldError::unsupported("dryRun", value, &["All"]));
        }
        if let Some(policy) = &self.propagation_policy {
            if self.orphan_dependents.is_some() {
                return invalid(FieldError::invalid(
                    "propagationPolicy",
                    policy,
                    "orphanDependents and deletionPropagation cannot be both set",
                ));
            }
            if !["Foreground", "Background", "Orphan"].contains(&policy.as_str()) {
                return invalid(FieldError::unsupported(
                    "propagationPolicy",
                    policy,
                    &["Foreground", "Background", "Orphan", "nil"],
                ));
            }
        }
        Ok(())
    }

    /// The explicit choice of this delete: orphan the dependents (`Some(true)`), delete them
    /// in the foreground (`Some(false)`)... as upstream's shouldOrphanDependents and
    /// shouldDeleteDependents: `(orphan, foreground)`, each `None` when not said.
    fn policy(&self) -> Option<(bool, bool)> {
        if let Some(orphan) = self.orphan_dependents {
            return Some((orphan, false));
        }
        self.propagation_policy
            .as_deref()
            .map(|p| (p == "Orphan", p == "Foreground"))
    }
}

/// The finalizers an object gets from a delete (upstream's
/// deletionFinalizersForGarbageCollection): the explicit policy wins, then a GC finalizer the
/// object already has, then the kind's default — orphan for ReplicationControllers (v1's
/// default, kept for compatibility), background for everything else.
fn finalizers_for_deletion(
    orphan_by_default: bool,
    object: &Value,
    options: &DeleteOptions,
) -> Vec<Value> {
    let current: Vec<Value> = object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has = |f: &str| current.iter().any(|v| v == f);
    let (orphan, foreground) = options.policy().unwrap_or_else(|| {
        if has(ORPHAN_FINALIZER) {
            (true, false)
        } else if has(FOREGROUND_FINALIZER) {
            (false, true)
        } else {
            (orphan_by_default, false)
        }
    });
    let mut finalizers: Vec<Value> = current
        .into_iter()
        .filter(|f| f != ORPHAN_FINALIZER && f != FOREGROUND_FINALIZER)
        .collect();
    if orphan {
        finalizers.push(ORPHAN_FINALIZER.into());
    }
    if foreground {
        finalizers.push(FOREGROUND_FINALIZER.into());
    }
    finalizers
}

/// Whether two finalizer lists hold the same names, order aside.
fn same_set(a: &[Value], b: &[Value]) -> bool {
    a.iter().all(|f| b.contains(f)) && b.iter().all(|f| a.contains(f))
}

fn options(call: &Call<'_>) -> Result<DeleteOptions, ApiError> {
    let mut options: DeleteOptions = if call.body.is_empty() {
        DeleteOptions::default()
    } else {
        serde_json::from_value(call.body_json()?)
            .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))?
    };
    if let Some(policy) = call.query("propagationPolicy") {
        options.propagation_policy = Some(policy.to_string());
    }
    if let Some(orphan) = call.query("orphanDependents") {
        options.orphan_dependents = Some(super::query_bool(Some(orphan)));
    }
    options.validate()?;
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
        let orphan_by_default =
            call.resource.group.is_empty() && call.resource.kind == "ReplicationController";
        let finalizers = finalizers_for_deletion(orphan_by_default, &current, options);
        let old_finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let finalizers_changed = !same_set(&finalizers, &old_finalizers);
        if finalizers_changed {
            current["metadata"]["finalizers"] = Value::Array(finalizers);
        }
        if object::has_finalizers(&current) || is_namespace || grace.is_some() {
            let marked = object::is_marked_for_deletion(&current);
            if marked && !finalizers_changed {
                return Ok(current);
            }
            // A second delete may change the policy of one already under way.
            if !marked {
                object::mark_for_deletion(&mut current, grace.unwrap_or(0));
            }
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
    // Upstream answers 202 to an explicit cascading delete that is not done yet.
    let status =
        if options.orphan_dependents == Some(false) && object::is_marked_for_deletion(&object) {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
    Ok(call.ok(status, &object))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn options(policy: Option<&str>, orphan: Option<bool>) -> DeleteOptions {
        DeleteOptions {
            propagation_policy: policy.map(str::to_string),
            orphan_dependents: orphan,
            ..DeleteOptions::default()
        }
    }

    fn with_finalizers(finalizers: Value) -> Value {
        json!({"metadata": {"finalizers": finalizers}})
    }

    #[test]
    fn the_policy_becomes_the_garbage_collectors_finalizer() {
        let plain = with_finalizers(json!(["example.com/keep"]));
        let got = |default, object: &Value, o: &DeleteOptions| {
            Value::Array(finalizers_for_deletion(default, object, o))
        };
        assert_eq!(
            got(false, &plain, &options(Some("Foreground"), None)),
            json!(["example.com/keep", "foregroundDeletion"])
        );
        assert_eq!(
            got(false, &plain, &options(Some("Orphan"), None)),
            json!(["example.com/keep", "orphan"])
        );
        assert_eq!(
            got(false, &plain, &options(None, Some(true))),
            json!(["example.com/keep", "orphan"])
        );
        assert_eq!(
            got(false, &plain, &options(None, None)),
            json!(["example.com/keep"])
        );
        // ReplicationControllers orphan unless told otherwise.
        assert_eq!(
            got(true, &plain, &options(None, None)),
            json!(["example.com/keep", "orphan"])
        );
        assert_eq!(
            got(true, &plain, &options(Some("Background"), None)),
            json!(["example.com/keep"])
        );
        // A second delete without a policy keeps the first one's; with one, replaces it.
        let orphaning = with_finalizers(json!(["orphan"]));
        assert_eq!(
            got(false, &orphaning, &options(None, None)),
            json!(["orphan"])
        );
        assert_eq!(
            got(false, &orphaning, &options(Some("Foreground"), None)),
            json!(["foregroundDeletion"])
        );
    }

    #[test]
    fn one_known_policy_at_most() {
        assert!(options(Some("Background"), None).validate().is_ok());
        assert!(options(Some("Sometimes"), None).validate().is_err());
        assert!(options(Some("Orphan"), Some(true)).validate().is_err());
    }
}
