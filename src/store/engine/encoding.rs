//! On-disk encodings of the engine's tables. Fixed-width little-endian headers, no serde:
//! these bytes are read on every get and list.

use bytes::Bytes;

use crate::store::types::{KeyValue, Revision};

/// Separates a key from the big-endian revision in a version key. Keys never contain NUL
/// (see `validate_key`), so `(key, revision)` pairs sort by key, then by revision.
const SEPARATOR: u8 = 0;
const REVISION_LEN: usize = 8;

/// `key NUL revision(be)`: every version of a key sorts together, oldest first.
pub fn version_key(key: &str, revision: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1 + REVISION_LEN);
    out.extend_from_slice(key.as_bytes());
    out.push(SEPARATOR);
    out.extend_from_slice(&revision.to_be_bytes());
    out
}

/// The smallest version key of any key that sorts after `key` (and is not `key` itself).
pub fn first_version_key_after(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.extend_from_slice(key.as_bytes());
    out.push(SEPARATOR + 1);
    out
}

/// Splits a version key back into its key and revision.
pub fn split_version_key(raw: &[u8]) -> Option<(&str, Revision)> {
    if raw.len() < 1 + REVISION_LEN {
        return None;
    }
    let (key, rest) = raw.split_at(raw.len() - 1 - REVISION_LEN);
    if rest[0] != SEPARATOR {
        return None;
    }
    let revision = Revision::from_be_bytes(rest[1..].try_into().ok()?);
    Some((std::str::from_utf8(key).ok()?, revision))
}

/// Bookkeeping of a live key, stored in the `live` table (the value lives in `versions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveMeta {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: u64,
}

impl LiveMeta {
    pub const LEN: usize = 24;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..8].copy_from_slice(&self.create_revision.to_le_bytes());
        out[8..16].copy_from_slice(&self.mod_revision.to_le_bytes());
        out[16..24].copy_from_slice(&self.version.to_le_bytes());
        out
    }

    pub fn decode(raw: &[u8]) -> Option<Self> {
        if raw.len() != Self::LEN {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
        Some(LiveMeta {
            create_revision: word(0),
            mod_revision: word(8),
            version: word(16),
        })
    }
}

/// What a revision wrote: a value of a key, or the tombstone of its deletion. Stored by
/// revision, so history is appended at the end of its table rather than spread over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevRecord {
    pub key: String,
    pub tombstone: bool,
    pub create_revision: Revision,
    pub version: u64,
    pub value: Bytes,
}

const TAG_PUT: u8 = 0;
const TAG_TOMBSTONE: u8 = 1;
const REV_HEADER: usize = 21;

impl RevRecord {
    pub fn encode_put(key: &str, create_revision: Revision, version: u64, value: &[u8]) -> Vec<u8> {
        Self::encode(TAG_PUT, key, create_revision, version, value)
    }

    pub fn encode_tombstone(key: &str, create_revision: Revision, version: u64) -> Vec<u8> {
        Self::encode(TAG_TOMBSTONE, key, create_revision, version, &[])
    }

    fn encode(
        tag: u8,
        key: &str,
        create_revision: Revision,
        version: u64,
        value: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(REV_HEADER + key.len() + value.len());
        out.push(tag);
        out.extend_from_slice(&create_revision.to_le_bytes());
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(value);
        out
    }

    pub fn decode(raw: &[u8]) -> Option<Self> {
        if raw.len() < REV_HEADER {
            return None;
        }
        let tombstone = match raw[0] {
            TAG_PUT => false,
            TAG_TOMBSTONE => true,
            _ => return None,
        };
        let key_len = u32::from_le_bytes(raw[17..21].try_into().ok()?) as usize;
        let key = raw.get(REV_HEADER..REV_HEADER + key_len)?;
        Some(RevRecord {
            key: std::str::from_utf8(key).ok()?.to_string(),
            tombstone,
            create_revision: u64::from_le_bytes(raw[1..9].try_into().ok()?),
            version: u64::from_le_bytes(raw[9..17].try_into().ok()?),
            value: Bytes::copy_from_slice(&raw[REV_HEADER + key_len..]),
        })
    }

    pub fn into_key_value(self, mod_revision: Revision) -> KeyValue {
        KeyValue {
            key: self.key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision,
            version: self.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_keys_sort_by_key_then_revision() {
        let mut keys = [
            version_key("/a/b", 1),
            version_key("/a", 300),
            version_key("/a", 2),
            version_key("/a/", 1),
        ];
        keys.sort();
        let split: Vec<_> = keys.iter().map(|k| split_version_key(k).unwrap()).collect();
        assert_eq!(split, vec![("/a", 2), ("/a", 300), ("/a/", 1), ("/a/b", 1)]);
        assert!(first_version_key_after("/a").as_slice() > version_key("/a", u64::MAX).as_slice());
        assert!(first_version_key_after("/a").as_slice() < version_key("/a/", 0).as_slice());
    }

    #[test]
    fn records_round_trip() {
        let meta = LiveMeta {
            create_revision: 3,
            mod_revision: 9,
            version: 4,
        };
        assert_eq!(LiveMeta::decode(&meta.encode()), Some(meta));
        let put = RevRecord::decode(&RevRecord::encode_put("/k", 3, 4, b"hello")).unwrap();
        assert!(!put.tombstone);
        assert_eq!((put.key.as_str(), &put.value[..]), ("/k", &b"hello"[..]));
        let raw = RevRecord::encode_tombstone("/k", 3, 5);
        let tombstone = RevRecord::decode(&raw).unwrap();
        assert!(tombstone.tombstone);
        assert_eq!(tombstone.version, 5);
        assert_eq!(RevRecord::decode(&[9; 30]), None);
        let mut cut = RevRecord::encode_put("/long-key", 1, 1, b"");
        cut.truncate(25);
        assert_eq!(RevRecord::decode(&cut), None);
    }
}
