//! The openraft type configuration: what the replicated log carries and how nodes are named.

use std::io::Cursor;

use openraft::BasicNode;

use super::batcher::Proposal;
use crate::store::CommandOutcome;

/// A server's Raft identity; unique and never reused within a cluster.
pub type NodeId = u64;
/// A server as its peers reach it: `addr` is the base HTTPS URL of its API port.
pub type Node = BasicNode;

openraft::declare_raft_types!(
    /// kedge's Raft: each entry carries a batch of store commands; applying it yields one
    /// outcome per command (none for entries without commands).
    pub TypeConfig:
        D = Proposal,
        R = Vec<CommandOutcome>,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;

/// Wraps any error as an openraft storage error of the given kind.
pub(crate) fn storage_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    error: &(dyn std::error::Error + 'static),
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::from_dyn(error, None)).into()
}
