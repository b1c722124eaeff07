//! The node agent's Kubernetes side (upstream's kubelet): registers the Node, renews its
//! Lease, runs the pods bound to it through [`crate::runtime`], reports their status, and
//! serves the kubelet API (logs, exec, attach, port-forward, stats) on port 10250.
//!
//! Start at [`run`] with a [`KubeletConfig`]: `kedge server` builds one with an in-process
//! client (unless `--disable-agent`), `kedge agent` ([`agent`]) with an HTTPS client.
//! [`node`] owns the Node object, its status and Lease; [`static_pods`] reads
//! `<agent>/pod-manifests` and keeps their mirror pods; the pod workers run every pod bound
//! to the node and the static pods. [`killall`] (`kedge killall`) stops and removes what
//! a stopped agent left on the host, and owns the data-dir lock a running one holds.
//!
//! Must not touch: the store (only the API, through a kube client), image or container
//! internals (only [`crate::runtime`]'s interfaces).

pub mod agent;
pub mod image_gc;
pub mod join;
pub mod killall;
pub mod node;
mod options;
pub mod pods;
pub mod server;
pub mod static_pods;
pub mod stats;
pub mod volumes;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Taint;

use crate::runtime::images::ImageStore;

pub use options::{hostname, NodeOptions};

/// Upstream's `nodeStatusUpdateFrequency` and Lease renew interval.
pub const NODE_STATUS_UPDATE_FREQUENCY: Duration = Duration::from_secs(10);

/// The cluster-wide settings every node needs but only servers are configured with: a
/// server takes them from its flags, `kedge agent` from its server when it joins
/// ([`join::CLUSTER_NETWORK_PATH`]), as k3s's agents are told theirs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetwork {
    /// `--cluster-cidr`: pod addresses (masquerade and the proxy's "from a pod" matches).
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: ipnet::Ipv4Net,
    /// `--service-cidr`: ClusterIPs (routed to the proxy's reject link).
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: ipnet::Ipv4Net,
    /// `--cluster-dns`: the nameserver of pods' resolv.conf.
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: IpAddr,
    /// `--cluster-domain`.
    pub cluster_domain: String,
}

/// Everything one node agent needs to know; built by `kedge server` or `kedge agent`.
#[derive(Clone)]
pub struct KubeletConfig {
    /// The API client, acting as `system:node:<node_name>` in group `system:nodes`.
    pub client: kube::Client,
    /// The Node's name (lowercase).
    pub node_name: String,
    /// The Node's InternalIP.
    pub node_ip: IpAddr,
    /// The host's name, the Node's `Hostname` address.
    pub hostname: String,
    /// Extra labels (`--node-label`); the kubelet's own well-known labels are added to them.
    pub labels: BTreeMap<String, String>,
    /// Taints the Node is registered with (`--node-taint`), on first registration only.
    pub taints: Vec<Taint>,
    /// The kubelet API's port, published in `status.daemonEndpoints`.
    pub kubelet_port: u16,
    /// The cluster's CIDRs, DNS address and domain (pods' resolv.conf, the node DNS, the
    /// service proxy).
    pub network: ClusterNetwork,
    /// The node's resolv.conf (`--resolv-conf`): upstream resolvers of the cluster DNS and
    /// pods' `dnsPolicy: Default`.
    pub resolv_conf: PathBuf,
    /// `<data-dir>/agent`: everything the agent keeps on disk.
    pub agent_dir: PathBuf,
    /// Whether this node runs the control plane (`kedge server`): it gets the
    /// control-plane role labels.
    pub control_plane: bool,
    /// How often the Node status is posted and the Lease renewed.
    pub node_status_update_frequency: Duration,
    /// How often `<agent>/pod-manifests` is read again.
    pub static_pod_poll: Duration,
    /// The kubelet API's TLS (serving certificate, client CA); without it the kubelet API
    /// (logs, exec, port-forward, stats) is not served.
    pub kubelet_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Image garbage collection's thresholds and period.
    pub image_gc: image_gc::ImageGcPolicy,
    /// Whether the node runs the service proxy (`--disable-kube-proxy` turns it off).
    pub service_proxy: bool,
}

impl KubeletConfig {
    /// A config from the shared node flags; `preferred_ip` is the server's advertise address.
    pub fn from_options(
        client: kube::Client,
        options: &NodeOptions,
        data_dir: &Path,
        network: ClusterNetwork,
        preferred_ip: Option<IpAddr>,
        control_plane: bool,
    ) -> KubeletConfig {
        KubeletConfig {
            client,
            node_name: options.node_name(),
            node_ip: options.node_ip(preferred_ip),
            hostname: hostname().to_ascii_lowercase(),
            labels: options.labels(),
            taints: options.node_taints.clone(),
            kubelet_port: options.kubelet_port,
            network,
            resolv_conf: options.resolv_conf.clone(),
            agent_dir: data_dir.join("agent"),
            control_plane,
            node_status_update_frequency: NODE_STATUS_UPDATE_FREQUENCY,
            static_pod_poll: Duration::from_secs(3),
            kubelet_tls: None,
            image_gc: image_gc::ImageGcPolicy {
                high_percent: options.image_gc_high_threshold,
                low_percent: options.image_gc_low_threshold,
                period: options.image_gc_period,
            },
            service_proxy: !options.disable_kube_proxy,
        }
    }

