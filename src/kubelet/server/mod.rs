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

use futures::future::BoxFuture;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::kubelet::pods::PodRegistry;
use crate::runtime::shim;

pub use containers::{ContainerRecord, Containers};
pub use remotecommand::{Session, StreamBackend, StreamError, StreamOptions, TerminalSize};

/// `/stats/summary`'s source (the node's and pods' cgroup stats, upstream's Summary shape).
pub trait StatsProvider: Send + Sync {
    fn summary(&self) -> BoxFuture<'_, Result<serde_json::Value, String>>;
}

/// What the kubelet API serves from.
pub struct KubeletApiState {
    /// This node's name (the `/pods` filter, messages).
    pub node_name: String,
    /// This node's containers (from the pod workers' registry).
    pub containers: Containers,
    /// Opens exec and attach sessions.
    pub streams: Arc<dyn StreamBackend>,
    /// Lists this node's pods for `/pods`; `None` answers 503.
    pub pods: Option<kube::Client>,
    /// `/stats/summary` ([`AgentStats`] by default); `None` answers 503.
    pub stats: Option<Arc<dyn StatsProvider>>,
}

impl KubeletApiState {
    /// The API for `node_name`'s containers under `agent_dir` (as recorded on disk until
    /// [`Self::with_registry`] gives the pod workers' registry), with exec/attach through
    /// the container shim.
    pub fn new(node_name: &str, agent_dir: &Path) -> KubeletApiState {
        KubeletApiState {
            node_name: node_name.to_string(),
            containers: Containers::new(PodRegistry::new(agent_dir)),
            streams: Arc::new(ShimStreams),
            pods: None,
            stats: Some(Arc::new(AgentStats {
                node_name: node_name.to_string(),
                agent_dir: agent_dir.to_path_buf(),
                sampler: crate::kubelet::stats::CpuSampler::new(),
            })),
        }
    }

    /// Finds containers through the pod workers' `registry`.
    pub fn with_registry(mut self, registry: PodRegistry) -> KubeletApiState {
        self.containers = Containers::new(registry);
        self
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
#[derive(Clone, Copy, Debug, Default)]
pub struct ShimStreams;

impl StreamBackend for ShimStreams {
    fn exec(
        &self,
        container: &ContainerRecord,
        options: &StreamOptions,
    ) -> BoxFuture<'static, Result<Session, StreamError>> {
        let dir = container.dir.clone();
        let options = options.clone();
        Box::pin(async move {
            let request = shim::ExecRequest {
                args: options.command.clone(),
                tty: options.tty,
                stdin: options.stdin,
                env: Vec::new(),
            };
            let mut process = shim::exec(&dir, request)
                .await
                .map_err(|e| StreamError::Start(e.to_string()))?;
            let resize = process.resizer().map(|resizer| {
                forward_resizes(move |size| {
                    resizer
                        .resize(size.width, size.height)
                        .map_err(|e| e.to_string())
                })
            });
            let stdin = process.stdin.take().filter(|_| options.stdin);
            let stderr = process.stderr.take().filter(|_| options.stderr);
            let stdout = std::mem::replace(&mut process.stdout, Box::new(tokio::io::empty()));
            Ok(Session {
                stdin,
                stdout: (options.stdout || options.tty).then_some(stdout),
                stderr,
                resize,
                exit: Box::pin(process.wait()),
            })
        })
    }

    fn attach(
        &self,
        container: &ContainerRecord,
        options: &StreamOptions,
    ) -> BoxFuture<'static, Result<Session, StreamError>> {
        let dir = container.dir.clone();
        let options = options.clone();
        Box::pin(async move {
            let streams = shim::attach(&dir)
                .await
                .map_err(|e| StreamError::Unavailable(e.to_string()))?;
            let resize = streams.tty.then(|| {
                let dir = dir.clone();
                forward_resizes_async(move |size| {
                    let dir = dir.clone();
                    async move {
                        shim::resize(&dir, size.width, size.height)
                            .await
                            .map_err(|e| e.to_string())
                    }
                })
            });
            Ok(Session {
                stdin: streams.stdin.filter(|_| options.stdin),
                stdout: (options.stdout || streams.tty).then_some(streams.stdout),
                stderr: streams.stderr.filter(|_| options.stderr),
                resize,
                exit: Box::pin(async move {
                    match shim::wait(&dir).await {
                        Ok(shim::ContainerStatus::Exited { exit_code, .. }) => Ok(exit_code),
                        Ok(_) => Ok(0),
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    }
                }),
            })
        })
    }
}

/// A channel whose terminal sizes are applied by `apply` until the session drops it.
fn forward_resizes(
    apply: impl Fn(TerminalSize) -> Result<(), String> + Send + 'static,
) -> tokio::sync::mpsc::UnboundedSender<TerminalSize> {
    forward_resizes_async(move |size| std::future::ready(apply(size)))
}

fn forward_resizes_async<F, Fut>(apply: F) -> tokio::sync::mpsc::UnboundedSender<TerminalSize>
where
    F: Fn(TerminalSize) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let (sender, mut sizes) = tokio::sync::mpsc::unbounded_channel::<TerminalSize>();
    tokio::spawn(async move {
        while let Some(size) = sizes.recv().await {
            if let Err(e) = apply(size).await {
                tracing::debug!(error = %e, "resizing a terminal failed");
            }
        }
    });
    sender
}

/// Serves the kubelet API on `listener` until `shutdown` completes. Connections already
/// open (a `logs -f`, an exec) end with their clients or with the process.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<KubeletApiState>,
    shutdown: impl Future<Output = ()>,
) {
    crate::tls::accept_tls(listener, tls, "kubelet API: ", shutdown, || {
        let state = state.clone();
        move |tls, peer, client_cert| async move {
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
        }
    })
    .await;
}
