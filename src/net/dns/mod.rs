//! Cluster DNS (DESIGN.md: no CoreDNS pod): each node agent answers its pods' queries
//! in-process with hickory-server.
//!
//! - Where: the node's pod gateway (the first address of `spec.podCIDR`, held by the
//!   bridge [`crate::net::cni::BRIDGE`]), port 53, UDP and TCP. Pods' resolv.conf names the
//!   cluster DNS Service address (`--cluster-dns`, 10.43.0.10, the `kube-dns` Service the
//!   server bootstraps); the service proxy DNATs it to this local address.
//! - What: [`records`] computes the cluster's records (Services, EndpointSlices, pod
//!   names, PTR) from kube-runtime caches at each query; [`server`] forwards the rest to
//!   the nameservers of the node's resolv.conf.
//!
//! Start at [`run`]. Must not touch: API objects (read-only caches), the pod network's
//! links and addresses (`cni` owns them), firewall rules (the proxy's).

pub mod records;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{reflector, watcher, WatchStreamExt};

use crate::net::cni::{ipam, PodNetwork};

/// The DNS port.
pub const PORT: u16 = 53;

/// What the node's DNS server needs; built by the kubelet.
pub struct DnsConfig {
    pub client: kube::Client,
    /// The node's pod network: the listen address is its gateway.
    pub network: PodNetwork,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The cluster DNS Service address (never forwarded to: it is us).
    pub cluster_dns: IpAddr,
    /// The node's resolv.conf: the upstream resolvers.
    pub resolv_conf: PathBuf,
}

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("the cluster domain {domain:?} is not a DNS name: {source}")]
    Domain {
        domain: String,
        #[source]
        source: hickory_proto::ProtoError,
    },
    #[error("serving DNS on {address}: {source}")]
    Serve {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the node's DNS server until the process ends: waits for the node's pod CIDR,
/// fills the caches, and serves on the pod gateway.
pub async fn run(config: DnsConfig) -> Result<(), DnsError> {
    let (services, services_writer) = reflector::store();
    let (slices, slices_writer) = reflector::store();
    let zone = records::Zone::new(&config.cluster_domain, services, slices).map_err(|source| {
        DnsError::Domain {
            domain: config.cluster_domain.clone(),
            source,
        }
    })?;
    let services = reflector::reflector(
        services_writer,
        watcher::watcher(
            Api::<Service>::all(config.client.clone()),
            watcher::Config::default(),
        ),
    );
    let slices = reflector::reflector(
        slices_writer,
        watcher::watcher(
            Api::<EndpointSlice>::all(config.client.clone()),
            watcher::Config::default(),
        ),
    );
    tokio::spawn(drive("services", services.default_backoff()));
    tokio::spawn(drive("endpointslices", slices.default_backoff()));
    // As CoreDNS: no answers before the caches hold the cluster (a missing Service would
    // be NXDOMAIN, and negative answers are cached by clients).
    let _ = zone.wait_until_ready().await;

    let gateway = loop {
        match config.network.pod_cidr().await {
            Ok(range) => break ipam::gateway(range),
            Err(error) => {
                tracing::debug!(%error, "cluster DNS waits for the node's pod CIDR");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let address = SocketAddr::new(IpAddr::V4(gateway), PORT);
    let serve_error = |source| DnsError::Serve { address, source };
    let (udp, tcp) = server::listen(address).map_err(serve_error)?;
    tracing::info!(%address, "cluster DNS listening");
    let upstream = server::upstream(&config.resolv_conf, &[config.cluster_dns, address.ip()]);
    server::serve(server::Handler::new(zone, upstream), udp, tcp)
        .await
        .map_err(serve_error)
}

/// Polls a reflector stream forever, logging its errors (the watcher retries on its own).
async fn drive<S, T>(what: &'static str, stream: S)
where
    S: futures::Stream<Item = Result<T, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        if let Err(error) = event {
            tracing::debug!(what, %error, "cluster DNS cache watch failed; retrying");
        }
    }
}
