//! `pods/eviction`: deletes a pod unless that would break its PodDisruptionBudget (what
//! `kubectl drain` uses); a budget that allows it is charged for the disruption first.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::binding::success;
use super::delete::{delete_one, DeleteOptions};
use super::{ApiError, Call};
use crate::api::http::Body;
use crate::api::object;
use crate::api::validation::kinds::selector_matches;
use crate::store::{Consistency, ListOptions, StoreError};

const BUDGET_VIOLATED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";
/// Attempts at charging a budget that keeps changing under us.
const ATTEMPTS: usize = 10;

fn too_many(message: String) -> ApiError {
    ApiError::TooManyRequests {
        message: BUDGET_VIOLATED.to_string(),
        causes: vec![("DisruptionBudget".to_string(), message)],
    }
}

/// Pods that are not running yet or any more are evicted without asking their budget.
fn budget_applies(pod: &Value) -> bool {
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending");
    !matches!(phase, "Succeeded" | "Failed" | "Pending") && !object::is_marked_for_deletion(pod)
}

pub(super) async fn create(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let name = call.path.name.as_deref().unwrap_or_default().to_string();
    let eviction = call.body_json()?;
    if let Some(named) = object::meta_str(&eviction, "name").filter(|n| !n.is_empty()) {
        if named != name {
            return Err(ApiError::BadRequest(
                "name in URL does not match name in Eviction object".to_string(),
            ));
        }
    }
    let options: DeleteOptions = match eviction.get("deleteOptions") {
        Some(options) if !options.is_null() => serde_json::from_value(options.clone())
            .map_err(|e| ApiError::BadRequest(format!("invalid deleteOptions: {e}")))?,
        _ => DeleteOptions::default(),
    };
    options.validate()?;
    let pod = object::decode(&call.load(&name, Consistency::Linearizable).await?)?;
    if call.dry_run || options.is_dry_run() {
        // What would be checked and deleted is not touched.
        return Ok(call.ok(StatusCode::CREATED, &success(StatusCode::CREATED)));
    }
    if budget_applies(&pod) {
        charge_budget(call, &pod).await?;
    }
    delete_one(call, &name, &options).await?;
    Ok(call.ok(StatusCode::CREATED, &success(StatusCode::CREATED)))
}

/// Finds the pod's budget, if any, and records the disruption in it; 429 when it allows
/// none.
async fn charge_budget(call: &Call<'_>, pod: &Value) -> Result<(), ApiError> {
    let budgets = call
        .api
        .registry
        .get("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::Internal("poddisruptionbudgets are not registered".into()))?;
    let prefix = budgets.namespace_prefix(call.namespace());
    let pod_name = object::name(pod).to_string();
    let labels = object::labels(pod).cloned().unwrap_or_default();
    for _ in 0..ATTEMPTS {
        let page = call
            .api
            .store
            .list(&prefix, ListOptions::default(), Consistency::Linearizable)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut matching: Vec<(crate::store::KeyValue, Value)> = page
            .items
            .into_iter()
            .filter_map(|kv| {
                let budget: Value = serde_json::from_slice(&kv.value).ok()?;
                let selector = budget.pointer("/spec/selector")?;
                selector_matches(selector, &labels).then_some((kv, budget))
            })
            .collect();
        let (kv, mut budget) = match matching.len() {
            0 => return Ok(()),
            1 => matching.remove(0),
            _ => {
                return Err(ApiError::Internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".to_string(),
                ))
            }
        };
        let budget_name = object::name(&budget).to_string();
        let generation = object::metadata(&budget)
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let observed = budget
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64);
        if observed.is_none_or(|o| o < generation) {
            return Err(too_many(format!(
                "The disruption budget {budget_name} is still being processed by the server."
            )));
        }
        let allowed = budget
            .pointer("/status/disruptionsAllowed")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if allowed <= 0 {
            let desired = budget
                .pointer("/status/desiredHealthy")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let current = budget
                .pointer("/status/currentHealthy")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            return Err(too_many(format!(
                "The disruption budget {budget_name} needs {desired} healthy pods and has {current} currently"
            )));
        }
        budget["status"]["disruptionsAllowed"] = json!(allowed - 1);
        let disrupted = &mut budget["status"]["disruptedPods"];
        if !disrupted.is_object() {
            *disrupted = json!({});
        }
        disrupted[&pod_name] = json!(object::now());
        let key = budgets.key(call.namespace(), &budget_name);
        match call
            .api
            .store
            .update(&key, object::encode(&budget), Some(kv.mod_revision))
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, call.target(&budget_name))),
        }
    }
    Err(ApiError::Conflict {
        target: call.target(&pod_name),
        message: "the disruption budget kept changing; please try again".to_string(),
    })
}
