//! Applying create, update and delete commands to the memtable, and writing a memtable
//! into redb at a checkpoint.

use bytes::Bytes;
use redb::{Table, WriteTransaction};

use super::encoding::{LiveMeta, RevRecord};
use super::memtable::Memtable;
use super::view::View;
use super::{EngineError, KEY_REVS, LIVE, META, REVS};
use crate::store::types::{
    validate_key, Command, CommandOutcome, Event, EventKind, KeyValue, Revision,
};

/// The live key with its current value: from the active memtable, else the layers below.
fn load_live(active: &Memtable, lower: &View, key: &str) -> Result<Option<KeyValue>, EngineError> {
    let meta = match active.live.get(key) {
        Some(meta) => *meta,
        None => lower.live_meta(key)?,
    };
    let Some(meta) = meta else { return Ok(None) };
    let record = match active.revs.get(&meta.mod_revision) {
        Some(raw) => RevRecord::decode(raw),
        None => lower.version(key, meta.mod_revision)?,
    }
    .ok_or_else(|| {
        EngineError::Corrupt(format!(
            "version {} of live key {key:?} is missing",
            meta.mod_revision
        ))
    })?;
    Ok(Some(record.into_key_value(meta.mod_revision)))
}

fn put(
    active: &mut Memtable,
    key: &str,
    value: &Bytes,
    create_revision: Revision,
    rev: Revision,
    version: u64,
) -> KeyValue {
    active.set_live(
        key,
        Some(LiveMeta {
            create_revision,
            mod_revision: rev,
            version,
        }),
    );
    active.add_rev(
        rev,
        key,
        RevRecord::encode_put(key, create_revision, version, value),
    );
    KeyValue {
        key: key.to_string(),
        value: value.clone(),
        create_revision,
        mod_revision: rev,
        version,
    }
}

/// Applies one write command, consuming a revision when it succeeds.
pub(super) fn apply_write(
    active: &mut Memtable,
    lower: &View,
    command: &Command,
    revision: &mut Revision,
    events: &mut Vec<Event>,
) -> Result<CommandOutcome, EngineError> {
    let Some(key) = command.key() else {
        return Err(EngineError::Database(
            "compaction is not a key write".to_string(),
        ));
    };
    if let Err(e) = validate_key(key) {
        return Ok(CommandOutcome::Rejected {
            reason: e.to_string(),
        });
    }
    let current = load_live(active, lower, key)?;
    let rev = *revision + 1;
    let outcome = match (command, current) {
        (Command::Create { .. }, Some(current)) => {
            return Ok(CommandOutcome::AlreadyExists { current })
        }
        (Command::Create { value, .. }, None) => {
            let kv = put(active, key, value, rev, rev, 1);
            events.push(Event {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev: None,
            });
            CommandOutcome::Created(kv)
        }
        (Command::Update { .. } | Command::Delete { .. }, None) => {
            return Ok(CommandOutcome::NotFound)
        }
        (
            Command::Update {
                expected_mod_revision: Some(expected),
                ..
            }
            | Command::Delete {
                expected_mod_revision: Some(expected),
                ..
            },
            Some(current),
        ) if *expected != current.mod_revision => return Ok(CommandOutcome::Conflict { current }),
        (Command::Update { value, .. }, Some(prev)) => {
            let kv = put(
                active,
                key,
                value,
                prev.create_revision,
                rev,
                prev.version + 1,
            );
            events.push(Event {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev: Some(prev.clone()),
            });
            CommandOutcome::Updated { kv, prev }
        }
        (Command::Delete { .. }, Some(prev)) => {
            active.set_live(key, None);
            active.add_rev(
                rev,
                key,
                RevRecord::encode_tombstone(key, prev.create_revision, prev.version + 1),
            );
            events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.to_string(),
                    value: Bytes::new(),
                    create_revision: prev.create_revision,
                    mod_revision: rev,
                    version: 0,
                },
                prev: Some(prev.clone()),
            });
            CommandOutcome::Deleted {
                prev,
                revision: rev,
            }
        }
        (Command::Compact { .. }, _) => unreachable!("compaction has no key"),
    };
    *revision = rev;
    Ok(outcome)
}

/// The engine's tables opened in one write transaction.
pub(super) struct Tables<'txn> {
    pub live: Table<'txn, &'static str, &'static [u8]>,
    pub revs: Table<'txn, u64, &'static [u8]>,
    pub key_revs: Table<'txn, &'static [u8], ()>,
    pub meta: Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self, EngineError> {
        Ok(Tables {
            live: txn.open_table(LIVE)?,
            revs: txn.open_table(REVS)?,
            key_revs: txn.open_table(KEY_REVS)?,
            meta: txn.open_table(META)?,
        })
    }

    pub fn set_meta(&mut self, name: &str, value: &[u8]) -> Result<(), EngineError> {
        self.meta.insert(name, value)?;
        Ok(())
    }

    pub fn set_meta_u64(&mut self, name: &str, value: u64) -> Result<(), EngineError> {
        self.set_meta(name, &value.to_le_bytes())
    }

    /// Writes everything a memtable holds.
    pub fn write_memtable(&mut self, memtable: &Memtable) -> Result<(), EngineError> {
        for (key, meta) in &memtable.live {
            match meta {
                Some(meta) => {
                    self.live.insert(key.as_str(), meta.encode().as_slice())?;
                }
                None => {
                    self.live.remove(key.as_str())?;
                }
            }
        }
        for (revision, record) in &memtable.revs {
            self.revs.insert(*revision, record.as_ref())?;
        }
        for (version_key, ()) in &memtable.key_revs {
            self.key_revs.insert(version_key.as_slice(), ())?;
        }
        Ok(())
    }
}
