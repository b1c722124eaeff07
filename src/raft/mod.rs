//! Raft replication of the store's write commands (openraft, pinned).
//!
//! Owns: the Raft log ([`log`]: own segmented write-ahead log with group commit), batching of
//! concurrent writes into one entry ([`batcher`]), the state
//! machine that applies committed commands to the store's engine ([`state_machine`]), the
//! HTTPS transport between servers ([`network`] out, [`service`] in), and the node that ties
//! them together and implements `store::Replicator` ([`node`]).
//!
//! Must not touch: store semantics (the engine decides every outcome) or anything a
//! Kubernetes client sees. A single server is a cluster of one: there is no other path.

// openraft's storage traits fix the (large) error type of every storage function, and the
// service answers errors as whole HTTP responses.
#![allow(clippy::result_large_err)]

pub mod batcher;
pub mod log;
pub mod network;
pub mod node;
pub mod remote;
pub mod service;
pub mod state_machine;
pub mod types;
pub mod wire;

pub use node::{NodeError, RaftConfig, RaftNode};
