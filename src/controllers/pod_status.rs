//! What the StatefulSet and DaemonSet controllers read off their pods beyond [`super::pods`]'
//! readiness: the phase, whether a pod is going away, and upstream's statefulset
//! `isRunningAndReady`.

use k8s_openapi::api::core::v1::Pod;

pub use super::pods::{is_available, is_ready};

/// The pod's phase (`""` before the API gave it one).
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Whether the pod has been deleted and waits for its containers to stop.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Whether the pod runs and is Ready (upstream's statefulset `isRunningAndReady`).
pub fn is_running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && is_ready(pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn pod(phase: &str, ready: &str, since: &str) -> Pod {
        serde_json::from_value(json!({"status": {"phase": phase, "conditions": [
            {"type": "Ready", "status": ready, "lastTransitionTime": since}]}}))
        .unwrap()
    }

    #[test]
    fn readiness_and_availability() {
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let p = pod("Running", "True", "2026-01-01T00:00:00Z");
        assert!(is_running_and_ready(&p));
        assert!(is_available(&p, 0, now));
        assert!(!is_available(&p, 11, now));
        let p = pod("Running", "False", "2026-01-01T00:00:00Z");
        assert!(!is_ready(&p) && !is_available(&p, 0, now));
        assert!(!is_running_and_ready(&pod(
            "Pending",
            "True",
            "2026-01-01T00:00:00Z"
        )));
    }
}
