//! The API server's HTTPS client for kubelets: presents the kubelet-client certificate,
//! verifies the kubelet's serving certificate against the cluster CA (by the address
//! dialled), one HTTP/1.1 connection per request (streams and upgrades hold theirs).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::pki::{client_config, CertKeyPair, PkiError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a kubelet could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("dialing the kubelet at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with the kubelet at {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP with the kubelet at {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// Calls kubelets as the API server.
pub struct KubeletClient {
    tls: Arc<rustls::ClientConfig>,
}

impl KubeletClient {
    /// A client trusting `ca_pem` and presenting `client` (the server's
    /// `kubelet-client` pair).
    pub fn new(ca_pem: &str, client: &CertKeyPair) -> Result<KubeletClient, PkiError> {
        let mut config = client_config(ca_pem, Some(client))?;
        // Upgrades (exec, attach, port-forward) are HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient {
            tls: Arc::new(config),
        })
    }

    /// Sends `request` (path and query only in its URI; no body) to the kubelet at
    /// `ip:port`. The connection lives as long as the response body or the upgrade.
    pub async fn send(
        &self,
        ip: IpAddr,
        port: u16,
        request: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, KubeletError> {
        let addr = SocketAddr::new(ip, port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| KubeletError::Connect {
                addr,
                source: std::io::ErrorKind::TimedOut.into(),
            })?
            .map_err(|source| KubeletError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(self.tls.clone())
            .connect(ServerName::IpAddress(ip.into()), tcp)
            .await
            .map_err(|source| KubeletError::Tls { addr, source })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|source| KubeletError::Http { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "connection to a kubelet ended with an error");
            }
        });
        sender
            .send_request(request)
            .await
            .map_err(|source| KubeletError::Http { addr, source })
    }
}
