//! The embedded engine under the store: redb tables holding live keys, their versions within
//! the history window, and a revision index for watch replay.
//!
//! Writes arrive only through [`Engine::apply_batch`], in replicated-log order, and are
//! committed without an fsync each: the replicated log is the durable record, and
//! [`Engine::checkpoint`] makes everything applied so far durable at once. After a crash the
//! engine reopens at its last checkpoint, and the caller replays the log from the marker it
//! stored with it. The engine knows nothing of that log: the marker is opaque bytes.
//!
//! Tables:
//! - `live`: key → [`LiveMeta`] (create/mod revision, version) for every live key;
//! - `versions`: `key NUL revision` → [`VersionRecord`]: each value written within the history
//!   window, plus the newest version at or below the compacted revision, so that state at any
//!   revision since compaction can be rebuilt;
//! - `changes`: revision → key, the order of history;
//! - `meta`: current and compacted revision, and the caller's applied marker.

mod apply;
mod compact;
mod encoding;
mod read;
mod snapshot;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use super::types::{Command, CommandOutcome, Revision};
use super::watch::WatchHub;

pub use snapshot::SnapshotHeader;

const LIVE: TableDefinition<&str, &[u8]> = TableDefinition::new("live");
const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");
const CHANGES: TableDefinition<u64, &str> = TableDefinition::new("changes");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_COMPACT_REVISION: &str = "compact_revision";
const META_APPLIED: &str = "applied";

/// Failures of the engine itself (as opposed to outcomes of commands).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("opening the store database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("store database: {0}")]
    Database(String),
    #[error("store database is corrupt: {0}")]
    Corrupt(String),
    #[error("store snapshot: {0}")]
    Snapshot(String),
}

macro_rules! from_redb {
    ($($ty:ty),*) => {$(
        impl From<$ty> for EngineError {
            fn from(e: $ty) -> Self {
                EngineError::Database(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<EngineError> for super::StoreError {
    fn from(e: EngineError) -> Self {
        super::StoreError::Internal(e.to_string())
    }
}

/// The revisioned key-value state of one replica.
pub struct Engine {
    db: Database,
    hub: WatchHub,
    /// Serializes writers so events are published in revision order.
    write_lock: Mutex<()>,
    revision: AtomicU64,
    compact_revision: AtomicU64,
    /// The applied marker as of the last durable commit.
    durable_marker: Mutex<Vec<u8>>,
    /// Entries applied since the last durable commit.
    applied_since_checkpoint: AtomicU64,
    /// Batches applied since open (each one redb transaction).
    batches: AtomicU64,
}

/// Sizes of the engine's tables, for status and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub live_keys: u64,
    pub versions: u64,
    pub history: u64,
}

impl Engine {
    /// Opens (or creates) the engine at `path` with a page cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Engine, EngineError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|source| EngineError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let txn = db.begin_write()?;
        {
            txn.open_table(LIVE)?;
            txn.open_table(VERSIONS)?;
            txn.open_table(CHANGES)?;
            txn.open_table(META)?;
        }
        txn.commit()?;

        let (revision, compact_revision, marker) = {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            (
                read::meta_u64(&meta, META_REVISION)?,
                read::meta_u64(&meta, META_COMPACT_REVISION)?,
                read::meta_bytes(&meta, META_APPLIED)?,
            )
        };
        Ok(Engine {
            db,
            hub: WatchHub::new(),
            write_lock: Mutex::new(()),
            revision: AtomicU64::new(revision),
            compact_revision: AtomicU64::new(compact_revision),
            durable_marker: Mutex::new(marker),
            applied_since_checkpoint: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        })
    }

    /// The revision of the last applied write.
    pub fn revision(&self) -> Revision {
        self.revision.load(Ordering::Acquire)
    }

    /// History at or below this revision is gone.
    pub fn compact_revision(&self) -> Revision {
        self.compact_revision.load(Ordering::Acquire)
    }

    /// The caller's marker stored with the last applied batch.
    pub fn applied_marker(&self) -> Result<Vec<u8>, EngineError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        read::meta_bytes(&meta, META_APPLIED)
    }

    /// The applied marker as of the last durable commit: what a crash would roll back to.
    pub fn durable_marker(&self) -> Vec<u8> {
        self.durable_marker
            .lock()
            .expect("durable marker lock")
            .clone()
    }

    /// Entries applied since the last checkpoint.
    pub fn applied_since_checkpoint(&self) -> u64 {
        self.applied_since_checkpoint.load(Ordering::Acquire)
    }

    pub(crate) fn hub(&self) -> &WatchHub {
        &self.hub
    }

    /// Applies `commands` in order (a `None` only advances the marker, e.g. for Raft entries
    /// that carry no command) and stores `marker` with them, in one transaction that is
    /// visible to readers at once but durable only at the next [`Engine::checkpoint`].
    pub fn apply_batch(
        &self,
        commands: &[Option<Command>],
        marker: &[u8],
    ) -> Result<Vec<Option<CommandOutcome>>, EngineError> {
        let _serialized = self.write_lock.lock().expect("engine write lock");
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let start_revision = self.revision();
        let (outcomes, events, revision, compact_revision) = {
            let mut tables = apply::Tables::open(&txn)?;
            let mut revision = start_revision;
            let mut compact_revision = self.compact_revision();
            let mut events = Vec::new();
            let mut outcomes = Vec::with_capacity(commands.len());
            for command in commands {
                let outcome = match command {
                    None => None,
                    Some(Command::Compact { revision: target }) => Some(compact::compact(
                        &mut tables,
                        &mut compact_revision,
                        revision,
                        *target,
                    )?),
                    Some(command) => {
                        Some(tables.apply_write(command, &mut revision, &mut events)?)
                    }
                };
                outcomes.push(outcome);
            }
            tables.set_meta_u64(META_REVISION, revision)?;
            tables.set_meta_u64(META_COMPACT_REVISION, compact_revision)?;
            tables.set_meta(META_APPLIED, marker)?;
            (outcomes, events, revision, compact_revision)
        };
        txn.commit()?;
        self.revision.store(revision, Ordering::Release);
        self.compact_revision
            .store(compact_revision, Ordering::Release);
        self.applied_since_checkpoint
            .fetch_add(commands.len() as u64, Ordering::AcqRel);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.hub.publish(events);
        Ok(outcomes)
    }

    /// Makes everything applied so far durable with one fsync. Cheap when nothing changed.
    pub fn checkpoint(&self) -> Result<(), EngineError> {
        let _serialized = self.write_lock.lock().expect("engine write lock");
        if self.applied_since_checkpoint.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let marker = {
            let txn = self.db.begin_read()?;
            let meta = txn.open_table(META)?;
            read::meta_bytes(&meta, META_APPLIED)?
        };
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        // Quick repair makes reopening after a crash fast (no full-file walk); it costs a
        // second fsync, paid once per checkpoint rather than once per write.
        txn.set_quick_repair(true);
        txn.commit()?;
        *self.durable_marker.lock().expect("durable marker lock") = marker;
        self.applied_since_checkpoint.store(0, Ordering::Release);
        Ok(())
    }

    /// Batches applied since open.
    pub fn batches_applied(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Sizes of the tables.
    pub fn stats(&self) -> Result<EngineStats, EngineError> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read()?;
        Ok(EngineStats {
            live_keys: txn.open_table(LIVE)?.len()?,
            versions: txn.open_table(VERSIONS)?.len()?,
            history: txn.open_table(CHANGES)?.len()?,
        })
    }
}

#[cfg(test)]
mod tests;
