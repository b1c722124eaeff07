//! The nftables script of one sync: kube-proxy's nftables layout (pkg/proxy/nftables) in
//! kedge's own table [`TABLE`], as one transaction for `nft -f -`.
//!
//! - Base chains hook nat prerouting/output (→ `services`), nat postrouting
//!   (→ `masquerading`, and masquerade of pod traffic leaving the cluster CIDR), and filter
//!   input/forward/output (→ the endpoint and cluster-IP checks), at kube-proxy's priorities.
//! - `services` looks up `daddr . l4proto . dport` in the vmap `service-ips` and jumps to the
//!   port's `service-…` chain, which marks traffic from outside the cluster CIDR for
//!   masquerade and picks an `endpoint-…` chain with `numgen random mod N` (or the one the
//!   client's affinity set remembers); the endpoint chain DNATs (and marks hairpin traffic,
//!   a pod reaching itself, for masquerade).
//! - Node ports: `nodeport-ips . l4proto . dport` → `external-…` chains.
//! - No endpoints: `no-endpoint-services` / `no-endpoint-nodeports` send new connections to
//!   `reject-chain` (ICMP port unreachable: a refused connection at once); anything else
//!   addressed to the service CIDR is rejected by `cluster-ips-check`.
//!
//! The transaction flushes the table's rules and its maps (not the affinity sets: clients
//! keep their backend across syncs), re-adds everything, and deletes chains and sets of
//! service ports that are gone.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use super::model::{Endpoint, NodeView, ServicePort};

/// kedge's table (family `ip`); nothing else on the host is touched.
pub const TABLE: &str = "kedge-proxy";
/// The packet mark asking `masquerading` to masquerade (kube-proxy's bit).
const MASQUERADE_MARK: &str = "0x4000";

/// What already exists in the table (from `nft list table`), for the stale deletions.
#[derive(Debug, Default, Clone)]
pub struct Existing {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// The script and what it leaves in the table.
#[derive(Debug, Default)]
pub struct Ruleset {
    pub script: String,
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
    pub rules: usize,
    /// Chains, sets and maps: declared before any element or rule names them.
    declarations: String,
    body: String,
}

impl Ruleset {
    fn declare(&mut self, line: String) {
        self.declarations.push_str(&line);
        self.declarations.push('\n');
    }

    fn line(&mut self, line: String) {
        self.body.push_str(&line);
        self.body.push('\n');
    }

    fn chain(&mut self, name: &str, hook: Option<&str>) {
        self.chains.insert(name.to_string());
        match hook {
            Some(hook) => self.declare(format!(
                "add chain ip {TABLE} {name} {{ {hook}; policy accept; }}"
            )),
            None => self.declare(format!("add chain ip {TABLE} {name}")),
        }
    }

    fn rule(&mut self, chain: &str, rule: impl AsRef<str>) {
        self.rules += 1;
        self.line(format!("add rule ip {TABLE} {chain} {}", rule.as_ref()));
    }

