//! The pod table: READY, STATUS and RESTARTS summarise container states the way
//! upstream's `printPod` does (init containers, sidecars, waiting and terminated reasons,
//! `Terminating`), plus the wide IP / NODE / NOMINATED NODE / READINESS GATES columns.

use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
use serde_json::{json, Value};

use super::cells::{list, parse_time, primary_address, since_time, text, text_or};
use super::{col, doc, Column, Doc, AGE};
use time::OffsetDateTime;

/// READY, STATUS and RESTARTS of one pod.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub ready: String,
    pub status: String,
    pub restarts: String,
}

/// Restart count and the most recent restart of a set of containers.
#[derive(Default, Clone, Copy)]
struct Restarts {
    count: i64,
    latest: Option<OffsetDateTime>,
}

impl Restarts {
    fn add(&mut self, status: &Value) {
        self.count += status
            .pointer("/restartCount")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if let Some(finished) = parse_time(text(status, "/lastState/terminated/finishedAt")) {
            self.latest = Some(self.latest.map_or(finished, |l| l.max(finished)));
        }
    }

    /// `3`, or `3 (5m ago)` once a restart time is known.
    fn render(self) -> String {
        match self.latest {
            Some(latest) if self.count != 0 => {
                format!("{} ({} ago)", self.count, since_time(latest))
            }
            _ => self.count.to_string(),
        }
    }
}

fn condition_true(pod: &Value, kind: &str) -> bool {
    list(pod, "/status/conditions")
        .iter()
        .any(|c| text(c, "/type") == kind && text(c, "/status") == "True")
}

/// The reason a terminated container gives: its reason, else its signal or exit code.
fn terminated_reason(terminated: &Value, prefix: &str) -> String {
    match text(terminated, "/reason") {
        "" => match terminated.pointer("/signal").and_then(Value::as_i64) {
            Some(signal) if signal != 0 => format!("{prefix}Signal:{signal}"),
            _ => format!(
                "{prefix}ExitCode:{}",
                terminated
                    .pointer("/exitCode")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            ),
        },
        reason => format!("{prefix}{reason}"),
    }
}

