//! Routing of kubelet API requests: who may call, which endpoint, and the upgrade to a
//! streaming protocol.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::logs::{self, LogOptions};
use super::remotecommand::{self, query_map, Session, StreamError, StreamOptions};
use super::{portforward, KubeletApiState};
use crate::api::http::{full, Body, BoxError};
use crate::auth::user_from_certificate;
use crate::pki::{ADMIN_GROUP, KUBELET_CLIENT_USER};

fn plain(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut text = message.into();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(text))
        .expect("static response parts are valid")
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(serde_json::to_vec(value).unwrap_or_default()))
        .expect("static response parts are valid")
}

/// Authenticates and authorises the caller (see the module doc of `super`).
fn authorize(client_cert: Option<&[u8]>, method: &Method, path: &str) -> Option<Response<Body>> {
    let Some(user) = client_cert.and_then(user_from_certificate) else {
        return Some(plain(StatusCode::UNAUTHORIZED, "Unauthorized"));
    };
    if user.name == KUBELET_CLIENT_USER || user.in_group(ADMIN_GROUP) {
        return None;
    }
    let verb = if method == Method::GET {
        "get"
    } else {
        "create"
    };
    let subresource = match path.split('/').nth(1) {
        Some("stats") => "stats",
        Some("pods") => "proxy",
        Some("containerLogs") => "log",
        _ => "proxy",
    };
    Some(plain(
        StatusCode::FORBIDDEN,
        format!(
            "Forbidden (user={}, verb={verb}, resource=nodes, subresource={subresource})",
            user.name
        ),
    ))
}

pub(super) async fn handle(
    state: &Arc<KubeletApiState>,
    request: Request<Incoming>,
    client_cert: Option<&[u8]>,
) -> Response<Body> {
    let path = request.uri().path().to_string();
    if let Some(refused) = authorize(client_cert, request.method(), &path) {
        return refused;
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let readonly = matches!(*request.method(), Method::GET | Method::HEAD);
    match segments.as_slice() {
        ["healthz"] if readonly => plain(StatusCode::OK, "ok"),
        ["pods"] if readonly => pods(state).await,
        ["stats", "summary"] if readonly => stats(state).await,
        ["containerLogs", namespace, pod, container] if readonly => {
            container_logs(state, &request, namespace, pod, container).await
        }
        ["exec", namespace, pod, rest @ ..] | ["attach", namespace, pod, rest @ ..]
            if matches!(rest.len(), 1 | 2) =>
        {
            let (uid, container) = match rest {
                [container] => (None, *container),
                [uid, container] => (Some(*uid), *container),
                _ => unreachable!("matched one or two"),
            };
            let exec = segments[0] == "exec";
            let (namespace, pod, container) = (
                namespace.to_string(),
                pod.to_string(),
                container.to_string(),
            );
            remote_command(state, request, exec, &namespace, &pod, uid, &container)
        }
        ["portForward", namespace, pod] | ["portForward", namespace, pod, _] => {
            let uid = segments.get(3).copied();
            let (namespace, pod) = (namespace.to_string(), pod.to_string());
            port_forward(state, request, &namespace, &pod, uid)
        }
        ["healthz"] | ["pods"] | ["stats", "summary"] | ["containerLogs", ..] => plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed on {path}", request.method()),
        ),
        _ => plain(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

async fn pods(state: &KubeletApiState) -> Response<Body> {
    let Some(client) = &state.pods else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "this kubelet has no API connection to list its pods from",
        );
    };
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(client.clone());
    let params =
        kube::api::ListParams::default().fields(&format!("spec.nodeName={}", state.node_name));
    match api.list(&params).await {
        Ok(list) => {
            let items: Vec<serde_json::Value> = list
                .items
                .iter()
                .filter_map(|pod| serde_json::to_value(pod).ok())
                .map(|mut pod| {
                    pod["kind"] = "Pod".into();
                    pod["apiVersion"] = "v1".into();
                    pod
                })
                .collect();
            json(
                StatusCode::OK,
                &serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
            )
        }
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("listing the pods of node {}: {e}", state.node_name),
        ),
    }
}

async fn stats(state: &KubeletApiState) -> Response<Body> {
    let Some(stats) = &state.stats else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "/stats/summary is not available: this kubelet does not collect container stats yet",
        );
    };
    match stats.summary().await {
        Ok(summary) => json(StatusCode::OK, &summary),
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("collecting stats: {e}"),
        ),
    }
}

fn container_not_found(namespace: &str, pod: &str, container: &str) -> Response<Body> {
    plain(
        StatusCode::NOT_FOUND,
        format!("container {container:?} in pod \"{namespace}/{pod}\" is not found on this node"),
    )
}

