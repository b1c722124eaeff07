//! A kube-rs [`kube::Client`] for components outside the server process (agents, tools,
//! test harnesses): HTTPS to one API server, trusting only the cluster CA and presenting a
//! client certificate, on the same rustls stack as [`super::HttpsClient`].

use std::time::Duration;

use http::uri::{PathAndQuery, Uri};
use http::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::ServiceExt;

/// A bad server URL.
#[derive(Debug, thiserror::Error)]
#[error("invalid API server URL {url:?}: {reason}")]
pub struct InvalidUrl {
    url: String,
    reason: String,
}

/// A client of the API server at `server` (`https://host:port`), using `tls` (see
/// `crate::pki::client_config`).
pub fn over_https(server: &str, mut tls: rustls::ClientConfig) -> Result<kube::Client, InvalidUrl> {
    let invalid = |reason: &str| InvalidUrl {
        url: server.to_string(),
        reason: reason.to_string(),
    };
    let base: Uri = server.parse().map_err(|_| invalid("not a URL"))?;
    if base.scheme_str() != Some("https") || base.authority().is_none() {
        return Err(invalid("expected https://host:port"));
    }
    tls.alpn_protocols.clear();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_all_versions()
        .wrap_connector(http);
    let client: Client<_, kube::client::Body> = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .http2_keep_alive_timeout(Duration::from_secs(5))
        .build(connector);
    let service = client.map_request(move |mut request: Request<kube::client::Body>| {
        // kube-rs sends origin-form paths; the connection pool wants absolute URIs.
        let mut parts = base.clone().into_parts();
        parts.path_and_query = request
            .uri()
            .path_and_query()
            .cloned()
            .or_else(|| Some(PathAndQuery::from_static("/")));
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        request
    });
    Ok(kube::Client::new(service, "default"))
}
