//! How an agent joins a server, as k3s' agents do, both halves:
//! - the server serves `GET /cacerts` (the CA certificate PEM) without authentication, and
//!   to callers proving the join token's secret with HTTP basic `node:<secret>`:
//!   `POST /v1-kedge/node-certificate`, a client certificate `system:node:<name>` in
//!   `system:nodes`, and `POST /v1-kedge/serving-kubelet-certificate`, the kubelet API's
//!   serving certificate for the node's name and addresses (each with its key, as k3s'
//!   server issues its agents' `client-kubelet.crt` and `serving-kubelet.crt`), and
//!   `GET /v1-kedge/config`, the cluster's CIDRs and DNS settings (k3s's `/v1-k3s/config`:
//!   only servers are configured with them);
//! - the agent fetches the CA without verifying the server (it cannot yet), accepts it only
//!   if its SHA-256 is the hash in the K10 token, then asks for its certificates over TLS
//!   verified against that CA.
//!
//! Must not touch: the API; the server side only signs with the CA it is given.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::ClusterNetwork;
use crate::pki::{self, Ca, CertKeyPair, JoinToken};

/// Path of the CA certificate, as k3s serves it.
pub const CACERTS_PATH: &str = "/cacerts";
/// Path agents get their client certificate from.
pub const NODE_CERTIFICATE_PATH: &str = "/v1-kedge/node-certificate";
/// Path agents get their kubelet serving certificate from.
pub const SERVING_CERTIFICATE_PATH: &str = "/v1-kedge/serving-kubelet-certificate";
/// Path agents read the cluster's network settings from.
pub const CLUSTER_NETWORK_PATH: &str = "/v1-kedge/config";
/// At most this many node addresses in one serving certificate.
const MAX_NODE_IPS: usize = 16;
/// User name the basic credentials carry (the password is the token's secret).
const BASIC_USER: &str = "node";
/// Group of node client certificates (upstream's).
pub const NODES_GROUP: &str = "system:nodes";

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CertificateRequest {
    node_name: String,
    /// The node's addresses, for a serving certificate's IP SANs.
    #[serde(default, rename = "nodeIPs", skip_serializing_if = "Vec::is_empty")]
    node_ips: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CertificateResponse {
    certificate: String,
    key: String,
}

/// The user name of node `name`'s client certificate.
pub fn node_user(name: &str) -> String {
    format!("system:node:{name}")
}

/// A node name as the API accepts it: a lowercase DNS subdomain.
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The server half: answers the two join paths.
pub struct JoinService {
    ca: Ca,
    secret: String,
    network: ClusterNetwork,
}

impl JoinService {
    pub fn new(ca: Ca, token: &JoinToken, network: ClusterNetwork) -> JoinService {
        JoinService {
            ca,
            secret: token.secret.clone(),
            network,
        }
    }

    /// Whether `path` is one of the join paths (served before authentication).
    pub fn handles(path: &str) -> bool {
        [
            CACERTS_PATH,
            NODE_CERTIFICATE_PATH,
            SERVING_CERTIFICATE_PATH,
            CLUSTER_NETWORK_PATH,
        ]
        .contains(&path)
    }

    /// Answers one request to a join path.
    pub fn handle(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Response<Bytes> {
        match (method, path) {
            (&Method::GET, CACERTS_PATH) => {
                reply(StatusCode::OK, "text/plain", self.ca.cert_pem().to_string())
            }
            (&Method::GET, CLUSTER_NETWORK_PATH)
            | (&Method::POST, NODE_CERTIFICATE_PATH | SERVING_CERTIFICATE_PATH)
                if !self.authorized(authorization) =>
            {
                reply(
                    StatusCode::UNAUTHORIZED,
                    "text/plain",
                    "the join token's secret is required as basic credentials node:<secret>\n",
                )
            }
            (&Method::GET, CLUSTER_NETWORK_PATH) => reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&self.network).unwrap_or_default(),
            ),
            (&Method::POST, NODE_CERTIFICATE_PATH | SERVING_CERTIFICATE_PATH) => {
                self.issue(body, path == SERVING_CERTIFICATE_PATH)
            }
            _ => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                format!("{method} is not allowed on {path}\n"),
            ),
        }
    }

    fn authorized(&self, authorization: Option<&str>) -> bool {
        let Some(encoded) = authorization.and_then(|a| a.strip_prefix("Basic ")) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let expected = format!("{BASIC_USER}:{}", self.secret);
        // Without an early exit: the secret is not to be guessed byte by byte.
        decoded.len() == expected.len()
            && decoded
                .iter()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// A client certificate, or with `serving` the kubelet serving certificate.
    fn issue(&self, body: &[u8], serving: bool) -> Response<Bytes> {
        let request: CertificateRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("expected {{\"nodeName\": ...}}: {e}\n"),
                )
            }
        };
        if !valid_node_name(&request.node_name) {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("{:?} is not a valid node name\n", request.node_name),
            );
        }
        let node = &request.node_name;
        let user = node_user(node);
        let issued = if serving {
            let addresses = match node_addresses(&request.node_ips) {
                Ok(addresses) => addresses,
                Err(message) => return reply(StatusCode::BAD_REQUEST, "text/plain", message),
            };
            let sans = pki::kubelet_sans(node, &addresses);
            self.ca
                .issue_kubelet_serving(node, &sans, pki::LEAF_VALIDITY)
        } else {
            self.ca
                .issue_client(&user, &[NODES_GROUP], pki::LEAF_VALIDITY)
        };
        let what = if serving { "serving" } else { "client" };
        match issued {
            Ok(pair) => {
                tracing::info!(%node, "issued a node {what} certificate");
                let answer = CertificateResponse {
                    certificate: pair.cert_pem,
                    key: pair.key_pem,
                };
                reply(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string(&answer).unwrap_or_default(),
                )
            }
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("issuing a {what} certificate for {user}: {e}\n"),
            ),
        }
    }
}

