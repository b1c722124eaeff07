//! The pod network of one node: what the CNI `bridge` and `host-local` plugins do under
//! k3s's flannel, done in-process over rtnetlink (no CNI binaries, never `ip`).
//!
//! - The bridge [`BRIDGE`] holds the first address of the node's `spec.podCIDR` (set by
//!   the node IPAM controller) and is every pod's gateway; `ip_forward` is on in the node's
//!   namespace, so traffic leaving the bridge is routed.
//! - Each pod with its own network namespace gets a veth pair: the host end
//!   (`veth<11 hex of the pod uid's hash>`) on the bridge with hairpin mode on, the pod end
//!   [`POD_INTERFACE`] created directly inside the pod's namespace with an address from
//!   [`ipam`] and a default route via the bridge.
//! - MTU: flannel's convention, the MTU of the node address's link minus the VXLAN
//!   overhead (50 bytes), so that pod traffic fits the overlay between nodes unfragmented;
//!   1450 (an Ethernet link's) when that link is a loopback or cannot be found.
//! - Teardown ([`PodNetwork::del`]) deletes the veth (its peer goes with it) and releases
//!   the address; [`PodNetwork::reclaim`], at agent start, does the same for allocations
//!   whose pod sandbox is gone (an agent crash or a reboot) and removes bridge ports no
//!   allocation names: no address or veth leaks. [`uninstall`] (`kedge killall`) removes
//!   all of it, the bridge included.
//!
//! Seams for the rest of `net`: [`BRIDGE`] and [`PodNetwork::pod_cidr`] (masquerade of
//! traffic leaving the cluster CIDR, the service proxy and the overlay build on them).
//! Must not touch: the node's other links, addresses and routes; firewall tables (the
//! proxy's); pod sandboxes (the kubelet creates and removes the namespaces).

pub mod ipam;
mod link;

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use ipam::{Allocation, Ipam, IpamError};

/// The bridge every pod of the node hangs off.
pub const BRIDGE: &str = "kedge0";
/// The pod's interface, inside its namespace.
pub const POD_INTERFACE: &str = "eth0";
/// VXLAN's encapsulation overhead (outer Ethernet, IP, UDP and VXLAN headers): flannel's.
const VXLAN_OVERHEAD: u32 = 50;
/// The MTU when the node's link says nothing useful: 1500 minus [`VXLAN_OVERHEAD`].
const DEFAULT_MTU: u32 = 1450;
/// How long setup waits for the node IPAM controller to give the node its pod CIDR.
const POD_CIDR_WAIT: Duration = Duration::from_secs(10);

/// Why a pod's network could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("network is not ready: the node {node} has no pod CIDR yet (spec.podCIDR, set by the server's node IPAM controller)")]
    NoPodCidr { node: String },
    #[error("the node {node}'s spec.podCIDR {cidr:?} is not an IPv4 CIDR")]
    BadPodCidr { node: String, cidr: String },
    #[error("reading the node {node}: {source}")]
    Node {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("{action}: {source}")]
    Netlink {
        action: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
}

impl CniError {
    fn io(action: impl Into<String>, source: io::Error) -> CniError {
        CniError::Io {
            action: action.into(),
            source,
        }
    }
}

/// What [`PodNetwork::reclaim`] or [`uninstall`] freed.
#[derive(Debug, Default)]
pub struct Reclaimed {
    pub addresses: Vec<Ipv4Addr>,
    pub veths: Vec<String>,
    /// The bridge was deleted too ([`uninstall`] only).
    pub bridge: bool,
}

/// The node's pod network; cheap to clone.
#[derive(Clone)]
pub struct PodNetwork {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    node_name: String,
    node_ip: IpAddr,
    ipam: Arc<Ipam>,
    /// Netlink in the node's namespace, opened on first use.
    host: OnceCell<rtnetlink::Handle>,
    /// The node's range and MTU, known once the node has its pod CIDR.
    node: OnceCell<NodeNet>,
}

#[derive(Debug, Clone, Copy)]
struct NodeNet {
    range: Ipv4Net,
    mtu: u32,
}

/// The host end of the pod's veth: derived from its uid, so that teardown finds it
/// without any state (15 characters, the kernel's limit).
pub fn host_veth(pod_uid: &str) -> String {
    let digest = hex::encode(Sha256::digest(pod_uid.as_bytes()));
    format!("veth{}", &digest[..11])
}

impl PodNetwork {
    /// The pod network of `node_name`, whose InternalIP is `node_ip`; allocations are kept
    /// in `dir` (`<agent>/net`). Touches nothing until a pod is set up.
    pub fn new(client: kube::Client, node_name: &str, node_ip: IpAddr, dir: &Path) -> PodNetwork {
        PodNetwork {
            inner: Arc::new(Inner {
                client,
                node_name: node_name.to_string(),
                node_ip,
                ipam: Arc::new(Ipam::new(&dir.join("ipam"))),
                host: OnceCell::new(),
                node: OnceCell::new(),
            }),
        }
    }

