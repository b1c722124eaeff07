//! What a test [`Node`]'s network looks like from the outside, for tests that check kedge
//! leaves nothing behind: its links (`ip -n <host>`), the bridge's ports, the pod network's
//! address allocations (one file per address in `<agent>/net/ipam`) and the nftables ruleset
//! of its namespace, and [`NetState`], all of them at once. Test tooling only: kedge itself never shells out to `ip`.

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::Duration;

use super::agent::Node;
use super::workloads::until_ok;

/// `program args` inside the node's host namespace (the node itself, not a pod).
pub fn on_node(node: &Node, program: &str, args: &[&str]) -> Output {
    node.host.command(program).args(args).output().unwrap()
}

/// `ip -n <host> args`; its stdout (fails the test if `ip` does).
pub fn ip_in_host(node: &Node, args: &[&str]) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(node.name())
        .args(args)
        .output()
        .expect("iproute2's ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names of the node's links, sorted (`veth…@if3` shown as `veth…`).
pub fn links(node: &Node) -> Vec<String> {
    link_names(&ip_in_host(node, &["-o", "link", "show"]))
}

/// Names of the ports of the bridge `kedge0` on the node (none without a bridge).
pub fn bridge_ports(node: &Node) -> Vec<String> {
    let bridge = Command::new("ip")
        .args(["-n", node.name(), "link", "show", "kedge0"])
        .output()
        .expect("iproute2's ip runs");
    if !bridge.status.success() {
        return Vec::new();
    }
    link_names(&ip_in_host(
        node,
        &["-o", "link", "show", "master", "kedge0"],
    ))
}

/// Link names from `ip -o link` lines (`3: name@peer: <…>`), sorted.
fn link_names(listing: &str) -> Vec<String> {
    let mut names: Vec<String> = listing
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect();
    names.sort();
    names
}

/// The addresses allocated on the node, sorted.
pub fn allocations(node: &Node) -> Vec<Ipv4Addr> {
    let mut found: Vec<Ipv4Addr> = std::fs::read_dir(node.agent_dir().join("net/ipam"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// `nft list ruleset` in the node's namespace.
pub fn nft_ruleset(node: &Node) -> String {
    let out = on_node(node, "nft", &["list", "ruleset"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The chains (`table/chain`) declared more than once in an `nft list ruleset` output.
pub fn duplicated_chains(ruleset: &str) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut twice = Vec::new();
    let mut table = "";
    for line in ruleset.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("table ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            table = name;
        }
        if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            let chain = format!("{table}/{name}");
            if !seen.insert(chain.clone()) {
                twice.push(chain);
            }
        }
    }
    twice
}

/// The node's network as a user could inspect it: kedge's nftables table, the links, and
/// the address allocations.
#[derive(Debug, PartialEq)]
pub struct NetState {
    pub table: String,
    pub links: Vec<String>,
    pub allocations: Vec<Ipv4Addr>,
}

/// The node's network now.
pub fn net_state(node: &Node) -> NetState {
    let table = on_node(node, "nft", &["list", "table", "ip", "kedge-proxy"]);
    NetState {
        table: in_declaration_free_order(&String::from_utf8_lossy(&table.stdout)),
        links: links(node),
        allocations: allocations(node),
    }
}

/// An `nft list table` listing with its sets, maps and chains sorted: `nft` lists them in
/// the order they were added, which differs between a table built by one full sync and
/// the same table grown by partial syncs, and means nothing.
fn in_declaration_free_order(listing: &str) -> String {
    let Some((header, body)) = listing.split_once('\n') else {
        return listing.to_string();
    };
    let body = body.trim_end().strip_suffix('}').unwrap_or(body);
    let mut blocks: Vec<&str> = body
        .split("\n\n")
        .map(|b| b.trim_matches('\n'))
        .filter(|b| !b.is_empty())
        .collect();
    blocks.sort_unstable();
    format!("{header}\n{}\n}}\n", blocks.join("\n\n"))
}

/// Waits until the node's network is `expected` with no chain declared twice.
pub async fn net_state_is(node: &Node, expected: &NetState, what: &str) {
    until_ok(Duration::from_secs(30), what, || {
        let now = net_state(node);
        let twice = duplicated_chains(&nft_ruleset(node));
        if &now == expected && twice.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "chains twice: {twice:?}\nnow {now:#?}\nwanted {expected:#?}"
            ))
        }
    })
    .await;
}
