//! openraft's state machine: applies committed entries to the store's engine in batches, and
//! takes and installs snapshots of it.
//!
//! Applying does not fsync; the engine is made durable by checkpoints (periodic, when its
//! memtable passes [`MEMTABLE_BYTES`], for every snapshot, at shutdown) and by snapshot
//! installs. What a crash rolls back is replayed from the Raft log.
//!
//! A snapshot is a checkpoint: the engine's redb file already is a durable image of the state,
//! so "building" one writes no second copy (which on flash would cost the whole state again
//! every few thousand writes). The image sent to a follower that fell behind is exported from
//! the engine when a follower needs it, at the engine's state then, which openraft accepts
//! (a shipped snapshot may be newer than the one it last built). openraft purges the log only
//! up to a built snapshot, and every built snapshot is durable in the engine, so the log
//! always holds what a restart must replay.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftLogId, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::types::{
    storage_error, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::store::{CommandOutcome, Engine, EngineError};

/// Checkpoint once this much is applied but not yet in redb, even if the timer has not fired:
/// bigger amortizes flash writes over more updates, smaller bounds memory.
pub const MEMTABLE_BYTES: usize = 16 << 20;
/// Past this, applying waits for a checkpoint (the background one fell behind).
const MEMTABLE_HARD_LIMIT: usize = 4 * MEMTABLE_BYTES;

/// What the engine stores with each applied batch: where in the log it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AppliedMarker {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

impl AppliedMarker {
    fn decode(raw: &[u8]) -> Result<Self, StorageError> {
        if raw.is_empty() {
            return Ok(AppliedMarker::default());
        }
        postcard::from_bytes(raw)
            .map_err(|e| storage_error(ErrorSubject::StateMachine, ErrorVerb::Read, &e))
    }

    fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("applied marker serializes")
    }
}

fn sm_error(verb: ErrorVerb, e: &(dyn std::error::Error + 'static)) -> StorageError {
    storage_error(ErrorSubject::StateMachine, verb, e)
}

fn snapshot_error(verb: ErrorVerb, e: &(dyn std::error::Error + 'static)) -> StorageError {
    storage_error(ErrorSubject::Snapshot(None), verb, e)
}

async fn blocking<T: Send + 'static>(
    verb: ErrorVerb,
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| sm_error(verb, &e))?
}

/// Wakes the background checkpoint loop early.
#[derive(Clone, Default)]
pub struct CheckpointRequest(Arc<tokio::sync::Notify>);

impl CheckpointRequest {
    pub fn request(&self) {
        self.0.notify_one();
    }

    pub async fn requested(&self) {
        self.0.notified().await;
    }
}

/// The state machine of one server.
pub struct StateMachine {
    engine: Arc<Engine>,
    checkpoints: CheckpointRequest,
    /// openraft's first snapshot query comes at startup and reads only the description.
    described_at_startup: bool,
    /// The marker of the last applied batch (mirrors what the engine stores).
    marker: AppliedMarker,
}

impl StateMachine {
    pub fn new(engine: Arc<Engine>, checkpoints: CheckpointRequest) -> Result<Self, StorageError> {
        let marker = AppliedMarker::decode(&engine.applied_marker())?;
        Ok(StateMachine {
            engine,
            checkpoints,
            described_at_startup: false,
            marker,
        })
    }

    fn builder(&self) -> SnapshotBuilder {
        SnapshotBuilder {
            engine: self.engine.clone(),
        }
    }
}

/// The openraft description of the state an applied marker stands for.
fn describe(marker: &[u8]) -> Result<SnapshotMeta, StorageError> {
    let marker = AppliedMarker::decode(marker)?;
    let snapshot_id = match marker.last_applied {
        Some(id) => format!("{}-{}", id.leader_id.term, id.index),
        None => "empty".to_string(),
    };
    Ok(SnapshotMeta {
        last_log_id: marker.last_applied,
        last_membership: marker.membership,
        snapshot_id,
    })
}

