//! A kube-rs [`kube::Client`] for components outside the server process (agents, tools,
//! test harnesses): HTTPS to one API server, trusting only the cluster CA and presenting a
//! client certificate, on the same rustls stack as [`super::HttpsClient`].

use http::uri::{PathAndQuery, Uri};
use http::Request;
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
pub fn over_https(server: &str, tls: rustls::ClientConfig) -> Result<kube::Client, InvalidUrl> {
    let invalid = |reason: &str| InvalidUrl {
        url: server.to_string(),
        reason: reason.to_string(),
    };
    let base: Uri = server.parse().map_err(|_| invalid("not a URL"))?;
    if base.scheme_str() != Some("https") || base.authority().is_none() {
        return Err(invalid("expected https://host:port"));
    }
    let client = super::pooled_https::<kube::client::Body>(tls);
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
