//! The nftables script of one sync: kube-proxy's nftables layout (pkg/proxy/nftables) in
//! kedge's own table [`TABLE`], as one transaction for `nft -f -`.
//!
//! - Base chains hook nat prerouting/output (→ `services`), nat postrouting
//!   (→ `masquerading`, and masquerade of pod traffic leaving the cluster CIDR), and filter
//!   prerouting/input/forward/output (→ the firewall, endpoint and cluster-IP checks), at
//!   kube-proxy's priorities.
//! - `services` looks up `daddr . l4proto . dport` in the vmap `service-ips`: a ClusterIP
//!   goes to the port's `service-…` chain (`local-…` under `internalTrafficPolicy: Local`),
//!   which marks traffic from outside the cluster CIDR for masquerade and picks an
//!   `endpoint-…` chain with `numgen random mod N` (or the one the client's affinity set
//!   remembers); the endpoint chain DNATs (and marks hairpin traffic, a pod reaching
//!   itself, for masquerade).
//! - External addresses (`spec.externalIPs`, load balancer ingress IPs, in `service-ips`)
//!   and node ports (`nodeport-ips . l4proto . dport`) go to the port's `external-…` chain:
//!   masquerade and any endpoint under `externalTrafficPolicy: Cluster`; under `Local`, the
//!   source kept and only this node's endpoints (pods and the node itself still get the
//!   cluster-wide behaviour, kube-proxy's short-circuit).
//! - `loadBalancerSourceRanges`: `firewall-ips` sends new connections to a load balancer
//!   address to the port's `firewall-…` chain, which drops other sources (before DNAT).
//! - No endpoints: `no-endpoint-services` / `no-endpoint-nodeports` send new connections to
//!   `reject-chain` (ICMP port unreachable: a refused connection at once), or drop them on
//!   an external path whose `Local` policy has no endpoint here; anything else addressed
//!   to the service CIDR is rejected by `cluster-ips-check`.
//!
//! Each service port's share is computed alone ([`port_rules`]): its own chains and
//! affinity sets, and its elements in the shared sets and maps. A full sync flushes the
//! table's rules and its maps (not the affinity sets: clients keep their backend across
//! syncs), re-adds everything, and deletes chains and sets of service ports that are gone.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use super::model::{Endpoint, NodeView, ServicePort};

/// kedge's table (family `ip`); nothing else on the host is touched.
pub const TABLE: &str = "kedge-proxy";
/// The packet mark asking `masquerading` to masquerade (kube-proxy's bit).
const MASQUERADE_MARK: &str = "0x4000";

/// The shared sets and maps: name, kind, type.
const COLLECTIONS: [(&str, &str, &str); 7] = [
    ("cluster-ips", "set", "type ipv4_addr"),
    ("nodeport-ips", "set", "type ipv4_addr"),
    ("service-ips", "map", ADDR_PORT),
    ("no-endpoint-services", "map", ADDR_PORT),
    ("firewall-ips", "map", ADDR_PORT),
    ("service-nodeports", "map", PORT_ONLY),
    ("no-endpoint-nodeports", "map", PORT_ONLY),
];
const ADDR_PORT: &str = "type ipv4_addr . inet_proto . inet_service : verdict";
const PORT_ONLY: &str = "type inet_proto . inet_service : verdict";

/// What already exists in the table (from `nft list table`), for the stale deletions.
#[derive(Debug, Default, Clone)]
pub struct Existing {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// One element of a shared set (`value` none) or verdict map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Element {
    pub collection: &'static str,
    pub key: String,
    pub value: Option<String>,
}

/// What one service port puts in the table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortRules {
    /// Its chains, each with its rules in order.
    pub chains: Vec<(String, Vec<String>)>,
    /// Its affinity sets: name and timeout in seconds.
    pub affinity_sets: Vec<(String, u32)>,
    /// Its elements in the shared sets and maps.
    pub elements: Vec<Element>,
}

impl PortRules {
    fn chain(&mut self, name: &str) -> &mut Vec<String> {
        if let Some(i) = self.chains.iter().position(|(c, _)| c == name) {
            return &mut self.chains[i].1;
        }
        self.chains.push((name.to_string(), Vec::new()));
        &mut self.chains.last_mut().expect("just pushed").1
    }

    fn rule(&mut self, chain: &str, rule: impl Into<String>) {
        self.chain(chain).push(rule.into());
    }

    fn element(&mut self, collection: &'static str, key: String, value: Option<String>) {
        self.elements.push(Element {
            collection,
            key,
            value,
        });
    }
}

/// The script of one sync, and what the table holds after it.
#[derive(Debug, Default)]
pub struct Ruleset {
    pub script: String,
    /// Rules the script adds.
    pub rules: usize,
    /// The table's content after the script, for the next (partial) sync.
    pub programmed: Programmed,
    /// Tables, chains, sets and maps: declared (and flushed) before anything names them.
    declarations: String,
    /// Elements going away (or changing), before their chains do.
    removals: String,
    /// Rules.
    body: String,
    /// Elements added, once their chains have their rules.
    additions: String,
    /// Stale chains and sets, last, once nothing refers to them.
    deletes: String,
}

