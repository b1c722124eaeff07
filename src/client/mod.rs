//! How components reach the API. [`HttpsClient`]: the HTTPS client of Raft peers and remote
//! tools; it trusts only the cluster CA and presents a client certificate, speaking HTTP/2
//! when the server offers it (one multiplexed connection per peer) and HTTP/1.1 otherwise.
//! [`local`]: a kube-rs client for components inside the server process; [`remote`]: one
//! for components elsewhere (agents, tools), over HTTPS with a client certificate.
//!
//! Must not touch: what the requests mean. Callers build paths and bodies.

pub mod local;
pub mod remote;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Failures to get an answer (an answer with an error status is not a failure here).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid request to {url}: {reason}")]
    InvalidRequest { url: String, reason: String },
    /// No connection could be made: the request was certainly not received.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("request to {url} failed: {reason}")]
    Transport { url: String, reason: String },
    #[error("request to {url} timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

/// A pooled HTTPS client over `tls` (see `crate::pki::client_config`) for request bodies
/// of type `B`: h2 or http/1.1 as the server offers, keep-alives, connect timeout.
fn pooled_https<B>(mut tls: rustls::ClientConfig) -> Client<HttpsConnector<HttpConnector>, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    // The connector negotiates h2 / http/1.1 itself.
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
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .http2_keep_alive_timeout(Duration::from_secs(5))
        .build(connector)
}

/// A response with its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// An HTTPS client with a connection pool. Cheap to clone.
#[derive(Clone)]
pub struct HttpsClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpsClient {
    /// A client using `tls` (see `crate::pki::client_config`).
    pub fn new(tls: rustls::ClientConfig) -> HttpsClient {
        HttpsClient {
            inner: pooled_https(tls),
        }
    }

    /// Sends one request and reads the whole response, within `timeout`.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let mut builder = Request::builder().method(method).uri(url);
        if let Some(content_type) = content_type {
            builder = builder.header(http::header::CONTENT_TYPE, content_type);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| ClientError::InvalidRequest {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let transport = |e: &dyn std::fmt::Display| ClientError::Transport {
            url: url.to_string(),
            reason: e.to_string(),
        };
        let exchange = async {
            let response = self.inner.request(request).await.map_err(|e| {
                if e.is_connect() {
                    ClientError::Connect {
                        url: url.to_string(),
                        reason: error_chain(&e),
                    }
                } else {
                    transport(&error_chain(&e))
                }
            })?;
            let status = response.status();
            let content_type = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(&e))?
                .to_bytes();
            Ok(Response {
                status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.to_string(),
                timeout,
            })?
    }

    /// GETs `url` and returns as soon as the headers are in, with the body still streaming
    /// (watches). Only connecting and the headers are bounded by `timeout`.
    pub async fn open(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::InvalidRequest {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        match tokio::time::timeout(timeout, self.inner.request(request)).await {
            Err(_) => Err(ClientError::Timeout {
                url: url.to_string(),
                timeout,
            }),
            Ok(Err(e)) if e.is_connect() => Err(ClientError::Connect {
                url: url.to_string(),
                reason: error_chain(&e),
            }),
            Ok(Err(e)) => Err(ClientError::Transport {
                url: url.to_string(),
                reason: error_chain(&e),
            }),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// POSTs `body` and reads the answer.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        self.request(Method::POST, url, Some(content_type), body, timeout)
            .await
    }

    /// GETs `url`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Response, ClientError> {
        self.request(Method::GET, url, None, Bytes::new(), timeout)
            .await
    }
}

/// An error with its causes, which is where hyper puts the useful part.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