    /// The node's pod CIDR (`spec.podCIDR`), waiting a little for the node IPAM controller.
    pub async fn pod_cidr(&self) -> Result<Ipv4Net, CniError> {
        Ok(self.node().await?.range)
    }

    /// Connects the pod `pod_uid`, whose network namespace is bind-mounted at `netns`, to
    /// the bridge; returns its address. Idempotent: a pod already connected (an agent
    /// restart) keeps its address and veth.
    pub async fn add(&self, pod_uid: &str, netns: &Path) -> Result<Ipv4Addr, CniError> {
        let node = self.node().await?;
        let host = self.host().await?;
        let gateway = ipam::gateway(node.range);
        let prefix = node.range.prefix_len();
        let bridge = link::ensure_bridge(&host, BRIDGE, gateway, prefix, node.mtu).await?;
        let veth = host_veth(pod_uid);
        let owner = Allocation {
            pod_uid: pod_uid.to_string(),
            host_veth: veth.clone(),
        };
        let ip = self
            .with_ipam(move |ipam| ipam.allocate(node.range, &owner))
            .await?;
        let wired = self.wire(&host, bridge, &veth, netns, ip, node).await;
        if let Err(error) = wired {
            // As the CNI bridge plugin: a failed ADD leaves nothing behind.
            let _ = link::delete(&host, &veth).await;
            let uid = pod_uid.to_string();
            let _ = self.with_ipam(move |ipam| ipam.release(&uid)).await;
            return Err(error);
        }
        tracing::debug!(pod_uid, %ip, veth, "pod connected to the pod network");
        Ok(ip)
    }

    /// Disconnects the pod: deletes its veth and releases its address. Idempotent, and
    /// needs neither the pod's namespace nor the pod CIDR.
    pub async fn del(&self, pod_uid: &str) -> Result<Vec<Ipv4Addr>, CniError> {
        let host = self.host().await?;
        link::delete(&host, &host_veth(pod_uid)).await?;
        let uid = pod_uid.to_string();
        let released = self.with_ipam(move |ipam| ipam.release(&uid)).await?;
        if !released.is_empty() {
            tracing::debug!(pod_uid, addresses = ?released, "pod disconnected from the pod network");
        }
        Ok(released)
    }

