//! Reads: single keys, prefix listings (latest or at a past revision, paged), and history
//! replay for watchers. Every read runs in one redb read transaction, so it is consistent at
//! one revision.

use redb::{ReadOnlyTable, ReadTransaction, ReadableDatabase};

use super::encoding::{
    first_version_key_after, split_version_key, version_key, LiveMeta, VersionRecord,
};
use super::{
    Engine, EngineError, CHANGES, LIVE, META, META_COMPACT_REVISION, META_REVISION, VERSIONS,
};
use crate::store::types::{
    ContinueToken, Event, EventKind, KeyValue, ListOptions, ListPage, Revision, StoreError,
};

pub(super) fn meta_bytes(
    meta: &ReadOnlyTable<&str, &[u8]>,
    name: &str,
) -> Result<Vec<u8>, EngineError> {
    Ok(meta
        .get(name)?
        .map(|v| v.value().to_vec())
        .unwrap_or_default())
}

pub(super) fn meta_u64(meta: &ReadOnlyTable<&str, &[u8]>, name: &str) -> Result<u64, EngineError> {
    let raw = meta_bytes(meta, name)?;
    if raw.is_empty() {
        return Ok(0);
    }
    let bytes: [u8; 8] = raw
        .as_slice()
        .try_into()
        .map_err(|_| EngineError::Corrupt(format!("meta {name} is {} bytes", raw.len())))?;
    Ok(u64::from_le_bytes(bytes))
}

/// A read transaction with the engine's tables open.
struct Reader {
    live: ReadOnlyTable<&'static str, &'static [u8]>,
    versions: ReadOnlyTable<&'static [u8], &'static [u8]>,
    changes: ReadOnlyTable<u64, &'static str>,
    revision: Revision,
    compact_revision: Revision,
}

impl Reader {
    fn new(txn: &ReadTransaction) -> Result<Self, EngineError> {
        let meta = txn.open_table(META)?;
        Ok(Reader {
            live: txn.open_table(LIVE)?,
            versions: txn.open_table(VERSIONS)?,
            changes: txn.open_table(CHANGES)?,
            revision: meta_u64(&meta, META_REVISION)?,
            compact_revision: meta_u64(&meta, META_COMPACT_REVISION)?,
        })
    }

    fn version(&self, key: &str, revision: Revision) -> Result<Option<VersionRecord>, EngineError> {
        let raw = self.versions.get(version_key(key, revision).as_slice())?;
        match raw {
            None => Ok(None),
            Some(raw) => VersionRecord::decode(raw.value())
                .map(Some)
                .ok_or_else(|| EngineError::Corrupt(format!("version {revision} of {key:?}"))),
        }
    }

    fn live(&self, key: &str) -> Result<Option<KeyValue>, EngineError> {
        let Some(raw) = self.live.get(key)? else {
            return Ok(None);
        };
        let meta = LiveMeta::decode(raw.value())
            .ok_or_else(|| EngineError::Corrupt(format!("live entry of {key:?}")))?;
        let record = self.version(key, meta.mod_revision)?.ok_or_else(|| {
            EngineError::Corrupt(format!(
                "version {} of live key {key:?} is missing",
                meta.mod_revision
            ))
        })?;
        Ok(Some(record.into_key_value(key, meta.mod_revision)))
    }

    /// The newest version of `key` strictly below `before`, with its revision.
    fn version_before(
        &self,
        key: &str,
        before: Revision,
    ) -> Result<Option<(Revision, VersionRecord)>, EngineError> {
        let lower = version_key(key, 0);
        let upper = version_key(key, before);
        let Some(entry) = self
            .versions
            .range(lower.as_slice()..upper.as_slice())?
            .next_back()
        else {
            return Ok(None);
        };
        let (raw_key, raw_value) = entry?;
        let (_, revision) = split_version_key(raw_key.value())
            .ok_or_else(|| EngineError::Corrupt(format!("version key of {key:?}")))?;
        let record = VersionRecord::decode(raw_value.value())
            .ok_or_else(|| EngineError::Corrupt(format!("version {revision} of {key:?}")))?;
        Ok(Some((revision, record)))
    }

    fn check_revision(&self, requested: Revision) -> Result<(), StoreError> {
        if requested < self.compact_revision {
            return Err(StoreError::Compacted {
                requested,
                compact_revision: self.compact_revision,
            });
        }
        if requested > self.revision {
            return Err(StoreError::FutureRevision {
                requested,
                current: self.revision,
            });
        }
        Ok(())
    }

    /// Live keys under `prefix` starting after `after`, at the reader's revision.
    fn list_live(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, bool), EngineError> {
        let start = match after {
            Some(after) => format!("{after}\u{1}"),
            None => prefix.to_string(),
        };
        let mut items = Vec::new();
        for entry in self.live.range(start.as_str()..)? {
            let (key, raw) = entry?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            if limit > 0 && items.len() == limit {
                return Ok((items, true));
            }
            let meta = LiveMeta::decode(raw.value())
                .ok_or_else(|| EngineError::Corrupt(format!("live entry of {key:?}")))?;
            let record = self.version(key, meta.mod_revision)?.ok_or_else(|| {
                EngineError::Corrupt(format!(
                    "version {} of live key {key:?} is missing",
                    meta.mod_revision
                ))
            })?;
            items.push(record.into_key_value(key, meta.mod_revision));
        }
        Ok((items, false))
    }

