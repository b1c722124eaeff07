//! openraft's log storage on the write-ahead log: entries are postcard-encoded Raft entries;
//! vote, committed and purged log ids travel together as the log's meta blob.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogId, RaftLogReader};
use serde::{Deserialize, Serialize};

use super::wal::{Wal, WalError};
use crate::raft::types::{storage_error, Entry, LogId, StorageError, TypeConfig, Vote};

/// The small state that must survive restarts alongside the entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LogMeta {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

struct Inner {
    wal: Wal,
    meta: Mutex<LogMeta>,
    last_log_id: Mutex<Option<LogId>>,
}

/// The Raft log of one server. Clones share the same log (openraft hands readers to its
/// replication tasks).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

fn log_error(verb: ErrorVerb, e: &WalError) -> StorageError {
    storage_error(ErrorSubject::Logs, verb, e)
}

/// Entries are stored as a format byte and the postcard encoding, zstd-compressed when that
/// is smaller: Kubernetes objects are JSON and compress several times over, and on flash
/// fewer bytes per entry means fewer pages rewritten per fsync.
const RAW: u8 = 0;
const ZSTD: u8 = 1;
/// Smaller entries are not worth compressing.
const COMPRESS_FROM: usize = 256;

fn encode(entry: &Entry) -> Result<Bytes, StorageError> {
    let log_id = *entry.get_log_id();
    let failed = |e: &(dyn std::error::Error + 'static)| {
        storage_error(ErrorSubject::Log(log_id), ErrorVerb::Write, e)
    };
    let plain = postcard::to_allocvec(entry).map_err(|e| failed(&e))?;
    if plain.len() >= COMPRESS_FROM {
        let compressed = zstd::bulk::compress(&plain, 1).map_err(|e| failed(&e))?;
        if compressed.len() < plain.len() {
            return Ok(Bytes::from([&[ZSTD][..], &compressed].concat()));
        }
    }
    Ok(Bytes::from([&[RAW][..], &plain].concat()))
}

fn decode(index: u64, payload: &[u8]) -> Result<Entry, StorageError> {
    let failed = |e: &(dyn std::error::Error + 'static)| {
        storage_error(ErrorSubject::LogIndex(index), ErrorVerb::Read, e)
    };
    match payload.split_first() {
        Some((&RAW, plain)) => postcard::from_bytes(plain).map_err(|e| failed(&e)),
        Some((&ZSTD, compressed)) => {
            let plain = zstd::decode_all(compressed).map_err(|e| failed(&e))?;
            postcard::from_bytes(&plain).map_err(|e| failed(&e))
        }
        _ => Err(failed(&WalError::Inconsistent(format!(
            "entry {index} has an unknown format"
        )))),
    }
}

