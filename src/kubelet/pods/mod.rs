//! Pod workers (upstream's pod workers, kuberuntime manager, prober and status manager, in
//! one place): watch the pods bound to this node (and take the static pods from their
//! files, writing their status to their mirror pods), run one worker per pod uid that
//! reconciles the pod's sandbox and containers with its spec (init containers in order,
//! sidecars, restart policy with crash-loop back-off, probes, hooks, graceful deletion),
//! and write the pod's status as upstream does.
//!
//! Owns: `<agent>/pods/<uid>/` (sandbox files), `<agent>/containers/<id>/meta.json`, the
//! container log paths, pod status writes and the kubelet's pod/container events.
//! Must not touch: node registration, leases (the rest of `kubelet`), volume contents
//! (`kubelet::volumes`), image and shim internals (`runtime`'s interfaces only).

mod action;
mod backoff;
mod config;
mod dns;
mod env;
mod events;
mod expansion;
mod format;
mod hooks;
mod meta;
mod probes;
mod pull;
mod qos;
mod registry;
mod sandbox;
mod security;
mod source;
mod status;
mod worker;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use crate::controllers::events::Recorder;
use crate::kubelet::image_gc::ImagePins;
use crate::net::cni::PodNetwork;
use crate::runtime::images::ImageStore;

pub use meta::{images_in_use, ContainerMeta};
pub use registry::PodRegistry;

/// The container (regular or init) of `pod`'s spec named `name`.
pub fn spec_container<'a>(
    pod: &'a Pod,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// What the pod workers need from the agent.
#[derive(Clone)]
pub struct PodsContext {
    pub client: kube::Client,
    pub node_name: String,
    /// The node's InternalIP (status.hostIP).
    pub node_ip: IpAddr,
    /// `<data-dir>/agent`.
    pub agent_dir: PathBuf,
    /// `<agent>/images`, opened by the agent.
    pub images: ImageStore,
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    /// The host's resolv.conf (`Default` dnsPolicy and the search path tail).
    pub resolv_conf: PathBuf,
    /// Shared with the kubelet API.
    pub registry: PodRegistry,
    /// Images workers are about to use, kept from garbage collection.
    pub image_pins: ImagePins,
    /// The static pods (from files, UID = their hash; see `kubelet::static_pods`).
    pub static_pods: watch::Receiver<Vec<Pod>>,
    /// The pod network (`<agent>/net`): pods with their own namespace get an address there.
    pub network: PodNetwork,
}

impl PodsContext {
    /// The defaults for everything but the client, node, images and directories: k3s's
    /// cluster DNS 10.43.0.10 and domain cluster.local, the host's /etc/resolv.conf.
    pub fn new(
        client: kube::Client,
        node_name: &str,
        node_ip: IpAddr,
        agent_dir: PathBuf,
        images: ImageStore,
    ) -> PodsContext {
        PodsContext {
            network: PodNetwork::new(client.clone(), node_name, node_ip, &agent_dir.join("net")),
            client,
            node_name: node_name.to_string(),
            node_ip,
            registry: PodRegistry::new(&agent_dir),
            agent_dir,
            images,
            cluster_dns: vec![IpAddr::from([10, 43, 0, 10])],
            cluster_domain: "cluster.local".to_string(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            image_pins: ImagePins::default(),
            static_pods: watch::channel(Vec::new()).1,
        }
    }
}

/// Runs the pod workers of this node until the process ends. Containers already running
/// (an agent restart) are adopted, not restarted.
pub async fn run(ctx: PodsContext) {
    // Probes over HTTPS use rustls; the process may have installed the provider already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reclaim_network(&ctx).await;
    let shared = Arc::new(worker::Shared {
        client: ctx.client.clone(),
        images: ctx.images.clone(),
        recorder: Arc::new(Recorder::new(ctx.client.clone(), "kubelet")),
        node_hostname: sandbox::node_hostname(),
        memory_capacity: memory_capacity(),
        ctx,
    });
    source::run(shared).await
}

/// Frees the addresses and veths of pods whose sandbox is gone (a crash, a reboot) before
/// any pod is set up; pods whose sandbox remains are handled by their worker or, when the
/// API no longer has them, by the orphan cleanup.
async fn reclaim_network(ctx: &PodsContext) {
    let agent_dir = ctx.agent_dir.clone();
    let alive = move |uid: &str| {
        crate::runtime::netns::is_namespace(&sandbox::pod_dir(&agent_dir, uid).join("netns"))
    };
    match ctx.network.reclaim(alive).await {
        Ok(r) if !r.addresses.is_empty() || !r.veths.is_empty() => {
            tracing::info!(addresses = ?r.addresses, veths = ?r.veths, "reclaimed the pod network of pods that are gone")
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "reclaiming the pod network of pods that are gone failed")
        }
    }
}

/// MemTotal in bytes (for Burstable containers' OOM score).
fn memory_capacity() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}
