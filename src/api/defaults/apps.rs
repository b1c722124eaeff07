//! `apps/v1` defaults: replicas, update strategies, history limits, pod templates.

use serde_json::{json, Value};

use super::core::template_at;
use super::{default, object_at};

pub(super) fn deployment(object: &mut Value) {
    let spec = object_at(object, "/spec");
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    let strategy = object_at(spec, "/strategy");
    default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        let rolling = object_at(strategy, "/rollingUpdate");
        default(rolling, "maxUnavailable", json!("25%"));
        default(rolling, "maxSurge", json!("25%"));
    }
    template_at(object, "/spec/template");
}

pub(super) fn replica_set(object: &mut Value) {
    default(object_at(object, "/spec"), "replicas", json!(1));
    template_at(object, "/spec/template");
}

pub(super) fn stateful_set(object: &mut Value) {
    let spec = object_at(object, "/spec");
    default(spec, "replicas", json!(1));
    default(spec, "podManagementPolicy", json!("OrderedReady"));
    default(spec, "revisionHistoryLimit", json!(10));
    let strategy = object_at(spec, "/updateStrategy");
    default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        default(object_at(strategy, "/rollingUpdate"), "partition", json!(0));
    }
    let retention = object_at(spec, "/persistentVolumeClaimRetentionPolicy");
    default(retention, "whenDeleted", json!("Retain"));
    default(retention, "whenScaled", json!("Retain"));
    if let Some(claims) = spec
        .get_mut("volumeClaimTemplates")
        .and_then(Value::as_array_mut)
    {
        for claim in claims {
            default(object_at(claim, "/spec"), "volumeMode", json!("Filesystem"));
        }
    }
    template_at(object, "/spec/template");
}

pub(super) fn daemon_set(object: &mut Value) {
    let spec = object_at(object, "/spec");
    default(spec, "revisionHistoryLimit", json!(10));
    let strategy = object_at(spec, "/updateStrategy");
    default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        let rolling = object_at(strategy, "/rollingUpdate");
        default(rolling, "maxUnavailable", json!(1));
        default(rolling, "maxSurge", json!(0));
    }
    template_at(object, "/spec/template");
}
