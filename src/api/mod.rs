//! The Kubernetes API over HTTPS.
//!
//! Owns: the listener and TLS ([`server`]), authentication of every request and routing
//! ([`router`]), `Status` errors ([`status`]), `/version`, and the health endpoints. Requests
//! under a mounted [`PeerService`] prefix (the Raft transport) are handed over, for servers
//! only. Kubernetes resources arrive with the API issue; they will read and write only
//! through `crate::store::Store`.
//!
//! Must not touch: Raft or the engine directly, or certificates beyond the TLS config it is
//! given.

pub mod bootstrap;
pub mod crd;
pub mod defaults;
pub mod discovery;
pub mod error;
pub mod http;
pub mod namespaces;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod request;
pub mod rest;
pub mod router;
pub mod selector;
pub mod server;
pub mod services;
pub mod status;
pub mod table;
pub mod validation;
pub mod version;

pub use rest::Api;
pub use router::{PeerService, Router};
