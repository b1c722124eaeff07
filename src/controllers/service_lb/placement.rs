//! Where k3s's ServiceLB would run each LoadBalancer Service's `svclb` pods, and which
//! addresses it then publishes, computed from the caches alone.
//!
//! k3s makes one DaemonSet per Service whose pods hold every service port as a hostPort on
//! their node. kedge forwards those ports in its own proxy instead, but keeps the rules a k3s
//! user knows: the pods go to every node, or only to nodes labelled
//! `svccontroller.k3s.cattle.io/enablelb=true` once any node carries that label (and to the
//! Service's `lbpool` there); they tolerate the control-plane taints and `CriticalAddonsOnly`
//! (and what the Service's `tolerations` annotation adds); a node where another Service's
//! pod already holds one of the ports leaves the pod Pending — here the oldest Service keeps
//! the port. The published addresses are those of the Ready nodes running the pod (with
//! `externalTrafficPolicy: Local`, only nodes with a ready endpoint of the Service),
//! ExternalIPs if any of them has one, else InternalIPs, per the Service's IP families.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{Node, PodSpec, PodTemplateSpec, Service, Toleration};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::controllers::daemon_set::placement::should_run;
pub use crate::controllers::endpoint_slice::SERVICE_NAME as SERVICE_NAME_LABEL;

/// Node label that turns node selection on (k3s's name, so k3s node configs carry over).
pub const ENABLE_LB: &str = "svccontroller.k3s.cattle.io/enablelb";
/// Node and Service label naming a pool of nodes.
pub const LB_POOL: &str = "svccontroller.k3s.cattle.io/lbpool";
/// Service annotation with extra tolerations for its svclb pods (a JSON list).
pub const TOLERATIONS: &str = "svccontroller.k3s.cattle.io/tolerations";

/// Whether ServiceLB handles `service`: type LoadBalancer and no `loadBalancerClass` (a
/// class names another implementation, which upstream's service controller leaves alone).
pub fn handles(service: &Service) -> bool {
    service.spec.as_ref().is_some_and(|spec| {
        spec.type_.as_deref() == Some("LoadBalancer") && spec.load_balancer_class.is_none()
    })
}

/// `namespace/name`, the key placements are kept by.
pub fn key(service: &Service) -> String {
    format!(
        "{}/{}",
        service.namespace().unwrap_or_default(),
        service.name_any()
    )
}

/// A port a svclb pod holds on its node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub port: i32,
    pub protocol: String,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

fn host_ports(service: &Service) -> Vec<HostPort> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|p| HostPort {
            port: p.port,
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
        })
        .collect()
}

/// A node a Service's svclb pod belongs on but cannot run on: `port` is held there by the
/// older Service `holder` (`namespace/name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub node: String,
    pub port: HostPort,
    pub holder: String,
}

/// Where one Service's svclb pods are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Nodes its pod runs on (holding all its ports).
    pub nodes: Vec<String>,
    /// Nodes its pod belongs on whose ports another Service holds.
    pub conflicts: Vec<Conflict>,
}

