//! Record framing of the write-ahead log.
//!
//! `u32 length (LE) | u32 CRC32C of kind+body (LE) | u8 kind | body`, where length counts
//! kind and body. A zero length marks the end of a segment's data; a record that is cut
//! short or fails its checksum is where a torn write begins.

use bytes::Bytes;

const HEADER: usize = 8;
/// Larger records are refused: they can only be damage (an entry is at most a few MiB).
pub const MAX_RECORD: usize = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A log entry at `index`.
    Entry { index: u64, payload: Bytes },
    /// The caller's small state blob; the newest one wins.
    Meta(Bytes),
    /// Entries at or after `since` are gone.
    Truncate { since: u64 },
    /// Entries at or before `upto` are gone.
    Purge { upto: u64 },
}

const KIND_ENTRY: u8 = 1;
const KIND_META: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
const KIND_PURGE: u8 = 4;

impl Record {
    /// Appends the framed record to `out`; returns the offset of an entry's payload within
    /// `out` (so it can be read back later without the frame).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER]);
        let (kind, body_offset) = match self {
            Record::Entry { index, payload } => {
                out.push(KIND_ENTRY);
                out.extend_from_slice(&index.to_le_bytes());
                let at = out.len();
                out.extend_from_slice(payload);
                (KIND_ENTRY, at)
            }
            Record::Meta(blob) => {
                out.push(KIND_META);
                let at = out.len();
                out.extend_from_slice(blob);
                (KIND_META, at)
            }
            Record::Truncate { since } => {
                out.push(KIND_TRUNCATE);
                let at = out.len();
                out.extend_from_slice(&since.to_le_bytes());
                (KIND_TRUNCATE, at)
            }
            Record::Purge { upto } => {
                out.push(KIND_PURGE);
                let at = out.len();
                out.extend_from_slice(&upto.to_le_bytes());
                (KIND_PURGE, at)
            }
        };
        debug_assert!(kind != 0);
        let len = (out.len() - start - HEADER) as u32;
        let crc = crc32c::crc32c(&out[start + HEADER..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        body_offset
    }

    pub fn encoded(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// What was found at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A valid record, its total framed length, and for entries the offset of the payload
    /// relative to the record start.
    Record {
        record: Record,
        framed_len: usize,
        payload_offset: usize,
    },
    /// A zero length or the end of the buffer: no more data.
    End,
    /// A record that is cut short, fails its checksum, or makes no sense.
    Damaged(String),
}

/// Parses the record at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.len() < 4 {
        return if buf.iter().all(|b| *b == 0) {
            Parsed::End
        } else {
            Parsed::Damaged("cut short in its length".into())
        };
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if len == 0 {
        return Parsed::End;
    }
    if len > MAX_RECORD + 16 {
        return Parsed::Damaged(format!("impossible length {len}"));
    }
    if buf.len() < HEADER + len {
        return Parsed::Damaged(format!(
            "cut short: {len} bytes announced, {} present",
            buf.len() - HEADER.min(buf.len())
        ));
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let body = &buf[HEADER..HEADER + len];
    if crc32c::crc32c(body) != crc {
        return Parsed::Damaged("checksum mismatch".into());
    }
    let (kind, rest) = (body[0], &body[1..]);
    let word =
        |rest: &[u8]| -> Option<u64> { Some(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?)) };
    let record = match kind {
        KIND_ENTRY => match word(rest) {
            Some(index) => {
                return Parsed::Record {
                    record: Record::Entry {
                        index,
                        payload: Bytes::copy_from_slice(&rest[8..]),
                    },
                    framed_len: HEADER + len,
                    payload_offset: HEADER + 1 + 8,
                }
            }
            None => return Parsed::Damaged("entry without index".into()),
        },
        KIND_META => Record::Meta(Bytes::copy_from_slice(rest)),
        KIND_TRUNCATE if rest.len() == 8 => Record::Truncate {
            since: word(rest).expect("8 bytes"),
        },
        KIND_PURGE if rest.len() == 8 => Record::Purge {
            upto: word(rest).expect("8 bytes"),
        },
        other => return Parsed::Damaged(format!("unknown record kind {other}")),
    };
    Parsed::Record {
        record,
        framed_len: HEADER + len,
        payload_offset: HEADER + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let records = [
            Record::Entry {
                index: 7,
                payload: Bytes::from_static(b"payload"),
            },
            Record::Meta(Bytes::from_static(b"vote")),
            Record::Truncate { since: 3 },
            Record::Purge { upto: 2 },
        ];
        let mut buf = Vec::new();
        for r in &records {
            buf.extend(r.encoded());
        }
        let mut at = 0;
        for expected in &records {
            match parse(&buf[at..]) {
                Parsed::Record {
                    record, framed_len, ..
                } => {
                    assert_eq!(&record, expected);
                    at += framed_len;
                }
                other => panic!("expected a record, got {other:?}"),
            }
        }
        assert_eq!(parse(&buf[at..]), Parsed::End);
        assert_eq!(parse(&[0; 16]), Parsed::End);

        let entry = records[0].encoded();
        assert!(matches!(
            parse(&entry[..entry.len() - 1]),
            Parsed::Damaged(_)
        ));
        let mut flipped = entry.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(parse(&flipped), Parsed::Damaged(_)));
        assert!(matches!(parse(&[1, 0]), Parsed::Damaged(_)));
    }

    #[test]
    fn entry_payload_offset_points_at_the_payload() {
        let entry = Record::Entry {
            index: 1,
            payload: Bytes::from_static(b"abc"),
        };
        let mut buf = vec![9u8; 5];
        let at = entry.encode_into(&mut buf);
        assert_eq!(&buf[at..], b"abc");
        match parse(&buf[5..]) {
            Parsed::Record { payload_offset, .. } => assert_eq!(5 + payload_offset, at),
            other => panic!("{other:?}"),
        }
    }
}
