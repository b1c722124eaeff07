//! Request routing: authentication first (nothing is served anonymously), then the
//! endpoints this server knows.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::http::{full, json, read_limited, text, Body, BoxError, RequestBody};
use super::openapi::OpenApi;
use super::request::{self, ApiPath};
use super::rest::{self, Api};
use super::{discovery, openapi_v2, status, version};
use crate::auth::{Authenticator, UserInfo};

/// Largest body accepted on server-to-server paths (Raft batches and snapshot chunks).
const MAX_PEER_BODY: usize = 256 << 20;

/// A service for other servers only, mounted under a path prefix (the Raft transport).
pub trait PeerService: Send + Sync {
    /// Requests whose path starts with this go to the service.
    fn prefix(&self) -> &'static str;
    /// Only callers in this group may use it.
    fn group(&self) -> &'static str;
    fn handle(&self, method: Method, path: String, body: Bytes) -> BoxFuture<'_, Response<Bytes>>;
}

/// Paths served before authentication: what an agent needs to join (k3s' `/cacerts` and
/// the node certificate endpoint), which checks the join token itself.
pub trait OpenService: Send + Sync {
    /// Whether requests to `path` go to the service.
    fn handles(&self, path: &str) -> bool;
    fn handle(
        &self,
        method: Method,
        path: String,
        authorization: Option<String>,
        body: Bytes,
    ) -> BoxFuture<'_, Response<Bytes>>;
}

/// Largest body accepted on the open paths.
const MAX_OPEN_BODY: usize = 64 << 10;

/// Dispatches authenticated requests.
pub struct Router {
    api: Arc<Api>,
    authenticator: Authenticator,
    peer_service: Option<Arc<dyn PeerService>>,
    open_service: Option<Arc<dyn OpenService>>,
}

impl Router {
    pub fn new(
        api: Arc<Api>,
        authenticator: Authenticator,
        peer_service: Option<Arc<dyn PeerService>>,
    ) -> Router {
        Router {
            api,
            authenticator,
            peer_service,
            open_service: None,
        }
    }

    /// Serves `service`'s paths without authentication.
    pub fn with_open_service(mut self, service: Arc<dyn OpenService>) -> Router {
        self.open_service = Some(service);
        self
    }

