//! Applying create, update and delete commands inside one write transaction.

use bytes::Bytes;
use redb::{ReadableTable, Table, WriteTransaction};

use super::encoding::{version_key, LiveMeta, VersionRecord};
use super::{EngineError, CHANGES, LIVE, META, VERSIONS};
use crate::store::types::{
    validate_key, Command, CommandOutcome, Event, EventKind, KeyValue, Revision,
};

/// The engine's tables opened in one write transaction.
pub(super) struct Tables<'txn> {
    pub live: Table<'txn, &'static str, &'static [u8]>,
    pub versions: Table<'txn, &'static [u8], &'static [u8]>,
    pub changes: Table<'txn, u64, &'static str>,
    pub meta: Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self, EngineError> {
        Ok(Tables {
            live: txn.open_table(LIVE)?,
            versions: txn.open_table(VERSIONS)?,
            changes: txn.open_table(CHANGES)?,
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

    /// The live key with its current value.
    fn load_live(&self, key: &str) -> Result<Option<KeyValue>, EngineError> {
        let Some(raw) = self.live.get(key)? else {
            return Ok(None);
        };
        let meta = LiveMeta::decode(raw.value())
            .ok_or_else(|| EngineError::Corrupt(format!("live entry of {key:?}")))?;
        let record = self
            .versions
            .get(version_key(key, meta.mod_revision).as_slice())?
            .and_then(|raw| VersionRecord::decode(raw.value()))
            .ok_or_else(|| {
                EngineError::Corrupt(format!(
                    "version {} of live key {key:?} is missing",
                    meta.mod_revision
                ))
            })?;
        Ok(Some(record.into_key_value(key, meta.mod_revision)))
    }

    /// Applies one write command, consuming a revision when it succeeds.
    pub fn apply_write(
        &mut self,
        command: &Command,
        revision: &mut Revision,
        events: &mut Vec<Event>,
    ) -> Result<CommandOutcome, EngineError> {
        if let Some(key) = command.key() {
            if let Err(e) = validate_key(key) {
                return Ok(CommandOutcome::Rejected {
                    reason: e.to_string(),
                });
            }
        }
        match command {
            Command::Create { key, value } => self.create(key, value, revision, events),
            Command::Update {
                key,
                value,
                expected_mod_revision,
            } => self.update(key, value, *expected_mod_revision, revision, events),
            Command::Delete {
                key,
                expected_mod_revision,
            } => self.delete(key, *expected_mod_revision, revision, events),
            Command::Compact { .. } => Err(EngineError::Database(
                "compaction is not a key write".to_string(),
            )),
        }
    }

    fn create(
        &mut self,
        key: &str,
        value: &Bytes,
        revision: &mut Revision,
        events: &mut Vec<Event>,
    ) -> Result<CommandOutcome, EngineError> {
        if let Some(current) = self.load_live(key)? {
            return Ok(CommandOutcome::AlreadyExists { current });
        }
        let rev = *revision + 1;
        let kv = self.put(key, value, rev, rev, 1)?;
        *revision = rev;
        events.push(Event {
            kind: EventKind::Put,
            kv: kv.clone(),
            prev: None,
        });
        Ok(CommandOutcome::Created(kv))
    }

    fn update(
        &mut self,
        key: &str,
        value: &Bytes,
        expected: Option<Revision>,
        revision: &mut Revision,
        events: &mut Vec<Event>,
    ) -> Result<CommandOutcome, EngineError> {
        let Some(prev) = self.load_live(key)? else {
            return Ok(CommandOutcome::NotFound);
        };
        if expected.is_some_and(|expected| expected != prev.mod_revision) {
            return Ok(CommandOutcome::Conflict { current: prev });
        }
        let rev = *revision + 1;
        let kv = self.put(key, value, prev.create_revision, rev, prev.version + 1)?;
        *revision = rev;
        events.push(Event {
            kind: EventKind::Put,
            kv: kv.clone(),
            prev: Some(prev.clone()),
        });
        Ok(CommandOutcome::Updated { kv, prev })
    }

    fn delete(
        &mut self,
        key: &str,
        expected: Option<Revision>,
        revision: &mut Revision,
        events: &mut Vec<Event>,
    ) -> Result<CommandOutcome, EngineError> {
        let Some(prev) = self.load_live(key)? else {
            return Ok(CommandOutcome::NotFound);
        };
        if expected.is_some_and(|expected| expected != prev.mod_revision) {
            return Ok(CommandOutcome::Conflict { current: prev });
        }
        let rev = *revision + 1;
        self.live.remove(key)?;
        self.versions.insert(
            version_key(key, rev).as_slice(),
            VersionRecord::encode_tombstone(prev.create_revision, prev.version + 1).as_slice(),
        )?;
        self.changes.insert(rev, key)?;
        *revision = rev;
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
        Ok(CommandOutcome::Deleted {
            prev,
            revision: rev,
        })
    }

    fn put(
        &mut self,
        key: &str,
        value: &Bytes,
        create_revision: Revision,
        rev: Revision,
        version: u64,
    ) -> Result<KeyValue, EngineError> {
        let meta = LiveMeta {
            create_revision,
            mod_revision: rev,
            version,
        };
        self.live.insert(key, meta.encode().as_slice())?;
        self.versions.insert(
            version_key(key, rev).as_slice(),
            VersionRecord::encode_put(create_revision, version, value).as_slice(),
        )?;
        self.changes.insert(rev, key)?;
        Ok(KeyValue {
            key: key.to_string(),
            value: value.clone(),
            create_revision,
            mod_revision: rev,
            version,
        })
    }
}
