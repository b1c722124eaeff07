//! The handlers probes and lifecycle hooks run: httpGet and tcpSocket inside the pod's
//! network namespace (the node's for host-network pods), and exec inside the container.
//! Each returns Ok(output) on success or Err(output) with upstream's failure texts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;

/// Upstream's probe user agent (`kube-probe/<major>.<minor>`).
const USER_AGENT: &str = "kube-probe/1.33";

/// Where a handler's connections go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pod's network namespace; None = the node's (host-network pods).
    pub netns: Option<PathBuf>,
    /// The pod's IP when it has one, else loopback inside its namespace.
    pub pod_ip: Option<IpAddr>,
}

impl Target {
    fn default_host(&self) -> IpAddr {
        self.pod_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        match &self.netns {
            Some(ns) => crate::runtime::netns::connect_tcp(ns, addr).await,
            None => TcpStream::connect(addr).await,
        }
    }
}

/// A port number, or a named port of the container.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port number: {p}")),
        IntOrString::String(name) => {
            if let Ok(p) = name.parse::<u16>() {
                return Ok(p);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port: {name} in {}", container.name))
        }
    }
}

fn host_of(host: Option<&str>, target: &Target) -> Result<IpAddr, String> {
    match host.filter(|h| !h.is_empty()) {
        None => Ok(target.default_host()),
        Some(h) => h
            .parse()
            .map_err(|_| format!("host {h:?} is not an IP address (names are not resolved)")),
    }
}

/// `tcpSocket`: success when a connection opens within `timeout`.
pub async fn tcp(
    action: &TCPSocketAction,
    container: &Container,
    target: &Target,
    timeout: Duration,
) -> Result<String, String> {
    let port = resolve_port(&action.port, container)?;
    let addr = SocketAddr::new(host_of(action.host.as_deref(), target)?, port);
    match tokio::time::timeout(timeout, target.connect(addr)).await {
        Ok(Ok(_)) => Ok(String::new()),
        Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {}", io_text(&e))),
        Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
    }
}

/// `httpGet`: success for a 2xx or 3xx answer within `timeout`.
pub async fn http(
    action: &HTTPGetAction,
    container: &Container,
    target: &Target,
    timeout: Duration,
) -> Result<String, String> {
    let port = resolve_port(&action.port, container)?;
    let ip = host_of(action.host.as_deref(), target)?;
    let addr = SocketAddr::new(ip, port);
    let scheme = action.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
    let path = match action.path.as_deref() {
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
        None => "/".to_string(),
    };
    let url = format!("{scheme}://{addr}{path}");
    let run = async {
        let stream = target
            .connect(addr)
            .await
            .map_err(|e| format!("Get {url:?}: dial tcp {addr}: connect: {}", io_text(&e)))?;
        let mut request = http::Request::get(path.as_str())
            .header(http::header::HOST, addr.to_string())
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(http::header::ACCEPT, "*/*");
        for h in action.http_headers.iter().flatten() {
            // A Host header given by the user replaces the default one.
            request = match request.headers_mut() {
                Some(headers) if h.name.eq_ignore_ascii_case("host") => {
                    if let Ok(v) = http::HeaderValue::from_str(&h.value) {
                        headers.insert(http::header::HOST, v);
                    }
                    request
                }
                _ => request.header(h.name.as_str(), h.value.as_str()),
            };
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("Get {url:?}: {e}"))?;
        let status = if scheme == "https" {
            let tls = tokio_rustls::TlsConnector::from(Arc::new(insecure_tls()));
            let name = rustls_pki_types::ServerName::IpAddress(ip.into());
            let stream = tls
                .connect(name, stream)
                .await
                .map_err(|e| format!("Get {url:?}: {e}"))?;
            send(stream, request).await
        } else {
            send(stream, request).await
        }
        .map_err(|e| format!("Get {url:?}: {e}"))?;
        if (200..400).contains(&status) {
            Ok(String::new())
        } else {
            Err(format!("HTTP probe failed with statuscode: {status}"))
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

async fn send<S>(stream: S, request: http::Request<Empty<Bytes>>) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string());
    let status = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read (and drop) the body so the connection ends cleanly.
            let _ = response.into_body().collect().await;
            Ok(status)
        }
        Err(e) => Err(e),
    };
    driver.abort();
    status
}

fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        _ => e.to_string(),
    }
}

/// HTTPS probes do not verify certificates, as upstream.
fn insecure_tls() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(rustls::DEFAULT_VERSIONS)
                .expect("rustls default versions")
        })
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::pki::UnverifiedServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// `exec`: runs `command` in the container; success on exit code 0. The output is the
/// command's stdout and stderr.
pub async fn exec(
    container_dir: &Path,
    command: &[String],
    timeout: Duration,
) -> Result<String, String> {
    // Upstream keeps at most 10 KiB of a probe's output.
    const MAX_OUTPUT: usize = 10 * 1024;
    match crate::runtime::shim::exec_output(container_dir, command.to_vec(), timeout).await {
        Ok((code, output)) => {
            let output = String::from_utf8_lossy(&output[..output.len().min(MAX_OUTPUT)])
                .trim_end()
                .to_string();
            if code == 0 {
                Ok(output)
            } else if output.is_empty() {
                Err(format!("command {command:?} exited with {code}"))
            } else {
                Err(format!("command {command:?} exited with {code}: {output}"))
            }
        }
        Err(crate::runtime::shim::ShimError::Timeout { .. }) => Err(format!(
            "command timed out: \"{}\" timed out after {timeout:?}",
            command.join(" ")
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_and_tcp_against_a_loopback_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let code = if req.starts_with("GET /ok ") {
                        "200 OK"
                    } else {
                        "500 Oops"
                    };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "ports": [{"name": "web", "containerPort": port}]}))
        .unwrap();
        let target = Target {
            netns: None,
            pod_ip: None,
        };
        let t = Duration::from_secs(2);
        let get = |path: &str| -> HTTPGetAction {
            serde_json::from_value(serde_json::json!({"path": path, "port": "web"})).unwrap()
        };
        assert!(http(&get("/ok"), &container, &target, t).await.is_ok());
        assert_eq!(
            http(&get("/bad"), &container, &target, t)
                .await
                .unwrap_err(),
            "HTTP probe failed with statuscode: 500"
        );
        let tcp_action: TCPSocketAction =
            serde_json::from_value(serde_json::json!({"port": port})).unwrap();
        assert!(tcp(&tcp_action, &container, &target, t).await.is_ok());
    }
}
