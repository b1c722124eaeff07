//! The accept loop of kedge's HTTPS servers (the API server, the kubelet API): TCP accepts
//! with a back-off when accepting fails, each TLS handshake in its own task under a timeout,
//! then the connection handed over with the client certificate the peer presented.
//!
//! Owns: accepting and handshaking. Must not touch: what is served on the connection or how
//! (HTTP versions, draining on shutdown stay with each server).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A slow or silent client may not hold a connection slot forever before the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The DER of the client certificate a peer presented, if it did.
pub type ClientCert = Option<Arc<Vec<u8>>>;

/// Accepts connections on `listener` until `shutdown` completes, then drops the listener
/// and returns (connections already handed over keep running). For each accepted TCP
/// connection `on_accept` is called at once, in the loop (the place to take per-connection
/// state such as a graceful-shutdown watcher); what it returns is run in the connection's
/// task once the TLS handshake succeeded. Log messages start with `label` (e.g.
/// `"kubelet API: "`).
pub async fn accept_tls<A, H, Fut>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    label: &'static str,
    shutdown: impl Future<Output = ()>,
    mut on_accept: A,
) where
    A: FnMut() -> H,
    H: FnOnce(TlsStream<TcpStream>, SocketAddr, ClientCert) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "{label}accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let serve = on_accept();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "{label}TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "{label}TLS handshake timed out");
                    return;
                }
            };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| Arc::new(cert.as_ref().to_vec()));
            serve(tls, peer, client_cert).await;
        });
    }
}
