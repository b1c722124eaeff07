//! The service proxy of a node: kube-proxy's nftables mode, in-process (DESIGN.md).
//!
//! A reconcile loop ([`run`], started by the node agent) watches Services and
//! EndpointSlices through kube-runtime reflectors and, shortly after every change (and
//! every [`RESYNC`] regardless), syncs kedge's table [`ruleset::TABLE`] in one `nft -f -`
//! transaction: [`model`] turns the caches into service ports, [`ruleset`] renders
//! kube-proxy's chain layout, [`nft`] applies it. As kube-proxy's nftables mode, a sync
//! is partial (only the chains of service ports that changed, and the map elements that
//! changed) except on start, after a failed sync, when the node changed and every
//! [`FULL_RESYNC`]: then the whole table is rewritten. The table is rebuilt from the API
//! on start; [`uninstall`] removes it.
//!
//! Why `nft -f -` scripts and not a crate: kube-proxy itself feeds `nft` text scripts
//! (through knftables), which keeps the generated rules readable, testable as text (and
//! checkable with `nft -c`), and identical to what `nft list` shows. The `nftables` crate
//! drives the same `nft` binary through its JSON schema, which adds a typed layer several
//! times as verbose for nothing the text lacks; `rustables` (pure netlink) would drop the
//! binary but exposes expressions at the register level, so kedge would be writing the
//! part of `nft` that compiles `numgen … vmap`, concatenated maps and `dnat` itself.
//!
//! Also owned here: the route of the service CIDR to the link [`route::SERVICE_LINK`]
//! and `net.bridge.bridge-nf-call-iptables` (bridged pod traffic, e.g. a backend's reply to
//! a client on the same bridge, must pass the ip hooks to be un-NATed).
//!
//! Cluster DNS seam: the Service [`model::CLUSTER_DNS_SERVICE`] has no endpoints; its
//! ClusterIP is DNATed to this node's bridge gateway, where `src/net/dns` listens.
//! Must not touch: other nftables tables, API objects (read-only), the pod network's links.
//!
//! Not done yet (issue 6): IPv6 (an `ip6` table);
//! `kedge agent` uses k3s's default CIDRs instead of the server's; [`uninstall`] is not
//! wired to a command yet. LoadBalancer addresses come from `status.loadBalancer.ingress`,
//! written by the ServiceLB controller (src/controllers), not by the proxy.

pub mod model;
pub mod nft;
pub mod route;
pub mod ruleset;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use tokio::sync::Notify;

use model::NodeView;
use ruleset::Programmed;

/// How long after a change the proxy waits for more before syncing (bursts of endpoint
/// updates make one sync).
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// A sync at least this often, whatever changed (kube-proxy's `syncPeriod`).
pub const RESYNC: Duration = Duration::from_secs(30);
/// A full sync at least this often (kube-proxy's `FullSyncPeriod`, also the nftables
/// mode's longest interval between syncs): rewrites what was changed behind the proxy's
/// back. Between full syncs, a sync writes only what changed.
pub const FULL_RESYNC: Duration = Duration::from_secs(3600);
/// How soon a failed sync is tried again.
const RETRY: Duration = Duration::from_secs(1);
const BRIDGE_NF_CALL: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{what}: {message}")]
    Nft { what: String, message: String },
    #[error("{action}: {message}")]
    Route { action: String, message: String },
}

/// What the proxy of one node needs.
#[derive(Clone)]
pub struct ProxyConfig {
    pub client: kube::Client,
    pub node_name: String,
    pub node_ip: IpAddr,
    /// `--cluster-cidr` (10.42.0.0/16).
    pub cluster_cidr: Ipv4Net,
    /// `--service-cidr` (10.43.0.0/16).
    pub service_cidr: Ipv4Net,
}

/// k3s's defaults, for nodes that are not told otherwise.
pub fn default_cidrs() -> (Ipv4Net, Ipv4Net) {
    (
        "10.42.0.0/16".parse().expect("a valid CIDR"),
        "10.43.0.0/16".parse().expect("a valid CIDR"),
    )
}