/// The node addresses a serving certificate may name: at least one, at most
/// [`MAX_NODE_IPS`], each a unicast address (not unspecified, not multicast).
fn node_addresses(texts: &[String]) -> Result<Vec<IpAddr>, String> {
    if texts.is_empty() || texts.len() > MAX_NODE_IPS {
        return Err(format!(
            "a serving certificate needs 1 to {MAX_NODE_IPS} nodeIPs, not {}\n",
            texts.len()
        ));
    }
    texts
        .iter()
        .map(|text| match text.parse::<IpAddr>() {
            Ok(ip)
                if !ip.is_unspecified()
                    && !ip.is_multicast()
                    && ip != IpAddr::from(std::net::Ipv4Addr::BROADCAST) =>
            {
                Ok(ip)
            }
            _ => Err(format!("{text:?} is not a valid node IP\n")),
        })
        .collect()
}

impl crate::api::OpenService for JoinService {
    fn handles(&self, path: &str) -> bool {
        JoinService::handles(path)
    }

    fn handle(
        &self,
        method: Method,
        path: String,
        authorization: Option<String>,
        body: Bytes,
    ) -> futures::future::BoxFuture<'_, Response<Bytes>> {
        let response = JoinService::handle(self, &method, &path, authorization.as_deref(), &body);
        Box::pin(async move { response })
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// What can go wrong joining; the message names the step.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0}")]
    Token(#[from] pki::PkiError),
    #[error("{url}: {reason}")]
    Request { url: String, reason: String },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
}

/// One HTTPS request over `tls`, the whole answer read.
async fn request(
    mut tls: rustls::ClientConfig,
    method: Method,
    url: &str,
    authorization: Option<String>,
    body: Bytes,
) -> Result<(StatusCode, Bytes), JoinError> {
    let failed = |reason: String| JoinError::Request {
        url: url.to_string(),
        reason,
    };
    // The connector sets ALPN itself.
    tls.alpn_protocols.clear();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(connector);
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(authorization) = authorization {
        builder = builder.header(http::header::AUTHORIZATION, authorization);
    }
    if !body.is_empty() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(body))
        .map_err(|e| failed(e.to_string()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| failed(format!("no answer within {TIMEOUT:?}")))?
}

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

fn check(url: &str, status: StatusCode, body: &Bytes) -> Result<(), JoinError> {
    if status.is_success() {
        return Ok(());
    }
    Err(JoinError::Status {
        url: url.to_string(),
        status,
        body: String::from_utf8_lossy(body).trim().to_string(),
    })
}

/// Fetches the server's CA certificate and checks it against the token's hash.
pub async fn fetch_ca(server: &str, token: &JoinToken) -> Result<String, JoinError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| pki::PkiError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pki::UnverifiedServer(provider)))
        .with_no_client_auth();
    let url = format!("{}{CACERTS_PATH}", server.trim_end_matches('/'));
    let (status, body) = request(tls, Method::GET, &url, None, Bytes::new()).await?;
    check(&url, status, &body)?;
    let ca_pem = String::from_utf8_lossy(&body).to_string();
    token.verify_ca(&ca_pem).map_err(|_| {
        pki::PkiError::Token(format!(
            "the CA certificate {server} serves does not match the token's CA hash: wrong \
             server, wrong token, or someone in between"
        ))
    })?;
    Ok(ca_pem)
}