    /// Handles one request whose TLS peer presented `client_cert` (already verified).
    pub fn handle<'a, B>(
        &'a self,
        request: Request<B>,
        client_cert: Option<&'a [u8]>,
    ) -> impl std::future::Future<Output = Response<Body>> + Send + 'a
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.authenticate_and_handle(boxed(request), client_cert)
    }

    /// Handles one request of `user`, already authenticated: an in-process component's
    /// (`crate::client::local`).
    pub fn handle_as<B>(
        &self,
        user: UserInfo,
        request: Request<B>,
    ) -> impl std::future::Future<Output = Response<Body>> + Send + '_
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.serve(user, boxed(request))
    }

    async fn authenticate_and_handle(
        &self,
        request: Request<RequestBody>,
        client_cert: Option<&[u8]>,
    ) -> Response<Body> {
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(service) = &self.open_service {
            let path = request.uri().path().to_string();
            if service.handles(&path) {
                let method = request.method().clone();
                let body = match read_limited(request.into_body(), MAX_OPEN_BODY).await {
                    Ok(body) => body,
                    Err(e) => {
                        return status::failure(
                            StatusCode::BAD_REQUEST,
                            "BadRequest",
                            e.to_string(),
                        )
                    }
                };
                let (parts, body) = service
                    .handle(method, path, authorization, body)
                    .await
                    .into_parts();
                return Response::from_parts(parts, full(body));
            }
        }
        let Some(user) = self
            .authenticator
            .authenticate(client_cert, authorization.as_deref())
            .await
        else {
            return status::unauthorized();
        };
        self.serve(user, request).await
    }

    async fn serve(&self, user: UserInfo, request: Request<RequestBody>) -> Response<Body> {
        let path = request.uri().path().to_string();
        if let Some(service) = &self.peer_service {
            if path.starts_with(service.prefix()) {
                return self.peer(service.as_ref(), &user, request, path).await;
            }
        }
        if let Ok(api_path) = request::parse(&path) {
            // After the peer check: impersonation never reaches the server-only service.
            let user = impersonated(&request).unwrap_or(user);
            return self.api_request(user, request, api_path).await;
        }
        if path == "/openapi/v3" || path.starts_with("/openapi/v3/") {
            return self.openapi(&path);
        }
        if path == "/openapi/v2" {
            return self.openapi_v2(&request);
        }
        let verbose = request.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv == "verbose" || kv.starts_with("verbose="))
        });
        let method = request.method().clone();
        let readonly = method == Method::GET || method == Method::HEAD;
        let known = matches!(
            path.as_str(),
            "/version" | "/healthz" | "/livez" | "/readyz"
        ) || ["/healthz/", "/livez/", "/readyz/"]
            .iter()
            .any(|p| path.starts_with(p));
        if known && !readonly {
            return status::failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("the server does not allow this method on the requested resource ({method} {path})"),
            );
        }
        match path.as_str() {
            "/version" => json(StatusCode::OK, &version::info()),
            "/healthz" | "/livez" => checks(&[("ping", true)], &path, verbose),
            "/healthz/ping" | "/livez/ping" | "/readyz/ping" => text(StatusCode::OK, "ok"),
            "/readyz" => {
                let store_ready = self.api.store.ready().await;
                checks(&[("ping", true), ("store", store_ready)], &path, verbose)
            }
            "/readyz/store" => {
                let store_ready = self.api.store.ready().await;
                checks(&[("store", store_ready)], &path, verbose)
            }
            _ => status::not_found(&path),
        }
    }

    /// `/openapi/v3` and the per group version documents.
    fn openapi(&self, path: &str) -> Response<Body> {
        let api = &self.api;
        if path == "/openapi/v3" {
            return json(StatusCode::OK, &api.openapi.root(&api.registry));
        }
        let document = OpenApi::parse_path(path)
            .and_then(|(group, version)| api.openapi.document(&api.registry, &group, &version));
        match document {
            Some(document) => Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::ETAG, format!("\"{}\"", document.hash))
                .body(full(document.body.clone()))
                .expect("static response parts are valid"),
            None => status::not_found(path),
        }
    }

    /// `/openapi/v2`: protobuf when asked for (kubectl does), JSON otherwise.
    fn openapi_v2(&self, request: &Request<RequestBody>) -> Response<Body> {
        let documents = self.api.openapi.v2(&self.api.registry);
        let accept = request
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let (content_type, body) = if openapi_v2::wants_protobuf(accept) {
            (
                openapi_v2::PROTOBUF_CONTENT_TYPE,
                documents.protobuf.clone(),
            )
        } else {
            ("application/json", documents.json.clone())
        };
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::ETAG, format!("\"{}\"", documents.hash))
            .body(full(body))
            .expect("static response parts are valid")
    }

    /// Discovery and resource requests.
    async fn api_request(
        &self,
        user: UserInfo,
        request: Request<RequestBody>,
        api_path: ApiPath,
    ) -> Response<Body> {
        let path = match api_path {
            ApiPath::Resource(path) => return rest::handle(&self.api, user, request, path).await,
            discovery_path => discovery_path,
        };
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return super::error::ApiError::MethodNotAllowed.response();
        }
        let accept = request
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let registry = &self.api.registry;
        let aggregated = discovery::wants_aggregated(accept);
        let document = match (&path, aggregated) {
            (ApiPath::CoreVersions, Some(content_type)) => Some((
                discovery::aggregated(registry, true, content_type),
                content_type,
            )),
            (ApiPath::Groups, Some(content_type)) => Some((
                discovery::aggregated(registry, false, content_type),
                content_type,
            )),
            (ApiPath::CoreVersions, None) => {
                let host = request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                Some((discovery::core_versions(host), "application/json"))
            }
            (ApiPath::Groups, None) => Some((discovery::group_list(registry), "application/json")),
            (ApiPath::Group { group }, _) => {
                discovery::group(registry, group).map(|d| (d, "application/json"))
            }
            (ApiPath::Resources { group, version }, _) => {
                discovery::resource_list(registry, group, version).map(|d| (d, "application/json"))
            }
            (ApiPath::Resource(_), _) => unreachable!("handled above"),
        };
        match document {
            Some((document, content_type)) => {
                let mut response = json(StatusCode::OK, &document);
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(content_type),
                );
                response
            }
            None => status::not_found(request.uri().path()),
        }
    }

    async fn peer(
        &self,
        service: &dyn PeerService,
        user: &UserInfo,
        request: Request<RequestBody>,
        path: String,
    ) -> Response<Body> {
        if !user.in_group(service.group()) {
            return status::forbidden(&user.name, &path);
        }
        let method = request.method().clone();
        let body = match read_limited(request.into_body(), MAX_PEER_BODY).await {
            Ok(body) => body,
            Err(e) => return status::failure(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
        };
        let (parts, body) = service.handle(method, path, body).await.into_parts();
        Response::from_parts(parts, full(body))
    }
}

/// A request with its body boxed, whatever transport it came over.
fn boxed<B>(request: Request<B>) -> Request<RequestBody>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    request.map(|body| {
        body.map_err(|error| -> BoxError { error.into() })
            .boxed_unsync()
    })
}

/// The user a request impersonates (`kubectl --as`, `--as-group`), if any. Every
/// authenticated user may impersonate until RBAC arrives, like every other verb.
fn impersonated(request: &Request<RequestBody>) -> Option<UserInfo> {
    let headers = request.headers();
    let name = headers.get("impersonate-user")?.to_str().ok()?.to_string();
    let mut groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|g| g.to_str().ok().map(str::to_string))
        .collect();
    if !groups.iter().any(|g| g == crate::auth::AUTHENTICATED_GROUP) {
        groups.push(crate::auth::AUTHENTICATED_GROUP.to_string());
    }
    Some(UserInfo { name, groups })
}

/// A health endpoint's answer in kube-apiserver's format: `ok`, or with `?verbose` one
/// `[+]name ok` / `[-]name failed` line per check; 500 when any check fails.
fn checks(results: &[(&str, bool)], path: &str, verbose: bool) -> Response<Body> {
    let healthy = results.iter().all(|(_, ok)| *ok);
    let name = path.trim_start_matches('/');
    if !verbose && healthy {
        return text(StatusCode::OK, "ok");
    }
    let mut body = String::new();
    for (check, ok) in results {
        if *ok {
            body.push_str(&format!("[+]{check} ok\n"));
        } else {
            body.push_str(&format!("[-]{check} failed: reason withheld\n"));
        }
    }
    if healthy {
        body.push_str(&format!("{name} check passed\n"));
        text(StatusCode::OK, body)
    } else {
        body.push_str(&format!("{name} check failed\n"));
        text(StatusCode::INTERNAL_SERVER_ERROR, body)
    }
}