/// Computes what `kubectl get pods` shows for `pod`.
pub fn summarize(pod: &Value) -> Summary {
    let phase = text(pod, "/status/phase");
    let mut reason = text_or(pod, "/status/reason", phase).to_string();
    if list(pod, "/status/conditions")
        .iter()
        .any(|c| text(c, "/type") == "PodScheduled" && text(c, "/reason") == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }

    let init_specs = list(pod, "/spec/initContainers");
    let is_sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| text(c, "/name") == name && text(c, "/restartPolicy") == "Always")
    };
    let total = list(pod, "/spec/containers").len()
        + init_specs
            .iter()
            .filter(|c| text(c, "/restartPolicy") == "Always")
            .count();
    let mut ready = 0;
    let mut restarts = Restarts::default();
    let mut sidecar_restarts = Restarts::default();

    let mut initializing = false;
    for (index, status) in list(pod, "/status/initContainerStatuses")
        .iter()
        .enumerate()
    {
        restarts.add(status);
        let sidecar = is_sidecar(text(status, "/name"));
        if sidecar {
            sidecar_restarts.add(status);
        }
        let terminated = status.pointer("/state/terminated");
        let waiting_reason = text(status, "/state/waiting/reason");
        if terminated.is_some_and(|t| t.pointer("/exitCode").and_then(Value::as_i64) == Some(0)) {
            continue;
        }
        if sidecar && status.pointer("/started").and_then(Value::as_bool) == Some(true) {
            if status.pointer("/ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        reason = match terminated {
            Some(terminated) => terminated_reason(terminated, "Init:"),
            None if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" => {
                format!("Init:{waiting_reason}")
            }
            None => format!("Init:{index}/{}", init_specs.len()),
        };
        initializing = true;
        break;
    }

    if !initializing || condition_true(pod, "Initialized") {
        restarts = sidecar_restarts;
        let mut has_running = false;
        for status in list(pod, "/status/containerStatuses").iter().rev() {
            restarts.add(status);
            let waiting = text(status, "/state/waiting/reason");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(terminated) = status.pointer("/state/terminated") {
                reason = terminated_reason(terminated, "");
            } else if status.pointer("/ready").and_then(Value::as_bool) == Some(true)
                && status.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        // A pod whose last container completed while another still runs is not done.
        if reason == "Completed" && has_running {
            reason = if condition_true(pod, "Ready") {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }

    let deleting = pod.pointer("/metadata/deletionTimestamp").is_some();
    if deleting && text(pod, "/status/reason") == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".into();
    }
    Summary {
        ready: format!("{ready}/{total}"),
        status: reason,
        restarts: restarts.render(),
    }
}

fn readiness_gates(pod: &Value) -> String {
    let gates = list(pod, "/spec/readinessGates");
    if gates.is_empty() {
        return "<none>".into();
    }
    let conditions = list(pod, "/status/conditions");
    let passed = gates
        .iter()
        .filter(|gate| {
            conditions
                .iter()
                .find(|c| text(c, "/type") == text(gate, "/conditionType"))
                .is_some_and(|c| text(c, "/status") == "True")
        })
        .count();
    format!("{passed}/{}", gates.len())
}

/// The row conditions upstream attaches to pods that ran to completion.
pub(super) fn row_conditions(pod: &Value) -> Option<Value> {
    let (reason, message) = match text(pod, "/status/phase") {
        "Succeeded" => ("Succeeded", "The pod has completed successfully."),
        "Failed" => ("Failed", "The pod failed."),
        _ => return None,
    };
    Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
}

pub(super) fn columns(group: &str, kind: &str) -> Option<Vec<Column>> {
    if (group, kind) != ("", "Pod") {
        return None;
    }
    Some(vec![
        col(
            "Ready",
            Doc::Text("The aggregate readiness state of this pod for accepting traffic."),
            |o| summarize(o).ready.into(),
        ),
        col(
            "Status",
            Doc::Text("The aggregate status of the containers in this pod."),
            |o| summarize(o).status.into(),
        ),
        col(
            "Restarts",
            Doc::Text("The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            |o| summarize(o).restarts.into(),
        ),
        AGE,
        col("IP", doc::<PodStatus>("podIP"), |o| {
            primary_address(o, "/status/podIPs", "/ip", "/status/podIP").into()
        }).wide(),
        col("Node", doc::<PodSpec>("nodeName"), |o| {
            text_or(o, "/spec/nodeName", "<none>").into()
        })
        .wide(),
        col(
            "Nominated Node",
            doc::<PodStatus>("nominatedNodeName"),
            |o| text_or(o, "/status/nominatedNodeName", "<none>").into(),
        )
        .wide(),
        col("Readiness Gates", doc::<PodSpec>("readinessGates"), |o| {
            readiness_gates(o).into()
        })
        .wide(),
    ])
}

/// Age of a timestamp, for tests that build objects relative to now.
#[cfg(test)]
fn ago(seconds: i64) -> String {
    let then = time::OffsetDateTime::now_utc() - time::Duration::seconds(seconds);
    then.replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::table::tests::cells_of;
    use serde_json::json;

    fn pod(spec: Value, status: Value) -> Value {
        json!({"metadata": {"name": "p", "creationTimestamp": ago(3 * 86400)}, "spec": spec, "status": status})
    }

    #[test]
    fn crash_looping_container_shows_reason_and_last_restart() {
        let p = pod(
            json!({"nodeName": "n1", "containers": [{"name": "web", "image": "nginx"}, {"name": "log", "image": "busybox"}]}),
            json!({"phase": "Running", "podIP": "10.42.0.7", "podIPs": [{"ip": "10.42.0.7"}], "containerStatuses": [
                {"name": "web", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": ago(600)}}},
                {"name": "log", "ready": false, "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": ago(1200)}}}]}),
        );
        assert_eq!(
            cells_of("", "v1", "pods", p),
            vec![
                json!("p"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("3 (20m ago)"),
                json!("3d"),
                json!("10.42.0.7"),
                json!("n1"),
                json!("<none>"),
                json!("<none>")
            ]
        );
    }

    #[test]
    fn init_containers_and_terminal_states() {
        let spec = json!({"initContainers": [{"name": "a"}, {"name": "b"}], "containers": [{"name": "c"}]});
        let waiting = pod(
            spec.clone(),
            json!({"phase": "Pending", "initContainerStatuses": [
                {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "b", "state": {"running": {}}}]}),
        );
        assert_eq!(summarize(&waiting).status, "Init:1/2");
        let failed = pod(
            spec.clone(),
            json!({"phase": "Pending", "initContainerStatuses": [
                {"name": "a", "restartCount": 2, "state": {"terminated": {"exitCode": 2}}}]}),
        );
        assert_eq!(summarize(&failed).status, "Init:ExitCode:2");
        assert_eq!(summarize(&failed).restarts, "2");
        let pulling = pod(
            spec,
            json!({"phase": "Pending", "initContainerStatuses": [
                {"name": "a", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}),
        );
        assert_eq!(summarize(&pulling).status, "Init:ImagePullBackOff");

        let done = pod(
            json!({"containers": [{"name": "c"}]}),
            json!({"phase": "Succeeded", "containerStatuses": [
                {"name": "c", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}),
        );
        assert_eq!(row_conditions(&done).unwrap()[0]["reason"], "Succeeded");
        assert_eq!(row_conditions(&waiting), None);
        assert_eq!(
            summarize(&done),
            Summary {
                ready: "0/1".into(),
                status: "Completed".into(),
                restarts: "0".into()
            }
        );
        let mut deleting = pod(
            json!({"containers": [{"name": "c"}]}),
            json!({"phase": "Running"}),
        );
        deleting["metadata"]["deletionTimestamp"] = json!(ago(1));
        assert_eq!(summarize(&deleting).status, "Terminating");
    }

    #[test]
    fn sidecars_count_towards_ready() {
        let p = pod(
            json!({"initContainers": [{"name": "proxy", "restartPolicy": "Always"}], "containers": [{"name": "app"}],
                   "readinessGates": [{"conditionType": "example.com/lb"}]}),
            json!({"phase": "Running",
                   "conditions": [{"type": "Initialized", "status": "True"}, {"type": "example.com/lb", "status": "True"}],
                   "initContainerStatuses": [{"name": "proxy", "started": true, "ready": true, "restartCount": 1, "state": {"running": {}}}],
                   "containerStatuses": [{"name": "app", "ready": true, "state": {"running": {}}}]}),
        );
        let s = summarize(&p);
        assert_eq!(
            (s.ready.as_str(), s.status.as_str(), s.restarts.as_str()),
            ("2/2", "Running", "1")
        );
        assert_eq!(readiness_gates(&p), "1/1");
    }
}
