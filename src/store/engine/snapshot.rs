//! Whole-state snapshots: export every live key at one revision, and replace the engine's
//! state with an exported one (a replica catching up from a snapshot).
//!
//! Format: frames of `u32 length (LE) + postcard payload`; the first frame is the
//! [`SnapshotHeader`], then one frame per live key, then a zero length and the CRC32C of
//! every byte before it. History is not carried: after an import the compacted revision is
//! the snapshot's revision.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use redb::{Durability, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::apply::Tables;
use super::encoding::{version_key, LiveMeta, RevRecord};
use super::read::{meta_bytes, meta_u64};
use super::{
    Engine, EngineError, KEY_REVS, LIVE, META, META_APPLIED, META_COMPACT_REVISION,
    META_PHYSICAL_COMPACT, META_REVISION, REVS,
};
use crate::store::types::KeyValue;

const FORMAT: u32 = 1;
/// Frames larger than this are refused on import: a key is at most 4 KiB, a value at most a
/// few MiB.
const MAX_FRAME: usize = 64 << 20;

/// What a snapshot is of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub format: u32,
    pub revision: u64,
    /// The caller's applied marker at the snapshot's revision.
    pub marker: Vec<u8>,
    pub live_keys: u64,
}

struct CrcWriter<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> CrcWriter<W> {
    fn frame(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let len = (payload.len() as u32).to_le_bytes();
        self.crc = crc32c::crc32c_append(self.crc, &len);
        self.crc = crc32c::crc32c_append(self.crc, payload);
        self.inner.write_all(&len)?;
        self.inner.write_all(payload)
    }
}

struct CrcReader<R> {
    inner: R,
    crc: u32,
}

impl<R: Read> CrcReader<R> {
    /// The next frame, or `None` at the end marker (whose checksum is verified).
    fn frame(&mut self) -> Result<Option<Vec<u8>>, EngineError> {
        let mut len = [0u8; 4];
        self.inner.read_exact(&mut len).map_err(truncated)?;
        let n = u32::from_le_bytes(len) as usize;
        if n == 0 {
            let mut stored = [0u8; 4];
            self.inner.read_exact(&mut stored).map_err(truncated)?;
            if u32::from_le_bytes(stored) != self.crc {
                return Err(EngineError::Snapshot("checksum mismatch".to_string()));
            }
            return Ok(None);
        }
        if n > MAX_FRAME {
            return Err(EngineError::Snapshot(format!(
                "frame of {n} bytes is too large"
            )));
        }
        let mut payload = vec![0u8; n];
        self.inner.read_exact(&mut payload).map_err(truncated)?;
        self.crc = crc32c::crc32c_append(self.crc, &len);
        self.crc = crc32c::crc32c_append(self.crc, &payload);
        Ok(Some(payload))
    }
}

fn truncated(e: std::io::Error) -> EngineError {
    EngineError::Snapshot(format!("truncated snapshot: {e}"))
}

