//! kedge: a whole Kubernetes cluster in one binary.
//!
//! Start reading at [`server`], which assembles one `kedge server` process: the
//! [`store`] (a revisioned key-value store with etcd semantics) replicated by
//! [`raft`], served over HTTPS by [`api`] after [`auth`] has identified the caller,
//! with certificates from [`pki`]. [`client`] is the HTTPS client every component
//! uses to reach a server.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::all)]

pub mod api;
pub mod auth;
pub mod client;
pub mod controllers;
pub mod kubelet;
pub mod net;
pub mod pki;
pub mod raft;
pub mod runtime;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod tls;
