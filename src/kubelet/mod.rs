//! The node agent's Kubernetes side (upstream's kubelet): registers the Node, renews its
//! Lease, runs the pods bound to it through [`crate::runtime`], reports their status, and
//! serves the kubelet API (logs, exec, attach, port-forward, stats) on port 10250.
//!
//! Must not touch: the store (only the API, through a kube client), image or container
//! internals (only [`crate::runtime`]'s interfaces).

pub mod server;
