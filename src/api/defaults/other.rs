//! Defaults of the smaller groups: storage, scheduling, networking, autoscaling, discovery.

use serde_json::{json, Value};

use super::{default, each, object_at};

pub(super) fn apply(kind: &str, object: &mut Value) {
    match kind {
        "StorageClass" => {
            default(object, "reclaimPolicy", json!("Delete"));
            default(object, "volumeBindingMode", json!("Immediate"));
        }
        "PriorityClass" => default(object, "preemptionPolicy", json!("PreemptLowerPriority")),
        "HorizontalPodAutoscaler" => {
            let spec = object_at(object, "/spec");
            default(spec, "minReplicas", json!(1));
            if object["apiVersion"] == "autoscaling/v2" {
                let spec = object_at(object, "/spec");
                let empty = spec
                    .get("metrics")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty);
                if empty {
                    spec["metrics"] = json!([{"type": "Resource", "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80},
                    }}]);
                }
            }
        }
        "NetworkPolicy" => {
            let spec = object_at(object, "/spec");
            for rules in ["/ingress", "/egress"] {
                each(spec, rules, |rule| {
                    each(rule, "/ports", |port| {
                        default(port, "protocol", json!("TCP"))
                    });
                });
            }
            let has_egress = spec
                .get("egress")
                .and_then(Value::as_array)
                .is_some_and(|e| !e.is_empty());
            let types = if has_egress {
                json!(["Ingress", "Egress"])
            } else {
                json!(["Ingress"])
            };
            default(spec, "policyTypes", types);
        }
        "EndpointSlice" => each(object, "/ports", |port| {
            default(port, "protocol", json!("TCP"));
        }),
        _ => {}
    }
}