/// Asks the server (trusted through `ca_pem`) for node `node`'s client certificate.
pub async fn node_certificate(
    server: &str,
    ca_pem: &str,
    token: &JoinToken,
    node: &str,
) -> Result<CertKeyPair, JoinError> {
    let request = CertificateRequest {
        node_name: node.to_string(),
        node_ips: Vec::new(),
    };
    certificate(server, ca_pem, token, NODE_CERTIFICATE_PATH, &request).await
}

/// Asks the server (trusted through `ca_pem`) for node `node`'s kubelet serving
/// certificate, for its name and `addresses`.
pub async fn serving_certificate(
    server: &str,
    ca_pem: &str,
    token: &JoinToken,
    node: &str,
    addresses: &[IpAddr],
) -> Result<CertKeyPair, JoinError> {
    let request = CertificateRequest {
        node_name: node.to_string(),
        node_ips: addresses.iter().map(IpAddr::to_string).collect(),
    };
    certificate(server, ca_pem, token, SERVING_CERTIFICATE_PATH, &request).await
}

/// Asks the server (trusted through `ca_pem`) for the cluster's network settings.
pub async fn cluster_network(
    server: &str,
    ca_pem: &str,
    token: &JoinToken,
) -> Result<ClusterNetwork, JoinError> {
    exchange(
        server,
        ca_pem,
        token,
        Method::GET,
        CLUSTER_NETWORK_PATH,
        Bytes::new(),
    )
    .await
}

async fn certificate(
    server: &str,
    ca_pem: &str,
    token: &JoinToken,
    path: &str,
    wanted: &CertificateRequest,
) -> Result<CertKeyPair, JoinError> {
    let body = serde_json::to_vec(wanted).unwrap_or_default();
    let answer: CertificateResponse =
        exchange(server, ca_pem, token, Method::POST, path, body.into()).await?;
    Ok(CertKeyPair {
        cert_pem: answer.certificate,
        key_pem: answer.key,
    })
}

