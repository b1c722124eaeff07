//! The store's vocabulary: keys and values with their revisions, the write commands that
//! Raft replicates, their outcomes, list pages and watch events.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The store's global, monotonically increasing revision. Every successful write gets the
/// next one; it becomes the Kubernetes resourceVersion of what it wrote.
pub type Revision = u64;

/// A live key with its value and etcd-style revision bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to this key.
    pub mod_revision: Revision,
    /// Number of writes since creation, starting at 1.
    pub version: u64,
}

/// A replicated write. Commands are applied in log order on every replica and must be
/// deterministic: they carry every value they write, nothing is read from the clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates `key`; fails with `AlreadyExists` if it is live.
    Create { key: String, value: Bytes },
    /// Replaces the value of a live `key`. With `expected_mod_revision`, fails with
    /// `Conflict` unless the key's mod revision is exactly that (compare-and-swap).
    Update {
        key: String,
        value: Bytes,
        expected_mod_revision: Option<Revision>,
    },
    /// Deletes a live `key`, optionally only at the expected mod revision.
    Delete {
        key: String,
        expected_mod_revision: Option<Revision>,
    },
    /// Forgets history at or below `revision`. Does not consume a revision.
    Compact { revision: Revision },
}

impl Command {
    /// The key a command writes, if it writes one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Command::Create { key, .. }
            | Command::Update { key, .. }
            | Command::Delete { key, .. } => Some(key),
            Command::Compact { .. } => None,
        }
    }
}

/// What applying a command did. Failed preconditions are outcomes, not errors: they are
/// decided by the replicated state machine and are the same on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    Created(KeyValue),
    /// The new value, and the value it replaced.
    Updated {
        kv: KeyValue,
        prev: KeyValue,
    },
    /// The deleted value, and the revision of the deletion.
    Deleted {
        prev: KeyValue,
        revision: Revision,
    },
    Compacted {
        revision: Revision,
    },
    AlreadyExists {
        current: KeyValue,
    },
    NotFound,
    /// The key's mod revision was not the expected one; `current` is what is stored now.
    Conflict {
        current: KeyValue,
    },
    /// A compaction at or below the current compacted revision, or above the current revision.
    CompactionRefused {
        compact_revision: Revision,
        current_revision: Revision,
    },
    /// The command was malformed (for example an invalid key); nothing was written.
    Rejected {
        reason: String,
    },
}

/// Errors of the store's client-facing operations.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreError {
    #[error("key {key:?} already exists")]
    AlreadyExists { key: String, current: Box<KeyValue> },
    #[error("key {key:?} not found")]
    NotFound { key: String },
    #[error("key {key:?} was modified: expected mod revision {expected}, found {}", current.mod_revision)]
    Conflict {
        key: String,
        expected: Revision,
        current: Box<KeyValue>,
    },
    /// The requested revision is older than the oldest kept history (HTTP 410 Gone).
    #[error("revision {requested} has been compacted (oldest available is {})", compact_revision + 1)]
    Compacted {
        requested: Revision,
        compact_revision: Revision,
    },
    /// The requested revision is newer than anything written yet.
    #[error("revision {requested} is in the future (current revision is {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("invalid continue token: {0}")]
    InvalidContinue(String),
    /// No leader, or the cluster could not be reached; the write may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The outcome is unknown (for example the leader failed after accepting the write).
    #[error("store request timed out: {0}")]
    Timeout(String),
    #[error("store internal error: {0}")]
    Internal(String),
}

/// One page of a prefix listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage {
    pub items: Vec<KeyValue>,
    /// The revision the whole listing (every page of it) is consistent at.
    pub revision: Revision,
    /// Token for the next page, `None` when this was the last one.
    pub continue_token: Option<String>,
}

/// How to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// At most this many items (0 = no limit).
    pub limit: usize,
    /// Continue a listing from a previous page's token.
    pub continue_token: Option<String>,
    /// List at this past revision instead of the latest one (ignored with a continue token,
    /// which carries its own).
    pub revision: Option<Revision>,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// For `Put` the new value; for `Delete` the key with an empty value, whose
    /// `mod_revision` is the revision of the deletion.
    pub kv: KeyValue,
    /// The value before this change, when there was one and it is still in history.
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// Keys are `/registry/<group>/<resource>/<namespace>/<name>` paths. The engine reserves the
/// NUL byte as a separator, and an empty key would match every prefix.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let invalid = |reason: &str| {
        Err(StoreError::InvalidKey {
            key: key.to_string(),
            reason: reason.to_string(),
        })
    };
    if key.is_empty() {
        return invalid("empty key");
    }
    if key.len() > MAX_KEY_LEN {
        return invalid("longer than 4096 bytes");
    }
    if key.contains('\0') {
        return invalid("contains a NUL byte");
    }
    Ok(())
}

/// Longest key the store accepts.
pub const MAX_KEY_LEN: usize = 4096;

/// The continue token of a paged listing: the revision the listing is pinned to and the
/// last key returned. Opaque to callers (base64 of JSON, like the Kubernetes apiserver's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ContinueToken {
    #[serde(rename = "v")]
    pub version: u32,
    #[serde(rename = "rv")]
    pub revision: Revision,
    /// The last key of the previous page; the next page starts after it.
    #[serde(rename = "after")]
    pub after_key: String,
}

impl ContinueToken {
    const VERSION: u32 = 1;

    pub fn new(revision: Revision, after_key: String) -> Self {
        ContinueToken {
            version: Self::VERSION,
            revision,
            after_key,
        }
    }

    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let json = serde_json::to_vec(self).expect("continue token serializes");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// Decodes a token and checks it belongs to a listing of `prefix`.
    pub fn decode(token: &str, prefix: &str) -> Result<Self, StoreError> {
        use base64::Engine as _;
        let bad = |why: &str| StoreError::InvalidContinue(why.to_string());
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|_| bad("not base64"))?;
        let parsed: ContinueToken = serde_json::from_slice(&json).map_err(|_| bad("malformed"))?;
        if parsed.version != Self::VERSION {
            return Err(bad("unsupported version"));
        }
        if !parsed.after_key.starts_with(prefix) {
            return Err(bad("token does not belong to this listing"));
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("/registry/configmaps/default/a").is_ok());
        assert!(matches!(
            validate_key(""),
            Err(StoreError::InvalidKey { .. })
        ));
        assert!(matches!(
            validate_key("a\0b"),
            Err(StoreError::InvalidKey { .. })
        ));
        assert!(matches!(
            validate_key(&"x".repeat(MAX_KEY_LEN + 1)),
            Err(StoreError::InvalidKey { .. })
        ));
    }

    #[test]
    fn continue_token_round_trips_and_is_bound_to_its_prefix() {
        let token = ContinueToken::new(42, "/registry/pods/default/web-1".into());
        let encoded = token.encode();
        assert_eq!(
            ContinueToken::decode(&encoded, "/registry/pods/").unwrap(),
            token
        );
        assert!(ContinueToken::decode(&encoded, "/registry/secrets/").is_err());
        assert!(ContinueToken::decode("%%%", "/registry/pods/").is_err());
        assert!(ContinueToken::decode("e30", "/registry/pods/").is_err()); // "{}"
    }
}
