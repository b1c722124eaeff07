//! The node IPAM controller (upstream's range allocator): every node gets its own pod range,
//! a /24 of the cluster CIDR (`--cluster-cidr`, 10.42.0.0/16 as k3s), in `spec.podCIDR` and
//! `spec.podCIDRs`. The allocation lives in the Node objects themselves: it is rebuilt from
//! them whenever the watch (re)lists, and a range is released when its node goes. When the
//! cluster CIDR is used up, the node gets a `CIDRNotAvailable` event, as upstream.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::events::Recorder;

/// Upstream's `--node-cidr-mask-size` default for IPv4.
const NODE_MASK: u8 = 24;
/// Attempts at writing a node's range before waiting for the node's next change.
const ATTEMPTS: usize = 3;

/// Which /24s of the cluster CIDR are taken, and by which node.
#[derive(Debug)]
pub struct Allocator {
    ranges: Vec<Ipv4Net>,
    used: BTreeSet<usize>,
    by_node: HashMap<String, usize>,
}

impl Allocator {
    /// An allocator over `cluster_cidr`; an error says why it cannot hold node ranges.
    pub fn new(cluster_cidr: &str) -> Result<Allocator, String> {
        let net: Ipv4Net = cluster_cidr
            .parse()
            .map_err(|e| format!("--cluster-cidr {cluster_cidr:?}: {e}"))?;
        let ranges: Vec<Ipv4Net> = net
            .trunc()
            .subnets(NODE_MASK)
            .map_err(|_| {
                format!("--cluster-cidr {cluster_cidr:?} is smaller than a node's /{NODE_MASK}")
            })?
            .collect();
        Ok(Allocator {
            ranges,
            used: BTreeSet::new(),
            by_node: HashMap::new(),
        })
    }

    /// Forgets everything, then records the ranges `nodes` hold.
    pub fn rebuild<'a>(&mut self, nodes: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.used.clear();
        self.by_node.clear();
        for (node, cidr) in nodes {
            self.occupy(node, cidr);
        }
    }

    /// Records that `node` holds `cidr` (ranges outside the cluster CIDR are not ours).
    pub fn occupy(&mut self, node: &str, cidr: &str) {
        if let Some(index) = self.ranges.iter().position(|r| r.to_string() == cidr) {
            self.used.insert(index);
            self.by_node.insert(node.to_string(), index);
        }
    }

    /// A free range for `node` (the same one if it has one already); `None` when full.
    pub fn allocate(&mut self, node: &str) -> Option<Ipv4Net> {
        if let Some(index) = self.by_node.get(node) {
            return Some(self.ranges[*index]);
        }
        let index = (0..self.ranges.len()).find(|i| !self.used.contains(i))?;
        self.used.insert(index);
        self.by_node.insert(node.to_string(), index);
        Some(self.ranges[index])
    }

    pub fn release(&mut self, node: &str) {
        if let Some(index) = self.by_node.remove(node) {
            self.used.remove(&index);
        }
    }
}

fn pod_cidr(node: &Node) -> Option<&str> {
    node.spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .filter(|c| !c.is_empty())
}

pub async fn run(client: Client, cluster_cidr: String) {
    let mut allocator = match Allocator::new(&cluster_cidr) {
        Ok(allocator) => allocator,
        Err(error) => {
            tracing::error!(%error, "node IPAM controller not started");
            return;
        }
    };
    let recorder = Recorder::new(client.clone(), "node-ipam-controller");
    let nodes: Api<Node> = Api::all(client);
    let mut events = watcher(nodes.clone(), watcher::Config::default()).boxed();
    let mut listing: Vec<Node> = Vec::new();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::debug!(%error, "node IPAM watch");
                continue;
            }
        };
        match event {
            watcher::Event::Init => listing.clear(),
            watcher::Event::InitApply(node) => listing.push(node),
            watcher::Event::InitDone => {
                allocator.rebuild(listing.iter().filter_map(|n| {
                    pod_cidr(n).map(|c| (n.metadata.name.as_deref().unwrap_or_default(), c))
                }));
                for node in std::mem::take(&mut listing) {
                    assign(&nodes, &recorder, &mut allocator, &node).await;
                }
            }
            watcher::Event::Apply(node) => {
                assign(&nodes, &recorder, &mut allocator, &node).await;
            }
            watcher::Event::Delete(node) => allocator.release(&node.name_any()),
        }
    }
}

/// Gives `node` a range unless it has one.
async fn assign(nodes: &Api<Node>, recorder: &Recorder, allocator: &mut Allocator, node: &Node) {
    let name = node.name_any();
    if node.metadata.deletion_timestamp.is_some() {
        return;
    }
    if let Some(cidr) = pod_cidr(node) {
        allocator.occupy(&name, cidr);
        return;
    }
    let Some(range) = allocator.allocate(&name) else {
        recorder
            .normal(
                node,
                "CIDRNotAvailable",
                &format!("Node {name} status is now: CIDRNotAvailable"),
            )
            .await;
        return;
    };
    let patch = Patch::Merge(json!({"spec": {
        "podCIDR": range.to_string(),
        "podCIDRs": [range.to_string()],
    }}));
    for attempt in 1..=ATTEMPTS {
        match nodes.patch(&name, &PatchParams::default(), &patch).await {
            Ok(_) => {
                tracing::info!(node = %name, cidr = %range, "allocated the node's pod range");
                return;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => break,
            Err(error) if attempt == ATTEMPTS => {
                tracing::warn!(node = %name, %error, "could not record the node's pod range");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    allocator.release(&name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_unique_reused_after_release_and_run_out() {
        let mut allocator = Allocator::new("10.42.0.0/23").unwrap();
        allocator.rebuild([("a", "10.42.0.0/24")]);
        assert_eq!(allocator.allocate("a").unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(allocator.allocate("b").unwrap().to_string(), "10.42.1.0/24");
        assert_eq!(allocator.allocate("c"), None);
        allocator.release("a");
        assert_eq!(allocator.allocate("c").unwrap().to_string(), "10.42.0.0/24");
        assert!(Allocator::new("10.42.0.0/25").is_err());
    }
}
