//! The arithmetic and bookkeeping of upstream's `deployment/util`: the pod-template-hash,
//! revision and replica annotations on ReplicaSets, maxSurge/maxUnavailable resolution,
//! which ReplicaSet is "new", and the Deployment conditions.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::Value;

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Upstream caps the revision-history annotation at about 100 revisions.
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

/// Deployment annotations never copied onto its ReplicaSets (or back on rollback).
const NOT_COPIED: [&str; 7] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deployment.kubernetes.io/error-selector-overlapping-with",
    "deployment.kubernetes.io/selector-updated-at",
];

/// `spec.progressDeadlineSeconds` when set to something other than "never" (MaxInt32).
pub fn progress_deadline(d: &Deployment) -> Option<i32> {
    spec_of(d)
        .progress_deadline_seconds
        .filter(|s| *s != i32::MAX)
}

fn spec_of(d: &Deployment) -> k8s_openapi::api::apps::v1::DeploymentSpec {
    d.spec.clone().unwrap_or_default()
}

pub fn replicas(d: &Deployment) -> i32 {
    spec_of(d).replicas.unwrap_or(1)
}

pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

pub fn rs_status(rs: &ReplicaSet) -> k8s_openapi::api::apps::v1::ReplicaSetStatus {
    rs.status.clone().unwrap_or_default()
}

pub fn is_rolling(d: &Deployment) -> bool {
    spec_of(d)
        .strategy
        .and_then(|s| s.type_)
        .is_none_or(|t| t == "RollingUpdate")
}

/// Upstream's `GetValueFromIntOrPercent`: a percentage of `total`, rounded up or down.
fn scaled_value(value: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match value {
        None => 0,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let product = percent * i64::from(total);
            let value = if round_up {
                (product + 99).div_euclid(100)
            } else {
                product.div_euclid(100)
            };
            value as i32
        }
    }
}

/// maxSurge and maxUnavailable for `desired` replicas: surge rounds up, unavailable down,
/// and if both come out 0, one pod may be unavailable (upstream's `ResolveFenceposts`).
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    let desired = replicas(d);
    let rolling = spec_of(d).strategy.and_then(|s| s.rolling_update);
    let surge = scaled_value(
        rolling.as_ref().and_then(|r| r.max_surge.as_ref()),
        desired,
        true,
    );
    let mut unavailable = scaled_value(
        rolling.as_ref().and_then(|r| r.max_unavailable.as_ref()),
        desired,
        false,
    );
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

pub fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling(d) {
        return 0;
    }
    fenceposts(d).0
}

pub fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling(d) || replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas(d))
}

/// The pod-template-hash of `template`: FNV-32a over its canonical JSON (and the collision
/// count, little-endian in 8 bytes, as upstream appends it), written as the decimal number
/// with upstream's `SafeEncodeString` alphabet (no vowels, no look-alikes).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c9dc5;
    let mut write = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x01000193);
        }
    };
    write(&serde_json::to_vec(template).unwrap_or_default());
    if let Some(count) = collision_count {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&(count as u32).to_le_bytes());
        write(&bytes);
    }
    safe_encode(&hash.to_string())
}

/// Upstream's `rand.SafeEncodeString`.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// Whether two pod templates are the same apart from the pod-template-hash label (empty and
/// absent fields alike, as upstream's semantic equality).
pub fn equal_ignoring_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let canonical = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(HASH_LABEL);
        }
        prune(serde_json::to_value(t).unwrap_or(Value::Null))
    };
    canonical(a) == canonical(b)
}

/// Drops nulls, empty lists and empty maps.
fn prune(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, prune(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(prune).collect()),
        other => other,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The revision annotation of a ReplicaSet (0 when absent or unreadable).
pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Copies the Deployment's annotations onto its new ReplicaSet and raises its revision to
/// `new_revision`, remembering the revisions it had in `revision-history` (a rollback to
/// it); a ReplicaSet about to be created also gets the replica annotations. Whether
/// anything changed.
pub fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
) -> bool {
    let mut changed = false;
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in d.annotations() {
        if NOT_COPIED.contains(&k.as_str()) || annotations.get(k) == Some(v) {
            continue;
        }
        annotations.insert(k.clone(), v.clone());
        changed = true;
    }
    let old = annotations.get(REVISION).cloned();
    let old_revision: i64 = match old.as_deref().map(str::parse) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return false,
    };
    if old_revision < new_revision {
        annotations.insert(REVISION.to_string(), new_revision.to_string());
        changed = true;
        if let Some(old) = old {
            let history = annotations
                .get(REVISION_HISTORY)
                .cloned()
                .unwrap_or_default();
            if history.is_empty() {
                annotations.insert(REVISION_HISTORY.to_string(), old);
            } else {
                let mut revisions: Vec<&str> = history.split(',').collect();
                let mut total = history.len() + old.len() + 1;
                let mut start = 0;
                while total > MAX_REVISION_HISTORY_CHARS && start < revisions.len() {
                    total -= revisions[start].len() + 1;
                    start += 1;
                }
                if total <= MAX_REVISION_HISTORY_CHARS {
                    revisions = revisions.split_off(start);
                    revisions.push(&old);
                    let joined = revisions.join(",");
                    annotations.insert(REVISION_HISTORY.to_string(), joined);
                }
            }
        }
    }
    if !exists && set_replicas_annotations(rs, replicas(d), replicas(d) + max_surge(d)) {
        changed = true;
    }
    changed
}

