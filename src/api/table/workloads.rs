//! Tables of the workload kinds: apps (deployments, replica sets, stateful sets, daemon
//! sets, controller revisions), batch (jobs, cron jobs), autoscaling and policy.

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSetSpec, DaemonSetStatus, DeploymentSpec, DeploymentStatus,
    ReplicaSetSpec, ReplicaSetStatus,
};
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscalerSpec, HorizontalPodAutoscalerStatus,
};
use k8s_openapi::api::batch::v1::{CronJobSpec, CronJobStatus, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{json, Value};

use super::cells::{
    between, bool_ptr, format_labels, format_selector, int, list, map, scalar, selector_string,
    since, since_at, text, text_or,
};
use super::{col, doc, template_columns, Column, Doc, AGE};

/// Desired replicas; upstream defaults an unset count to 1 before printing.
fn desired(object: &Value) -> i64 {
    object
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn ready_of_desired(object: &Value) -> Value {
    format!(
        "{}/{}",
        int(object, "/status/readyReplicas"),
        desired(object)
    )
    .into()
}

fn selector(object: &Value, pointer: &str) -> Value {
    format_selector(object.pointer(pointer)).into()
}

fn deployment() -> Vec<Column> {
    let [containers, images] = template_columns!("/spec/template/spec");
    vec![
        col(
            "Ready",
            Doc::Text("Number of the pod with ready state"),
            ready_of_desired,
        ),
        col(
            "Up-to-date",
            doc::<DeploymentStatus>("updatedReplicas"),
            |o| json!(int(o, "/status/updatedReplicas")),
        ),
        col(
            "Available",
            doc::<DeploymentStatus>("availableReplicas"),
            |o| json!(int(o, "/status/availableReplicas")),
        ),
        AGE,
        containers,
        images,
        // Deployments print the parsed selector, blank rather than <none> when empty.
        col("Selector", doc::<DeploymentSpec>("selector"), |o| {
            match o.pointer("/spec/selector").filter(|s| !s.is_null()) {
                None => "".into(),
                Some(s) => selector_string(s)
                    .unwrap_or_else(|| "<invalid>".into())
                    .into(),
            }
        })
        .wide(),
    ]
}

fn replica_set() -> Vec<Column> {
    let [containers, images] = template_columns!("/spec/template/spec");
    vec![
        col("Desired", doc::<ReplicaSetSpec>("replicas"), |o| {
            json!(desired(o))
        })
        .typed("integer"),
        col("Current", doc::<ReplicaSetStatus>("replicas"), |o| {
            json!(int(o, "/status/replicas"))
        })
        .typed("integer"),
        col("Ready", doc::<ReplicaSetStatus>("readyReplicas"), |o| {
            json!(int(o, "/status/readyReplicas"))
        })
        .typed("integer"),
        AGE,
        containers,
        images,
        col("Selector", doc::<ReplicaSetSpec>("selector"), |o| {
            selector(o, "/spec/selector")
        })
        .wide(),
    ]
}

fn daemon_set() -> Vec<Column> {
    let [containers, images] = template_columns!("/spec/template/spec");
    let number =
        |name, field, cell| col(name, doc::<DaemonSetStatus>(field), cell).typed("integer");
    vec![
        number("Desired", "desiredNumberScheduled", |o| {
            json!(int(o, "/status/desiredNumberScheduled"))
        }),
        number("Current", "currentNumberScheduled", |o| {
            json!(int(o, "/status/currentNumberScheduled"))
        }),
        number("Ready", "numberReady", |o| {
            json!(int(o, "/status/numberReady"))
        }),
        number("Up-to-date", "updatedNumberScheduled", |o| {
            json!(int(o, "/status/updatedNumberScheduled"))
        }),
        number("Available", "numberAvailable", |o| {
            json!(int(o, "/status/numberAvailable"))
        }),
        col("Node Selector", doc::<PodSpec>("nodeSelector"), |o| {
            format_labels(map(o, "/spec/template/spec/nodeSelector")).into()
        }),
        AGE,
        containers,
        images,
        col("Selector", doc::<DaemonSetSpec>("selector"), |o| {
            selector(o, "/spec/selector")
        })
        .wide(),
    ]
}

/// `kind.group/name` of the controlling owner, or `<none>`.
fn controller_of(object: &Value) -> Value {
    let Some(owner) = list(object, "/metadata/ownerReferences")
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
    else {
        return "<none>".into();
    };
    let group = match text(owner, "/apiVersion").split_once('/') {
        Some((group, _)) => group,
        None => "",
    };
    let kind = text(owner, "/kind");
    let name = text(owner, "/name");
    match (kind, group) {
        ("", "") => name.into(),
        (kind, "") => format!("{}/{name}", kind.to_lowercase()).into(),
        (kind, group) => format!("{}.{}/{name}", kind.to_lowercase(), group.to_lowercase()).into(),
    }
}

fn job_completions(job: &Value) -> Value {
    let succeeded = int(job, "/status/succeeded");
    match job.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(completions) => format!("{succeeded}/{completions}"),
        None => match int(job, "/spec/parallelism") {
            parallelism if parallelism > 1 => format!("{succeeded}/1 of {parallelism}"),
            _ => format!("{succeeded}/1"),
        },
    }
    .into()
}

fn job_duration(job: &Value) -> Value {
    match (
        text(job, "/status/startTime"),
        text(job, "/status/completionTime"),
    ) {
        ("", _) => "".into(),
        (start, "") => since(start).into(),
        (start, end) => between(start, end).unwrap_or_default().into(),
    }
}

fn job_status(job: &Value) -> Value {
    let condition = |kind: &str| {
        list(job, "/status/conditions")
            .iter()
            .find(|c| text(c, "/type") == kind)
            .is_some_and(|c| text(c, "/status") == "True")
    };
    if condition("Complete") {
        "Complete"
    } else if condition("Failed") {
        "Failed"
    } else if job.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if condition("Suspended") {
        "Suspended"
    } else if condition("FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    }
    .into()
}

fn job() -> Vec<Column> {
    let [containers, images] = template_columns!("/spec/template/spec");
    vec![
        col("Status", Doc::Text("Status of the job."), job_status),
        col(
            "Completions",
            doc::<JobStatus>("succeeded"),
            job_completions,
        ),
        col(
            "Duration",
            Doc::Text("Time required to complete the job."),
            job_duration,
        ),
        AGE,
        containers,
        images,
        col("Selector", doc::<JobSpec>("selector"), |o| {
            selector(o, "/spec/selector")
        })
        .wide(),
    ]
}

fn cron_job() -> Vec<Column> {
    let [containers, images] = template_columns!("/spec/jobTemplate/spec/template/spec");
    vec![
        col("Schedule", doc::<CronJobSpec>("schedule"), |o| {
            text(o, "/spec/schedule").into()
        }),
        col("Timezone", doc::<CronJobSpec>("timeZone"), |o| {
            text_or(o, "/spec/timeZone", "<none>").into()
        }),
        col("Suspend", doc::<CronJobSpec>("suspend"), |o| {
            bool_ptr(o.pointer("/spec/suspend")).into()
        })
        .typed("boolean"),
        col("Active", doc::<CronJobStatus>("active"), |o| {
            json!(list(o, "/status/active").len())
        })
        .typed("integer"),
        col(
            "Last Schedule",
            doc::<CronJobStatus>("lastScheduleTime"),
            |o| match text(o, "/status/lastScheduleTime") {
                "" => "<none>".into(),
                _ => since_at(o, "/status/lastScheduleTime"),
            },
        ),
        AGE,
        containers,
        images,
        col("Selector", doc::<JobSpec>("selector"), |o| {
            selector(o, "/spec/jobTemplate/spec/selector")
        })
        .wide(),
    ]
}

/// One metric target of an autoscaling/v2 HPA with its current value (`formatHPAMetrics`).
fn hpa_metric(spec: &Value, status: Option<&Value>) -> String {
    let quantity = |v: &Value, p: &str| scalar(v.pointer(p)).unwrap_or_else(|| "0".into());
    let source = |kind: &str| -> (&Value, Option<&Value>) {
        (
            spec.get(kind).unwrap_or(&Value::Null),
            status.and_then(|s| s.get(kind)).filter(|s| !s.is_null()),
        )
    };
    let averaged = |kind: &str| {
        let (target, current) = source(kind);
        if target.pointer("/target/averageValue").is_some() {
            let now = current
                .and_then(|c| scalar(c.pointer("/current/averageValue")))
                .unwrap_or_else(|| "<unknown>".into());
            format!("{now}/{} (avg)", quantity(target, "/target/averageValue"))
        } else {
            let now = current.map_or_else(|| "<unknown>".into(), |c| quantity(c, "/current/value"));
            format!("{now}/{}", quantity(target, "/target/value"))
        }
    };
    let resource = |kind: &str| {
        let (target, current) = source(kind);
        let name = text(target, "/name");
        if target.pointer("/target/averageValue").is_some() {
            let now = current.map_or_else(
                || "<unknown>".into(),
                |c| quantity(c, "/current/averageValue"),
            );
            format!("{name}: {now}/{}", quantity(target, "/target/averageValue"))
        } else {
            let percent = |v: Option<&Value>| v.and_then(Value::as_i64).map(|p| format!("{p}%"));
            let now = current
                .and_then(|c| percent(c.pointer("/current/averageUtilization")))
                .unwrap_or_else(|| "<unknown>".into());
            let goal = percent(target.pointer("/target/averageUtilization"))
                .unwrap_or_else(|| "<auto>".into());
            format!("{name}: {now}/{goal}")
        }
    };
    match text(spec, "/type") {
        "External" => averaged("external"),
        "Object" => averaged("object"),
        "Pods" => {
            let (target, current) = source("pods");
            let now = current.map_or_else(
                || "<unknown>".into(),
                |c| quantity(c, "/current/averageValue"),
            );
            format!("{now}/{}", quantity(target, "/target/averageValue"))
        }
        "Resource" => resource("resource"),
        "ContainerResource" => resource("containerResource"),
        _ => "<unknown type>".into(),
    }
}

fn hpa_targets(hpa: &Value) -> Value {
    // autoscaling/v1 keeps a single CPU utilization target.
    if let Some(target) = hpa
        .pointer("/spec/targetCPUUtilizationPercentage")
        .and_then(Value::as_i64)
    {
        let current = hpa
            .pointer("/status/currentCPUUtilizationPercentage")
            .and_then(Value::as_i64)
            .map_or_else(|| "<unknown>".into(), |c| format!("{c}%"));
        return format!("cpu: {current}/{target}%").into();
    }
    let specs = list(hpa, "/spec/metrics");
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = list(hpa, "/status/currentMetrics");
    let shown: Vec<String> = specs
        .iter()
        .take(2)
        .enumerate()
        .map(|(i, spec)| hpa_metric(spec, statuses.get(i)))
        .collect();
    let joined = shown.join(", ");
    if specs.len() > 2 {
        format!("{joined} + {} more...", specs.len() - 2).into()
    } else {
        joined.into()
    }
}

fn disruption_bound(pdb: &Value, field: &str) -> Value {
    scalar(pdb.pointer(field))
        .unwrap_or_else(|| "N/A".into())
        .into()
}

pub(super) fn columns(group: &str, kind: &str) -> Option<Vec<Column>> {
    let columns = match (group, kind) {
        ("apps", "Deployment") => deployment(),
        ("apps", "ReplicaSet") => replica_set(),
        ("apps", "DaemonSet") => daemon_set(),
        ("apps", "StatefulSet") => {
            let [containers, images] = template_columns!("/spec/template/spec");
            vec![
                col(
                    "Ready",
                    Doc::Text("Number of the pod with ready state"),
                    ready_of_desired,
                ),
                AGE,
                containers,
                images,
            ]
        }
        ("apps", "ControllerRevision") => vec![
            col(
                "Controller",
                Doc::Text("Controller of the object"),
                controller_of,
            ),
            col("Revision", doc::<ControllerRevision>("revision"), |o| {
                json!(int(o, "/revision"))
            }),
            AGE,
        ],
        ("batch", "Job") => job(),
        ("batch", "CronJob") => cron_job(),
        ("autoscaling", "HorizontalPodAutoscaler") => vec![
            col(
                "Reference",
                doc::<HorizontalPodAutoscalerSpec>("scaleTargetRef"),
                |o| {
                    format!(
                        "{}/{}",
                        text(o, "/spec/scaleTargetRef/kind"),
                        text(o, "/spec/scaleTargetRef/name")
                    )
                    .into()
                },
            ),
            col(
                "Targets",
                doc::<HorizontalPodAutoscalerSpec>("metrics"),
                hpa_targets,
            ),
            col(
                "MinPods",
                doc::<HorizontalPodAutoscalerSpec>("minReplicas"),
                |o| {
                    scalar(o.pointer("/spec/minReplicas"))
                        .unwrap_or_else(|| "<unset>".into())
                        .into()
                },
            ),
            col(
                "MaxPods",
                doc::<HorizontalPodAutoscalerSpec>("maxReplicas"),
                |o| json!(int(o, "/spec/maxReplicas")),
            ),
            col(
                "Replicas",
                doc::<HorizontalPodAutoscalerStatus>("currentReplicas"),
                |o| json!(int(o, "/status/currentReplicas")),
            ),
            AGE,
        ],
        ("policy", "PodDisruptionBudget") => vec![
            col(
                "Min Available",
                Doc::Text("The minimum number of pods that must be available."),
                |o| disruption_bound(o, "/spec/minAvailable"),
            ),
            col(
                "Max Unavailable",
                Doc::Text("The maximum number of pods that may be unavailable."),
                |o| disruption_bound(o, "/spec/maxUnavailable"),
            ),
            col(
                "Allowed Disruptions",
                Doc::Text("Calculated number of pods that may be disrupted at this time."),
                |o| json!(int(o, "/status/disruptionsAllowed")),
            )
            .typed("integer"),
            AGE,
        ],
        _ => return None,
    };
    Some(columns)
}

#[cfg(test)]
mod tests {
    use crate::api::table::tests::{cells_of, headers, strings};
    use serde_json::{json, Value};

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "db"}}, "spec": {"nodeSelector": {"disk": "ssd"},
            "containers": [{"name": "db", "image": "postgres:16"}]}})
    }

    #[test]
    fn apps_kinds() {
        let sts = json!({"metadata": {"name": "db"}, "spec": {"replicas": 3, "template": template()}, "status": {"readyReplicas": 1}});
        assert_eq!(
            strings(&cells_of("apps", "v1", "statefulsets", sts)),
            ["db", "1/3", "<unknown>", "db", "postgres:16"]
        );
        let ds = json!({"metadata": {"name": "agent"}, "spec": {"selector": {"matchLabels": {"app": "db"}}, "template": template()},
            "status": {"desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberReady": 1, "updatedNumberScheduled": 2, "numberAvailable": 1}});
        assert_eq!(
            strings(&cells_of("apps", "v1", "daemonsets", ds)),
            [
                "agent",
                "2",
                "2",
                "1",
                "2",
                "1",
                "disk=ssd",
                "<unknown>",
                "db",
                "postgres:16",
                "app=db"
            ]
        );
        let rs = json!({"metadata": {"name": "web-5d8"}, "spec": {"selector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["cache"]}]}, "template": template()}});
        assert_eq!(
            strings(&cells_of("apps", "v1", "replicasets", rs)),
            [
                "web-5d8",
                "1",
                "0",
                "0",
                "<unknown>",
                "db",
                "postgres:16",
                "tier notin (cache)"
            ]
        );
        let revision = json!({"metadata": {"name": "db-7f", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": true}]}, "revision": 2});
        assert_eq!(
            strings(&cells_of("apps", "v1", "controllerrevisions", revision)),
            ["db-7f", "statefulset.apps/db", "2", "<unknown>"]
        );
        let names: Vec<(String, u64)> = headers("apps", "v1", "deployments");
        assert_eq!(names.iter().filter(|(_, p)| *p == 1).count(), 3);
    }

    #[test]
    fn batch_kinds() {
        let running = json!({"metadata": {"name": "work"}, "spec": {"parallelism": 4, "template": template()},
            "status": {"succeeded": 1, "conditions": [{"type": "Suspended", "status": "False"}]}});
        assert_eq!(
            strings(&cells_of("batch", "v1", "jobs", running))[1..4],
            ["Running", "1/1 of 4", ""]
        );
        let failed = json!({"metadata": {"name": "f"}, "spec": {"completions": 2, "template": template()},
            "status": {"startTime": "2024-01-01T00:00:00Z", "completionTime": "2024-01-01T01:02:03Z", "conditions": [{"type": "Failed", "status": "True"}]}});
        assert_eq!(
            strings(&cells_of("batch", "v1", "jobs", failed))[1..4],
            ["Failed", "0/2", "62m"]
        );
        let cron = json!({"metadata": {"name": "nightly"}, "spec": {"schedule": "0 3 * * *", "suspend": false,
            "jobTemplate": {"spec": {"template": template()}}}, "status": {"active": [{"name": "nightly-1"}]}});
        assert_eq!(
            strings(&cells_of("batch", "v1", "cronjobs", cron)),
            [
                "nightly",
                "0 3 * * *",
                "<none>",
                "False",
                "1",
                "<none>",
                "<unknown>",
                "db",
                "postgres:16",
                "<none>"
            ]
        );
    }

    #[test]
    fn autoscalers_and_budgets() {
        let v2 = json!({"metadata": {"name": "web"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 10, "minReplicas": 2,
            "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                {"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "100"}}},
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "1Gi"}}}]},
            "status": {"currentReplicas": 3, "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 42}}}]}});
        assert_eq!(
            strings(&cells_of(
                "autoscaling",
                "v2",
                "horizontalpodautoscalers",
                v2
            )),
            [
                "web",
                "Deployment/web",
                "cpu: 42%/80%, <unknown>/100 + 1 more...",
                "2",
                "10",
                "3",
                "<unknown>"
            ]
        );
        let v1 = json!({"metadata": {"name": "api"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "api"}, "maxReplicas": 4, "targetCPUUtilizationPercentage": 50}});
        assert_eq!(
            strings(&cells_of(
                "autoscaling",
                "v1",
                "horizontalpodautoscalers",
                v1
            ))[2..4],
            ["cpu: <unknown>/50%", "<unset>"]
        );
        let pdb = json!({"metadata": {"name": "web"}, "spec": {"maxUnavailable": "25%"}, "status": {"disruptionsAllowed": 1}});
        assert_eq!(
            strings(&cells_of("policy", "v1", "poddisruptionbudgets", pdb)),
            ["web", "N/A", "25%", "1", "<unknown>"]
        );
    }
}