/// What kedge's table holds after a sync: kept so that the next sync need only write what
/// changed (kube-proxy's partial syncs).
#[derive(Debug, Clone, Default)]
pub struct Programmed {
    /// The node the base chains were written for; none before a first sync.
    node: Option<NodeView>,
    /// Every service port (by key) with what it put in the table.
    ports: BTreeMap<String, (ServicePort, PortRules)>,
    /// Every element of the shared sets and maps.
    elements: BTreeMap<(&'static str, String), Option<String>>,
}

impl Programmed {
    /// The chains the table holds (base chains included).
    pub fn chains(&self) -> BTreeSet<String> {
        let ports = self
            .ports
            .values()
            .flat_map(|(_, rules)| rules.chains.iter());
        BASE_CHAINS
            .iter()
            .map(|c| c.to_string())
            .chain(ports.map(|(name, _)| name.clone()))
            .collect()
    }

    /// The affinity sets the table holds.
    pub fn affinity_sets(&self) -> BTreeSet<String> {
        let ports = self.ports.values();
        ports
            .flat_map(|(_, rules)| rules.affinity_sets.iter().map(|(name, _)| name.clone()))
            .collect()
    }
}

impl Ruleset {
    fn declare(&mut self, line: String) {
        self.declarations.push_str(&line);
        self.declarations.push('\n');
    }

    fn chain(&mut self, name: &str, hook: Option<&str>) {
        match hook {
            Some(hook) => self.declare(format!(
                "add chain ip {TABLE} {name} {{ {hook}; policy accept; }}"
            )),
            None => self.declare(format!("add chain ip {TABLE} {name}")),
        }
    }

    fn rule(&mut self, chain: &str, rule: impl AsRef<str>) {
        self.rules += 1;
        self.body
            .push_str(&format!("add rule ip {TABLE} {chain} {}\n", rule.as_ref()));
    }

    /// A port's affinity sets and chains (declared; emptied when `refresh`, for a chain
    /// that may hold rules already) and its rules.
    fn port(&mut self, rules: &PortRules, refresh: bool) {
        for (name, timeout) in &rules.affinity_sets {
            self.declare(format!(
                "add set ip {TABLE} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
            ));
        }
        for (chain, _) in &rules.chains {
            self.chain(chain, None);
            if refresh {
                self.declare(format!("flush chain ip {TABLE} {chain}"));
            }
        }
        for (chain, chain_rules) in &rules.chains {
            for rule in chain_rules {
                self.rule(chain, rule);
            }
        }
    }

    /// `add element` (or `delete element`, keys only) lines, one per collection.
    fn elements<'a>(
        &mut self,
        verb: &str,
        elements: impl IntoIterator<Item = (&'a (&'static str, String), &'a Option<String>)>,
    ) {
        let mut by_collection: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ((collection, key), value) in elements {
            let item = match value {
                Some(value) if verb == "add" => format!("{key} : {value}"),
                _ => key.clone(),
            };
            by_collection.entry(collection).or_default().push(item);
        }
        let section = if verb == "add" {
            &mut self.additions
        } else {
            &mut self.removals
        };
        for (collection, items) in by_collection {
            section.push_str(&format!(
                "{verb} element ip {TABLE} {collection} {{ {} }}\n",
                items.join(", ")
            ));
        }
    }

    /// Deletes the chains (emptied first: they may jump to each other) and affinity sets.
    fn delete_stale<'a>(
        &mut self,
        chains: impl IntoIterator<Item = &'a String>,
        sets: impl IntoIterator<Item = &'a String>,
    ) {
        for chain in chains {
            self.declare(format!("flush chain ip {TABLE} {chain}"));
            self.deletes
                .push_str(&format!("delete chain ip {TABLE} {chain}\n"));
        }
        for set in sets {
            self.deletes
                .push_str(&format!("delete set ip {TABLE} {set}\n"));
        }
    }

    fn finish(mut self) -> Ruleset {
        self.script = [
            self.declarations.as_str(),
            &self.removals,
            &self.body,
            &self.additions,
            &self.deletes,
        ]
        .concat();
        self
    }
}

