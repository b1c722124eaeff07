//! Service networking the API server owns: ClusterIPs from the service CIDR and NodePorts
//! from the node-port range, allocated when a Service is written and released when it goes.
//!
//! Allocations live in the store, one key each, created only if absent — so two servers can
//! never hand out the same address or port, and they survive restarts. ClusterIPs are
//! `networking.k8s.io/v1` IPAddress objects as in upstream 1.33 (`kubectl get ipaddresses`);
//! NodePorts are kedge-private keys. A reconciler ([`reconcile`]) releases what deleted or
//! changed Services no longer use, including after a crash between allocation and write.
//!
//! Must not touch: HTTP; the REST handlers call in through [`strategy`].

mod ip;
mod node_port;
pub mod reconcile;
pub mod strategy;

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::store::{Store, StoreError};

/// The ranges Services draw from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceNetwork {
    pub cidr: Ipv4Net,
    pub node_ports: RangeInclusive<u16>,
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        ServiceNetwork {
            cidr: "10.43.0.0/16".parse().expect("a valid CIDR"),
            node_ports: 30000..=32767,
        }
    }
}

impl ServiceNetwork {
    /// The first address of the range: the `kubernetes` Service's ClusterIP.
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    /// `10.43.0.0/16`-style range and `30000-32767`-style port range, as the flags take them.
    pub fn parse(cidr: &str, node_ports: &str) -> Result<ServiceNetwork, String> {
        let cidr: Ipv4Net = cidr
            .parse()
            .map_err(|_| format!("{cidr:?} is not an IPv4 CIDR such as 10.43.0.0/16"))?;
        if cidr.prefix_len() > 30 {
            return Err(format!("{cidr}: the prefix length must be at most 30"));
        }
        let (low, high) = node_ports
            .split_once('-')
            .and_then(|(l, h)| Some((l.trim().parse::<u16>().ok()?, h.trim().parse::<u16>().ok()?)))
            .filter(|(l, h)| l <= h && *l > 0)
            .ok_or_else(|| format!("{node_ports:?} is not a port range such as 30000-32767"))?;
        Ok(ServiceNetwork {
            cidr: cidr.trunc(),
            node_ports: low..=high,
        })
    }
}

/// Which Service holds an allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceRef {
    pub fn of(service: &Value) -> ServiceRef {
        ServiceRef {
            namespace: crate::api::object::meta_str(service, "namespace")
                .unwrap_or("default")
                .to_string(),
            name: crate::api::object::name(service).to_string(),
        }
    }
}

/// Why an address or port could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    #[error("the provided {what} is not in the valid range")]
    OutOfRange { what: &'static str },
    #[error("provided {what} is already allocated")]
    Taken { what: &'static str },
    #[error("range is full")]
    Full,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Hands out and takes back ClusterIPs and NodePorts. Cheap to clone.
#[derive(Clone)]
pub struct Allocator {
    store: Store,
    network: ServiceNetwork,
}

impl Allocator {
    pub fn new(store: Store, network: ServiceNetwork) -> Allocator {
        Allocator { store, network }
    }

    pub fn network(&self) -> &ServiceNetwork {
        &self.network
    }

    /// Releases what the Service version `before` held and `after` (a later or earlier
    /// version of the same Service, or null when it is gone) does not.
    pub async fn release_dropped(&self, before: &Value, after: &Value) -> Result<(), StoreError> {
        let owner = ServiceRef::of(before);
        let kept_ips = strategy::cluster_ips(after);
        for ip in strategy::cluster_ips(before) {
            if !kept_ips.contains(&ip) {
                self.release_ip(ip, &owner).await?;
            }
        }
        let kept_ports = strategy::node_ports(after);
        for port in strategy::node_ports(before) {
            if !kept_ports.contains(&port) {
                self.release_node_port(port, &owner).await?;
            }
        }
        Ok(())
    }
}
