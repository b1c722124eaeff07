//! The Kubernetes API over HTTPS.
//!
//! Owns: the listener and TLS ([`server`]), authentication of every request, impersonation
//! and routing ([`router`]), `Status` errors ([`error`], [`status`]), `/version`, the health
//! endpoints, and the resources themselves. Requests under a mounted [`PeerService`] prefix
//! (the Raft transport) are handed over, for servers only.
//!
//! Where to start: [`request`] parses a path, [`registry`] says what kind it names (built-in
//! or from a CRD, see [`crd`]), [`rest`] runs the verb (one file per operation) over
//! `crate::store::Store`. Around it: request bodies ([`protobuf`]), [`defaults`],
//! [`validation`], [`patch`] (strategic merge, server-side apply, managedFields),
//! per-kind admission such as Service IP allocation ([`services`]), output ([`table`],
//! [`discovery`], [`openapi`]), and objects every cluster starts with ([`bootstrap`]).
//! Emptying deleted namespaces is the namespace controller's job (`crate::controllers`), an
//! API client like any other.
//!
//! Must not touch: Raft or the engine directly, or certificates beyond the TLS config it is
//! given.

pub mod bootstrap;
pub mod crd;
pub mod defaults;
pub mod discovery;
pub mod error;
pub mod event_ttl;
pub mod http;
pub mod metrics;
pub mod object;
pub mod openapi;
pub mod openapi_v2;
pub mod patch;
pub mod protobuf;
pub mod proxy;
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
pub use router::{OpenService, PeerService, Router};
