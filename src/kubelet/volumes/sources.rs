//! The files of configMap, secret, downwardAPI and projected volumes, built from API
//! objects as upstream's `MakePayload` functions build them (same key selection, modes,
//! optional handling and error messages).

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, ResourceFieldSelector, Secret,
    ServiceAccount, ServiceAccountTokenProjection,
};
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use super::atomic_writer::{FileContent, Payload};
use super::VolumeContext;
use crate::scheduler::quantity;

/// Upstream's default file mode of these volumes (0644).
pub const DEFAULT_MODE: i32 = 0o644;
/// A projected token's lifetime when the volume does not say.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

fn file(data: impl Into<Vec<u8>>, mode: Option<i32>, default_mode: i32) -> FileContent {
    FileContent {
        data: data.into(),
        mode: mode.unwrap_or(default_mode) as u32,
    }
}

/// The pod's ConfigMap `name`; `Ok(None)` when it does not exist.
pub async fn get_config_map(
    ctx: &VolumeContext,
    namespace: &str,
    name: &str,
) -> Result<Option<ConfigMap>, String> {
    Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| format!("failed to get configmap {namespace}/{name}: {e}"))
}

pub async fn get_secret(
    ctx: &VolumeContext,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, String> {
    Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| format!("failed to get secret {namespace}/{name}: {e}"))
}

/// The files of a configMap: every key, or the `items` asked for.
pub fn config_map_payload(
    config_map: Option<&ConfigMap>,
    name: &str,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
) -> Result<Payload, String> {
    let Some(config_map) = config_map else {
        if optional {
            return Ok(Payload::new());
        }
        return Err(format!("configmap {name:?} not found"));
    };
    let mut all: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for (k, v) in config_map.data.iter().flatten() {
        all.insert(k.as_str(), v.as_bytes().to_vec());
    }
    for (k, v) in config_map.binary_data.iter().flatten() {
        all.insert(k.as_str(), v.0.clone());
    }
    select(all, items, default_mode, optional, |key| {
        format!("configmap references non-existent config key: {key}")
    })
}

/// The files of a secret: every key, or the `items` asked for.
pub fn secret_payload(
    secret: Option<&Secret>,
    name: &str,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
) -> Result<Payload, String> {
    let Some(secret) = secret else {
        if optional {
            return Ok(Payload::new());
        }
        return Err(format!("secret {name:?} not found"));
    };
    let mut all: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        all.insert(k.as_str(), v.0.clone());
    }
    // stringData is folded into data by the API; a Pod built by hand may still carry it.
    for (k, v) in secret.string_data.iter().flatten() {
        all.insert(k.as_str(), v.as_bytes().to_vec());
    }
    select(all, items, default_mode, optional, |key| {
        format!("references non-existent secret key: {key}")
    })
}

fn select(
    all: BTreeMap<&str, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
    missing: impl Fn(&str) -> String,
) -> Result<Payload, String> {
    let mut payload = Payload::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (key, data) in all {
                payload.insert(key.to_string(), file(data, None, default_mode));
            }
        }
        Some(items) => {
            for item in items {
                match all.get(item.key.as_str()) {
                    Some(data) => {
                        payload.insert(
                            item.path.clone(),
                            file(data.clone(), item.mode, default_mode),
                        );
                    }
                    None if optional => continue,
                    None => return Err(missing(&item.key)),
                }
            }
        }
    }
    Ok(payload)
}

/// Go's `%q` of a string, as the downward API quotes label and annotation values.
fn go_quote(value: &str) -> String {
    format!("{value:?}")
}

/// Labels or annotations as the downward API writes them: `key="value"` lines, sorted.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A pod field by its downward API path.
pub fn field_value(pod: &Pod, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(str::to_string)
    };
    if let Some(key) = subscript("metadata.labels['") {
        return Ok(meta
            .labels
            .as_ref()
            .and_then(|m| m.get(&key).cloned())
            .unwrap_or_default());
    }
    if let Some(key) = subscript("metadata.annotations['") {
        return Ok(meta
            .annotations
            .as_ref()
            .and_then(|m| m.get(&key).cloned())
            .unwrap_or_default());
    }
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.podIPs" => status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| {
                ips.iter()
                    .map(|ip| ip.ip.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        other => return Err(format!("unsupported fieldPath: {other}")),
    })
}