/// `<prefix>-<8 hex of the name's hash>-<name>`: unique even when names are cut short.
fn chain_name(prefix: &str, name: &str) -> String {
    let hash = hex::encode_upper(&Sha256::digest(name.as_bytes())[..4]);
    format!("{prefix}-{hash}-{name}")
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

/// Every port's rules: unchanged ports (same port, same node) reuse what `previous`
/// rendered for them.
fn rules_of(
    ports: &[ServicePort],
    node: &NodeView,
    previous: Option<&Programmed>,
) -> BTreeMap<String, (ServicePort, PortRules)> {
    let reusable = previous.filter(|p| p.node.as_ref() == Some(node));
    ports
        .iter()
        .map(|port| {
            let key = port.key();
            let rules = match reusable.and_then(|p| p.ports.get(&key)) {
                Some((old, rules)) if old == port => rules.clone(),
                _ => port_rules(port, node),
            };
            (key, (port.clone(), rules))
        })
        .collect()
}

/// What the table holds with `ports` programmed on `node`.
fn programmed(node: &NodeView, ports: BTreeMap<String, (ServicePort, PortRules)>) -> Programmed {
    let mut elements = BTreeMap::new();
    elements.insert(("nodeport-ips", node.node_ip.to_string()), None);
    for (_, rules) in ports.values() {
        for e in &rules.elements {
            elements.insert((e.collection, e.key.clone()), e.value.clone());
        }
    }
    Programmed {
        node: Some(node.clone()),
        ports,
        elements,
    }
}

/// A full sync for `ports` on `node`: everything rewritten; `existing` (what the table
/// holds, from `nft list`) names what to delete if unused. `previous` only saves
/// rendering the ports that did not change.
pub fn render(
    ports: &[ServicePort],
    node: &NodeView,
    existing: &Existing,
    previous: Option<&Programmed>,
) -> Ruleset {
    let mut r = Ruleset::default();
    r.declare(format!("add table ip {TABLE}"));
    r.declare(format!("flush table ip {TABLE}"));
    for (name, kind, spec) in COLLECTIONS {
        r.declare(format!("add {kind} ip {TABLE} {name} {{ {spec}; }}"));
        r.declare(format!("flush {kind} ip {TABLE} {name}"));
    }
    base_chains(&mut r, node);
    let now = programmed(node, rules_of(ports, node, previous));
    for (_, rules) in now.ports.values() {
        r.port(rules, false);
    }
    r.elements("add", &now.elements);
    let chains = now.chains();
    let sets = now.affinity_sets();
    r.delete_stale(
        existing.chains.difference(&chains),
        existing
            .sets
            .difference(&sets)
            .filter(|s| s.starts_with("affinity-")),
    );
    r.programmed = now;
    r.finish()
}

/// A partial sync from `previous` (what the last sync left): only the chains of service
/// ports that changed are rewritten (emptied and refilled), those of ports that are gone
/// deleted, and the shared maps get only the elements that changed. None when the node
/// changed: that takes a full sync.
pub fn render_partial(
    ports: &[ServicePort],
    node: &NodeView,
    previous: &Programmed,
) -> Option<Ruleset> {
    if previous.node.as_ref() != Some(node) {
        return None;
    }
    let mut r = Ruleset::default();
    let now = programmed(node, rules_of(ports, node, Some(previous)));
    let mut stale_chains = BTreeSet::new();
    let mut stale_sets = BTreeSet::new();
    for (key, (_, rules)) in &now.ports {
        let old = previous.ports.get(key).map(|(_, rules)| rules);
        if old == Some(rules) {
            continue;
        }
        r.port(rules, true);
        if let Some(old) = old {
            let chains: BTreeSet<&String> = rules.chains.iter().map(|(c, _)| c).collect();
            let sets: BTreeSet<&String> = rules.affinity_sets.iter().map(|(s, _)| s).collect();
            stale_chains.extend(
                old.chains
                    .iter()
                    .map(|(c, _)| c)
                    .filter(|c| !chains.contains(c)),
            );
            stale_sets.extend(
                old.affinity_sets
                    .iter()
                    .map(|(s, _)| s)
                    .filter(|s| !sets.contains(s)),
            );
        }
    }
    for (key, (_, old)) in &previous.ports {
        if !now.ports.contains_key(key) {
            stale_chains.extend(old.chains.iter().map(|(c, _)| c));
            stale_sets.extend(old.affinity_sets.iter().map(|(s, _)| s));
        }
    }
    // Elements gone or changed go first (kube-proxy's delete + add for a new value).
    let removed = previous
        .elements
        .iter()
        .filter(|(k, v)| now.elements.get(*k) != Some(*v));
    r.elements("delete", removed);
    let added = now
        .elements
        .iter()
        .filter(|(k, v)| previous.elements.get(*k) != Some(*v));
    r.elements("add", added);
    r.delete_stale(stale_chains, stale_sets);
    r.programmed = now;
    Some(r.finish())
}

/// The chains every sync writes (the hooks' and the shared ones).
const BASE_CHAINS: [&str; 16] = [
    "filter-prerouting",
    "nat-prerouting",
    "nat-output",
    "nat-postrouting",
    "filter-input",
    "filter-forward",
    "filter-output",
    "filter-output-post-dnat",
    "services",
    "masquerading",
    "mark-for-masquerade",
    "service-endpoints-check",
    "nodeport-endpoints-check",
    "firewall-check",
    "cluster-ips-check",
    "reject-chain",
];

fn base_chains(r: &mut Ruleset, node: &NodeView) {
    // Numeric priorities (dstnat -100, srcnat 100): older nft knows the names only for
    // some hooks. The filter chains see the addresses before DNAT.
    let hooks = [
        (
            "filter-prerouting",
            "type filter hook prerouting priority -110",
        ),
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
    for (i, (name, hook)) in hooks.into_iter().enumerate() {
        debug_assert_eq!(BASE_CHAINS[i], name);
        r.chain(name, Some(hook));
    }
    for name in &BASE_CHAINS[hooks.len()..] {
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
    r.rule("filter-prerouting", "ct state new jump firewall-check");
    r.rule("filter-input", "ct state new jump nodeport-endpoints-check");
    r.rule("filter-input", "ct state new jump service-endpoints-check");
    r.rule(
        "filter-forward",
        "ct state new jump service-endpoints-check",
    );
    r.rule("filter-forward", "ct state new jump cluster-ips-check");
    r.rule("filter-output", "ct state new jump service-endpoints-check");
    r.rule("filter-output", "ct state new jump firewall-check");
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
    r.rule(
        "firewall-check",
        "ip daddr . meta l4proto . th dport vmap @firewall-ips",
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

/// One service port's chains, affinity sets and elements (kube-proxy's `syncProxyRules`
/// body for one port).
pub fn port_rules(port: &ServicePort, node: &NodeView) -> PortRules {
    let mut out = PortRules::default();
    let endpoints = port.categorize();
    let key = port.key();
    let proto = port.protocol.nft();
    let cluster_chain = chain_name("service", &key);
    let local_chain = chain_name("local", &key);
    let external_chain = chain_name("external", &key);
    let firewall_chain = chain_name("firewall", &key);
    let uses_cluster_chain = !endpoints.cluster.is_empty() && port.uses_cluster_endpoints();
    let uses_local_chain = !endpoints.local.is_empty() && port.uses_local_endpoints();
    let has_local = !endpoints.local.is_empty();
    let (internal_chain, has_internal) = if port.internal_local {
        (&local_chain, endpoints.any && has_local)
    } else {
        (&cluster_chain, endpoints.any)
    };
    let external_local = port.external_policy_local();
    let (external_policy_chain, has_external) = if external_local {
        (&local_chain, endpoints.any && has_local)
    } else {
        (&cluster_chain, endpoints.any)
    };
    // Also without usable external endpoints: the short-circuits for pods and the node.
    let uses_external_chain = endpoints.any && port.externally_accessible();
    let uses_firewall = !port.load_balancer_ips.is_empty() && !port.source_ranges.is_empty();
    // No endpoint at all: refused; none for a Local policy: dropped (the client may
    // retry another node).
    let no_endpoint_verdict = if endpoints.any {
        "drop".to_string()
    } else {
        "goto reject-chain".to_string()
    };

    // Endpoint chains first: the others jump to them.
    for endpoint in &endpoints.reachable {
        let chain = endpoint_chain(port, endpoint);
        // Hairpin: a pod reaching itself through its Service must see the reply come
        // from elsewhere than itself.
        out.rule(
            &chain,
            format!("ip saddr {} jump mark-for-masquerade", endpoint.ip),
        );
        if let Some(timeout) = port.affinity_seconds {
            let set = affinity_set(port, endpoint);
            out.rule(&chain, format!("update @{set} {{ ip saddr }}"));
            out.affinity_sets.push((set, timeout));
        }
        out.rule(
            &chain,
            format!(
                "meta l4proto {proto} dnat to {}:{}",
                endpoint.ip, endpoint.port
            ),
        );
    }
    if uses_cluster_chain {
        out.chain(&cluster_chain);
    }
    if uses_local_chain {
        out.chain(&local_chain);
    }
    if has_internal {
        // Traffic from outside the cluster network to the ClusterIP may leave the node
        // again: masqueraded.
        out.rule(
            internal_chain,
            format!(
                "ip daddr {} {proto} dport {} ip saddr != {} jump mark-for-masquerade",
                port.cluster_ip, port.port, node.cluster_cidr
            ),
        );
    }
    if uses_cluster_chain {
        pick_endpoint(&mut out, &cluster_chain, port, &endpoints.cluster);
    }
    if uses_local_chain {
        pick_endpoint(&mut out, &local_chain, port, &endpoints.local);
    }
    if uses_external_chain {
        out.chain(&external_chain);
        if !external_local {
            // Any node's endpoint: masqueraded, so that the reply comes back this way.
            out.rule(&external_chain, "jump mark-for-masquerade");
        } else if uses_cluster_chain {
            // Source kept, this node's endpoints only; but pods and the node itself get
            // the cluster-wide behaviour (as if through an outside load balancer), the
            // node's own traffic masqueraded (its source is the external address).
            out.rule(
                &external_chain,
                format!("ip saddr {} goto {cluster_chain}", node.cluster_cidr),
            );
            out.rule(
                &external_chain,
                "fib saddr type local jump mark-for-masquerade",
            );
            out.rule(
                &external_chain,
                format!("fib saddr type local goto {cluster_chain}"),
            );
        } else {
            out.rule(
                &external_chain,
                "fib saddr type local jump mark-for-masquerade",
            );
        }
        if has_external {
            out.rule(&external_chain, format!("goto {external_policy_chain}"));
        }
    }
    if uses_firewall {
        let mut sources: Vec<String> = port.source_ranges.iter().map(|r| r.to_string()).collect();
        // A node reaching a load balancer address that is its own may do so from that
        // address: allowed when the node itself is.
        if port.source_ranges.iter().any(|r| r.contains(&node.node_ip)) {
            sources.extend(port.load_balancer_ips.iter().map(|ip| ip.to_string()));
        }
        out.rule(
            &firewall_chain,
            format!("ip saddr != {{ {} }} drop", sources.join(", ")),
        );
    }

    // Elements in the shared maps.
    let target = |ip: &dyn std::fmt::Display| format!("{ip} . {proto} . {}", port.port);
    out.element("cluster-ips", port.cluster_ip.to_string(), None);
    if has_internal {
        out.element(
            "service-ips",
            target(&port.cluster_ip),
            Some(format!("goto {internal_chain}")),
        );
    } else {
        out.element(
            "no-endpoint-services",
            target(&port.cluster_ip),
            Some(no_endpoint_verdict.clone()),
        );
    }
    for ip in port.external_ips.iter().chain(&port.load_balancer_ips) {
        if endpoints.any {
            out.element(
                "service-ips",
                target(ip),
                Some(format!("goto {external_chain}")),
            );
        }
        if !has_external {
            out.element(
                "no-endpoint-services",
                target(ip),
                Some(no_endpoint_verdict.clone()),
            );
        }
    }
    if uses_firewall {
        for ip in &port.load_balancer_ips {
            out.element(
                "firewall-ips",
                target(ip),
                Some(format!("goto {firewall_chain}")),
            );
        }
    }
    if let Some(node_port) = port.node_port {
        let target = format!("{proto} . {node_port}");
        if endpoints.any {
            out.element(
                "service-nodeports",
                target.clone(),
                Some(format!("goto {external_chain}")),
            );
        }
        if !has_external {
            out.element("no-endpoint-nodeports", target, Some(no_endpoint_verdict));
        }
    }
    out
}

/// The affinity lookups then the random pick among `endpoints` (not empty).
fn pick_endpoint(out: &mut PortRules, chain: &str, port: &ServicePort, endpoints: &[Endpoint]) {
    if port.affinity_seconds.is_some() {
        for endpoint in endpoints {
            out.rule(
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
    out.rule(
        chain,
        format!(
            "numgen random mod {} vmap {{ {} }}",
            endpoints.len(),
            choices.join(", ")
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::super::model::Protocol;
    use super::*;

    use super::super::model::test_node as node;

    /// A full sync of `ports` into an empty table.
    fn fresh(ports: &[ServicePort]) -> Ruleset {
        render(ports, &node(), &Existing::default(), None)
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
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            source_ranges: Vec::new(),
            endpoints: endpoints
                .iter()
                .map(|(ip, local)| Endpoint::ready(ip.parse().unwrap(), 8080, *local))
                .collect(),
        }
    }

    fn service_chain(port: &ServicePort) -> String {
        chain_name("service", &port.key())
    }

    fn external_chain(port: &ServicePort) -> String {
        chain_name("external", &port.key())
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
        let r = fresh(std::slice::from_ref(&web));
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
        let r = fresh(&[empty]);
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
        let live = fresh(std::slice::from_ref(&web));
        assert_eq!(live.programmed.affinity_sets().len(), 1);
        assert!(live.script.contains("flags dynamic,timeout; timeout 30s;"));
        assert!(live.script.contains("update @affinity-"));
        let existing = Existing {
            chains: live.programmed.chains(),
            sets: live.programmed.affinity_sets(),
        };
        // Same ports again: nothing deleted, the affinity sets are not flushed.
        let again = render(std::slice::from_ref(&web), &node(), &existing, None);
        assert!(lines_with(&again, "delete ").is_empty(), "{}", again.script);
        assert!(lines_with(&again, "flush set ip kedge-proxy affinity-").is_empty());
        // The service gone: its chains and set go, the base chains stay.
        let gone = render(&[], &node(), &existing, None);
        let deleted = lines_with(&gone, "delete ");
        assert_eq!(deleted.len(), 3, "{deleted:?}");
        assert!(deleted.iter().all(|l| l.contains("default/web/tcp/http")));
    }

    fn rules_of<'a>(r: &'a Ruleset, chain: &str) -> Vec<&'a str> {
        let prefix = format!("add rule ip kedge-proxy {chain} ");
        r.script
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
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
        let r = fresh(std::slice::from_ref(&web));
        let external = external_chain(&web);
        let service = service_chain(&web);
        let local = chain_name("local", &web.key());
        assert!(r.script.contains(&format!(
            "add element ip kedge-proxy service-nodeports {{ tcp . 30080 : goto {external} }}"
        )));
        assert!(r
            .script
            .contains("add element ip kedge-proxy nodeport-ips { 192.0.2.10 }"));
        // Source kept, this node's endpoint only; pods and the node itself short-circuit
        // to the cluster-wide chain (the node masqueraded).
        assert_eq!(
            rules_of(&r, &external),
            [
                format!("ip saddr 10.42.0.0/16 goto {service}"),
                "fib saddr type local jump mark-for-masquerade".to_string(),
                format!("fib saddr type local goto {service}"),
                format!("goto {local}"),
            ]
        );
        let picks = rules_of(&r, &local);
        assert_eq!(picks.len(), 1);
        assert!(
            picks[0].starts_with("numgen random mod 1 ") && picks[0].contains("__10.42.0.6/8080")
        );
        assert!(rules_of(&r, &service)[1].starts_with("numgen random mod 2 "));
        // No local endpoint: the node port drops what is not short-circuited (the client
        // may try another node); the ClusterIP still works.
        web.endpoints.retain(|e| !e.local);
        let r = fresh(std::slice::from_ref(&web));
        assert!(r
            .script
            .contains("no-endpoint-nodeports { tcp . 30080 : drop }"));
        assert!(r.script.contains(&format!(
            "service-nodeports {{ tcp . 30080 : goto {external} }}"
        )));
        assert!(!rules_of(&r, &external).contains(&format!("goto {local}").as_str()));
        assert!(lines_with(&r, &local).is_empty());
        web.internal_local = true;
        let r = fresh(std::slice::from_ref(&web));
        assert!(r
            .script
            .contains("no-endpoint-services { 10.43.0.5 . tcp . 80 : drop }"));
        // No endpoint anywhere: both refused.
        web.endpoints.clear();
        let r = fresh(&[web]);
        assert!(r
            .script
            .contains("no-endpoint-services { 10.43.0.5 . tcp . 80 : goto reject-chain }"));
        assert!(r
            .script
            .contains("no-endpoint-nodeports { tcp . 30080 : goto reject-chain }"));
        assert!(lines_with(&r, "service-nodeports {")
            .iter()
            .all(|l| !l.contains("element")));
    }

    #[test]
    fn load_balancer_and_external_addresses_go_to_the_external_chain() {
        let mut web = port(
            "web",
            "10.43.0.5",
            &[("10.42.0.5", false), ("10.42.0.6", true)],
        );
        web.external_ips = vec!["192.0.2.77".parse().unwrap()];
        web.load_balancer_ips = vec!["192.0.2.10".parse().unwrap()];
        let r = fresh(std::slice::from_ref(&web));
        let external = external_chain(&web);
        let service = service_chain(&web);
        assert_eq!(
            lines_with(&r, "add element ip kedge-proxy service-ips"),
            [format!(
                "add element ip kedge-proxy service-ips {{ 10.43.0.5 . tcp . 80 : goto {service}, \
                 192.0.2.10 . tcp . 80 : goto {external}, 192.0.2.77 . tcp . 80 : goto {external} }}"
            )]
        );
        // externalTrafficPolicy: Cluster: masqueraded, any endpoint.
        assert_eq!(
            rules_of(&r, &external),
            [
                "jump mark-for-masquerade".to_string(),
                format!("goto {service}")
            ]
        );
        assert!(lines_with(&r, "firewall-")
            .iter()
            .all(|l| !l.contains("element")));

        // loadBalancerSourceRanges: other sources dropped before DNAT, on the load
        // balancer address only (not the external IP).
        web.source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
        let r = fresh(std::slice::from_ref(&web));
        let firewall = chain_name("firewall", &web.key());
        assert!(r.script.contains(&format!(
            "add element ip kedge-proxy firewall-ips {{ 192.0.2.10 . tcp . 80 : goto {firewall} }}"
        )));
        assert_eq!(
            rules_of(&r, &firewall),
            ["ip saddr != { 198.51.100.0/24 } drop"]
        );
        assert!(r.script.contains(
            "add rule ip kedge-proxy filter-prerouting ct state new jump firewall-check"
        ));
        assert!(r
            .script
            .contains("add rule ip kedge-proxy filter-output ct state new jump firewall-check"));
        // The node in the ranges: its traffic from the load balancer address is too.
        web.source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
        let r = fresh(std::slice::from_ref(&web));
        assert_eq!(
            rules_of(&r, &firewall),
            ["ip saddr != { 192.0.2.0/24, 192.0.2.10 } drop"]
        );

        // No endpoints: every address refused, nothing in service-ips.
        web.endpoints.clear();
        let r = fresh(std::slice::from_ref(&web));
        assert!(r.script.contains(
            "no-endpoint-services { 10.43.0.5 . tcp . 80 : goto reject-chain, \
             192.0.2.10 . tcp . 80 : goto reject-chain, 192.0.2.77 . tcp . 80 : goto reject-chain }"
        ));
        assert!(lines_with(&r, "add element ip kedge-proxy service-ips").is_empty());
        assert!(lines_with(&r, &external).is_empty());
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
        local.external_ips = vec!["192.0.2.77".parse().unwrap()];
        local.load_balancer_ips = vec!["192.0.2.10".parse().unwrap()];
        local.source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
        let r = fresh(&[web, local, port("empty", "10.43.0.7", &[])]);
        super::super::nft::check(&r.script).unwrap_or_else(|e| panic!("{e}\n{}", r.script));
    }

    #[test]
    fn terminating_endpoints_take_traffic_when_none_is_ready() {
        let mut web = port(
            "web",
            "10.43.0.5",
            &[("10.42.0.5", true), ("10.42.0.6", true)],
        );
        web.endpoints[0].ready = false;
        web.endpoints[0].terminating = true;
        let r = fresh(std::slice::from_ref(&web));
        assert_eq!(lines_with(&r, "dnat to").len(), 1);
        assert!(r.script.contains("dnat to 10.42.0.6:8080"));
        // The ready one gone: the terminating one, still serving, takes the traffic.
        web.endpoints.remove(1);
        let r = fresh(std::slice::from_ref(&web));
        assert!(r.script.contains(&format!(
            "service-ips {{ 10.43.0.5 . tcp . 80 : goto {} }}",
            service_chain(&web)
        )));
        assert!(r.script.contains("dnat to 10.42.0.5:8080"));
        // No longer serving: refused.
        web.endpoints[0].serving = false;
        let r = fresh(&[web]);
        assert!(r
            .script
            .contains("no-endpoint-services { 10.43.0.5 . tcp . 80 : goto reject-chain }"));
    }

    #[test]
    fn a_partial_sync_rewrites_only_the_ports_that_changed() {
        let a = port("a", "10.43.0.5", &[("10.42.0.5", true)]);
        let mut b = port(
            "b",
            "10.43.0.6",
            &[("10.42.0.6", true), ("10.42.0.7", false)],
        );
        let full = fresh(&[a.clone(), b.clone()]);
        // Nothing changed: nothing to write.
        let same = render_partial(&[a.clone(), b.clone()], &node(), &full.programmed).unwrap();
        assert_eq!(same.script, "");
        // One endpoint of b replaced: b's chains emptied and refilled, the old endpoint's
        // chain deleted, a untouched, the maps unchanged (b's chain keeps its name).
        b.endpoints[1].ip = "10.42.0.8".parse().unwrap();
        let partial = render_partial(&[a.clone(), b.clone()], &node(), &full.programmed).unwrap();
        let script = &partial.script;
        assert!(!script.contains("/a/"), "{script}");
        assert!(script.contains(&format!(
            "flush chain ip kedge-proxy {}\n",
            service_chain(&b)
        )));
        assert!(lines_with(&partial, " element ").is_empty(), "{script}");
        let deleted = lines_with(&partial, "delete chain");
        assert_eq!(deleted.len(), 1, "{script}");
        assert!(deleted[0].ends_with("__10.42.0.7/8080"));
        assert!(script.contains("dnat to 10.42.0.8:8080"));
        assert!(partial.rules < full.rules);
        // b without endpoints, a gone: elements moved between maps, a's chains deleted.
        b.endpoints.clear();
        let partial =
            render_partial(std::slice::from_ref(&b), &node(), &partial.programmed).unwrap();
        let script = &partial.script;
        assert!(script.contains("delete element ip kedge-proxy service-ips { 10.43.0.5 . tcp . 80, 10.43.0.6 . tcp . 80 }"), "{script}");
        assert!(
            script.contains("delete element ip kedge-proxy cluster-ips { 10.43.0.5 }"),
            "{script}"
        );
        assert!(script.contains("add element ip kedge-proxy no-endpoint-services { 10.43.0.6 . tcp . 80 : goto reject-chain }"), "{script}");
        assert_eq!(lines_with(&partial, "delete chain").len(), 5, "{script}");
        // Another node view: a full sync is needed.
        let mut moved = node();
        moved.node_ip = "192.0.2.11".parse().unwrap();
        assert!(render_partial(&[b], &moved, &partial.programmed).is_none());
    }

    /// The states of the equivalence test: each a change kube-proxy's syncs see.
    fn states() -> Vec<Vec<ServicePort>> {
        let a = port(
            "a",
            "10.43.0.5",
            &[("10.42.0.5", true), ("10.42.0.6", false)],
        );
        let b = port("b", "10.43.0.6", &[("10.42.0.7", true)]);
        let mut states = vec![vec![a.clone(), b.clone()]];
        let mut next = |change: &dyn Fn(&mut Vec<ServicePort>)| {
            let mut state = states.last().unwrap().clone();
            change(&mut state);
            states.push(state);
        };
        next(&|s| {
            s[0].endpoints
                .push(Endpoint::ready("10.42.0.9".parse().unwrap(), 8080, true))
        });
        next(&|s| s[0].endpoints.remove(0).ip = "0.0.0.0".parse().unwrap());
        next(&|s| s[1].affinity_seconds = Some(60));
        next(&|s| {
            s[1].node_port = Some(30080);
            s[1].load_balancer_ips = vec!["192.0.2.10".parse().unwrap()];
            s[1].source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
            s[1].external_ips = vec!["192.0.2.77".parse().unwrap()];
        });
        next(&|s| s[1].external_local = true);
        next(&|s| {
            for e in &mut s[1].endpoints {
                e.ready = false;
                e.terminating = true;
            }
        });
        next(&|s| s[1].endpoints.clear());
        next(&|s| {
            s.remove(0);
        });
        next(&|s| s.push(port("c", "10.43.0.9", &[("10.42.0.5", false)])));
        next(&|s| s[0].affinity_seconds = None);
        states
    }

    /// `scripts` applied in turn in a new network namespace; what the table holds then,
    /// normalized (`nft -j list`, without handles, sets' elements sorted, rules per chain
    /// in order). None when the test cannot make a namespace (not root).
    fn table_after(scripts: &[&str]) -> Option<serde_json::Value> {
        let dir = tempfile::tempdir().unwrap();
        let mut shell = String::new();
        for (i, script) in scripts.iter().enumerate() {
            let path = dir.path().join(format!("{i}.nft"));
            std::fs::write(&path, script).unwrap();
            shell.push_str(&format!("nft -f {} || exit 3\n", path.display()));
        }
        shell.push_str(&format!("nft -j list table ip {TABLE}\n"));
        let out = std::process::Command::new("unshare")
            .args(["--net", "sh", "-c", &shell])
            .output()
            .ok()?;
        if out.status.code() != Some(0) {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.code() != Some(3), "nft failed: {stderr}");
            return None;
        }
        let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut objects = BTreeSet::new();
        let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for object in listing["nftables"].as_array().unwrap() {
            let (kind, body) = object.as_object().unwrap().iter().next().unwrap();
            let mut body = body.clone();
            body.as_object_mut().unwrap().remove("handle");
            if let Some(elements) = body.get_mut("elem").and_then(|e| e.as_array_mut()) {
                elements.sort_by_key(|e| e.to_string());
            }
            match kind.as_str() {
                "metainfo" => {}
                "rule" => rules
                    .entry(body["chain"].to_string())
                    .or_default()
                    .push(body["expr"].to_string()),
                _ => {
                    objects.insert(format!("{kind} {body}"));
                }
            }
        }
        Some(serde_json::json!({"objects": objects, "rules": rules}))
    }

    #[test]
    fn partial_syncs_leave_the_table_a_full_sync_writes() {
        let states = states();
        let mut scripts = Vec::new();
        let mut programmed = fresh(&states[0]);
        scripts.push(programmed.script.clone());
        for (i, state) in states.iter().enumerate().skip(1) {
            let partial = render_partial(state, &node(), &programmed.programmed).unwrap();
            scripts.push(partial.script.clone());
            programmed = partial;
            let applied: Vec<&str> = scripts.iter().map(String::as_str).collect();
            let Some(after_partials) = table_after(&applied) else {
                return; // no network namespace here (not root)
            };
            let full = fresh(state);
            let after_full = table_after(&[&full.script]).unwrap();
            assert_eq!(
                after_partials,
                after_full,
                "state {i}: partial syncs\n{}\ndiffer from a full sync\n{}",
                scripts.join("\n---\n"),
                full.script
            );
        }
        // A full resync instead of the last partial one: the same table, stale chains
        // and affinity sets deleted.
        let before_last = fresh(&states[states.len() - 2]);
        let existing = Existing {
            chains: before_last.programmed.chains(),
            sets: before_last.programmed.affinity_sets(),
        };
        let last = states.last().unwrap();
        let resync = render(last, &node(), &existing, None);
        let mut with_resync: Vec<&str> = scripts.iter().map(String::as_str).collect();
        with_resync.pop();
        with_resync.push(&resync.script);
        let full = fresh(last);
        assert_eq!(table_after(&with_resync), table_after(&[&full.script]));
    }
}