async fn container_logs(
    state: &KubeletApiState,
    request: &Request<Incoming>,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Response<Body> {
    let options = match LogOptions::from_query(&query_map(request.uri().query())) {
        Ok(options) => options,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e),
    };
    let Some(record) = state.containers.find(namespace, pod, None, container) else {
        return container_not_found(namespace, pod, container);
    };
    match logs::stream(record, options).await {
        Ok(mut chunks) => {
            let body = StreamBody::new(futures::stream::poll_fn(move |cx| {
                chunks
                    .poll_recv(cx)
                    .map(|chunk| chunk.map(|c| c.map(Frame::data).map_err(BoxError::from)))
            }));
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(BodyExt::boxed(body))
                .expect("static response parts are valid")
        }
        Err(e @ logs::LogError::NoPrevious { .. }) => plain(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The streaming protocol a request asks to upgrade to.
enum Upgrade {
    WebSocket { key: String, offered: Vec<String> },
    Spdy { offered: Vec<String> },
}

fn header_values(request: &Request<Incoming>, name: &str) -> Vec<String> {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn upgrade_of(request: &Request<Incoming>) -> Option<Upgrade> {
    let connection = header_values(request, "connection");
    if !connection.iter().any(|v| v.eq_ignore_ascii_case("upgrade")) {
        return None;
    }
    let upgrade = header_values(request, "upgrade");
    let upgrade = upgrade.first()?;
    if upgrade.eq_ignore_ascii_case("websocket") {
        let key = request
            .headers()
            .get("sec-websocket-key")?
            .to_str()
            .ok()?
            .to_string();
        return Some(Upgrade::WebSocket {
            key,
            offered: header_values(request, "sec-websocket-protocol"),
        });
    }
    if upgrade.to_ascii_lowercase().starts_with("spdy/3") {
        return Some(Upgrade::Spdy {
            offered: header_values(request, "x-stream-protocol-version"),
        });
    }
    None
}

fn choose(offered: &[String], supported: &[&'static str]) -> Option<&'static str> {
    supported
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .copied()
}

fn switching(upgrade: &str) -> http::response::Builder {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, upgrade)
}

/// Negotiates `upgrade` against the protocols served, answers 101 and hands the upgraded
/// connection to `serve` (WebSocket or raw SPDY, with the chosen protocol).
fn upgrade_with(
    request: Request<Incoming>,
    websocket_protocols: &[&'static str],
    spdy_protocols: &[&'static str],
    serve: impl FnOnce(Upgraded, &'static str) -> BoxFuture<'static, ()> + Send + 'static,
) -> Response<Body> {
    let Some(upgrade) = upgrade_of(&request) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "Upgrade request required: this endpoint speaks WebSocket or SPDY/3.1",
        );
    };
    let (response, is_websocket, protocol) = match upgrade {
        Upgrade::WebSocket { key, offered } => {
            let Some(protocol) = choose(&offered, websocket_protocols) else {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "none of the offered WebSocket subprotocols {offered:?} is supported; supported: {websocket_protocols:?}"
                    ),
                );
            };
            let response = switching("websocket")
                .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
                .header("sec-websocket-protocol", protocol);
            (response, true, protocol)
        }
        Upgrade::Spdy { offered } => {
            let Some(protocol) = choose(&offered, spdy_protocols) else {
                return plain(
                    StatusCode::FORBIDDEN,
                    format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {spdy_protocols:?}"
                    ),
                );
            };
            let response = switching("SPDY/3.1").header("x-stream-protocol-version", protocol);
            (response, false, protocol)
        }
    };
    tokio::spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let upgraded = if is_websocket {
                    Upgraded::WebSocket(Box::new(
                        WebSocketStream::from_raw_socket(io, Role::Server, None).await,
                    ))
                } else {
                    Upgraded::Spdy(io)
                };
                serve(upgraded, protocol).await;
            }
            Err(e) => tracing::debug!(error = %e, "kubelet API: the upgrade failed"),
        }
    });
    response
        .body(full(Bytes::new()))
        .expect("static response parts are valid")
}

/// An upgraded connection.
enum Upgraded {
    WebSocket(Box<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>),
    Spdy(TokioIo<hyper::upgrade::Upgraded>),
}

fn remote_command(
    state: &Arc<KubeletApiState>,
    request: Request<Incoming>,
    exec: bool,
    namespace: &str,
    pod: &str,
    uid: Option<&str>,
    container: &str,
) -> Response<Body> {
    let options = match StreamOptions::from_query(request.uri().query().unwrap_or_default(), exec) {
        Ok(options) => options,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e),
    };
    let Some(record) = state.containers.find(namespace, pod, uid, container) else {
        return container_not_found(namespace, pod, container);
    };
    if !record.running() {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod \"{namespace}/{pod}\" is not running"),
        );
    }
    let session: BoxFuture<'static, Result<Session, StreamError>> = if exec {
        state.streams.exec(&record, &options)
    } else {
        state.streams.attach(&record, &options)
    };
    upgrade_with(
        request,
        &remotecommand::websocket::PROTOCOLS,
        &[remotecommand::spdy::PROTOCOL],
        move |upgraded, protocol| {
            Box::pin(async move {
                match upgraded {
                    Upgraded::WebSocket(ws) => {
                        remotecommand::websocket::serve(*ws, protocol, options, session).await
                    }
                    Upgraded::Spdy(io) => remotecommand::spdy::serve(io, options, session).await,
                }
            })
        },
    )
}

fn port_forward(
    state: &Arc<KubeletApiState>,
    request: Request<Incoming>,
    namespace: &str,
    pod: &str,
    uid: Option<&str>,
) -> Response<Body> {
    let Some(netns) = state.containers.netns(namespace, pod, uid) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("pod \"{namespace}/{pod}\" has no network namespace on this node"),
        );
    };
    let name = format!("{namespace}/{pod}");
    upgrade_with(
        request,
        &[portforward::WEBSOCKET_PROTOCOL],
        &[portforward::PROTOCOL],
        move |upgraded, _| {
            Box::pin(async move {
                match upgraded {
                    Upgraded::WebSocket(ws) => {
                        let io = super::spdy::websocket_io::WebSocketIo::new(*ws);
                        portforward::serve(io, name, netns).await
                    }
                    Upgraded::Spdy(io) => portforward::serve(io, name, netns).await,
                }
            })
        },
    )
}