    /// Keys under `prefix` starting after `after`, as they were at `revision`.
    fn list_at(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        revision: Revision,
    ) -> Result<(Vec<KeyValue>, bool), EngineError> {
        let start = match after {
            Some(after) => first_version_key_after(after),
            None => prefix.as_bytes().to_vec(),
        };
        let mut items = Vec::new();
        // The newest version at or below `revision` of the key being scanned.
        let mut candidate: Option<(String, Revision, Vec<u8>)> = None;
        let flush = |candidate: Option<(String, Revision, Vec<u8>)>,
                     items: &mut Vec<KeyValue>|
         -> Result<(), EngineError> {
            if let Some((key, rev, raw)) = candidate {
                if !VersionRecord::is_tombstone(&raw) {
                    let record = VersionRecord::decode(&raw)
                        .ok_or_else(|| EngineError::Corrupt(format!("version {rev} of {key:?}")))?;
                    items.push(record.into_key_value(&key, rev));
                }
            }
            Ok(())
        };
        for entry in self.versions.range(start.as_slice()..)? {
            let (raw_key, raw_value) = entry?;
            let (key, rev) = split_version_key(raw_key.value())
                .ok_or_else(|| EngineError::Corrupt("malformed version key".to_string()))?;
            if !key.starts_with(prefix) {
                break;
            }
            let same_key = candidate.as_ref().is_some_and(|(k, _, _)| k == key);
            if !same_key {
                flush(candidate.take(), &mut items)?;
                if limit > 0 && items.len() > limit {
                    break;
                }
            }
            if rev <= revision {
                candidate = Some((key.to_string(), rev, raw_value.value().to_vec()));
            }
        }
        flush(candidate.take(), &mut items)?;
        let more = limit > 0 && items.len() > limit;
        items.truncate(if limit > 0 { limit } else { items.len() });
        Ok((items, more))
    }
}

impl Engine {
    fn reader(&self) -> Result<Reader, EngineError> {
        let txn = self.db.begin_read()?;
        Reader::new(&txn)
    }

    /// The current value of `key`, if it is live.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, EngineError> {
        self.reader()?.live(key)
    }

    /// The value `key` had at `revision`.
    pub fn get_at(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>, StoreError> {
        let reader = self.reader()?;
        reader.check_revision(revision)?;
        if revision == reader.revision {
            return Ok(reader.live(key)?);
        }
        Ok(match reader.version_before(key, revision + 1)? {
            Some((rev, record)) if !record.tombstone => Some(record.into_key_value(key, rev)),
            _ => None,
        })
    }

    /// One page of the keys under `prefix`, consistent at one revision across pages.
    pub fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage, StoreError> {
        let reader = self.reader()?;
        let (revision, after) = match &options.continue_token {
            Some(token) => {
                let token = ContinueToken::decode(token, prefix)?;
                (token.revision, Some(token.after_key))
            }
            None => (options.revision.unwrap_or(reader.revision), None),
        };
        reader.check_revision(revision)?;
        let (items, more) = if revision == reader.revision {
            reader.list_live(prefix, after.as_deref(), options.limit)?
        } else {
            reader.list_at(prefix, after.as_deref(), options.limit, revision)?
        };
        let continue_token = match (more, items.last()) {
            (true, Some(last)) => Some(ContinueToken::new(revision, last.key.clone()).encode()),
            _ => None,
        };
        Ok(ListPage {
            items,
            revision,
            continue_token,
        })
    }

    /// Up to `max_events` events under `prefix` after revision `after`, in revision order, and
    /// the revision up to which history was scanned (so a caller can continue from there).
    pub fn changes_after(
        &self,
        prefix: &str,
        after: Revision,
        max_events: usize,
    ) -> Result<(Vec<Event>, Revision), StoreError> {
        let reader = self.reader()?;
        if after < reader.compact_revision {
            return Err(StoreError::Compacted {
                requested: after,
                compact_revision: reader.compact_revision,
            });
        }
        let mut events = Vec::new();
        let mut scanned = after.max(reader.compact_revision);
        for entry in reader
            .changes
            .range(after + 1..)
            .map_err(EngineError::from)?
        {
            let (rev, key) = entry.map_err(EngineError::from)?;
            let (rev, key) = (rev.value(), key.value());
            if events.len() == max_events {
                return Ok((events, scanned));
            }
            scanned = rev;
            if !key.starts_with(prefix) {
                continue;
            }
            events.push(reader.event_at(key, rev)?);
        }
        Ok((events, reader.revision.max(scanned)))
    }
}

impl Reader {
    /// The event of the change to `key` at `revision`.
    fn event_at(&self, key: &str, revision: Revision) -> Result<Event, EngineError> {
        let record = self.version(key, revision)?.ok_or_else(|| {
            EngineError::Corrupt(format!("history {revision} of {key:?} is missing"))
        })?;
        let prev = match self.version_before(key, revision)? {
            Some((rev, prev)) if !prev.tombstone => Some(prev.into_key_value(key, rev)),
            _ => None,
        };
        Ok(if record.tombstone {
            Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.to_string(),
                    value: bytes::Bytes::new(),
                    create_revision: record.create_revision,
                    mod_revision: revision,
                    version: 0,
                },
                prev,
            }
        } else {
            Event {
                kind: EventKind::Put,
                kv: record.into_key_value(key, revision),
                prev,
            }
        })
    }
}
