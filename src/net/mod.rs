//! The cluster network, in-process (DESIGN.md: no CNI binaries, no kube-proxy, no CoreDNS).
//!
//! [`cni`] is the pod network of a node: the bridge `kedge0`, one veth pair per pod, and the
//! host-local IPAM of the node's pod CIDR. The kubelet's pod workers call it when they set
//! up and tear down a pod sandbox, and at agent start to reclaim what a crash left behind.
//! [`dns`] is the node's cluster DNS server, on the pod gateway of the bridge.
//! [`proxy`] is the service proxy (kube-proxy's nftables mode) the node agent runs; it sends
//! the cluster DNS address to this node's DNS server. The VXLAN overlay between nodes is to
//! come here beside them, building on `cni`'s seams (the bridge name, the pod CIDR).
//!
//! Must not touch: API objects (the kubelet writes pod status), pod namespaces' lifetime
//! (the kubelet's sandbox), and anything on the node that kedge did not create.

pub mod cni;
pub mod dns;
pub mod proxy;

/// Whether an EndpointSlice endpoint takes traffic: a missing `ready` condition means ready,
/// as kube-proxy and CoreDNS read it.
pub fn endpoint_ready(endpoint: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.ready)
        .unwrap_or(true)
}
