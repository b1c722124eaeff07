//! What the proxy programs, computed from the API objects: one [`ServicePort`] per port of
//! every Service that has a ClusterIP, with the ready endpoints of its EndpointSlices.
//! Pure functions of the watch caches (no I/O), so that the ruleset is a function of them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Service, ServicePort as ApiServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The Service whose ClusterIP is the cluster DNS address: answered by the node-local DNS
/// server on the bridge gateway (`src/net/dns`), not by endpoints.
pub const CLUSTER_DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");
/// The EndpointSlice label naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A transport protocol the proxy forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(protocol: Option<&str>) -> Option<Protocol> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// nft's name (`tcp`, `udp`, `sctp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A backend of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// On this node (`nodeName`): the only ones `...TrafficPolicy: Local` uses.
    pub local: bool,
}

/// One port of one Service, as the proxy programs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name; empty for a Service's only, unnamed port.
    pub port_name: String,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// `externalTrafficPolicy: Local`: node ports only reach this node's endpoints.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: the ClusterIP only reaches this node's endpoints.
    pub internal_local: bool,
    /// `sessionAffinity: ClientIP`'s timeout in seconds.
    pub affinity_seconds: Option<u32>,
    /// Ready endpoints, sorted, without duplicates.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// `<namespace>/<name>/<protocol>/<port name or p<port>>`, kube-proxy's naming.
    pub fn key(&self) -> String {
        let port = if self.port_name.is_empty() {
            format!("p{}", self.port)
        } else {
            self.port_name.clone()
        };
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            port
        )
    }
}

/// What the proxy knows about its own node.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub node_name: String,
    /// The address node ports are served on (the node's InternalIP).
    pub node_ip: Ipv4Addr,
    /// `--cluster-cidr`: traffic from elsewhere to a Service is masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// `--service-cidr`: unallocated addresses in it are rejected.
    pub service_cidr: Ipv4Net,
    /// The bridge gateway (first address of the node's podCIDR), where the node-local DNS
    /// server listens; unknown until the node has its pod CIDR.
    pub dns_gateway: Option<Ipv4Addr>,
}

/// The service ports to program, sorted by key.
pub fn service_ports<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &NodeView,
) -> Vec<ServicePort> {
    let mut slices_of: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let (Some(namespace), Some(service)) = (
            slice.metadata.namespace.clone(),
            slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .cloned(),
        ) else {
            continue;
        };
        slices_of
            .entry((namespace, service))
            .or_default()
            .push(slice);
    }
    let mut ports = Vec::new();
    for service in services {
        let (Some(namespace), Some(name), Some(spec)) = (
            service.metadata.namespace.as_deref(),
            service.metadata.name.as_deref(),
            service.spec.as_ref(),
        ) else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue; // headless (None) or not IPv4
        };
        let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map_or(10_800, |t| t.max(1) as u32)
        });
        let slices = slices_of
            .get(&(namespace.to_string(), name.to_string()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        for api_port in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(api_port.protocol.as_deref()) else {
                continue;
            };
            let Ok(port) = u16::try_from(api_port.port) else {
                continue;
            };
            let mut port = ServicePort {
                namespace: namespace.to_string(),
                name: name.to_string(),
                port_name: api_port.name.clone().unwrap_or_default(),
                protocol,
                cluster_ip,
                port,
                node_port: api_port
                    .node_port
                    .filter(|_| node_ports)
                    .and_then(|p| u16::try_from(p).ok()),
                external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                affinity_seconds,
                endpoints: endpoints_of(slices, api_port, protocol, &node.node_name),
            };
            if (namespace, name) == CLUSTER_DNS_SERVICE && port.endpoints.is_empty() {
                // Node-local DNS: the server on this node's bridge gateway, same port.
                if let Some(gateway) = node.dns_gateway {
                    port.endpoints = vec![Endpoint {
                        ip: gateway,
                        port: port.port,
                        local: true,
                    }];
                }
            }
            ports.push(port);
        }
    }
    ports.sort_by_key(ServicePort::key);
    ports
}

/// The ready endpoints of `slices` for the service port `api_port`.
fn endpoints_of(
    slices: &[&EndpointSlice],
    api_port: &ApiServicePort,
    protocol: Protocol,
    node_name: &str,
) -> Vec<Endpoint> {
    let wanted = api_port.name.as_deref().unwrap_or_default();
    let mut found = Vec::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == wanted
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        }) else {
            continue;
        };
        let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if !crate::net::endpoint_ready(endpoint) {
                continue;
            }
            let local = endpoint.node_name.as_deref() == Some(node_name);
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse() {
                    found.push(Endpoint {
                        ip,
                        port: number,
                        local,
                    });
                }
            }
        }
    }
    found.sort();
    found.dedup_by_key(|e| (e.ip, e.port));
    found
}
