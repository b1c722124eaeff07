//! Making sure a container's image is present (upstream's `imageManager.EnsureImageExists`):
//! pull policy Always / IfNotPresent / Never, credentials from the pod's imagePullSecrets,
//! a back-off per pod and image after a failed pull, and upstream's events and waiting
//! reasons (ErrImagePull, ImagePullBackOff, ErrImageNeverPull).

use std::time::Instant;

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::Api;

use super::backoff::Backoff;
use super::events;
use super::format::go_duration;
use super::status::Kind;
use super::worker::Shared;
use crate::runtime::images::{Image, RegistryAuth};

/// A waiting reason and message for the container status.
pub type Waiting = (String, String);

/// The image for `container`, pulled if the policy says so.
pub async fn ensure(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
    kind: Kind,
    backoff: &mut Backoff,
) -> Result<Image, Waiting> {
    let reference = container.image.clone().unwrap_or_default();
    let present = shared.images.resolve(&reference).ok().flatten();
    let policy = container.image_pull_policy.as_deref().unwrap_or_else(|| {
        // The API server defaults it; this is the same rule for objects that skipped it.
        if reference.contains('@') || !reference.ends_with(":latest") && has_tag(&reference) {
            "IfNotPresent"
        } else {
            "Always"
        }
    });
    let should_pull = match policy {
        "Always" => true,
        "Never" => false,
        _ => present.is_none(),
    };
    let event = |warning: bool, reason: &'static str, message: String| {
        let recorder = shared.recorder.clone();
        let pod = pod.clone();
        let name = container.name.clone();
        async move { events::container(&recorder, &pod, kind, &name, warning, reason, &message).await }
    };
    if !should_pull {
        if let Some(image) = present {
            event(
                false,
                events::PULLED,
                format!("Container image {reference:?} already present on machine"),
            )
            .await;
            return Ok(image);
        }
        let message =
            format!("Container image {reference:?} is not present with pull policy of Never");
        event(true, events::ERR_IMAGE_NEVER_PULL, message.clone()).await;
        return Err(("ErrImageNeverPull".to_string(), message));
    }
    let key = format!("image:{reference}");
    if backoff.in_backoff_since_update(&key, Instant::now()) {
        let message = format!("Back-off pulling image {reference:?}");
        event(false, events::BACK_OFF, message.clone()).await;
        event(true, events::FAILED, "Error: ImagePullBackOff".to_string()).await;
        return Err(("ImagePullBackOff".to_string(), message));
    }
    event(
        false,
        events::PULLING,
        format!("Pulling image {reference:?}"),
    )
    .await;
    let auth = pull_secrets(shared, pod).await;
    let started = Instant::now();
    match pull(shared, &reference, &auth).await {
        Ok(image) => {
            let took = go_duration(started.elapsed());
            event(
                false,
                events::PULLED,
                format!(
                    "Successfully pulled image {reference:?} in {took} ({took} including waiting). Image size: {} bytes.",
                    image.size
                ),
            )
            .await;
            backoff.reset(&key);
            Ok(image)
        }
        Err(error) => {
            let now = Instant::now();
            backoff.next(&key, now, now);
            let message = format!("Failed to pull image {reference:?}: {error}");
            event(true, events::FAILED, message.clone()).await;
            event(true, events::FAILED, "Error: ErrImagePull".to_string()).await;
            Err(("ErrImagePull".to_string(), message))
        }
    }
}

/// Pulls `reference` into the image store.
async fn pull(shared: &Shared, reference: &str, auth: &[RegistryAuth]) -> Result<Image, String> {
    shared
        .images
        .pull(reference, auth)
        .await
        .map_err(|e| e.to_string())
}

/// Whether the reference names a tag (a `:` after the last `/`).
fn has_tag(reference: &str) -> bool {
    reference
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
}

/// Registry credentials from the pod's imagePullSecrets (dockerconfigjson and the legacy
/// dockercfg); missing or malformed secrets are skipped, as upstream does.
async fn pull_secrets(shared: &Shared, pod: &Pod) -> Vec<RegistryAuth> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Secret> = Api::namespaced(shared.client.clone(), namespace);
    let mut auths = Vec::new();
    for reference in pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_deref())
        .unwrap_or_default()
    {
        let Ok(secret) = api.get(&reference.name).await else {
            tracing::warn!(secret = reference.name, "image pull secret not found");
            continue;
        };
        auths.extend(docker_auths(&secret));
    }
    auths
}

/// The credentials in a `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg` secret.
pub fn docker_auths(secret: &Secret) -> Vec<RegistryAuth> {
    let data = secret.data.clone().unwrap_or_default();
    let config: serde_json::Value = if let Some(json) = data.get(".dockerconfigjson") {
        serde_json::from_slice::<serde_json::Value>(&json.0)
            .ok()
            .and_then(|v| v.get("auths").cloned())
            .unwrap_or_default()
    } else if let Some(cfg) = data.get(".dockercfg") {
        serde_json::from_slice(&cfg.0).unwrap_or_default()
    } else {
        return Vec::new();
    };
    let Some(map) = config.as_object() else {
        return Vec::new();
    };
    let mut auths = Vec::new();
    for (registry, entry) in map {
        let field = |name: &str| {
            entry
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let (mut username, mut password) = (field("username"), field("password"));
        if username.is_empty() {
            use base64::Engine;
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(field("auth")) {
                let decoded = String::from_utf8_lossy(&decoded).into_owned();
                if let Some((u, p)) = decoded.split_once(':') {
                    username = u.to_string();
                    password = p.to_string();
                }
            }
        }
        if username.is_empty() {
            continue;
        }
        auths.push(RegistryAuth {
            registry: registry_host(registry),
            username,
            password,
        });
    }
    auths
}

/// `https://index.docker.io/v1/` → `docker.io`; `reg.example:5000/path` → `reg.example:5000`.
fn registry_host(key: &str) -> String {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerconfigjson_credentials() {
        use base64::Engine;
        let config = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": base64::engine::general_purpose::STANDARD.encode("u:p")},
            "reg.local:5000": {"username": "a", "password": "b"},
        }});
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config.to_string())},
        }))
        .unwrap();
        let mut auths = docker_auths(&secret);
        auths.sort_by(|a, b| a.registry.cmp(&b.registry));
        assert_eq!(auths[0].registry, "docker.io");
        assert_eq!(
            (auths[0].username.as_str(), auths[0].password.as_str()),
            ("u", "p")
        );
        assert_eq!(auths[1].registry, "reg.local:5000");
    }
}
