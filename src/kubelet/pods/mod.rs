//! Pod workers (upstream's pod workers, kuberuntime manager, prober and status manager, in
//! one place): watch the pods bound to this node, run one worker per pod uid that
//! reconciles the pod's sandbox and containers with its spec (init containers in order,
//! sidecars, restart policy with crash-loop back-off, probes, hooks, graceful deletion),
//! and write the pod's status as upstream does.
//!
//! Owns: `<agent>/pods/<uid>/` (sandbox files), `<agent>/containers/<id>/meta.json`, the
//! container log paths, pod status writes and the kubelet's pod/container events.
//! Must not touch: node registration, leases (the rest of `kubelet`), volume contents
//! (`kubelet::volumes`), image and shim internals (`runtime`'s interfaces only).

// Until the runtime parts land and `run` wires everything (worker.rs, source.rs, pull.rs,
// config.rs are written against their seams but not yet compiled).
#![allow(dead_code)]

mod action;
mod backoff;
mod dns;
mod env;
mod events;
mod expansion;
mod format;
mod hooks;
mod meta;
mod probes;
mod qos;
mod registry;
mod sandbox;
mod security;
mod status;

use std::net::IpAddr;
use std::path::PathBuf;

pub use meta::ContainerMeta;
pub use registry::PodRegistry;

/// What the pod workers need from the agent.
#[derive(Clone)]
pub struct PodsContext {
    pub client: kube::Client,
    pub node_name: String,
    /// The node's InternalIP (status.hostIP).
    pub node_ip: IpAddr,
    /// `<data-dir>/agent`.
    pub agent_dir: PathBuf,
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    /// The host's resolv.conf (`Default` dnsPolicy and the search path tail).
    pub resolv_conf: PathBuf,
    /// Shared with the kubelet API.
    pub registry: PodRegistry,
}
