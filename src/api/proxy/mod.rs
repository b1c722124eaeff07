//! The subresources served by a node's kubelet: `pods/log`, `pods/exec`, `pods/attach`,
//! `pods/portforward` and `nodes/proxy`. The API server checks the request against the
//! stored pod (as upstream: unknown container, unscheduled pod, container not started yet),
//! finds the node's kubelet (`status.addresses` InternalIP and
//! `status.daemonEndpoints.kubeletEndpoint.Port`) and forwards: log bodies are streamed as
//! they come (`kubectl logs -f`), upgraded connections (WebSocket or SPDY) are joined byte
//! for byte after the kubelet agreed to the upgrade.
//!
//! Owns: the kubelet client ([`client`]). Must not touch: the store beyond reading the pod
//! and node.

pub mod client;

use std::collections::HashMap;
use std::net::IpAddr;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use serde_json::Value;

use super::error::{ApiError, Target};
use super::http::{Body, BoxError, RequestBody};
use super::request::ResourcePath;
use super::rest::Api;
use super::{object, status};
use crate::store::Consistency;

pub use client::{KubeletClient, KubeletError};

/// The kubelet's port when a Node does not say (upstream's default).
const DEFAULT_KUBELET_PORT: u16 = 10250;
/// Largest kubelet error body read to build a Status from.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Serves a kubelet-backed subresource request.
pub async fn serve(
    api: &Api,
    request: Request<RequestBody>,
    path: &ResourcePath,
) -> Result<Response<Body>, ApiError> {
    let Some(kubelet) = api.kubelet.as_ref() else {
        return Err(ApiError::Unavailable(
            "this kedge server has no client certificate for kubelets, so it cannot reach them"
                .into(),
        ));
    };
    let name = path.name.clone().unwrap_or_default();
    let subresource = path.subresource.as_deref().unwrap_or_default();
    let query = query_map(request.uri().query());
    let (node_name, kubelet_path, check_status) = match (path.resource.as_str(), subresource) {
        ("nodes", "proxy") => {
            let rest = proxy_path(request.uri().path(), &name);
            (name.clone(), rest, None)
        }
        ("pods", "log" | "exec" | "attach" | "portforward") => {
            let namespace = path.namespace.clone().unwrap_or_default();
            let pod = load(api, "pods", Some(&namespace), &name).await?;
            let node = pod_node(&pod, &name)?;
            match subresource {
                "portforward" => (node, format!("/portForward/{namespace}/{name}"), None),
                _ => {
                    let container = container_of(&pod, &name, &query)?;
                    let endpoint = match subresource {
                        "log" => "containerLogs",
                        other => other,
                    };
                    let check = (subresource == "log").then(|| (pod.clone(), container.clone()));
                    (
                        node,
                        format!("/{endpoint}/{namespace}/{name}/{container}"),
                        check,
                    )
                }
            }
        }
        _ => return Err(ApiError::UnknownResource),
    };
    if let Some((pod, container)) = &check_status {
        check_logs_available(pod, &name, container, &query)?;
    }
    let node = load(api, "nodes", None, &node_name).await?;
    let (ip, port) = kubelet_address(&node, &node_name)?;
    let query = kubelet_query(request.uri().query(), subresource);
    let uri = match query {
        Some(q) if !q.is_empty() => format!("{kubelet_path}?{q}"),
        _ => kubelet_path,
    };
    forward(kubelet, ip, port, request, &uri, subresource == "log").await
}

/// What follows `/nodes/<name>/proxy` in `path` (at least `/`).
fn proxy_path(path: &str, name: &str) -> String {
    let marker = format!("/nodes/{name}/proxy");
    match path.find(&marker) {
        Some(at) => {
            let rest = &path[at + marker.len()..];
            if rest.is_empty() {
                "/".to_string()
            } else {
                rest.to_string()
            }
        }
        None => "/".to_string(),
    }
}