fn io_error(e: std::io::Error) -> EngineError {
    EngineError::Snapshot(format!("writing snapshot: {e}"))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EngineError> {
    postcard::to_allocvec(value).map_err(|e| EngineError::Snapshot(format!("encoding: {e}")))
}

fn decode<'a, T: Deserialize<'a>>(raw: &'a [u8]) -> Result<T, EngineError> {
    postcard::from_bytes(raw).map_err(|e| EngineError::Snapshot(format!("decoding: {e}")))
}

impl Engine {
    /// Checkpoints, then writes every live key as of that checkpoint to `out`: the image is
    /// durable in this engine before anyone can rely on it.
    pub fn export(&self, out: impl Write) -> Result<SnapshotHeader, EngineError> {
        let txn = {
            let _serialized = self.flush_lock.lock().expect("engine flush lock");
            self.flush()?;
            self.db.begin_read()?
        };
        let meta = txn.open_table(META)?;
        let live = txn.open_table(LIVE)?;
        let revs = txn.open_table(REVS)?;
        let header = SnapshotHeader {
            format: FORMAT,
            revision: meta_u64(&meta, META_REVISION)?,
            marker: meta_bytes(&meta, META_APPLIED)?,
            live_keys: redb::ReadableTableMetadata::len(&live)?,
        };
        let mut out = CrcWriter { inner: out, crc: 0 };
        out.frame(&encode(&header)?).map_err(io_error)?;
        for entry in live.iter()? {
            let (key, raw) = entry?;
            let key = key.value();
            let meta = LiveMeta::decode(raw.value())
                .ok_or_else(|| EngineError::Corrupt(format!("live entry of {key:?}")))?;
            let record = revs
                .get(meta.mod_revision)?
                .and_then(|raw| RevRecord::decode(raw.value()))
                .ok_or_else(|| EngineError::Corrupt(format!("value of live key {key:?}")))?;
            out.frame(&encode(&record.into_key_value(meta.mod_revision))?)
                .map_err(io_error)?;
        }
        out.inner.write_all(&0u32.to_le_bytes()).map_err(io_error)?;
        out.inner
            .write_all(&out.crc.to_le_bytes())
            .map_err(io_error)?;
        out.inner.flush().map_err(io_error)?;
        Ok(header)
    }

    /// Reads only the header of an exported image.
    pub fn read_snapshot_header(input: impl Read) -> Result<SnapshotHeader, EngineError> {
        let mut input = CrcReader {
            inner: input,
            crc: 0,
        };
        let frame = input
            .frame()?
            .ok_or_else(|| EngineError::Snapshot("empty snapshot".to_string()))?;
        decode(&frame)
    }

    /// Replaces the whole state with the snapshot read from `input`, durably. Nothing changes
    /// unless the snapshot is complete and its checksum matches. Watchers are told their
    /// history is gone.
    pub fn import(&self, input: impl Read) -> Result<SnapshotHeader, EngineError> {
        let _serialized = self.flush_lock.lock().expect("engine flush lock");
        // Held throughout, so no apply or read sees a half-replaced state.
        let mut state = self.lock_state();
        let mut input = CrcReader {
            inner: input,
            crc: 0,
        };
        let header: SnapshotHeader = decode(
            &input
                .frame()?
                .ok_or_else(|| EngineError::Snapshot("empty snapshot".to_string()))?,
        )?;
        if header.format != FORMAT {
            return Err(EngineError::Snapshot(format!(
                "unknown snapshot format {}",
                header.format
            )));
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(true);
        txn.delete_table(LIVE)?;
        txn.delete_table(META)?;
        txn.delete_table(REVS)?;
        txn.delete_table(KEY_REVS)?;
        {
            let mut tables = Tables::open(&txn)?;
            let mut count = 0u64;
            while let Some(frame) = input.frame()? {
                let kv: KeyValue = decode(&frame)?;
                if kv.mod_revision > header.revision {
                    return Err(EngineError::Snapshot(format!(
                        "key {:?} at revision {} is newer than the snapshot",
                        kv.key, kv.mod_revision
                    )));
                }
                let meta = LiveMeta {
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                };
                tables
                    .live
                    .insert(kv.key.as_str(), meta.encode().as_slice())?;
                tables.revs.insert(
                    kv.mod_revision,
                    RevRecord::encode_put(&kv.key, kv.create_revision, kv.version, &kv.value)
                        .as_slice(),
                )?;
                tables
                    .key_revs
                    .insert(version_key(&kv.key, kv.mod_revision).as_slice(), ())?;
                count += 1;
            }
            if count != header.live_keys {
                return Err(EngineError::Snapshot(format!(
                    "snapshot holds {count} keys, header says {}",
                    header.live_keys
                )));
            }
            tables.set_meta_u64(META_REVISION, header.revision)?;
            tables.set_meta_u64(META_COMPACT_REVISION, header.revision)?;
            tables.set_meta_u64(META_PHYSICAL_COMPACT, header.revision)?;
            tables.set_meta(META_APPLIED, &header.marker)?;
        }
        txn.commit()?;
        state.active = Default::default();
        state.frozen = None;
        state.revision = header.revision;
        state.compact_revision = header.revision;
        state.marker = header.marker.clone();
        state.applied_since_checkpoint = 0;
        self.revision.store(header.revision, Ordering::Release);
        self.compact_revision
            .store(header.revision, Ordering::Release);
        *self.durable_marker.lock().expect("durable marker lock") = header.marker.clone();
        self.hub.reset(header.revision);
        Ok(header)
    }
}
