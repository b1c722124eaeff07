//! The HTTPS listener: TLS handshakes (client certificates optional, verified against the
//! cluster CA when given; the accept loop is [`crate::tls::accept_tls`]), HTTP/1.1 and
//! HTTP/2 on one port, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::router::Router;

/// How long in-flight requests get to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr`. Separate from [`serve`] so the caller learns bind errors (and the port,
/// when 0 was asked for) before anything else starts.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `router` on `listener` until `shutdown` completes, then drains connections.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Arc<Router>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let builder = {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Timers let hyper drop connections that never finish sending their headers.
        builder.http1().timer(TokioTimer::new());
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(1000)
            .keep_alive_interval(Duration::from_secs(30));
        Arc::new(builder)
    };
    crate::tls::accept_tls(listener, tls, "", shutdown, || {
        let router = router.clone();
        let builder = builder.clone();
        // Taken at accept, so that draining waits for connections still in their handshake.
        let watcher = graceful.watcher();
        move |tls, peer, client_cert| async move {
            let service = service_fn(move |request| {
                let router = router.clone();
                let client_cert = client_cert.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        router
                            .handle(request, client_cert.as_deref().map(Vec::as_slice))
                            .await,
                    )
                }
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
    })
    .await;
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}