/// A container's resource by its downward API selector, limits defaulting to the node's
/// allocatable, divided by the divisor and rounded up, as upstream.
pub fn resource_value(
    ctx: &VolumeContext,
    pod: &Pod,
    default_container: Option<&str>,
    selector: &ResourceFieldSelector,
) -> Result<String, String> {
    let name = selector
        .container_name
        .as_deref()
        .or(default_container)
        .unwrap_or_default();
    let container = crate::kubelet::pods::spec_container(pod, name)
        .ok_or_else(|| format!("container {name} not found in pod"))?;
    let resources = container.resources.as_ref();
    let (kind, resource) = selector
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported container resource : {}", selector.resource))?;
    let map = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => None,
    };
    let quantity = map.and_then(|m| m.get(resource));
    let cpu = resource == "cpu";
    let amount: i128 = match (quantity, kind, resource) {
        (Some(q), _, "cpu") => quantity::milli_value(q) as i128,
        (Some(q), _, _) => quantity::value(q) as i128,
        (None, "limits", "cpu") => ctx.allocatable_cpu_millis as i128,
        (None, "limits", "memory") => ctx.allocatable_memory as i128,
        (None, "requests" | "limits", "cpu" | "memory" | "ephemeral-storage") => 0,
        _ => {
            return Err(format!(
                "unsupported container resource : {}",
                selector.resource
            ))
        }
    };
    let divisor = selector
        .divisor
        .as_ref()
        .map(|d| {
            if cpu {
                quantity::milli_value(d)
            } else {
                quantity::value(d)
            }
        })
        .filter(|d| *d > 0)
        .unwrap_or(if cpu { 1000 } else { 1 }) as i128;
    Ok(((amount + divisor - 1) / divisor).to_string())
}

/// The files of a downwardAPI volume (or projection).
pub fn downward_payload(
    ctx: &VolumeContext,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
) -> Result<Payload, String> {
    let mut payload = Payload::new();
    for item in items {
        let value = if let Some(field) = &item.field_ref {
            field_value(pod, &field.field_path)?
        } else if let Some(resource) = &item.resource_field_ref {
            resource_value(ctx, pod, None, resource)?
        } else {
            continue;
        };
        payload.insert(item.path.clone(), file(value, item.mode, default_mode));
    }
    Ok(payload)
}

/// The JWT's `iat` and `exp` claims, read back from a token written before.
fn token_times(token: &[u8]) -> Option<(i64, i64)> {
    use base64::Engine;
    let text = std::str::from_utf8(token).ok()?;
    let claims = text.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some((value["iat"].as_i64()?, value["exp"].as_i64()?))
}

/// Whether a token should be kept: as upstream's token manager, renewed once 80% of its
/// lifetime or 24 hours have passed.
fn token_fresh(token: &[u8]) -> bool {
    let Some((iat, exp)) = token_times(token) else {
        return false;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let renew_at = (iat + (exp - iat) * 8 / 10).min(iat + 24 * 3600);
    now < renew_at
}

/// A service account token bound to the pod, or the one already written while it is fresh.
pub async fn token(
    ctx: &VolumeContext,
    pod: &Pod,
    projection: &ServiceAccountTokenProjection,
    current: Option<Vec<u8>>,
) -> Result<Vec<u8>, String> {
    if let Some(current) = current.filter(|t| token_fresh(t)) {
        return Ok(current);
    }
    let namespace = pod.namespace().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: projection.audience.iter().cloned().collect(),
            expiration_seconds: Some(
                projection
                    .expiration_seconds
                    .unwrap_or(DEFAULT_TOKEN_SECONDS),
            ),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("Pod".to_string()),
                name: Some(pod.name_any()),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &namespace)
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .map_err(|e| {
            format!(
                "failed to fetch token: serviceaccounts {account:?}: {}",
                api_message(&e)
            )
        })?;
    let token = answer
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "failed to fetch token: the TokenRequest has no token".to_string())?;
    Ok(token.into_bytes())
}

/// An API error's own message (what upstream's events show), else the error.
pub fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_quoted_and_sorted() {
        let mut labels = BTreeMap::new();
        labels.insert("b".to_string(), "two \"2\"".to_string());
        labels.insert("a".to_string(), "one".to_string());
        assert_eq!(format_map(Some(&labels)), "a=\"one\"\nb=\"two \\\"2\\\"\"");
    }

    #[test]
    fn missing_keys_and_objects_fail_unless_optional() {
        let items = vec![KeyToPath {
            key: "nope".into(),
            path: "p".into(),
            mode: None,
        }];
        let cm = ConfigMap::default();
        assert_eq!(
            config_map_payload(Some(&cm), "c", Some(&items), 0o644, false).unwrap_err(),
            "configmap references non-existent config key: nope"
        );
        assert!(
            config_map_payload(Some(&cm), "c", Some(&items), 0o644, true)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            secret_payload(None, "s", None, 0o644, false).unwrap_err(),
            "secret \"s\" not found"
        );
    }
}