/// The openraft description of an exported engine image.
fn snapshot_meta(image: &[u8]) -> Result<SnapshotMeta, StorageError> {
    let header =
        Engine::read_snapshot_header(image).map_err(|e| snapshot_error(ErrorVerb::Read, &e))?;
    describe(&header.marker)
}

pub struct SnapshotBuilder {
    engine: Arc<Engine>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// A checkpoint; openraft keeps only the description of what it built.
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let engine = self.engine.clone();
        let marker = blocking(ErrorVerb::Write, move || {
            engine
                .checkpoint()
                .map_err(|e| sm_error(ErrorVerb::Write, &e))?;
            Ok(engine.durable_marker())
        })
        .await?;
        let meta = describe(&marker)?;
        tracing::info!(snapshot = %meta.snapshot_id, "checkpointed the store as a snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.marker.last_applied, self.marker.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandOutcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut marker = self.marker.clone();
        // All commands of all entries go to the engine as one transaction; `counts` splits
        // the outcomes back per entry.
        let mut commands = Vec::new();
        let mut counts = Vec::new();
        for entry in entries {
            let log_id = *entry.get_log_id();
            marker.last_applied = Some(log_id);
            match entry.payload {
                EntryPayload::Normal(proposal) => {
                    counts.push(proposal.commands.len());
                    commands.extend(proposal.commands.into_iter().map(Some));
                }
                EntryPayload::Membership(membership) => {
                    marker.membership = StoredMembership::new(Some(log_id), membership);
                    counts.push(0);
                }
                EntryPayload::Blank => counts.push(0),
            }
        }
        if counts.is_empty() {
            return Ok(Vec::new());
        }
        let engine = self.engine.clone();
        let encoded = marker.encode();
        let outcomes = blocking(ErrorVerb::Write, move || {
            let outcomes = engine
                .apply_batch(&commands, &encoded)
                .map_err(|e| sm_error(ErrorVerb::Write, &e))?;
            if engine.unflushed_bytes() >= MEMTABLE_HARD_LIMIT {
                engine
                    .checkpoint()
                    .map_err(|e| sm_error(ErrorVerb::Write, &e))?;
            }
            Ok(outcomes)
        })
        .await?;
        self.marker = marker;
        if self.engine.unflushed_bytes() >= MEMTABLE_BYTES {
            self.checkpoints.request();
        }
        let mut outcomes = outcomes
            .into_iter()
            .map(|o| o.expect("every command has an outcome"));
        Ok(counts
            .into_iter()
            .map(|count| outcomes.by_ref().take(count).collect())
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.builder()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let image = snapshot.into_inner();
        let described = snapshot_meta(&image)?;
        if described.last_log_id != meta.last_log_id {
            return Err(snapshot_error(
                ErrorVerb::Read,
                &EngineError::Snapshot(format!(
                    "snapshot data is at {:?} but was announced at {:?}",
                    described.last_log_id, meta.last_log_id
                )),
            ));
        }
        let engine = self.engine.clone();
        blocking(ErrorVerb::Write, move || {
            // The import is durable when it returns: the log may be purged up to it.
            engine
                .import(image.as_slice())
                .map(|_| ())
                .map_err(|e| snapshot_error(ErrorVerb::Write, &e))
        })
        .await?;
        self.marker = AppliedMarker {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        tracing::info!(snapshot = %meta.snapshot_id, "installed a store snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        if !self.described_at_startup {
            // Called once from Raft::new for the description only: don't export the state.
            self.described_at_startup = true;
            let marker = self.engine.durable_marker();
            if marker.is_empty() {
                return Ok(None);
            }
            return Ok(Some(Snapshot {
                meta: describe(&marker)?,
                snapshot: Box::new(Cursor::new(Vec::new())),
            }));
        }
        let engine = self.engine.clone();
        let image = blocking(ErrorVerb::Read, move || {
            let mut image = Vec::new();
            engine
                .export(&mut image)
                .map_err(|e| snapshot_error(ErrorVerb::Read, &e))?;
            Ok(image)
        })
        .await?;
        let meta = snapshot_meta(&image)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = image.len(), "exported a store snapshot for a follower");
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(image)),
        }))
    }
}
