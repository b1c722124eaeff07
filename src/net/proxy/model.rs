//! What the proxy programs, computed from the API objects: one [`ServicePort`] per port of
//! every Service that has a ClusterIP, with its addresses (ClusterIP, `spec.externalIPs`,
//! `status.loadBalancer.ingress[].ip`) and the endpoints of its EndpointSlices, and
//! [`ServicePort::categorize`], kube-proxy's choice of endpoints per traffic policy.
//! Pure functions of the watch caches (no I/O), so that the ruleset is a function of them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Service, ServicePort as ApiServicePort, ServiceSpec};
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
    /// `conditions.ready` (missing means ready).
    pub ready: bool,
    /// `conditions.serving` (missing means serving).
    pub serving: bool,
    /// `conditions.terminating` (missing means not terminating).
    pub terminating: bool,
}

impl Endpoint {
    /// A ready endpoint (the usual case).
    pub fn ready(ip: Ipv4Addr, port: u16, local: bool) -> Endpoint {
        Endpoint {
            ip,
            port,
            local,
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// Still serving while it terminates: used when a path has no ready endpoint
    /// (KEP-1669).
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// The endpoints each path of a service port uses (kube-proxy's `CategorizeEndpoints`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Categorized {
    /// For `Cluster` traffic policy: the ready endpoints, else the serving terminating ones.
    pub cluster: Vec<Endpoint>,
    /// For `Local` traffic policy: this node's ready endpoints, else its serving
    /// terminating ones.
    pub local: Vec<Endpoint>,
    /// Every endpoint either list holds (each gets an endpoint chain).
    pub reachable: Vec<Endpoint>,
    /// Some endpoint anywhere can take traffic (else everything to the port is rejected).
    pub any: bool,
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
    /// `spec.externalIPs` (IPv4 ones): forwarded like node ports, on every node.
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` of a `LoadBalancer` Service, except those with
    /// `ipMode: Proxy` (the load balancer, not the node, forwards those).
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.loadBalancerSourceRanges`: when set, only these sources reach the load
    /// balancer addresses.
    pub source_ranges: Vec<Ipv4Net>,
    /// Endpoints (ready or not), sorted, without duplicates.
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

    /// Reachable from outside the cluster: a node port, load balancer or external address.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// `externalTrafficPolicy: Local` on a port that has external addresses.
    pub fn external_policy_local(&self) -> bool {
        self.external_local && self.externally_accessible()
    }

    /// Some path uses the cluster-wide endpoints.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_local || (self.externally_accessible() && !self.external_policy_local())
    }

    /// Some path uses only this node's endpoints.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_local || self.external_policy_local()
    }

    /// The endpoints of each path: ready ones, or, where a path has none, the ones still
    /// serving while they terminate (kube-proxy's `CategorizeEndpoints`, KEP-1669).
    pub fn categorize(&self) -> Categorized {
        let mut out = Categorized::default();
        if self.uses_cluster_endpoints() {
            out.cluster = self.endpoints.iter().filter(|e| e.ready).copied().collect();
            if out.cluster.is_empty() {
                out.cluster = self
                    .endpoints
                    .iter()
                    .filter(|e| e.serving_terminating())
                    .copied()
                    .collect();
            }
            out.any = !out.cluster.is_empty();
        }
        if !self.uses_local_endpoints() {
            out.reachable = out.cluster.clone();
            return out;
        }
        out.any |= self
            .endpoints
            .iter()
            .any(|e| e.ready || e.serving_terminating());
        let local = self.endpoints.iter().filter(|e| e.local);
        out.local = local.clone().filter(|e| e.ready).copied().collect();
        if out.local.is_empty() {
            out.local = local.filter(|e| e.serving_terminating()).copied().collect();
        }
        out.reachable = out.cluster.iter().chain(&out.local).copied().collect();
        out.reachable.sort();
        out.reachable.dedup();
        out
    }
}

/// What the proxy knows about its own node.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Node `n1` at 192.0.2.10 with k3s's ranges and its DNS gateway, for the proxy's tests.
#[cfg(test)]
pub(crate) fn test_node() -> NodeView {
    NodeView {
        node_name: "n1".into(),
        node_ip: "192.0.2.10".parse().unwrap(),
        cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        service_cidr: "10.43.0.0/16".parse().unwrap(),
        dns_gateway: Some("10.42.0.1".parse().unwrap()),
    }
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
        let external_ips = ipv4s(spec.external_ips.iter().flatten().map(String::as_str));
        let load_balancer_ips = load_balancer_ips(service);
        let source_ranges = source_ranges(spec);
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
                external_ips: external_ips.clone(),
                load_balancer_ips: load_balancer_ips.clone(),
                source_ranges: source_ranges.clone(),
                endpoints: endpoints_of(slices, api_port, protocol, &node.node_name),
            };
            if (namespace, name) == CLUSTER_DNS_SERVICE && port.endpoints.is_empty() {
                // Node-local DNS: the server on this node's bridge gateway, same port.
                if let Some(gateway) = node.dns_gateway {
                    port.endpoints = vec![Endpoint::ready(gateway, port.port, true)];
                }
            }
            ports.push(port);
        }
    }
    ports.sort_by_key(ServicePort::key);
    ports
}