    /// A set or map, emptied, then given `elements`.
    fn collection(&mut self, kind: &str, name: &str, spec: &str, elements: &[String]) {
        self.declare(format!("add {kind} ip {TABLE} {name} {{ {spec}; }}"));
        self.declare(format!("flush {kind} ip {TABLE} {name}"));
        if !elements.is_empty() {
            self.line(format!(
                "add element ip {TABLE} {name} {{ {} }}",
                elements.join(", ")
            ));
        }
    }
}

/// `<prefix>-<8 hex of the name's hash>-<name>`: unique even when names are cut short.
fn chain_name(prefix: &str, name: &str) -> String {
    let hash = hex::encode_upper(&Sha256::digest(name.as_bytes())[..4]);
    format!("{prefix}-{hash}-{name}")
}

fn service_chain(port: &ServicePort) -> String {
    chain_name("service", &port.key())
}

fn external_chain(port: &ServicePort) -> String {
    chain_name("external", &port.key())
}

fn endpoint_key(port: &ServicePort, endpoint: &Endpoint) -> String {
    format!("{}__{}/{}", port.key(), endpoint.ip, endpoint.port)
}

fn endpoint_chain(port: &ServicePort, endpoint: &Endpoint) -> String {
    chain_name("endpoint", &endpoint_key(port, endpoint))
}

fn affinity_set(port: &ServicePort, endpoint: &Endpoint) -> String {
    chain_name("affinity", &endpoint_key(port, endpoint))
}

/// The whole sync for `ports` on `node`; `existing` names what to delete if unused.
pub fn render(ports: &[ServicePort], node: &NodeView, existing: &Existing) -> Ruleset {
    let mut r = Ruleset::default();
    r.declare(format!("add table ip {TABLE}"));
    r.declare(format!("flush table ip {TABLE}"));

    let addr_port = "type ipv4_addr . inet_proto . inet_service : verdict";
    let mut cluster_ips: BTreeSet<String> = BTreeSet::new();
    let mut service_ips = Vec::new();
    let mut no_endpoint_services = Vec::new();
    let mut service_nodeports = Vec::new();
    let mut no_endpoint_nodeports = Vec::new();
    for port in ports {
        cluster_ips.insert(port.cluster_ip.to_string());
        let target = format!(
            "{} . {} . {}",
            port.cluster_ip,
            port.protocol.nft(),
            port.port
        );
        if usable(port, port.internal_local).is_empty() {
            no_endpoint_services.push(format!("{target} : goto reject-chain"));
        } else {
            service_ips.push(format!("{target} : goto {}", service_chain(port)));
        }
        if let Some(node_port) = port.node_port {
            let target = format!("{} . {node_port}", port.protocol.nft());
            if usable(port, port.external_local).is_empty() {
                no_endpoint_nodeports.push(format!("{target} : goto reject-chain"));
            } else {
                service_nodeports.push(format!("{target} : goto {}", external_chain(port)));
            }
        }
    }
    let cluster_ips: Vec<String> = cluster_ips.into_iter().collect();
    r.collection("set", "cluster-ips", "type ipv4_addr", &cluster_ips);
    r.collection(
        "set",
        "nodeport-ips",
        "type ipv4_addr",
        &[node.node_ip.to_string()],
    );
    r.collection("map", "service-ips", addr_port, &service_ips);
    r.collection(
        "map",
        "no-endpoint-services",
        addr_port,
        &no_endpoint_services,
    );
    let port_only = "type inet_proto . inet_service : verdict";
    r.collection("map", "service-nodeports", port_only, &service_nodeports);
    r.collection(
        "map",
        "no-endpoint-nodeports",
        port_only,
        &no_endpoint_nodeports,
    );

    base_chains(&mut r, node);
    for port in ports {
        service_port(&mut r, port, node);
    }

    // Stale chains and sets last, once nothing refers to them.
    let mut deletes = String::new();
    for stale in existing.chains.difference(&r.chains) {
        deletes.push_str(&format!("delete chain ip {TABLE} {stale}\n"));
    }
    for stale in existing.sets.difference(&r.sets) {
        if stale.starts_with("affinity-") {
            deletes.push_str(&format!("delete set ip {TABLE} {stale}\n"));
        }
    }
    r.script = [r.declarations.as_str(), r.body.as_str(), &deletes].concat();
    r
}

/// The endpoints a path may use: this node's only under a `Local` policy.
fn usable(port: &ServicePort, local_only: bool) -> Vec<Endpoint> {
    port.endpoints
        .iter()
        .filter(|e| !local_only || e.local)
        .copied()
        .collect()
}

fn base_chains(r: &mut Ruleset, node: &NodeView) {
    // Numeric priorities (dstnat -100, srcnat 100): older nft knows the names only for
    // some hooks.
    let hooks = [
        ("nat-prerouting", "type nat hook prerouting priority -100"),
        ("nat-output", "type nat hook output priority -100"),
        (
            "nat-postrouting",
            "type nat hook postrouting priority srcnat",
        ),
        ("filter-input", "type filter hook input priority -110"),
        ("filter-forward", "type filter hook forward priority -110"),
        ("filter-output", "type filter hook output priority -110"),
        (
            "filter-output-post-dnat",
            "type filter hook output priority -90",
        ),
    ];
    for (name, hook) in hooks {
        r.chain(name, Some(hook));
    }
    for name in [
        "services",
        "masquerading",
        "mark-for-masquerade",
        "service-endpoints-check",
        "nodeport-endpoints-check",
        "cluster-ips-check",
        "reject-chain",
    ] {
        r.chain(name, None);
    }
    r.rule("nat-prerouting", "jump services");
    r.rule("nat-output", "jump services");
    r.rule("nat-postrouting", "jump masquerading");
    // Pods reaching outside the cluster network leave with the node's address (flannel's
    // rule); multicast is left alone.
    let cluster = node.cluster_cidr;
    r.rule(
        "nat-postrouting",
        format!("ip saddr {cluster} ip daddr != {cluster} ip daddr != 224.0.0.0/4 masquerade fully-random"),
    );
    r.rule("filter-input", "ct state new jump nodeport-endpoints-check");
    r.rule("filter-input", "ct state new jump service-endpoints-check");
    r.rule(
        "filter-forward",
        "ct state new jump service-endpoints-check",
    );
    r.rule("filter-forward", "ct state new jump cluster-ips-check");
    r.rule("filter-output", "ct state new jump service-endpoints-check");
    r.rule(
        "filter-output-post-dnat",
        "ct state new jump cluster-ips-check",
    );
    r.rule(
        "services",
        "ip daddr . meta l4proto . th dport vmap @service-ips",
    );
    r.rule(
        "services",
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
    );
    r.rule(
        "service-endpoints-check",
        "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
    );
    r.rule(
        "nodeport-endpoints-check",
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
    );
    // Still addressed to the service range after DNAT: a port the Service lacks, or an
    // address no Service has. Rejected here, never routed off the node.
    r.rule("cluster-ips-check", "ip daddr @cluster-ips reject");
    r.rule(
        "cluster-ips-check",
        format!("ip daddr {} reject", node.service_cidr),
    );
    r.rule("reject-chain", "reject");
    r.rule(
        "mark-for-masquerade",
        format!("meta mark set meta mark or {MASQUERADE_MARK}"),
    );
    r.rule(
        "masquerading",
        format!("meta mark & {MASQUERADE_MARK} == 0 return"),
    );
    r.rule(
        "masquerading",
        format!("meta mark set meta mark xor {MASQUERADE_MARK}"),
    );
    r.rule("masquerading", "masquerade fully-random");
}

fn service_port(r: &mut Ruleset, port: &ServicePort, node: &NodeView) {
    let internal = usable(port, port.internal_local);
    let external = usable(port, port.external_local);
    let chain = service_chain(port);
    // Every endpoint chain a path may pick (all ready ones; Local paths pick among theirs).
    for endpoint in &port.endpoints {
        endpoint_chain_rules(r, port, endpoint);
    }
    if !internal.is_empty() {
        r.chain(&chain, None);
        r.rule(
            &chain,
            format!(
                "ip daddr {} {} dport {} ip saddr != {} jump mark-for-masquerade",
                port.cluster_ip,
                port.protocol.nft(),
                port.port,
                node.cluster_cidr
            ),
        );
        pick_endpoint(r, &chain, port, &internal);
    }
    if port.node_port.is_some() && !external.is_empty() {
        let chain = external_chain(port);
        r.chain(&chain, None);
        if port.external_local {
            // Source kept: only this node's endpoints. Pods and the node itself still
            // get the cluster-wide behaviour (kube-proxy's short-circuit).
            if !internal.is_empty() {
                r.rule(
                    &chain,
                    format!(
                        "ip saddr {} goto {}",
                        node.cluster_cidr,
                        service_chain(port)
                    ),
                );
            }
            r.rule(&chain, "fib saddr type local jump mark-for-masquerade");
            pick_endpoint(r, &chain, port, &external);
        } else {
            r.rule(&chain, "jump mark-for-masquerade");
            pick_endpoint(r, &chain, port, &external);
        }
    }
}

/// The affinity lookups then the random pick among `endpoints` (not empty).
fn pick_endpoint(r: &mut Ruleset, chain: &str, port: &ServicePort, endpoints: &[Endpoint]) {
    if port.affinity_seconds.is_some() {
        for endpoint in endpoints {
            r.rule(
                chain,
                format!(
                    "ip saddr @{} goto {}",
                    affinity_set(port, endpoint),
                    endpoint_chain(port, endpoint)
                ),
            );
        }
    }
    let choices: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{i} : goto {}", endpoint_chain(port, e)))
        .collect();
    r.rule(
        chain,
        format!(
            "numgen random mod {} vmap {{ {} }}",
            endpoints.len(),
            choices.join(", ")
        ),
    );
}

fn endpoint_chain_rules(r: &mut Ruleset, port: &ServicePort, endpoint: &Endpoint) {
    let chain = endpoint_chain(port, endpoint);
    r.chain(&chain, None);
    // Hairpin: a pod reaching itself through its Service must see the reply come from
    // elsewhere than itself.
    r.rule(
        &chain,
        format!("ip saddr {} jump mark-for-masquerade", endpoint.ip),
    );
    if let Some(timeout) = port.affinity_seconds {
        let set = affinity_set(port, endpoint);
        r.sets.insert(set.clone());
        r.declare(format!(
            "add set ip {TABLE} {set} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
        ));
        r.rule(&chain, format!("update @{set} {{ ip saddr }}"));
    }
    r.rule(
        &chain,
        format!(
            "meta l4proto {} dnat to {}:{}",
            port.protocol.nft(),
            endpoint.ip,
            endpoint.port
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::super::model::Protocol;
    use super::*;

    fn node() -> NodeView {
        NodeView {
            node_name: "n1".into(),
            node_ip: "192.0.2.10".parse().unwrap(),
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            service_cidr: "10.43.0.0/16".parse().unwrap(),
            dns_gateway: Some("10.42.0.1".parse().unwrap()),
        }
    }

    fn port(name: &str, ip: &str, endpoints: &[(&str, bool)]) -> ServicePort {
        ServicePort {
            namespace: "default".into(),
            name: name.into(),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            cluster_ip: ip.parse().unwrap(),
            port: 80,
            node_port: None,
            external_local: false,
            internal_local: false,
            affinity_seconds: None,
            endpoints: endpoints
                .iter()
                .map(|(ip, local)| Endpoint {
                    ip: ip.parse().unwrap(),
                    port: 8080,
                    local: *local,
                })
                .collect(),
        }
    }

    fn lines_with<'a>(r: &'a Ruleset, needle: &str) -> Vec<&'a str> {
        r.script.lines().filter(|l| l.contains(needle)).collect()
    }

    #[test]
    fn a_service_with_endpoints_load_balances_at_random_and_dnats() {
        let web = port(
            "web",
            "10.43.0.5",
            &[("10.42.0.5", true), ("10.42.0.6", false)],
        );
        let r = render(std::slice::from_ref(&web), &node(), &Existing::default());
        let service = service_chain(&web);
        assert!(service.starts_with("service-") && service.ends_with("-default/web/tcp/http"));
        assert_eq!(
            lines_with(&r, "add element ip kedge-proxy service-ips"),
            [format!("add element ip kedge-proxy service-ips {{ 10.43.0.5 . tcp . 80 : goto {service} }}")]
        );
        let picks = lines_with(&r, "numgen random mod 2");
        assert_eq!(picks.len(), 1);
        assert!(picks[0].contains("0 : goto endpoint-") && picks[0].contains("__10.42.0.6/8080"));
        assert!(r.script.contains(&format!(
            "add rule ip kedge-proxy {service} ip daddr 10.43.0.5 tcp dport 80 ip saddr != 10.42.0.0/16 jump mark-for-masquerade"
        )));
        let dnat = lines_with(&r, "dnat to");
        assert_eq!(dnat.len(), 2);
        assert!(dnat[0].ends_with("meta l4proto tcp dnat to 10.42.0.5:8080"));
        let hairpin = lines_with(&r, "ip saddr 10.42.0.5 jump mark-for-masquerade");
        assert_eq!(hairpin.len(), 1);
        assert!(lines_with(&r, "no-endpoint-services {")
            .iter()
            .all(|l| !l.contains("element")));
        assert!(r
            .script
            .contains("add element ip kedge-proxy cluster-ips { 10.43.0.5 }"));
    }

    #[test]
    fn no_endpoints_reject_and_unallocated_addresses_are_rejected() {
        let empty = port("empty", "10.43.0.7", &[]);
        let r = render(&[empty], &node(), &Existing::default());
        assert!(r.script.contains(
            "add element ip kedge-proxy no-endpoint-services { 10.43.0.7 . tcp . 80 : goto reject-chain }"
        ));
        assert!(lines_with(&r, "add element ip kedge-proxy service-ips").is_empty());
        assert!(lines_with(&r, "default/empty/tcp/http").is_empty());
        assert!(r
            .script
            .contains("add rule ip kedge-proxy cluster-ips-check ip daddr 10.43.0.0/16 reject"));
        assert!(r
            .script
            .contains("add rule ip kedge-proxy reject-chain reject"));
    }

    #[test]
    fn stale_chains_and_affinity_sets_are_deleted_and_live_ones_kept() {
        let mut web = port("web", "10.43.0.5", &[("10.42.0.5", true)]);
        web.affinity_seconds = Some(30);
        let live = render(std::slice::from_ref(&web), &node(), &Existing::default());
        assert_eq!(live.sets.len(), 1);
        assert!(live.script.contains("flags dynamic,timeout; timeout 30s;"));
        assert!(live.script.contains("update @affinity-"));
        let existing = Existing {
            chains: live.chains.clone(),
            sets: live.sets.clone(),
        };
        // Same ports again: nothing deleted, the affinity sets are not flushed.
        let again = render(std::slice::from_ref(&web), &node(), &existing);
        assert!(lines_with(&again, "delete ").is_empty(), "{}", again.script);
        assert!(lines_with(&again, "flush set ip kedge-proxy affinity-").is_empty());
        // The service gone: its chains and set go, the base chains stay.
        let gone = render(&[], &node(), &existing);
        let deleted = lines_with(&gone, "delete ");
        assert_eq!(deleted.len(), 3, "{deleted:?}");
        assert!(deleted.iter().all(|l| l.contains("default/web/tcp/http")));
    }

    #[test]
    fn node_ports_and_local_policies() {
        let mut web = port(
            "web",
            "10.43.0.5",
            &[("10.42.0.5", false), ("10.42.0.6", true)],
        );
        web.node_port = Some(30080);
        web.external_local = true;
        let r = render(std::slice::from_ref(&web), &node(), &Existing::default());
        let external = external_chain(&web);
        assert!(r.script.contains(&format!(
            "add element ip kedge-proxy service-nodeports {{ tcp . 30080 : goto {external} }}"
        )));
        assert!(r
            .script
            .contains("add element ip kedge-proxy nodeport-ips { 192.0.2.10 }"));
        let picks = lines_with(&r, &format!("{external} numgen random mod 1 "));
        assert_eq!(picks.len(), 1);
        assert!(picks[0].contains("__10.42.0.6/8080"));
        // No local endpoint: the node port rejects, the ClusterIP still works.
        web.endpoints.retain(|e| !e.local);
        let r = render(std::slice::from_ref(&web), &node(), &Existing::default());
        assert!(r
            .script
            .contains("no-endpoint-nodeports { tcp . 30080 : goto reject-chain }"));
        web.internal_local = true;
        let r = render(&[web], &node(), &Existing::default());
        assert!(r
            .script
            .contains("no-endpoint-services { 10.43.0.5 . tcp . 80 : goto reject-chain }"));
    }

    #[test]
    fn the_script_is_accepted_by_nft() {
        // `nft -c` parses and checks the script without touching the kernel's ruleset.
        let Ok(check) = std::process::Command::new("nft").arg("--version").output() else {
            return;
        };
        assert!(check.status.success());
        let mut web = port(
            "web",
            "10.43.0.5",
            &[("10.42.0.5", true), ("10.42.0.6", false)],
        );
        web.node_port = Some(30080);
        web.affinity_seconds = Some(10);
        let mut local = port("local", "10.43.0.6", &[("10.42.0.5", true)]);
        local.node_port = Some(30081);
        local.external_local = true;
        let r = render(
            &[web, local, port("empty", "10.43.0.7", &[])],
            &node(),
            &Existing::default(),
        );
        super::super::nft::check(&r.script).unwrap_or_else(|e| panic!("{e}\n{}", r.script));
    }
}
