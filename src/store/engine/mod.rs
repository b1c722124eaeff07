//! The embedded engine under the store: live keys, their versions within the history window,
//! and a revision index for watch replay, in redb behind an in-memory layer.
//!
//! Writes arrive only through [`Engine::apply_batch`], in replicated-log order, and land in
//! the [`memtable`]; [`Engine::checkpoint`] moves them to redb in one durable transaction.
//! The replicated log is the durable record of everything since: after a crash the engine
//! reopens at its last checkpoint and the caller replays the log from the marker stored
//! with it. The engine knows nothing of that log: the marker is opaque bytes.
//!
//! Tables (and the memtable's maps, which mirror them):
//! - `live`: key → [`LiveMeta`] (create/mod revision, version) for every live key;
//! - `revs`: revision → [`RevRecord`] (key and value, or tombstone): each write within the
//!   history window, plus the newest version of each key at or below the compacted revision,
//!   so that state at any revision since compaction can be rebuilt. Keyed by revision, as
//!   etcd's backend is: new history is appended at the end of the tree and compaction removes
//!   it from the start, so a checkpoint writes mostly new pages;
//! - `key_revs`: `key NUL revision` → (), the index of `revs` by key;
//! - `meta`: current and compacted revision, and the caller's applied marker.
//!
//! Compaction is logical at once (reads below the compacted revision fail) and physical at
//! the next checkpoint.

mod apply;
mod compact;
mod encoding;
mod memtable;
mod read;
mod snapshot;
mod view;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use self::memtable::Memtable;
use self::view::View;
use super::types::{Command, CommandOutcome, Revision};
use super::watch::WatchHub;

pub use snapshot::SnapshotHeader;

