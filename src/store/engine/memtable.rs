//! The in-memory layer in front of redb. Applied writes land here and reach redb in one
//! transaction per flush (a checkpoint), not one per applied batch: redb is copy-on-write, so
//! every commit rewrites the path from each touched leaf to the root, and at one commit per
//! write that, not the data, would be most of what is written to flash.
//!
//! Maps are persistent (`imbl`), so readers take a consistent copy in O(1) while writers go
//! on. Entries mirror the redb tables: `live` (with deletions as `None`, masking older
//! layers), `versions` and `changes`.

use bytes::Bytes;
use imbl::OrdMap;

use super::encoding::LiveMeta;

/// Rough per-entry overhead of the maps, for the size estimate.
const ENTRY_OVERHEAD: usize = 64;

#[derive(Clone, Default)]
pub(super) struct Memtable {
    /// Live keys written since the last flush; `None` marks a deletion.
    pub live: OrdMap<String, Option<LiveMeta>>,
    /// Encoded `VersionRecord`s by version key.
    pub versions: OrdMap<Vec<u8>, Bytes>,
    /// Revision → key.
    pub changes: OrdMap<u64, String>,
    /// Approximate bytes held.
    pub bytes: usize,
}

impl Memtable {
    pub fn set_live(&mut self, key: &str, meta: Option<LiveMeta>) {
        if self.live.insert(key.to_string(), meta).is_none() {
            self.bytes += key.len() + ENTRY_OVERHEAD + LiveMeta::LEN;
        }
    }

    pub fn add_version(&mut self, version_key: Vec<u8>, record: Vec<u8>) {
        self.bytes += version_key.len() + record.len() + ENTRY_OVERHEAD;
        self.versions.insert(version_key, Bytes::from(record));
    }

    pub fn add_change(&mut self, revision: u64, key: &str) {
        self.bytes += key.len() + 8 + ENTRY_OVERHEAD;
        self.changes.insert(revision, key.to_string());
    }
}
