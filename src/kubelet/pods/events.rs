//! The kubelet's events, with upstream's reasons and texts (pkg/kubelet/events): on the pod,
//! or on one of its containers (`fieldPath: spec.containers{name}`), as `kubectl describe
//! pod` lists them. Best effort, like every event.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};

use crate::controllers::events::{reference, EventType, Recorder};

use super::status::Kind;

pub const PULLING: &str = "Pulling";
pub const PULLED: &str = "Pulled";
pub const FAILED: &str = "Failed";
pub const BACK_OFF: &str = "BackOff";
pub const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";
pub const CREATED: &str = "Created";
pub const STARTED: &str = "Started";
pub const KILLING: &str = "Killing";
pub const UNHEALTHY: &str = "Unhealthy";
pub const FAILED_POST_START_HOOK: &str = "FailedPostStartHook";
pub const FAILED_PRE_STOP_HOOK: &str = "FailedPreStopHook";
pub const FAILED_CREATE_POD_SANDBOX: &str = "FailedCreatePodSandBox";
pub const FAILED_MOUNT: &str = "FailedMount";

/// The reference of a container of `pod`.
pub fn container_ref(pod: &Pod, kind: Kind, name: &str) -> ObjectReference {
    let list = match kind {
        Kind::Regular => "containers",
        Kind::Init | Kind::Sidecar => "initContainers",
        Kind::Ephemeral => "ephemeralContainers",
    };
    ObjectReference {
        field_path: Some(format!("spec.{list}{{{name}}}")),
        ..reference(pod)
    }
}

/// Records one event about a container.
pub async fn container(
    recorder: &Recorder,
    pod: &Pod,
    kind: Kind,
    name: &str,
    warning: bool,
    reason: &str,
    message: &str,
) {
    let type_ = if warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    recorder
        .publish(container_ref(pod, kind, name), type_, reason, message)
        .await
}
