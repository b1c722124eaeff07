//! Service proxy benchmark: the nftables sync of kedge's table (src/net/proxy) for 100,
//! 1,000 and 5,000 services with 10 ready endpoints each, inside a throwaway network
//! namespace (the process unshares its own before anything else, so the machine's ruleset
//! is never touched). Reports, per size: the render time, the first sync (a full one into
//! an empty table, render included), a full resync of the same ruleset (as on start, after
//! a failure and hourly), one endpoint changed (a partial sync, render included: the
//! latency of an endpoint update), the first script's size and its rule and chain counts.
//!
//! Run as root: `cargo bench --bench proxy [-- --quick]` (quick: 100 and 1,000). Prints a
//! Markdown table for BENCHMARKS.md.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use kedge::net::proxy::model::{Endpoint, NodeView, Protocol, ServicePort};
use kedge::net::proxy::nft;
use kedge::net::proxy::ruleset::{self, Existing, Ruleset};

const ENDPOINTS: usize = 10;

fn ports(count: usize) -> Vec<ServicePort> {
    (0..count)
        .map(|i| ServicePort {
            namespace: "bench".into(),
            name: format!("svc-{i}"),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 43, 0, 0)) + 10 + i as u32),
            port: 80,
            node_port: None,
            external_local: false,
            internal_local: false,
            affinity_seconds: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            source_ranges: Vec::new(),
            endpoints: (0..ENDPOINTS)
                .map(|e| {
                    let ip =
                        u32::from(Ipv4Addr::new(10, 42, 0, 0)) + (i * ENDPOINTS + e) as u32 + 2;
                    Endpoint::ready(Ipv4Addr::from(ip), 8080, true)
                })
                .collect(),
        })
        .collect()
}

/// Applies `rendered`; how long `nft` took.
fn apply(rendered: &Ruleset) -> Duration {
    let started = Instant::now();
    nft::apply(&rendered.script).expect("nft applies the ruleset");
    started.elapsed()
}

fn main() {
    // SAFETY: still single-threaded; the process leaves the machine's network namespace.
    let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        unshared,
        0,
        "unshare(CLONE_NEWNET) (run as root): {}",
        std::io::Error::last_os_error()
    );
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[usize] = if quick {
        &[100, 1000]
    } else {
        &[100, 1000, 5000]
    };
    let node = NodeView {
        node_name: "bench".into(),
        node_ip: Ipv4Addr::new(192, 0, 2, 1),
        cluster_cidr: "10.42.0.0/16".parse().unwrap(),
        service_cidr: "10.43.0.0/16".parse().unwrap(),
        dns_gateway: None,
    };
    println!("| services × endpoints | render | first sync (full) | full resync | one endpoint changed (partial) | script | rules | chains |");
    println!("|---|---|---|---|---|---|---|---|");
    for &count in sizes {
        let _ = nft::delete_table();
        let mut ports = ports(count);
        let started = Instant::now();
        let first = ruleset::render(&ports, &node, &Existing::default(), None);
        let render = started.elapsed();
        let first_sync = render + apply(&first);
        let chains = first.programmed.chains();
        // A full resync of the same ruleset (start, failure, hourly): all rewritten.
        let existing = Existing {
            chains: chains.clone(),
            sets: first.programmed.affinity_sets(),
        };
        let started = Instant::now();
        let resync = ruleset::render(&ports, &node, &existing, Some(&first.programmed));
        let resync_time = started.elapsed() + apply(&resync);
        // One endpoint replaced: a partial sync, model to kernel.
        ports[count / 2].endpoints[0].ip = Ipv4Addr::new(10, 42, 255, 250);
        let started = Instant::now();
        let partial = ruleset::render_partial(&ports, &node, &resync.programmed)
            .expect("same node: a partial sync");
        apply(&partial);
        let change = started.elapsed();
        println!(
            "| {count} × {ENDPOINTS} | {render:.1?} | {first_sync:.1?} | {resync_time:.1?} | {change:.1?} ({} rules) | {} KiB | {} | {} |",
            partial.rules,
            first.script.len() / 1024,
            first.rules,
            chains.len()
        );
    }
    let _ = nft::delete_table();
}