/// Records the Deployment's desired and maximum replicas on a ReplicaSet; whether they
/// changed.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let value = value.to_string();
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.to_string(), value);
            changed = true;
        }
    }
    changed
}

pub fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.annotations();
    annotations.get(DESIRED_REPLICAS) != Some(&desired.to_string())
        || annotations.get(MAX_REPLICAS) != Some(&max.to_string())
}

pub fn annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.annotations().get(key).and_then(|v| v.parse().ok())
}

/// The ReplicaSet running the Deployment's current template: the oldest such one.
pub fn find_new(d: &Deployment, sets: &[ReplicaSet]) -> Option<usize> {
    let template = spec_of(d).template;
    let mut candidates: Vec<usize> = (0..sets.len())
        .filter(|&i| {
            let rs_template = sets[i]
                .spec
                .as_ref()
                .and_then(|s| s.template.clone())
                .unwrap_or_default();
            equal_ignoring_hash(&rs_template, &template)
        })
        .collect();
    candidates.sort_by(|&a, &b| by_creation(&sets[a], &sets[b]));
    candidates.first().copied()
}

/// Oldest first, then by name, as upstream's `ReplicaSetsByCreationTimestamp`.
pub fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> std::cmp::Ordering {
    let created = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
    created(a)
        .cmp(&created(b))
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

pub fn condition<'a>(status: &'a DeploymentStatus, kind: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.type_ == kind))
}

pub fn new_condition(
    kind: &str,
    status: &str,
    reason: &str,
    message: String,
) -> DeploymentCondition {
    let now = Time(Timestamp::now());
    DeploymentCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// Upstream's `SetDeploymentCondition`: nothing if the same status and reason are there;
/// the transition time kept when only the reason changes.
pub fn set_condition(status: &mut DeploymentStatus, mut condition: DeploymentCondition) {
    if let Some(current) = condition_of(status, &condition.type_) {
        if current.status == condition.status && current.reason == condition.reason {
            return;
        }
        if current.status == condition.status {
            condition.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, &condition.type_);
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(condition);
}

fn condition_of<'a>(status: &'a DeploymentStatus, kind: &str) -> Option<&'a DeploymentCondition> {
    condition(status, kind)
}

pub fn remove_condition(status: &mut DeploymentStatus, kind: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: i32, surge: Value, unavailable: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "selector": {},
                "strategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                "template": {}},
        }))
        .unwrap()
    }

    #[test]
    fn fenceposts_round_surge_up_and_unavailable_down() {
        assert_eq!(
            fenceposts(&deployment(3, json!("25%"), json!("25%"))),
            (1, 0)
        );
        assert_eq!(
            fenceposts(&deployment(10, json!("25%"), json!("25%"))),
            (3, 2)
        );
        assert_eq!(fenceposts(&deployment(2, json!(0), json!("1%"))), (0, 1));
        assert_eq!(max_unavailable(&deployment(1, json!(0), json!(5))), 1);
    }

    #[test]
    fn hashes_use_the_safe_alphabet_and_change_with_the_collision_count() {
        let template: PodTemplateSpec =
            serde_json::from_value(json!({"metadata": {"labels": {"app": "web"}}})).unwrap();
        let hash = template_hash(&template, None);
        assert!((1..=10).contains(&hash.len()));
        assert!(hash.chars().all(|c| "456789bcdf".contains(c)), "{hash}");
        assert_ne!(hash, template_hash(&template, Some(1)));
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
    }

    #[test]
    fn templates_compare_without_the_hash_label_and_empty_fields() {
        let a: PodTemplateSpec = serde_json::from_value(
            json!({"metadata": {"labels": {"app": "web", HASH_LABEL: "x"}, "annotations": {}}}),
        )
        .unwrap();
        let b: PodTemplateSpec =
            serde_json::from_value(json!({"metadata": {"labels": {"app": "web"}}})).unwrap();
        assert!(equal_ignoring_hash(&a, &b));
    }

    #[test]
    fn a_rollback_keeps_the_old_revision_in_the_history() {
        let d = deployment(3, json!(1), json!(0));
        let mut rs: ReplicaSet =
            serde_json::from_value(json!({"metadata": {"annotations": {REVISION: "1"}}})).unwrap();
        assert!(set_new_rs_annotations(&d, &mut rs, 3, true));
        assert_eq!(rs.annotations()[REVISION], "3");
        assert_eq!(rs.annotations()[REVISION_HISTORY], "1");
        assert!(set_new_rs_annotations(&d, &mut rs, 5, true));
        assert_eq!(rs.annotations()[REVISION_HISTORY], "1,3");
    }
}
