//! The in-memory layer in front of redb. Applied writes land here and reach redb in one
//! transaction per flush (a checkpoint), not one per applied batch: redb is copy-on-write, so
//! every commit rewrites the path from each touched leaf to the root, and at one commit per
//! write that, not the data, would be most of what is written to flash.
//!
//! Maps are persistent (`imbl`), so readers take a consistent copy in O(1) while writers go
//! on. They mirror the redb tables: `live` (with deletions as `None`, masking older layers),
//! `revs` and `key_revs`.

use bytes::Bytes;
use imbl::OrdMap;

use super::encoding::{version_key, LiveMeta};

/// Rough per-entry overhead of the maps, for the size estimate.
const ENTRY_OVERHEAD: usize = 64;

#[derive(Clone, Default)]
pub(super) struct Memtable {
    /// Live keys written since the last flush; `None` marks a deletion.
    pub live: OrdMap<String, Option<LiveMeta>>,
    /// Encoded `RevRecord`s by revision.
    pub revs: OrdMap<u64, Bytes>,
    /// Index of `revs` by key: `key NUL revision`.
    pub key_revs: OrdMap<Vec<u8>, ()>,
    /// Approximate bytes held.
    pub bytes: usize,
}

impl Memtable {
    pub fn set_live(&mut self, key: &str, meta: Option<LiveMeta>) {
        if self.live.insert(key.to_string(), meta).is_none() {
            self.bytes += key.len() + ENTRY_OVERHEAD + LiveMeta::LEN;
        }
    }

    /// Records what revision `revision` wrote to `key`.
    pub fn add_rev(&mut self, revision: u64, key: &str, record: Vec<u8>) {
        self.bytes += record.len() + key.len() + 2 * ENTRY_OVERHEAD;
        self.revs.insert(revision, Bytes::from(record));
        self.key_revs.insert(version_key(key, revision), ());
    }
}