    /// `<agent>/pod-manifests`, the static pod folder.
    pub fn pod_manifests_dir(&self) -> PathBuf {
        self.agent_dir.join("pod-manifests")
    }
}

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// A local file or directory could not be created or read.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An API call failed; `action` names the object.
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// The image store could not be opened.
    #[error("opening the image store {dir}: {message}")]
    Images { dir: String, message: String },
    /// Joining a server (`kedge agent`) failed.
    #[error("joining {server}: {reason}")]
    Join { server: String, reason: String },
}

impl KubeletError {
    pub(crate) fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeletError {
        let action = action.into();
        move |source| KubeletError::Api { action, source }
    }

    pub(crate) fn io(
        what: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> KubeletError {
        let path = path.display().to_string();
        move |source| KubeletError::Io { what, path, source }
    }
}

/// Creates `dir` and its parents with mode 0700 if missing (an existing one keeps its mode).
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), KubeletError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(KubeletError::io("creating", dir))
}

/// Runs the node agent until it fails: registers the Node (taking over an existing one),
/// then keeps its status and Lease fresh, mirrors static pods and runs the pods bound to it.
pub async fn run(mut config: KubeletConfig) -> Result<(), KubeletError> {
    create_private_dir(&config.agent_dir)?;
    create_private_dir(&config.pod_manifests_dir())?;
    let images_dir = config.agent_dir.join("images");
    let images = ImageStore::open(&images_dir).map_err(|e| KubeletError::Images {
        dir: images_dir.display().to_string(),
        message: e.to_string(),
    })?;
    {
        // Air-gap archives dropped in the image folder are imported before pods start.
        let images = images.clone();
        match tokio::task::spawn_blocking(move || images.import_dropped_archives()).await {
            Ok(Ok(imported)) if !imported.is_empty() => {
                tracing::info!(count = imported.len(), "imported image archives")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "importing image archives failed"),
            _ => {}
        }
    }
    let registry = pods::PodRegistry::new(&config.agent_dir);
    let api_listener = match &config.kubelet_tls {
        Some(_) => {
            let addr = std::net::SocketAddr::new(
                std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                config.kubelet_port,
            );
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(KubeletError::io(
                    "listening for the kubelet API on",
                    Path::new(&addr.to_string()),
                ))?;
            // `--kubelet-port 0` picks a free port; the Node publishes the real one.
            if let Ok(bound) = listener.local_addr() {
                config.kubelet_port = bound.port();
            }
            Some(listener)
        }
        None => {
            tracing::warn!("no kubelet serving certificate: logs, exec and port-forward are not served for this node");
            None
        }
    };
    let node = node::NodeAgent::start(config.clone()).await?;
    tracing::info!(node = %config.node_name, ip = %config.node_ip, port = config.kubelet_port, "node registered");
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(listener), Some(tls)) = (api_listener, config.kubelet_tls.clone()) {
        let state = std::sync::Arc::new(
            server::KubeletApiState::new(&config.node_name, &config.agent_dir)
                .with_registry(registry.clone())
                .with_pods(config.client.clone()),
        );
        tasks.spawn(server::serve(listener, tls, state, std::future::pending()));
    }
    tasks.spawn(node.clone().run_status());
    tasks.spawn(node.clone().run_lease());
    // Static pods reach the pod workers from the files, not the API: read once now, so
    // that the workers adopt their containers at start instead of removing them.
    let (static_pods_tx, static_pods_rx) =
        tokio::sync::watch::channel(static_pods::initial(&config));
    tasks.spawn(static_pods::run(
        config.clone(),
        node.clone(),
        static_pods_tx,
    ));
    let mut pods = pods::PodsContext::new(
        config.client.clone(),
        &config.node_name,
        config.node_ip,
        config.agent_dir.clone(),
        images,
    );
    pods.cluster_dns = vec![config.network.cluster_dns];
    pods.cluster_domain = config.network.cluster_domain.clone();
    pods.resolv_conf = config.resolv_conf.clone();
    pods.registry = registry;
    pods.static_pods = static_pods_rx;
    tasks.spawn(
        image_gc::ImageGc {
            policy: config.image_gc,
            images: pods.images.clone(),
            pins: pods.image_pins.clone(),
            agent_dir: config.agent_dir.clone(),
            node: node.clone(),
        }
        .run(),
    );
    // The node's cluster DNS, on the pod gateway (crate::net::dns).
    let dns = crate::net::dns::DnsConfig {
        client: config.client.clone(),
        network: pods.network.clone(),
        cluster_domain: config.network.cluster_domain.clone(),
        cluster_dns: config.network.cluster_dns,
        resolv_conf: pods.resolv_conf.clone(),
    };
    tasks.spawn(async move {
        if let Err(e) = crate::net::dns::run(dns).await {
            tracing::error!(error = %e, "the cluster DNS server stopped");
        }
    });
    tasks.spawn(pods::run(pods));
    if config.service_proxy {
        tasks.spawn(crate::net::proxy::run(crate::net::proxy::ProxyConfig {
            client: config.client.clone(),
            node_name: config.node_name.clone(),
            node_ip: config.node_ip,
            cluster_cidr: config.network.cluster_cidr,
            service_cidr: config.network.service_cidr,
        }));
    }
    // The loops retry their own failures; they end only when the process does.
    while let Some(ended) = tasks.join_next().await {
        if let Err(e) = ended {
            tracing::error!(error = %e, "a node agent task ended");
        }
    }
    Ok(())
}
