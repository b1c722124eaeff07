//! postStart and preStop hooks (upstream's `HandlerRunner`): exec in the container,
//! httpGet inside the pod's network, or sleep; failures carry upstream's messages, which
//! become the `FailedPostStartHook` / `FailedPreStopHook` events.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};

use super::action::{self, Target};
use super::format;

/// How long an httpGet or exec hook may take (upstream has none for exec; the preStop
/// caller bounds it by the grace period).
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(
    handler: &LifecycleHandler,
    pod: &Pod,
    container: &Container,
    dir: &Path,
    target: &Target,
) -> Result<String, String> {
    if let Some(exec) = &handler.exec {
        let command = exec.command.clone().unwrap_or_default();
        return action::exec(dir, &command, HOOK_TIMEOUT)
            .await
            .map_err(|output| {
                format!(
                    "Exec lifecycle hook ({}) for Container {:?} in Pod {:?} failed - error: {output}, message: {:?}",
                    go_slice(&command),
                    container.name,
                    format::pod(pod),
                    output
                )
            });
    }
    if let Some(get) = &handler.http_get {
        let path = get.path.clone().unwrap_or_default();
        return action::http(get, container, target, HOOK_TIMEOUT)
            .await
            .map_err(|error| {
                format!(
                    "HTTP lifecycle hook ({path}) for Container {:?} in Pod {:?} failed - error: {error}",
                    container.name,
                    format::pod(pod)
                )
            });
    }
    if let Some(tcp) = &handler.tcp_socket {
        return action::tcp(tcp, container, target, HOOK_TIMEOUT).await;
    }
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)).await;
        return Ok(String::new());
    }
    Err(format!(
        "Cannot run handler: invalid handler for Container {:?} in Pod {:?}",
        container.name,
        format::pod(pod)
    ))
}

/// Go's `%v` of a string slice: `[a b c]`.
fn go_slice(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}