    /// At agent start, before any pod is set up: releases the addresses (and deletes the
    /// veths) of pods that are not `alive` (their sandbox namespace is gone), then removes
    /// ports of the bridge that no remaining allocation names.
    pub async fn reclaim(
        &self,
        alive: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Reclaimed, CniError> {
        let host = self.host().await?;
        reclaim_on(&host, &self.inner.ipam, alive).await
    }

    /// Creates (or checks) the veth pair and the pod side's configuration.
    async fn wire(
        &self,
        host: &rtnetlink::Handle,
        bridge: u32,
        veth: &str,
        netns: &Path,
        ip: Ipv4Addr,
        node: NodeNet,
    ) -> Result<(), CniError> {
        let pod = link::connect_in(netns).await?;
        let pod_end = link::by_name(&pod, POD_INTERFACE).await?;
        let host_end = link::by_name(host, veth).await?;
        let connected = match (&pod_end, &host_end) {
            (Some(pod_end), Some(_)) => link::ipv4_addresses(&pod, pod_end.header.index)
                .await?
                .iter()
                .any(|(address, _, _)| *address == ip),
            _ => false,
        };
        if !connected {
            // Leftovers of an interrupted setup go first.
            link::delete(&pod, POD_INTERFACE).await?;
            link::delete(host, veth).await?;
            link::create_veth(host, veth, netns, POD_INTERFACE, node.mtu).await?;
        }
        let host_end = link::by_name(host, veth)
            .await?
            .ok_or_else(|| CniError::Netlink {
                action: format!("finding the veth {veth} just created"),
                source: rtnetlink::Error::RequestFailed,
            })?;
        link::attach(host, host_end.header.index, bridge, veth).await?;
        link::configure_pod(
            &pod,
            POD_INTERFACE,
            ip,
            node.range.prefix_len(),
            ipam::gateway(node.range),
        )
        .await
    }

    async fn host(&self) -> Result<rtnetlink::Handle, CniError> {
        self.inner
            .host
            .get_or_try_init(link::connect_host)
            .await
            .cloned()
    }

    /// The node's range and MTU, and `ip_forward` on: once, when the pod CIDR is known.
    async fn node(&self) -> Result<NodeNet, CniError> {
        self.inner
            .node
            .get_or_try_init(|| async {
                let range = self.wait_for_pod_cidr().await?;
                let host = self.host().await?;
                let mtu = match link::holder_of(&host, self.inner.node_ip).await? {
                    Some((mtu, false)) => mtu.saturating_sub(VXLAN_OVERHEAD).max(576),
                    _ => DEFAULT_MTU,
                };
                enable_ip_forward()?;
                tracing::info!(bridge = BRIDGE, %range, mtu, "pod network ready");
                Ok(NodeNet { range, mtu })
            })
            .await
            .copied()
    }

    async fn wait_for_pod_cidr(&self) -> Result<Ipv4Net, CniError> {
        let node = &self.inner.node_name;
        let api: Api<Node> = Api::all(self.inner.client.clone());
        let deadline = Instant::now() + POD_CIDR_WAIT;
        loop {
            let found = api.get(node).await.map_err(|source| CniError::Node {
                node: node.clone(),
                source,
            })?;
            if let Some(cidr) = found.spec.and_then(|s| s.pod_cidr) {
                return cidr.parse().map_err(|_| CniError::BadPodCidr {
                    node: node.clone(),
                    cidr,
                });
            }
            if Instant::now() > deadline {
                return Err(CniError::NoPodCidr { node: node.clone() });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn with_ipam<T, F>(&self, work: F) -> Result<T, CniError>
    where
        T: Send + 'static,
        F: FnOnce(&Ipam) -> Result<T, IpamError> + Send + 'static,
    {
        on_ipam(&self.inner.ipam, work).await
    }
}

/// Runs `work` on the allocations from a blocking thread (they are files).
async fn on_ipam<T, F>(ipam: &Arc<Ipam>, work: F) -> Result<T, CniError>
where
    T: Send + 'static,
    F: FnOnce(&Ipam) -> Result<T, IpamError> + Send + 'static,
{
    let ipam = ipam.clone();
    tokio::task::spawn_blocking(move || work(&ipam))
        .await
        .map_err(|e| CniError::io("the IPAM task", io::Error::other(e)))?
        .map_err(CniError::from)
}

/// Releases the addresses (and deletes the veths) of pods that are not `alive`, then
/// removes ports of the bridge that no remaining allocation names.
async fn reclaim_on(
    host: &rtnetlink::Handle,
    ipam: &Arc<Ipam>,
    alive: impl Fn(&str) -> bool + Send + 'static,
) -> Result<Reclaimed, CniError> {
    let released = on_ipam(ipam, move |ipam| ipam.release_unless(alive)).await?;
    let mut reclaimed = Reclaimed::default();
    for (ip, allocation) in released {
        reclaimed.addresses.push(ip);
        let mut names = vec![allocation.host_veth.clone()];
        if !allocation.pod_uid.is_empty() {
            names.push(host_veth(&allocation.pod_uid));
        }
        for name in names.iter().filter(|n| !n.is_empty()) {
            if link::delete(host, name).await? {
                reclaimed.veths.push(name.clone());
            }
        }
    }
    let Some(bridge) = link::by_name(host, BRIDGE).await? else {
        return Ok(reclaimed);
    };
    let kept: HashSet<String> = on_ipam(ipam, |ipam| ipam.allocations())
        .await?
        .into_iter()
        .map(|(_, a)| a.host_veth)
        .collect();
    for port in link::all(host).await? {
        if link::controller(&port) != Some(bridge.header.index) {
            continue;
        }
        let Some(name) = link::name(&port).map(str::to_string) else {
            continue;
        };
        if !kept.contains(&name) && link::delete(host, &name).await? {
            reclaimed.veths.push(name);
        }
    }
    Ok(reclaimed)
}

/// Removes the node's whole pod network from the calling thread's namespace (`kedge
/// killall`, with no agent running on `dir`, `<agent>/net`): every pod's veth, every
/// address allocation and the bridge. Idempotent.
pub async fn uninstall(dir: &Path) -> Result<Reclaimed, CniError> {
    let host = link::connect_host().await?;
    let ipam = Arc::new(Ipam::new(&dir.join("ipam")));
    let mut reclaimed = reclaim_on(&host, &ipam, |_| false).await?;
    reclaimed.bridge = link::delete(&host, BRIDGE).await?;
    Ok(reclaimed)
}

/// Routing between the bridge and the node's other links (pods reaching other nodes, the
/// node reaching pods through the overlay). Per network namespace: the agent's.
fn enable_ip_forward() -> Result<(), CniError> {
    let path = PathBuf::from("/proc/sys/net/ipv4/ip_forward");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(&path, "1").map_err(|e| CniError::io("turning net.ipv4.ip_forward on", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_the_kernel_limit_and_differ_per_pod() {
        let a = host_veth("0b8f6d1e-5a0c-4d6e-9a63-0f6f1c2b9e11");
        let b = host_veth("0b8f6d1e-5a0c-4d6e-9a63-0f6f1c2b9e12");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_ne!(a, b);
        assert_eq!(a, host_veth("0b8f6d1e-5a0c-4d6e-9a63-0f6f1c2b9e11"));
    }
}