/// The IPv4 addresses among `addresses`, sorted, without duplicates.
fn ipv4s<'a>(addresses: impl IntoIterator<Item = &'a str>) -> Vec<Ipv4Addr> {
    let mut found: Vec<Ipv4Addr> = addresses
        .into_iter()
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The load balancer addresses the node forwards: a `LoadBalancer` Service's ingress IPs,
/// except `ipMode: Proxy` ones (kube-proxy's `LoadBalancerVIPs`).
fn load_balancer_ips(service: &Service) -> Vec<Ipv4Addr> {
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
        return Vec::new();
    }
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    ipv4s(
        ingress
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref()),
    )
}

/// `spec.loadBalancerSourceRanges` (IPv4 ones; invalid ones are ignored, as kube-proxy does).
fn source_ranges(spec: &ServiceSpec) -> Vec<Ipv4Net> {
    let mut ranges: Vec<Ipv4Net> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| r.trim().parse::<Ipv4Net>().ok())
        .map(|r| r.trunc())
        .collect();
    ranges.sort();
    ranges.dedup();
    ranges
}

/// The endpoints of `slices` for the service port `api_port`, with their conditions.
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
            let conditions = endpoint.conditions.as_ref();
            let ready = crate::net::endpoint_ready(endpoint);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let local = endpoint.node_name.as_deref() == Some(node_name);
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse() {
                    found.push(Endpoint {
                        ip,
                        port: number,
                        local,
                        ready,
                        serving,
                        terminating,
                    });
                }
            }
        }
    }
    found.sort();
    found.dedup_by_key(|e| (e.ip, e.port));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(type_: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {
                "type": type_,
                "clusterIP": "10.43.0.5",
                "externalIPs": ["192.0.2.77", "2001:db8::1"],
                "loadBalancerSourceRanges": ["198.51.100.7/24", "bogus"],
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "192.0.2.10"},
                {"ip": "192.0.2.11", "ipMode": "VIP"},
                {"ip": "192.0.2.12", "ipMode": "Proxy"},
                {"hostname": "lb.example"},
            ]}},
        }))
        .unwrap()
    }

    #[test]
    fn load_balancer_ingress_external_ips_and_source_ranges() {
        let lb = service("LoadBalancer");
        let ports = service_ports([&lb], [], &test_node());
        let [port] = ports.as_slice() else {
            panic!("{ports:?}")
        };
        assert_eq!(
            port.external_ips,
            ["192.0.2.77".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            port.load_balancer_ips,
            [
                "192.0.2.10".parse::<Ipv4Addr>().unwrap(),
                "192.0.2.11".parse().unwrap()
            ]
        );
        assert_eq!(
            port.source_ranges,
            ["198.51.100.0/24".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(port.node_port, Some(30080));
        assert!(port.externally_accessible());
        // Ingress addresses count only for a LoadBalancer; externalIPs for any type.
        let cluster_ip = service("ClusterIP");
        let ports = service_ports([&cluster_ip], [], &test_node());
        assert!(ports[0].load_balancer_ips.is_empty() && ports[0].node_port.is_none());
        assert_eq!(ports[0].external_ips.len(), 1);
    }

    fn endpoint(ip: &str, local: bool, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
            local,
            ready,
            serving,
            terminating,
        }
    }

    fn ips(endpoints: &[Endpoint]) -> Vec<String> {
        endpoints.iter().map(|e| e.ip.to_string()).collect()
    }

    #[test]
    fn terminating_endpoints_serve_only_when_a_path_has_no_ready_one() {
        let lb = service("LoadBalancer");
        let mut port = service_ports([&lb], [], &test_node()).remove(0);
        let ready_remote = endpoint("10.42.1.5", false, true, true, false);
        let terminating_local = endpoint("10.42.0.6", true, false, true, true);
        let terminating_remote = endpoint("10.42.1.7", false, false, true, true);
        let not_serving = endpoint("10.42.0.8", true, false, false, true);
        port.endpoints = vec![
            ready_remote,
            terminating_local,
            terminating_remote,
            not_serving,
        ];
        // Ready ones win over terminating ones.
        let c = port.categorize();
        assert_eq!(ips(&c.cluster), ["10.42.1.5"]);
        assert!(c.local.is_empty() && c.any);
        // None ready: the serving terminating ones (never a non-serving one).
        port.endpoints = vec![terminating_local, terminating_remote, not_serving];
        let c = port.categorize();
        assert_eq!(ips(&c.cluster), ["10.42.0.6", "10.42.1.7"]);
        assert!(c.any);
        // externalTrafficPolicy Local: this node's ready ones, else its serving
        // terminating ones, even while other nodes have ready ones.
        port.external_local = true;
        port.endpoints = vec![ready_remote, terminating_local, not_serving];
        let c = port.categorize();
        assert_eq!(ips(&c.cluster), ["10.42.1.5"]);
        assert_eq!(ips(&c.local), ["10.42.0.6"]);
        assert_eq!(ips(&c.reachable), ["10.42.0.6", "10.42.1.5"]);
        // Nothing serving: no endpoint at all (rejected).
        port.endpoints = vec![not_serving];
        let c = port.categorize();
        assert!(!c.any && c.cluster.is_empty() && c.local.is_empty());
    }

    #[test]
    fn endpoint_conditions_default_as_kube_proxy_reads_them() {
        let svc = service("ClusterIP");
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "nodeName": "n1"},
                {"addresses": ["10.42.0.6"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.42.0.7"], "conditions": {"ready": false}},
            ],
        }))
        .unwrap();
        let port = service_ports([&svc], [&slice], &test_node()).remove(0);
        assert_eq!(
            port.endpoints,
            [
                endpoint("10.42.0.5", true, true, true, false),
                endpoint("10.42.0.6", false, false, true, true),
                endpoint("10.42.0.7", false, false, true, false),
            ]
        );
    }
}
