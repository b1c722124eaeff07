//! Reads: single keys, prefix listings (latest or at a past revision, paged), and history
//! replay for watchers. Every read works on one [`View`], so it is consistent at one
//! revision.

use redb::ReadOnlyTable;

use super::encoding::{first_version_key_after, split_version_key, RevRecord};
use super::view::View;
use super::{Engine, EngineError};
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

impl View {
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

    /// Live keys under `prefix` after `after`, at the view's revision; and whether more follow.
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
        for entry in self.live_range(&start)? {
            let (key, meta) = entry?;
            if !key.starts_with(prefix) {
                break;
            }
            if limit > 0 && items.len() == limit {
                return Ok((items, true));
            }
            let record = self.version(&key, meta.mod_revision)?.ok_or_else(|| {
                EngineError::Corrupt(format!(
                    "version {} of live key {key:?} is missing",
                    meta.mod_revision
                ))
            })?;
            items.push(record.into_key_value(meta.mod_revision));
        }
        Ok((items, false))
    }

    /// Keys under `prefix` after `after`, as they were at `revision`; and whether more follow.
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
        // The newest revision at or below `revision` of the key being scanned.
        let mut candidate: Option<(String, Revision)> = None;
        let take = |candidate: Option<(String, Revision)>,
                    items: &mut Vec<KeyValue>|
         -> Result<(), EngineError> {
            if let Some((key, rev)) = candidate {
                let record = self.version(&key, rev)?.ok_or_else(|| {
                    EngineError::Corrupt(format!("history of {key:?} names missing revision {rev}"))
                })?;
                if !record.tombstone {
                    items.push(record.into_key_value(rev));
                }
            }
            Ok(())
        };
        for entry in self.key_rev_range(start)? {
            let (raw_key, ()) = entry?;
            let (key, rev) = split_version_key(&raw_key)
                .ok_or_else(|| EngineError::Corrupt("malformed history index".to_string()))?;
            if !key.starts_with(prefix) {
                break;
            }
            if candidate.as_ref().is_none_or(|(k, _)| k != key) {
                take(candidate.take(), &mut items)?;
                if limit > 0 && items.len() > limit {
                    break;
                }
            }
            if rev <= revision {
                candidate = Some((key.to_string(), rev));
            }
        }
        take(candidate.take(), &mut items)?;
        let more = limit > 0 && items.len() > limit;
        if more {
            items.truncate(limit);
        }
        Ok((items, more))
    }

    /// The event of what `revision` wrote.
    fn event(&self, revision: Revision, record: RevRecord) -> Result<Event, EngineError> {
        let prev = match self.version_before(&record.key, revision)? {
            Some((rev, prev)) if !prev.tombstone => Some(prev.into_key_value(rev)),
            _ => None,
        };
        Ok(if record.tombstone {
            Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: record.key,
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
                kv: record.into_key_value(revision),
                prev,
            }
        })
    }
}

impl Engine {
    /// The current value of `key`, if it is live.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, EngineError> {
        self.view()?.live(key)
    }

    /// The value `key` had at `revision`.
    pub fn get_at(&self, key: &str, revision: Revision) -> Result<Option<KeyValue>, StoreError> {
        let view = self.view()?;
        view.check_revision(revision)?;
        if revision == view.revision {
            return Ok(view.live(key)?);
        }
        Ok(match view.version_before(key, revision + 1)? {
            Some((rev, record)) if !record.tombstone => Some(record.into_key_value(rev)),
            _ => None,
        })
    }

    /// One page of the keys under `prefix`, consistent at one revision across pages.
    pub fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage, StoreError> {
        let view = self.view()?;
        let (revision, after) = match &options.continue_token {
            Some(token) => {
                let token = ContinueToken::decode(token, prefix)?;
                (token.revision, Some(token.after_key))
            }
            None => (options.revision.unwrap_or(view.revision), None),
        };
        view.check_revision(revision)?;
        let (items, more) = if revision == view.revision {
            view.list_live(prefix, after.as_deref(), options.limit)?
        } else {
            view.list_at(prefix, after.as_deref(), options.limit, revision)?
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
        let view = self.view()?;
        if after < view.compact_revision {
            return Err(StoreError::Compacted {
                requested: after,
                compact_revision: view.compact_revision,
            });
        }
        let mut events = Vec::new();
        let mut scanned = after;
        for entry in view.rev_range(after)? {
            let (rev, record) = entry?;
            if rev > view.revision {
                break;
            }
            if events.len() == max_events {
                return Ok((events, scanned));
            }
            scanned = rev;
            if record.key.starts_with(prefix) {
                events.push(view.event(rev, record)?);
            }
        }
        Ok((events, view.revision.max(scanned)))
    }
}