/// The svclb DaemonSet k3s would make for `service`, as far as placement reads it: node
/// selector and tolerations.
fn svclb(service: &Service, selective: bool) -> DaemonSet {
    let exists = |key: &str, effect: Option<&str>| Toleration {
        key: Some(key.to_string()),
        operator: Some("Exists".to_string()),
        effect: effect.map(str::to_string),
        ..Toleration::default()
    };
    let mut tolerations = vec![
        exists("node-role.kubernetes.io/master", Some("NoSchedule")),
        exists("node-role.kubernetes.io/control-plane", Some("NoSchedule")),
        exists("CriticalAddonsOnly", None),
    ];
    if let Some(extra) = service.annotations().get(TOLERATIONS) {
        match serde_json::from_str::<Vec<Toleration>>(extra) {
            Ok(extra) => tolerations.extend(extra),
            Err(error) => tracing::debug!(service = key(service), %error, "ignoring {TOLERATIONS}"),
        }
    }
    let node_selector = selective.then(|| {
        let mut selector = BTreeMap::from([(ENABLE_LB.to_string(), "true".to_string())]);
        if let Some(pool) = service.labels().get(LB_POOL).filter(|p| !p.is_empty()) {
            selector.insert(LB_POOL.to_string(), pool.clone());
        }
        selector
    });
    DaemonSet {
        spec: Some(DaemonSetSpec {
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(PodSpec {
                    node_selector,
                    tolerations: Some(tolerations),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    }
}

/// Places the svclb pods of every Service ServiceLB handles, oldest Service first (it got
/// its pods scheduled first and keeps their ports), by [`key`].
pub fn place<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    nodes: &[&Node],
) -> HashMap<String, Placement> {
    let selective = nodes.iter().any(|n| n.labels().contains_key(ENABLE_LB));
    let mut handled: Vec<&Service> = services.into_iter().filter(|s| handles(s)).collect();
    handled.sort_by_key(|s| (s.creation_timestamp().map(|t| t.0), key(s)));
    // Who holds each port on each node.
    let mut held: HashMap<(String, HostPort), String> = HashMap::new();
    let mut placements = HashMap::new();
    for service in handled {
        let daemon_set = svclb(service, selective);
        let ports = host_ports(service);
        let mut placement = Placement::default();
        for node in nodes.iter().filter(|n| should_run(&daemon_set, n).0) {
            let name = node.name_any();
            let taken: Vec<Conflict> = ports
                .iter()
                .filter_map(|port| {
                    held.get(&(name.clone(), port.clone()))
                        .map(|holder| Conflict {
                            node: name.clone(),
                            port: port.clone(),
                            holder: holder.clone(),
                        })
                })
                .collect();
            if taken.is_empty() {
                for port in &ports {
                    held.insert((name.clone(), port.clone()), key(service));
                }
                placement.nodes.push(name);
            } else {
                placement.conflicts.extend(taken);
            }
        }
        placements.insert(key(service), placement);
    }
    placements
}

/// The nodes with a ready pod endpoint of `service` (what `externalTrafficPolicy: Local`
/// narrows the addresses to).
pub fn nodes_with_local_endpoints<'a>(
    service: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> HashSet<String> {
    let namespace = service.namespace();
    let name = service.name_any();
    slices
        .into_iter()
        .filter(|s| s.namespace() == namespace && s.labels().get(SERVICE_NAME_LABEL) == Some(&name))
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| {
            e.target_ref.as_ref().and_then(|r| r.kind.as_deref()) == Some("Pod")
                && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
        })
        .filter_map(|e| e.node_name.clone())
        .collect()
}

/// Whether `service` sends external traffic only to endpoints on the node it arrived at.
pub fn only_local(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local")
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The addresses ServiceLB publishes for `service` running on `placed`: those of the Ready
/// ones (and, when `local` is given, only those in it); ExternalIPs when any of these nodes
/// has one, else InternalIPs; IPv4 and IPv6 each sorted (as text, as k3s does) and ordered
/// by the Service's `ipFamilies`.
pub fn addresses(
    service: &Service,
    placed: &[String],
    nodes: &[&Node],
    local: Option<&HashSet<String>>,
) -> Vec<String> {
    let mut external = BTreeSet::new();
    let mut internal = BTreeSet::new();
    let by_name: HashMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), *n)).collect();
    for name in placed {
        let Some(node) = by_name.get(name).filter(|n| ready(n)) else {
            continue;
        };
        if local.is_some_and(|l| !l.contains(name)) {
            continue;
        }
        let listed = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        for address in listed.into_iter().flatten() {
            match address.type_.as_str() {
                "ExternalIP" => external.insert(address.address.clone()),
                "InternalIP" => internal.insert(address.address.clone()),
                _ => false,
            };
        }
    }
    let chosen = if external.is_empty() {
        internal
    } else {
        external
    };
    let families = service
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .unwrap_or_default();
    let of_family = |v4: bool| {
        chosen
            .iter()
            .filter(move |a| a.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4() == v4))
            .cloned()
    };
    families
        .iter()
        .flat_map(|family| match family.as_str() {
            "IPv4" => of_family(true).collect::<Vec<_>>(),
            "IPv6" => of_family(false).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(
        name: &str,
        labels: serde_json::Value,
        ready: bool,
        addresses: &[(&str, &str)],
    ) -> Node {
        let addresses: Vec<_> = addresses
            .iter()
            .map(|(kind, address)| json!({"type": kind, "address": address}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {
                "addresses": addresses,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        }))
        .unwrap()
    }

    fn service(
        name: &str,
        created: &str,
        ports: &[(i32, &str)],
        extra: serde_json::Value,
    ) -> Service {
        let ports: Vec<_> = ports
            .iter()
            .map(|(port, protocol)| json!({"port": port, "protocol": protocol}))
            .collect();
        let mut object = json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
            "spec": {"type": "LoadBalancer", "ports": ports, "ipFamilies": ["IPv4"]},
        });
        json_patch::merge(&mut object, &extra);
        serde_json::from_value(object).unwrap()
    }

    const EARLY: &str = "2026-01-01T00:00:00Z";
    const LATE: &str = "2026-01-02T00:00:00Z";

    #[test]
    fn the_older_service_keeps_a_port_and_the_newer_one_waits_for_it() {
        let n1 = node("n1", json!({}), true, &[("InternalIP", "192.0.2.1")]);
        let n2 = node("n2", json!({}), true, &[("InternalIP", "192.0.2.2")]);
        let nodes = [&n1, &n2];
        let first = service("first", EARLY, &[(8080, "TCP")], json!({}));
        let second = service("second", LATE, &[(8080, "TCP"), (53, "UDP")], json!({}));
        let udp = service("udp", LATE, &[(8080, "UDP")], json!({}));
        let placed = place([&second, &first, &udp], &nodes);
        assert_eq!(placed["default/first"].nodes, ["n1", "n2"]);
        assert_eq!(placed["default/udp"].nodes, ["n1", "n2"], "other protocol");
        let waiting = &placed["default/second"];
        assert!(waiting.nodes.is_empty());
        assert_eq!(waiting.conflicts.len(), 2);
        assert_eq!(waiting.conflicts[0].holder, "default/first");
        assert_eq!(waiting.conflicts[0].port.to_string(), "8080/TCP");
        // Gone: the port is free again.
        let placed = place([&second], &nodes);
        assert_eq!(placed["default/second"].nodes, ["n1", "n2"]);
    }

    #[test]
    fn labelled_nodes_pools_taints_and_classes_decide_where_pods_go() {
        let on = node("on", json!({ENABLE_LB: "true", LB_POOL: "a"}), true, &[]);
        let off = node("off", json!({ENABLE_LB: "false"}), true, &[]);
        let plain = node("plain", json!({}), true, &[]);
        let plain_service = service("s", EARLY, &[(80, "TCP")], json!({}));
        let placed = place([&plain_service], &[&on, &off, &plain]);
        assert_eq!(
            placed["default/s"].nodes,
            ["on"],
            "a labelled node switches selection on"
        );
        let pooled = service(
            "p",
            EARLY,
            &[(81, "TCP")],
            json!({"metadata": {"labels": {LB_POOL: "b"}}}),
        );
        assert!(place([&pooled], &[&on])["default/p"].nodes.is_empty());

        let mut tainted = node("t", json!({}), true, &[]);
        tainted.spec = Some(
            serde_json::from_value(json!({"taints": [
            {"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}))
            .unwrap(),
        );
        let mut control_plane = node("cp", json!({}), true, &[]);
        control_plane.spec = Some(
            serde_json::from_value(json!({"unschedulable": true, "taints": [
            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}))
            .unwrap(),
        );
        let placed = place([&plain_service], &[&tainted, &control_plane]);
        assert_eq!(placed["default/s"].nodes, ["cp"]);
        let tolerant = service(
            "tol",
            EARLY,
            &[(82, "TCP")],
            json!({"metadata": {"annotations": {
            TOLERATIONS: r#"[{"key": "dedicated", "operator": "Exists"}]"#}}}),
        );
        assert_eq!(place([&tolerant], &[&tainted])["default/tol"].nodes, ["t"]);

        let classed = service(
            "c",
            EARLY,
            &[(80, "TCP")],
            json!({"spec": {"loadBalancerClass": "example.com/lb"}}),
        );
        assert!(!handles(&classed));
        assert!(place([&classed], &[&plain]).is_empty());
    }

    #[test]
    fn addresses_are_ready_nodes_external_first_sorted_by_family() {
        let a = node(
            "a",
            json!({}),
            true,
            &[("InternalIP", "192.0.2.10"), ("Hostname", "a")],
        );
        let b = node(
            "b",
            json!({}),
            true,
            &[("InternalIP", "192.0.2.9"), ("InternalIP", "fd00::9")],
        );
        let down = node("down", json!({}), false, &[("InternalIP", "192.0.2.3")]);
        let nodes = [&a, &b, &down];
        let all: Vec<String> = ["a", "b", "down"].map(String::from).to_vec();
        let v4 = service("s", EARLY, &[(80, "TCP")], json!({}));
        assert_eq!(
            addresses(&v4, &all, &nodes, None),
            ["192.0.2.10", "192.0.2.9"]
        );
        let dual = service(
            "d",
            EARLY,
            &[(80, "TCP")],
            json!({"spec": {"ipFamilies": ["IPv6", "IPv4"]}}),
        );
        assert_eq!(
            addresses(&dual, &all, &nodes, None),
            ["fd00::9", "192.0.2.10", "192.0.2.9"]
        );
        let only_b = HashSet::from(["b".to_string()]);
        assert_eq!(addresses(&v4, &all, &nodes, Some(&only_b)), ["192.0.2.9"]);
        // One node with an ExternalIP: only ExternalIPs are published.
        let public = node(
            "p",
            json!({}),
            true,
            &[("InternalIP", "10.0.0.1"), ("ExternalIP", "203.0.113.1")],
        );
        let nodes = [&a, &public];
        let both: Vec<String> = ["a", "p"].map(String::from).to_vec();
        assert_eq!(addresses(&v4, &both, &nodes, None), ["203.0.113.1"]);
    }

    #[test]
    fn local_endpoints_are_ready_pods_of_the_service() {
        let s = service(
            "web",
            EARLY,
            &[(80, "TCP")],
            json!({"spec": {"externalTrafficPolicy": "Local"}}),
        );
        assert!(only_local(&s));
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-x", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.42.0.5"], "conditions": {"ready": true}, "nodeName": "n1",
                 "targetRef": {"kind": "Pod", "name": "p1"}},
                {"addresses": ["10.42.1.5"], "conditions": {"ready": false}, "nodeName": "n2",
                 "targetRef": {"kind": "Pod", "name": "p2"}},
            ],
        }))
        .unwrap();
        let other: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-y", "namespace": "other", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.2.5"], "conditions": {"ready": true}, "nodeName": "n3",
                 "targetRef": {"kind": "Pod", "name": "p3"}}],
        }))
        .unwrap();
        assert_eq!(
            nodes_with_local_endpoints(&s, [&slice, &other]),
            HashSet::from(["n1".to_string()])
        );
    }
}