const LIVE: TableDefinition<&str, &[u8]> = TableDefinition::new("live");
const REVS: TableDefinition<u64, &[u8]> = TableDefinition::new("revs");
const KEY_REVS: TableDefinition<&[u8], ()> = TableDefinition::new("key_revs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_COMPACT_REVISION: &str = "compact_revision";
/// History at or below this is already removed from redb (compaction is physical at flush).
const META_PHYSICAL_COMPACT: &str = "physical_compact_revision";
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

/// What is applied but not yet in redb, and the scalars that describe it.
struct State {
    active: Memtable,
    /// The memtable a checkpoint is writing to redb right now.
    frozen: Option<Memtable>,
    revision: Revision,
    compact_revision: Revision,
    marker: Vec<u8>,
    /// Entries applied since the last checkpoint.
    applied_since_checkpoint: u64,
}

/// The revisioned key-value state of one replica.
pub struct Engine {
    db: Database,
    hub: WatchHub,
    state: Mutex<State>,
    /// One checkpoint (or import) at a time.
    flush_lock: Mutex<()>,
    revision: AtomicU64,
    compact_revision: AtomicU64,
    /// The applied marker as of the last durable commit.
    durable_marker: Mutex<Vec<u8>>,
    /// Batches applied since open.
    batches: AtomicU64,
}

/// Sizes of the engine's tables in redb (as of the last checkpoint), for status and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub live_keys: u64,
    /// Revisions whose record is kept (history window plus compacted keys' newest versions).
    pub revisions: u64,
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
            txn.open_table(REVS)?;
            txn.open_table(KEY_REVS)?;
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
            state: Mutex::new(State {
                active: Memtable::default(),
                frozen: None,
                revision,
                compact_revision,
                marker: marker.clone(),
                applied_since_checkpoint: 0,
            }),
            flush_lock: Mutex::new(()),
            revision: AtomicU64::new(revision),
            compact_revision: AtomicU64::new(compact_revision),
            durable_marker: Mutex::new(marker),
            batches: AtomicU64::new(0),
        })
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("engine state lock")
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
    pub fn applied_marker(&self) -> Vec<u8> {
        self.lock_state().marker.clone()
    }

    /// The applied marker as of the last durable commit: what a crash would roll back to.
    pub fn durable_marker(&self) -> Vec<u8> {
        self.durable_marker
            .lock()
            .expect("durable marker lock")
            .clone()
    }

    /// Approximate bytes applied but not yet checkpointed.
    pub fn unflushed_bytes(&self) -> usize {
        let state = self.lock_state();
        state.active.bytes + state.frozen.as_ref().map_or(0, |m| m.bytes)
    }

    /// Batches applied since open.
    pub fn batches_applied(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    pub(crate) fn hub(&self) -> &WatchHub {
        &self.hub
    }

    /// A consistent view of everything applied so far.
    fn view(&self) -> Result<View, EngineError> {
        let state = self.lock_state();
        let mut layers = vec![state.active.clone()];
        layers.extend(state.frozen.clone());
        let txn = self.db.begin_read()?;
        View::new(layers, &txn, state.revision, state.compact_revision)
    }

    /// Applies `commands` in order (a `None` only advances the marker) and records `marker`
    /// with them. Visible to readers at once; durable at the next [`Engine::checkpoint`].
    pub fn apply_batch(
        &self,
        commands: &[Option<Command>],
        marker: &[u8],
    ) -> Result<Vec<Option<CommandOutcome>>, EngineError> {
        let mut state = self.lock_state();
        let lower = {
            let txn = self.db.begin_read()?;
            View::new(
                state.frozen.iter().cloned().collect(),
                &txn,
                state.revision,
                state.compact_revision,
            )?
        };
        let mut revision = state.revision;
        let mut compact_revision = state.compact_revision;
        let mut events = Vec::new();
        let mut outcomes = Vec::with_capacity(commands.len());
        for command in commands {
            outcomes.push(match command {
                None => None,
                Some(Command::Compact { revision: target }) => Some(compact::compact_logically(
                    &mut compact_revision,
                    revision,
                    *target,
                )),
                Some(command) => Some(apply::apply_write(
                    &mut state.active,
                    &lower,
                    command,
                    &mut revision,
                    &mut events,
                )?),
            });
        }
        state.revision = revision;
        state.compact_revision = compact_revision;
        state.marker = marker.to_vec();
        state.applied_since_checkpoint += commands.len().max(1) as u64;
        self.revision.store(revision, Ordering::Release);
        self.compact_revision
            .store(compact_revision, Ordering::Release);
        self.batches.fetch_add(1, Ordering::Relaxed);
        // Under the lock, so events are published in revision order.
        self.hub.publish(events);
        Ok(outcomes)
    }

    /// Makes everything applied so far durable: one redb transaction, one fsync (two with
    /// quick repair). Cheap when nothing changed.
    pub fn checkpoint(&self) -> Result<(), EngineError> {
        let _serialized = self.flush_lock.lock().expect("engine flush lock");
        self.flush()
    }

    /// The body of a checkpoint; the caller holds `flush_lock`.
    fn flush(&self) -> Result<(), EngineError> {
        let (frozen, revision, compact_revision, marker, applied) = {
            let mut state = self.lock_state();
            if state.applied_since_checkpoint == 0 {
                return Ok(());
            }
            let frozen = std::mem::take(&mut state.active);
            state.frozen = Some(frozen.clone());
            let applied = std::mem::take(&mut state.applied_since_checkpoint);
            (
                frozen,
                state.revision,
                state.compact_revision,
                state.marker.clone(),
                applied,
            )
        };
        let written = self.write_to_redb(&frozen, revision, compact_revision, &marker);
        let mut state = self.lock_state();
        state.frozen = None;
        if let Err(e) = written {
            // Nothing is lost: put the writes back under the newer ones and try again later.
            state.active.live = std::mem::take(&mut state.active.live).union(frozen.live);
            state.active.revs = std::mem::take(&mut state.active.revs).union(frozen.revs);
            state.active.key_revs =
                std::mem::take(&mut state.active.key_revs).union(frozen.key_revs);
            state.active.bytes += frozen.bytes;
            state.applied_since_checkpoint += applied;
            return Err(e);
        }
        drop(state);
        *self.durable_marker.lock().expect("durable marker lock") = marker;
        Ok(())
    }

    fn write_to_redb(
        &self,
        memtable: &Memtable,
        revision: Revision,
        compact_revision: Revision,
        marker: &[u8],
    ) -> Result<(), EngineError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        // Quick repair makes reopening after a crash fast (no full-file walk) for a second
        // fsync, paid once per checkpoint.
        txn.set_quick_repair(true);
        {
            let mut tables = apply::Tables::open(&txn)?;
            tables.write_memtable(memtable)?;
            tables.set_meta_u64(META_REVISION, revision)?;
            tables.set_meta_u64(META_COMPACT_REVISION, compact_revision)?;
            tables.set_meta(META_APPLIED, marker)?;
            compact::compact_physically(&mut tables, compact_revision)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Sizes of the tables in redb.
    pub fn stats(&self) -> Result<EngineStats, EngineError> {
        use redb::ReadableTableMetadata;
        let txn = self.db.begin_read()?;
        Ok(EngineStats {
            live_keys: txn.open_table(LIVE)?.len()?,
            revisions: txn.open_table(REVS)?.len()?,
        })
    }
}

#[cfg(test)]
mod tests;
