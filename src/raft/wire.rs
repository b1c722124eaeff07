//! The server-to-server protocol: paths and message types of Raft RPCs and of the store
//! operations a server asks the leader for (forwarded writes and read indexes), all as
//! postcard over HTTPS with mutual TLS. Only servers may call these.

use serde::{Deserialize, Serialize};

use super::types::NodeId;
use crate::store::{CommandOutcome, ListPage, StoreError};

/// Prefix of every server-only path; `crate::api` hands these to the Raft service.
pub const PREFIX: &str = "/kedge/raft/v1/";
pub const APPEND: &str = "/kedge/raft/v1/append";
pub const VOTE: &str = "/kedge/raft/v1/vote";
pub const SNAPSHOT: &str = "/kedge/raft/v1/snapshot";
pub const PROPOSE: &str = "/kedge/raft/v1/propose";
pub const READ_INDEX: &str = "/kedge/raft/v1/read-index";
pub const RANGE: &str = "/kedge/raft/v1/range";
pub const STATUS: &str = "/kedge/raft/v1/status";

pub const CONTENT_TYPE: &str = "application/vnd.kedge.postcard";

/// Why the leader could not take a forwarded request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    #[error("node {contacted} is not the leader (leader: {leader:?})")]
    NotLeader {
        contacted: NodeId,
        leader: Option<(NodeId, String)>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The leader's answer to a forwarded write: the outcome and the log index it was applied at,
/// so the forwarding server can wait until it has applied it too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposed {
    pub outcome: CommandOutcome,
    pub index: u64,
}

/// A prefix listing, for tools and tests that read a server's store directly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub prefix: String,
    /// Serve from this server's applied state without asking the leader.
    pub local: bool,
    pub limit: usize,
    pub continue_token: Option<String>,
}

pub type RangeResponse = Result<ListPage, RemoteError>;

/// A server's view of the cluster (JSON, for people and tests).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub id: NodeId,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub revision: u64,
    pub compact_revision: u64,
    pub members: Vec<NodeId>,
    /// Last log index included in this server's newest snapshot.
    pub snapshot_index: Option<u64>,
    /// Log entries up to here are gone from this server's log.
    pub purged_index: Option<u64>,
    /// fdatasync calls of the Raft log so far (one per group commit).
    pub log_syncs: u64,
    /// Bytes appended to the Raft log so far.
    pub log_bytes: u64,
    /// Batches of entries applied to the store since start (one transaction each).
    pub apply_batches: u64,
}

pub fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    bytes::Bytes::from(postcard::to_allocvec(value).expect("wire messages serialize"))
}

pub fn decode<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(raw)
}