/// Sends `body` to the join path `path` of `server` (trusted through `ca_pem`), proving the
/// token's secret; the JSON answer of a success, or the failure.
async fn exchange<T: serde::de::DeserializeOwned>(
    server: &str,
    ca_pem: &str,
    token: &JoinToken,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<T, JoinError> {
    let tls = pki::client_config(ca_pem, None)?;
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{BASIC_USER}:{}", token.secret));
    let (status, answer) = request(
        tls,
        method,
        &url,
        Some(format!("Basic {credentials}")),
        body,
    )
    .await?;
    check(&url, status, &answer)?;
    serde_json::from_slice(&answer).map_err(|e| JoinError::Request {
        url,
        reason: format!("unexpected answer: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_and_credentials_are_checked() {
        assert!(valid_node_name("edge-1.example"));
        assert!(!valid_node_name("Edge"));
        assert!(!valid_node_name("-a"));
        assert!(!valid_node_name(""));

        let ca = Ca::generate().unwrap();
        let token = JoinToken {
            ca_hash: JoinToken::ca_hash_of(ca.cert_pem()),
            secret: "s3cret".into(),
        };
        let network = ClusterNetwork {
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            cluster_dns: "10.96.0.10".parse().unwrap(),
            cluster_domain: "edge.test".into(),
        };
        let service = JoinService::new(ca, &token, network.clone());
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        let body = br#"{"nodeName":"edge-1"}"#;
        let denied = service.handle(&Method::POST, NODE_CERTIFICATE_PATH, None, body);
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        let wrong = basic("node:wrong");
        let denied = service.handle(&Method::POST, NODE_CERTIFICATE_PATH, Some(&wrong), body);
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);

        let right = basic("node:s3cret");
        let issued = service.handle(&Method::POST, NODE_CERTIFICATE_PATH, Some(&right), body);
        assert_eq!(issued.status(), StatusCode::OK);
        let answer: CertificateResponse = serde_json::from_slice(issued.body()).unwrap();
        let pair = CertKeyPair {
            cert_pem: answer.certificate,
            key_pem: answer.key,
        };
        let user = crate::auth::user_from_certificate(&pair.der().unwrap()).unwrap();
        assert_eq!(user.name, "system:node:edge-1");
        assert!(user.in_group(NODES_GROUP));

        let bad = service.handle(
            &Method::POST,
            NODE_CERTIFICATE_PATH,
            Some(&right),
            br#"{"nodeName":"Bad Name"}"#,
        );
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

        // The serving certificate: for the node's name and addresses, serverAuth only.
        let serving = br#"{"nodeName":"edge-1","nodeIPs":["192.0.2.7","2001:db8::7"]}"#;
        let denied = service.handle(
            &Method::POST,
            SERVING_CERTIFICATE_PATH,
            Some(&wrong),
            serving,
        );
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        let issued = service.handle(
            &Method::POST,
            SERVING_CERTIFICATE_PATH,
            Some(&right),
            serving,
        );
        assert_eq!(issued.status(), StatusCode::OK);
        let answer: CertificateResponse = serde_json::from_slice(issued.body()).unwrap();
        let cert = pki::inspect(&answer.certificate);
        assert_eq!(cert.common_name, "system:node:edge-1");
        assert_eq!(cert.organizations, [NODES_GROUP]);
        assert!(cert.server_auth && !cert.client_auth && !cert.is_ca);
        for san in ["edge-1", "192.0.2.7", "2001:db8::7"] {
            assert!(
                cert.sans.iter().any(|s| s == san),
                "{san} in {:?}",
                cert.sans
            );
        }
        for body in [
            r#"{"nodeName":"edge-1"}"#,
            r#"{"nodeName":"edge-1","nodeIPs":["not-an-ip"]}"#,
            r#"{"nodeName":"edge-1","nodeIPs":["0.0.0.0"]}"#,
            r#"{"nodeName":"edge-1","nodeIPs":["224.0.0.1"]}"#,
            r#"{"nodeName":"Bad Name","nodeIPs":["192.0.2.7"]}"#,
        ] {
            let refused = service.handle(
                &Method::POST,
                SERVING_CERTIFICATE_PATH,
                Some(&right),
                body.as_bytes(),
            );
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{body}");
        }
        // The network settings: for token holders only.
        let denied = service.handle(&Method::GET, CLUSTER_NETWORK_PATH, Some(&wrong), b"");
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        let told = service.handle(&Method::GET, CLUSTER_NETWORK_PATH, Some(&right), b"");
        assert_eq!(told.status(), StatusCode::OK);
        let told: ClusterNetwork = serde_json::from_slice(told.body()).unwrap();
        assert_eq!(told, network);

        let ca = service.handle(&Method::GET, CACERTS_PATH, None, b"");
        assert_eq!(ca.status(), StatusCode::OK);
        assert!(token
            .verify_ca(std::str::from_utf8(ca.body()).unwrap())
            .is_ok());
    }
}