/// Runs the proxy until the process ends; failures are logged and retried.
pub async fn run(config: ProxyConfig) {
    let IpAddr::V4(node_ip) = config.node_ip else {
        tracing::warn!(ip = %config.node_ip, "the service proxy needs an IPv4 node address; not started");
        return;
    };
    if std::path::Path::new(BRIDGE_NF_CALL).exists() {
        if let Err(e) = std::fs::write(BRIDGE_NF_CALL, "1") {
            tracing::warn!(error = %e, "turning {BRIDGE_NF_CALL} on failed: replies between pods on the bridge may miss the service NAT");
        }
    } else {
        tracing::warn!("no br_netfilter ({BRIDGE_NF_CALL}): replies between pods on the bridge may miss the service NAT");
    }
    let changed = Arc::new(Notify::new());
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let service_stream = reflector::reflector(
        services_writer,
        watcher::watcher(
            Api::<Service>::all(config.client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    let slice_stream = reflector::reflector(
        slices_writer,
        watcher::watcher(
            Api::<EndpointSlice>::all(config.client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    tokio::spawn(notify_on_events(
        "services",
        service_stream,
        changed.clone(),
    ));
    tokio::spawn(notify_on_events(
        "endpointslices",
        slice_stream,
        changed.clone(),
    ));
    let _ = services.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;

    let mut node = NodeView {
        node_name: config.node_name.clone(),
        node_ip,
        cluster_cidr: config.cluster_cidr,
        service_cidr: config.service_cidr,
        dns_gateway: None,
    };
    // What the last sync left; none: the next sync is a full one.
    let mut programmed: Option<Programmed> = None;
    let mut last_full = Instant::now();
    loop {
        if node.dns_gateway.is_none() {
            node.dns_gateway = bridge_gateway(&config.client, &config.node_name).await;
        }
        let ports = model::service_ports(
            services.state().iter().map(|s| s.as_ref()),
            slices.state().iter().map(|s| s.as_ref()),
            &node,
        );
        if last_full.elapsed() >= FULL_RESYNC {
            programmed = None;
        }
        let started = Instant::now();
        match sync(&ports, &node, programmed.take()).await {
            Ok(synced) => {
                tracing::debug!(
                    ports = ports.len(),
                    full = synced.full,
                    rules = synced.rules,
                    elapsed = ?started.elapsed(),
                    "service proxy synced"
                );
                if synced.full {
                    last_full = started;
                }
                programmed = Some(synced.programmed);
            }
            Err(e) => {
                // The table is in an unknown state: the next sync is a full one.
                tracing::warn!(error = %e, "service proxy sync failed; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// What one sync did.
struct Synced {
    programmed: Programmed,
    full: bool,
    rules: usize,
}

/// One sync: the route, then the ruleset, partial from `previous` if there is one (and
/// the node did not change), else full.
async fn sync(
    ports: &[model::ServicePort],
    node: &NodeView,
    previous: Option<Programmed>,
) -> Result<Synced, ProxyError> {
    route::ensure(node.service_cidr).await?;
    let ports = ports.to_vec();
    let node = node.clone();
    tokio::task::spawn_blocking(move || {
        let partial = previous
            .as_ref()
            .and_then(|p| ruleset::render_partial(&ports, &node, p));
        let full = partial.is_none();
        let rendered = match partial {
            Some(rendered) => rendered,
            None => ruleset::render(&ports, &node, &nft::existing()?, previous.as_ref()),
        };
        if !rendered.script.is_empty() {
            nft::apply(&rendered.script)?;
        }
        Ok(Synced {
            programmed: rendered.programmed,
            full,
            rules: rendered.rules,
        })
    })
    .await
    .map_err(|e| ProxyError::Nft {
        what: "the sync task".into(),
        message: e.to_string(),
    })?
}

/// Drives a reflector's stream, waking the sync loop on every event.
async fn notify_on_events<S, K>(what: &'static str, stream: S, changed: Arc<Notify>)
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(e) => tracing::debug!(what, error = %e, "service proxy watch error"),
        }
    }
}

/// The first address of the node's pod CIDR (the bridge `kedge0`'s), once it has one.
async fn bridge_gateway(client: &kube::Client, node_name: &str) -> Option<Ipv4Addr> {
    let node = Api::<Node>::all(client.clone()).get(node_name).await.ok()?;
    let cidr: Ipv4Net = node.spec?.pod_cidr?.parse().ok()?;
    Some(crate::net::cni::ipam::gateway(cidr))
}

/// Removes everything the proxy put on the node (its table and the service link): for an
/// uninstall, with the agent stopped.
pub async fn uninstall() -> Result<(), ProxyError> {
    tokio::task::spawn_blocking(nft::delete_table)
        .await
        .map_err(|e| ProxyError::Nft {
            what: "deleting the table".into(),
            message: e.to_string(),
        })??;
    route::remove().await?;
    Ok(())
}