impl LogStore {
    /// The log in `wal`, with the meta blob it recovered.
    pub fn new(wal: Wal, recovered_meta: &[u8]) -> Result<LogStore, StorageError> {
        let meta: LogMeta = if recovered_meta.is_empty() {
            LogMeta::default()
        } else {
            postcard::from_bytes(recovered_meta)
                .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, &e))?
        };
        let last_log_id = match wal.entries() {
            Some((_, last)) => {
                let entries = wal
                    .read(last..last + 1)
                    .map_err(|e| log_error(ErrorVerb::Read, &e))?;
                let (index, payload) = entries.first().ok_or_else(|| {
                    log_error(
                        ErrorVerb::Read,
                        &WalError::Inconsistent("last entry unreadable".into()),
                    )
                })?;
                Some(*decode(*index, payload)?.get_log_id())
            }
            None => meta.purged,
        };
        Ok(LogStore {
            inner: Arc::new(Inner {
                wal,
                meta: Mutex::new(meta),
                last_log_id: Mutex::new(last_log_id),
            }),
        })
    }

    /// Writes the meta blob; with `durable`, waits until it is on disk.
    async fn save_meta(
        &self,
        update: impl FnOnce(&mut LogMeta),
        durable: bool,
    ) -> Result<(), StorageError> {
        let blob = {
            let mut meta = self.inner.meta.lock().expect("log meta");
            update(&mut meta);
            Bytes::from(postcard::to_allocvec(&*meta).expect("log meta serializes"))
        };
        if !durable {
            return self
                .inner
                .wal
                .set_meta(blob, None)
                .map_err(|e| log_error(ErrorVerb::Write, &e));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner
            .wal
            .set_meta(
                blob,
                Some(Box::new(move |result| {
                    let _ = tx.send(result);
                })),
            )
            .map_err(|e| log_error(ErrorVerb::Write, &e))?;
        rx.await
            .map_err(|_| {
                log_error(
                    ErrorVerb::Write,
                    &WalError::Failed("log writer stopped".into()),
                )
            })?
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, &e))
    }

    /// Flushes the log and stops its writer.
    pub fn close(&self) -> Result<(), WalError> {
        self.inner.wal.close()
    }

    pub fn wal_stats(&self) -> super::wal::WalStats {
        self.inner.wal.stats()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e + 1,
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        let inner = self.inner.clone();
        let raw = tokio::task::spawn_blocking(move || inner.wal.read(start..end))
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?
            .map_err(|e| log_error(ErrorVerb::Read, &e))?;
        raw.iter()
            .map(|(index, payload)| decode(*index, payload))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged = self.inner.meta.lock().expect("log meta").purged;
        let last = *self.inner.last_log_id.lock().expect("last log id");
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.save_meta(|meta| meta.vote = Some(vote), true).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.inner.meta.lock().expect("log meta").vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: a lost committed id only delays re-applying until the next commit.
        self.save_meta(|meta| meta.committed = committed, false)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.inner.meta.lock().expect("log meta").committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        let mut last = None;
        for entry in entries {
            let log_id = *entry.get_log_id();
            encoded.push((log_id.index, encode(&entry)?));
            last = Some(log_id);
        }
        let Some(last) = last else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        self.inner
            .wal
            .append(
                encoded,
                Box::new(move |result| callback.log_io_completed(result)),
            )
            .map_err(|e| log_error(ErrorVerb::Write, &e))?;
        *self.inner.last_log_id.lock().expect("last log id") = Some(last);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.inner
            .wal
            .truncate(log_id.index)
            .map_err(|e| log_error(ErrorVerb::Delete, &e))?;
        let previous = match log_id.index.checked_sub(1) {
            Some(index) => {
                let mut reader = self.clone();
                reader
                    .try_get_log_entries(index..index + 1)
                    .await?
                    .first()
                    .map(|entry| *entry.get_log_id())
            }
            None => None,
        };
        let purged = self.inner.meta.lock().expect("log meta").purged;
        *self.inner.last_log_id.lock().expect("last log id") = previous.or(purged);
        Ok(())
    }

    /// openraft purges only up to a snapshot, and the state machine is durable up to every
    /// snapshot it builds or installs (see `state_machine`), so what goes is never needed to
    /// rebuild the state machine after a crash.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge point is recorded durably first, so a crash can never leave deleted
        // segments behind a purge point that says they still exist.
        self.save_meta(|meta| meta.purged = Some(log_id), true)
            .await?;
        self.inner
            .wal
            .purge(log_id.index)
            .map_err(|e| log_error(ErrorVerb::Delete, &e))?;
        let mut last = self.inner.last_log_id.lock().expect("last log id");
        if last.is_none_or(|last| last.index <= log_id.index) {
            *last = Some(log_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::raft::batcher::Proposal;
    use crate::store::Command;

    fn entry(index: u64, value: Vec<u8>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
            payload: EntryPayload::Normal(Proposal {
                commands: vec![Command::Create {
                    key: "/registry/configmaps/default/c".into(),
                    value: value.into(),
                }],
            }),
        }
    }

    #[test]
    fn entries_round_trip_compressed_or_not() {
        let json = br#"{"apiVersion":"v1","kind":"ConfigMap","data":{"a":"aaaa"}}"#.repeat(40);
        let compressible = entry(7, json.clone());
        let encoded = encode(&compressible).unwrap();
        assert_eq!(encoded[0], ZSTD);
        assert!(
            encoded.len() < json.len() / 4,
            "JSON should compress well: {} bytes",
            encoded.len()
        );
        assert_eq!(decode(7, &encoded).unwrap(), compressible);

        let small = entry(8, b"tiny".to_vec());
        let encoded = encode(&small).unwrap();
        assert_eq!(encoded[0], RAW);
        assert_eq!(decode(8, &encoded).unwrap(), small);

        assert!(decode(9, &[7, 1, 2]).is_err());
        assert!(decode(9, &[ZSTD, 1, 2]).is_err());
    }
}
