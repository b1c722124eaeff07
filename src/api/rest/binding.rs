//! `pods/binding`: assigns a pod to a node (what the scheduler does), once.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{ApiError, Call};
use crate::api::error::{FieldError, Target};
use crate::api::http::Body;
use crate::api::object;
use crate::store::{Consistency, StoreError};

/// Attempts at a binding that keeps losing the compare-and-swap race.
const ATTEMPTS: usize = 10;

fn binding_target(name: &str) -> Target {
    Target {
        qualified_resource: "bindings".to_string(),
        group: String::new(),
        kind: "Binding".to_string(),
        name: name.to_string(),
    }
}

/// The `Status` a successful subresource POST answers with.
pub(super) fn success(code: StatusCode) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": code.as_u16(),
    })
}

/// Sets (or adds) condition `kind` of a pod's status to True.
pub(super) fn set_condition(pod: &mut Value, kind: &str) {
    let now = object::now();
    if !pod.get("status").is_some_and(Value::is_object) {
        pod["status"] = json!({});
    }
    let status = &mut pod["status"];
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    let conditions = status["conditions"].as_array_mut().expect("an array");
    let condition =
        json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    match conditions.iter_mut().find(|c| c["type"] == kind) {
        Some(existing) if existing["status"] == "True" => {}
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

pub(super) async fn create(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let name = call.path.name.as_deref().unwrap_or_default().to_string();
    let binding = call.body_json()?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if node.is_empty() {
        return Err(ApiError::Invalid {
            target: binding_target(&name),
            causes: vec![FieldError::required("target.name", "")],
        });
    }
    let target_kind = binding
        .pointer("/target/kind")
        .and_then(Value::as_str)
        .unwrap_or("Node");
    if !target_kind.is_empty() && target_kind != "Node" {
        return Err(ApiError::Invalid {
            target: binding_target(&name),
            causes: vec![FieldError::unsupported(
                "target.kind",
                target_kind,
                &["Node"],
            )],
        });
    }
    let conflict = |message: String| ApiError::Conflict {
        target: Target {
            qualified_resource: "pods/binding".to_string(),
            ..call.target(&name)
        },
        message,
    };
    let key = call.key(&name);
    for _ in 0..ATTEMPTS {
        let kv = call.load(&name, Consistency::Linearizable).await?;
        let mut pod = object::decode(&kv)?;
        if let Some(uid) = object::meta_str(&binding, "uid").filter(|u| !u.is_empty()) {
            if object::meta_str(&pod, "uid") != Some(uid) {
                return Err(conflict(format!(
                    "the UID in the binding ({uid}) does not match the pod's"
                )));
            }
        }
        if object::is_marked_for_deletion(&pod) {
            return Err(conflict(format!(
                "pod {name} is being deleted, cannot be assigned to a host"
            )));
        }
        if let Some(current) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(conflict(format!(
                "pod {name} is already assigned to node {current:?}"
            )));
        }
        pod["spec"]["nodeName"] = json!(node);
        if let Some(annotations) = object::metadata(&binding)
            .and_then(|m| m.get("annotations"))
            .and_then(Value::as_object)
        {
            let meta = object::metadata_mut(&mut pod).expect("a stored pod has metadata");
            let target = meta.entry("annotations").or_insert_with(|| json!({}));
            if let Some(target) = target.as_object_mut() {
                target.extend(annotations.clone());
            }
        }
        set_condition(&mut pod, "PodScheduled");
        if call.dry_run {
            return Ok(call.ok(StatusCode::CREATED, &success(StatusCode::CREATED)));
        }
        match call.store_update(&key, &mut pod, kv.mod_revision).await {
            Ok(()) => return Ok(call.ok(StatusCode::CREATED, &success(StatusCode::CREATED))),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, call.target(&name))),
        }
    }
    Err(conflict(
        "the pod kept changing; please try again".to_string(),
    ))
}
