//! Upstream's `Priority` admission plugin, for new pods: `spec.priority` and
//! `spec.preemptionPolicy` come from the PriorityClass the pod names, or from the global
//! default class (whose name the pod then gets), else priority 0 and
//! `PreemptLowerPriority`. Naming a class that does not exist, or giving a priority or
//! policy other than the class's, is forbidden — in upstream's words.
//!
//! Classes are read from this server's store without a quorum read, as upstream reads
//! them from an informer cache.

use serde_json::{json, Value};

use super::{ApiError, Call};
use crate::api::object;
use crate::store::{Consistency, ListOptions};

/// Upstream's `DefaultPriorityWhenNoDefaultClassExists`.
const NO_CLASS_PRIORITY: i64 = 0;
const DEFAULT_POLICY: &str = "PreemptLowerPriority";

/// The PriorityClasses every cluster has: (name, value, description).
pub const SYSTEM_CLASSES: [(&str, i32, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// What a pod gets from its class.
struct Resolved {
    /// The class name to record (the global default's, when the pod named none).
    class: Option<String>,
    priority: i64,
    policy: String,
}

/// Sets a new pod's priority from its PriorityClass; before defaulting, so that what
/// the user gave is told apart from what was computed.
pub(super) async fn admit_pod(call: &Call<'_>, pod: &mut Value) -> Result<(), ApiError> {
    let named = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let forbidden = |why: String| {
        ApiError::Forbidden(format!(
            "pods \"{}\" is forbidden: {why}",
            object::name(pod)
        ))
    };
    let resolved = match named {
        Some(name) => match class(call, &name).await? {
            Some(class) => Resolved {
                class: None,
                priority: class_value(&class),
                policy: class_policy(&class),
            },
            None => {
                return Err(forbidden(format!(
                    "no PriorityClass with name {name} was found"
                )))
            }
        },
        None => match global_default(call).await? {
            Some(class) => Resolved {
                class: Some(object::name(&class).to_string()),
                priority: class_value(&class),
                policy: class_policy(&class),
            },
            None => Resolved {
                class: None,
                priority: NO_CLASS_PRIORITY,
                policy: DEFAULT_POLICY.to_string(),
            },
        },
    };
    if let Some(given) = pod.pointer("/spec/priority").and_then(Value::as_i64) {
        if given != resolved.priority {
            return Err(forbidden(format!(
                "the integer value of priority ({given}) must not be provided in pod spec; \
                 priority admission controller computed {} from the given PriorityClass name",
                resolved.priority
            )));
        }
    }
    if let Some(given) = pod
        .pointer("/spec/preemptionPolicy")
        .and_then(Value::as_str)
    {
        if given != resolved.policy {
            return Err(forbidden(format!(
                "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; \
                 priority admission controller computed {} from the given PriorityClass name",
                resolved.policy
            )));
        }
    }
    let Some(spec) = pod.get_mut("spec").filter(|s| s.is_object()) else {
        return Ok(());
    };
    if let Some(class) = resolved.class {
        spec["priorityClassName"] = json!(class);
    }
    spec["priority"] = json!(resolved.priority);
    spec["preemptionPolicy"] = json!(resolved.policy);
    Ok(())
}

fn class_value(class: &Value) -> i64 {
    class.get("value").and_then(Value::as_i64).unwrap_or(0)
}

fn class_policy(class: &Value) -> String {
    class
        .get("preemptionPolicy")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_POLICY)
        .to_string()
}

fn classes_prefix(call: &Call<'_>) -> String {
    call.api
        .registry
        .get("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priorityclasses are a built-in kind")
        .key_prefix()
}

async fn class(call: &Call<'_>, name: &str) -> Result<Option<Value>, ApiError> {
    let key = format!("{}{name}", classes_prefix(call));
    let kv = call
        .api
        .store
        .get(&key, Consistency::Local)
        .await
        .map_err(|e| ApiError::Internal(format!("reading PriorityClass {name}: {e}")))?;
    Ok(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

/// The global default class; of several (a race), the lowest, as upstream.
async fn global_default(call: &Call<'_>) -> Result<Option<Value>, ApiError> {
    let page = call
        .api
        .store
        .list(
            &classes_prefix(call),
            ListOptions::default(),
            Consistency::Local,
        )
        .await
        .map_err(|e| ApiError::Internal(format!("listing PriorityClasses: {e}")))?;
    Ok(page
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter(|c| c.get("globalDefault").and_then(Value::as_bool) == Some(true))
        .min_by_key(class_value))
}