/// The query sent on to the kubelet: `container` is in the kubelet's path already.
fn kubelet_query(query: Option<&str>, subresource: &str) -> Option<String> {
    let query = query?;
    if subresource == "proxy" {
        return Some(query.to_string());
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != "container" {
            out.append_pair(&key, &value);
        }
    }
    Some(out.finish())
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn load(
    api: &Api,
    plural: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let resource = api
        .registry
        .get("", "v1", plural)
        .ok_or(ApiError::UnknownResource)?;
    let key = resource.key(namespace, name);
    let target = Target::new(&resource, name);
    let kv = api
        .store
        .get(&key, Consistency::Linearizable)
        .await
        .map_err(|e| ApiError::from_store(e, target.clone()))?
        .ok_or(ApiError::NotFound(target))?;
    object::decode(&kv)
}

fn pod_node(pod: &Value, name: &str) -> Result<String, ApiError> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The container a log/exec/attach request is for: `?container=`, or the only one, as
/// upstream decides (and words its errors).
fn container_of(
    pod: &Value,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<String, ApiError> {
    let containers = names(pod, "containers");
    let init = names(pod, "initContainers");
    let ephemeral = names(pod, "ephemeralContainers");
    match query.get("container").filter(|c| !c.is_empty()) {
        Some(container) => {
            if containers.contains(container)
                || init.contains(container)
                || ephemeral.contains(container)
            {
                Ok(container.clone())
            } else {
                Err(ApiError::BadRequest(format!(
                    "container {container} is not valid for pod {name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::BadRequest(message))
        }
    }
}

/// Upstream's kubelet refuses logs of a container that never ran; kedge's API server
/// answers the same from the stored status before dialling the node.
fn check_logs_available(
    pod: &Value,
    name: &str,
    container: &str,
    query: &HashMap<String, String>,
) -> Result<(), ApiError> {
    let previous = query
        .get("previous")
        .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
    let statuses = [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .filter_map(|list| {
        pod.pointer(&format!("/status/{list}"))
            .and_then(Value::as_array)
    })
    .flatten();
    let status = statuses
        .into_iter()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(container));
    let terminated_before = status
        .and_then(|s| s.pointer("/lastState/terminated"))
        .is_some();
    if previous {
        if terminated_before {
            return Ok(());
        }
        return Err(ApiError::BadRequest(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        )));
    }
    let waiting_reason = match status {
        None => Some("ContainerCreating".to_string()),
        Some(s) => {
            let running = s.pointer("/state/running").is_some();
            let terminated = s.pointer("/state/terminated").is_some();
            if running || terminated || terminated_before {
                None
            } else {
                Some(
                    s.pointer("/state/waiting/reason")
                        .and_then(Value::as_str)
                        .unwrap_or("ContainerCreating")
                        .to_string(),
                )
            }
        }
    };
    match waiting_reason.as_deref() {
        None => Ok(()),
        Some(reason @ ("ErrImagePull" | "ImagePullBackOff" | "InvalidImageName")) => {
            Err(ApiError::BadRequest(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: trying and failing to pull image ({reason})"
            )))
        }
        Some(reason) => Err(ApiError::BadRequest(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
        ))),
    }
}

/// Where the node's kubelet listens.
fn kubelet_address(node: &Value, name: &str) -> Result<(IpAddr, u16), ApiError> {
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ip_of = |kind: &str| {
        addresses
            .iter()
            .filter(|a| a.get("type").and_then(Value::as_str) == Some(kind))
            .find_map(|a| {
                a.get("address")
                    .and_then(Value::as_str)?
                    .parse::<IpAddr>()
                    .ok()
            })
    };
    let ip = ip_of("InternalIP")
        .or_else(|| ip_of("ExternalIP"))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "node {name} has no InternalIP address to reach its kubelet at"
            ))
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok((ip, port))
}

/// Headers not sent on to the kubelet: the caller's credentials and hop-by-hop ones that
/// hyper sets itself.
fn forwarded(name: &header::HeaderName) -> bool {
    let name = name.as_str();
    !(name == "authorization"
        || name == "host"
        || name == "content-length"
        || name == "transfer-encoding"
        || name.starts_with("impersonate-"))
}

async fn forward(
    kubelet: &KubeletClient,
    ip: IpAddr,
    port: u16,
    mut request: Request<RequestBody>,
    uri: &str,
    is_log: bool,
) -> Result<Response<Body>, ApiError> {
    let client_upgrade = hyper::upgrade::on(&mut request);
    let mut outbound = Request::builder()
        .method(request.method().clone())
        .uri(uri)
        .header(
            header::HOST,
            format!("{}", std::net::SocketAddr::new(ip, port)),
        );
    for (name, value) in request.headers() {
        if forwarded(name) {
            outbound = outbound.header(name, value);
        }
    }
    let outbound = outbound
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::BadRequest(format!("building the kubelet request: {e}")))?;
    let mut response = kubelet
        .send(ip, port, outbound)
        .await
        .map_err(|e| ApiError::Internal(format!("error dialing backend: {e}")))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let kubelet_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (client, kubelet) = match tokio::join!(client_upgrade, kubelet_upgrade) {
                (Ok(client), Ok(kubelet)) => (client, kubelet),
                (client, kubelet) => {
                    tracing::debug!(
                        client = ?client.err(),
                        kubelet = ?kubelet.err(),
                        "an upgraded kubelet connection could not be joined"
                    );
                    return;
                }
            };
            let mut client = hyper_util::rt::TokioIo::new(client);
            let mut kubelet = hyper_util::rt::TokioIo::new(kubelet);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut kubelet).await;
        });
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, super::http::full(Bytes::new())));
    }
    let (parts, body) = response.into_parts();
    if is_log && !parts.status.is_success() {
        // Upstream turns a kubelet's error into a Status with its code.
        let body = super::http::read_limited(
            body.map_err(|e| -> BoxError { e.into() }).boxed_unsync(),
            MAX_ERROR_BODY,
        )
        .await
        .unwrap_or_default();
        let message = String::from_utf8_lossy(&body).trim().to_string();
        let reason = match parts.status {
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            _ => "InternalError",
        };
        return Ok(status::failure(parts.status, reason, message));
    }
    Ok(Response::from_parts(
        parts,
        body.map_err(|e| -> BoxError { e.into() }).boxed(),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(status: Value) -> Value {
        json!({
            "spec": {
                "nodeName": "edge-1",
                "containers": [{"name": "app"}, {"name": "side"}],
                "initContainers": [{"name": "setup"}],
            },
            "status": status,
        })
    }

    fn message(error: ApiError) -> String {
        error.to_string()
    }

    #[test]
    fn the_container_is_chosen_or_refused_as_upstream() {
        let pod = pod(json!({}));
        let query = |c: &str| HashMap::from([("container".to_string(), c.to_string())]);
        assert_eq!(container_of(&pod, "web", &query("side")).unwrap(), "side");
        assert_eq!(container_of(&pod, "web", &query("setup")).unwrap(), "setup");
        assert_eq!(
            message(container_of(&pod, "web", &query("db")).unwrap_err()),
            "container db is not valid for pod web"
        );
        assert_eq!(
            message(container_of(&pod, "web", &HashMap::new()).unwrap_err()),
            "a container name must be specified for pod web, choose one of: [app side] or one of the init containers: [setup]"
        );
        let single = json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(container_of(&single, "p", &HashMap::new()).unwrap(), "only");
        assert_eq!(
            message(pod_node(&json!({"spec": {}}), "p").unwrap_err()),
            "pod p does not have a host assigned"
        );
    }

    #[test]
    fn logs_of_a_container_that_never_ran_are_refused() {
        let none = HashMap::new();
        let previous = HashMap::from([("previous".to_string(), "true".to_string())]);
        let creating = pod(json!({"containerStatuses": [
            {"name": "app", "state": {"waiting": {"reason": "ContainerCreating"}}}
        ]}));
        assert_eq!(
            message(check_logs_available(&creating, "web", "app", &none).unwrap_err()),
            "container \"app\" in pod \"web\" is waiting to start: ContainerCreating"
        );
        assert_eq!(
            message(check_logs_available(&pod(json!({})), "web", "side", &none).unwrap_err()),
            "container \"side\" in pod \"web\" is waiting to start: ContainerCreating"
        );
        let crashing = pod(json!({"containerStatuses": [{
            "name": "app",
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1}},
        }]}));
        check_logs_available(&crashing, "web", "app", &none).unwrap();
        check_logs_available(&crashing, "web", "app", &previous).unwrap();
        let running = pod(json!({"containerStatuses": [
            {"name": "app", "state": {"running": {}}}
        ]}));
        check_logs_available(&running, "web", "app", &none).unwrap();
        assert_eq!(
            message(check_logs_available(&running, "web", "app", &previous).unwrap_err()),
            "previous terminated container \"app\" in pod \"web\" not found"
        );
    }

    #[test]
    fn the_kubelet_is_found_from_the_node_status() {
        let node = json!({"status": {
            "addresses": [{"type": "Hostname", "address": "edge-1"}, {"type": "InternalIP", "address": "10.0.0.7"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 11250}},
        }});
        assert_eq!(
            kubelet_address(&node, "edge-1").unwrap(),
            ("10.0.0.7".parse().unwrap(), 11250)
        );
        let bare =
            json!({"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}});
        assert_eq!(kubelet_address(&bare, "n").unwrap().1, 10250);
        assert!(kubelet_address(&json!({}), "n").is_err());
        assert_eq!(
            proxy_path("/api/v1/nodes/n/proxy/stats/summary", "n"),
            "/stats/summary"
        );
        assert_eq!(proxy_path("/api/v1/nodes/n/proxy", "n"), "/");
        assert_eq!(
            kubelet_query(Some("container=app&follow=true&tailLines=3"), "log").as_deref(),
            Some("follow=true&tailLines=3")
        );
    }
}
