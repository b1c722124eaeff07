//! The kubelet API (upstream's port 10250): what the API server reaches for `kubectl logs`,
//! `exec`, `attach`, `cp`, `port-forward` and node proxying.
//!
//! HTTPS with the cluster's certificates (`crate::pki::kubelet_server_config`); only the API
//! server's kubelet-client identity (`kube-apiserver-kubelet-client`) or a member of
//! `system:masters` may call it — upstream's kubelet asks the API server (a
//! SubjectAccessReview) and those are the identities it allows; no client certificate is
//! 401, another identity 403. Endpoints: `/healthz`, `/pods`, `/stats/summary`,
//! `/containerLogs/…` ([`logs`]), `/exec/…` and `/attach/…` ([`remotecommand`]),
//! `/portForward/…` ([`portforward`]); the streaming ones over WebSocket or SPDY
//! ([`spdy`]).
//!
//! Owns: the protocols and the reading of log files. Must not touch: how containers are
//! run (a [`remotecommand::StreamBackend`] opens exec/attach sessions) or the store.
//!
//! Starting it (the agent's `run` does this):
//! ```ignore
//! let pki = crate::pki::ensure_kubelet_pki(&ca, &agent_dir.join("tls"), &node, &node_ips)?;
//! let tls = crate::pki::kubelet_server_config(&pki)?;
//! let listener = tokio::net::TcpListener::bind((bind_ip, kubelet_port)).await?;
//! let state = Arc::new(KubeletApiState::new(&node, &agent_dir).with_pods(client));
//! tokio::spawn(kubelet::server::serve(listener, tls, state, shutdown));
//! ```

pub mod containers;
mod handler;
pub mod logs;
pub mod portforward;
pub mod remotecommand;
pub mod spdy;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use containers::{ContainerRecord, Containers};
pub use remotecommand::{Session, StreamBackend, StreamError, StreamOptions, TerminalSize};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `/stats/summary`'s source (the node's and pods' cgroup stats, upstream's Summary shape).
pub trait StatsProvider: Send + Sync {
    fn summary(&self) -> BoxFuture<'_, Result<serde_json::Value, String>>;
}

/// What the kubelet API serves from.
pub struct KubeletApiState {
    /// This node's name (the `/pods` filter, messages).
    pub node_name: String,
    /// The containers under `<data-dir>/agent`.
    pub containers: Containers,
    /// Opens exec and attach sessions.
    pub streams: Arc<dyn StreamBackend>,
    /// Lists this node's pods for `/pods`; `None` answers 503.
    pub pods: Option<kube::Client>,
    /// `/stats/summary` ([`AgentStats`] by default); `None` answers 503.
    pub stats: Option<Arc<dyn StatsProvider>>,
}

impl KubeletApiState {
    /// The API for `node_name`'s containers under `agent_dir`, with exec/attach through the
    /// container shim.
    pub fn new(node_name: &str, agent_dir: &Path) -> KubeletApiState {
        KubeletApiState {
            node_name: node_name.to_string(),
            containers: Containers::new(agent_dir),
            streams: Arc::new(ShimStreams),
            pods: None,
            stats: Some(Arc::new(AgentStats {
                node_name: node_name.to_string(),
                agent_dir: agent_dir.to_path_buf(),
                sampler: crate::kubelet::stats::CpuSampler::new(),
            })),
        }
    }

    /// Serves `/pods` from `client` (pods whose `spec.nodeName` is this node).
    pub fn with_pods(mut self, client: kube::Client) -> KubeletApiState {
        self.pods = Some(client);
        self
    }

    /// Opens exec/attach sessions with `streams` instead of the shim.
    pub fn with_streams(mut self, streams: Arc<dyn StreamBackend>) -> KubeletApiState {
        self.streams = streams;
        self
    }
}

/// `/stats/summary` from the cgroups of this agent's containers ([`crate::kubelet::stats`]).
pub struct AgentStats {
    pub node_name: String,
    pub agent_dir: std::path::PathBuf,
    pub sampler: crate::kubelet::stats::CpuSampler,
}

impl StatsProvider for AgentStats {
    fn summary(&self) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move {
            let summary =
                crate::kubelet::stats::summary(&self.agent_dir, &self.node_name, &self.sampler)
                    .await;
            serde_json::to_value(summary).map_err(|e| e.to_string())
        })
    }
}

/// exec and attach in containers through the container shim.
/// TODO(issue 5): call `crate::runtime::shim::{exec, attach}` once the shim provides them.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShimStreams;

impl StreamBackend for ShimStreams {
    fn exec(
        &self,
        container: &ContainerRecord,
        _options: &StreamOptions,
    ) -> BoxFuture<'static, Result<Session, StreamError>> {
        let message = format!(
            "exec in container {:?} is not supported by this kedge build's container shim yet",
            container.container
        );
        Box::pin(async move { Err(StreamError::Unavailable(message)) })
    }

    fn attach(
        &self,
        container: &ContainerRecord,
        _options: &StreamOptions,
    ) -> BoxFuture<'static, Result<Session, StreamError>> {
        let message = format!(
            "attach to container {:?} is not supported by this kedge build's container shim yet",
            container.container
        );
        Box::pin(async move { Err(StreamError::Unavailable(message)) })
    }
}

/// Serves the kubelet API on `listener` until `shutdown` completes. Connections already
/// open (a `logs -f`, an exec) end with their clients or with the process.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<KubeletApiState>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet API: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "kubelet API: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let client_cert: Option<Arc<Vec<u8>>> = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| Arc::new(cert.as_ref().to_vec()));
            let service = service_fn(move |request| {
                let state = state.clone();
                let client_cert = client_cert.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handler::handle(&state, request, client_cert.as_deref().map(Vec::as_slice))
                            .await,
                    )
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "kubelet API connection ended with an error");
            }
        });
    }
}
