//! SPDY/3 frames on the wire, as Kubernetes' spdystream speaks them: the eight control
//! frames and data frames, with header blocks compressed by one zlib stream per direction
//! (primed with the SPDY/3 dictionary, sync-flushed after every block).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::SpdyError;

/// The dictionary both zlib streams start from (SPDY/3 draft, section 2.6.10.1).
const DICTIONARY: &[u8] = include_bytes!("dictionary.bin");
const VERSION: u16 = 3;
/// Frames larger than this are refused: SPDY's length field allows 16 MiB, spdystream sends
/// far less, and a peer must not make us buffer more.
const MAX_FRAME: usize = 1 << 24;

pub const FLAG_FIN: u8 = 0x01;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// Header names (lower case) and values; a value holding several is NUL-separated.
pub type Headers = Vec<(String, String)>;

/// One SPDY frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        /// (flags, id, value)
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
}

/// Encodes and decodes the frames of one connection: the zlib contexts live as long as it.
pub struct Codec {
    compress: Compress,
    decompress: Decompress,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

impl Codec {
    pub fn new() -> Codec {
        let mut compress = Compress::new(Compression::best(), true);
        compress
            .set_dictionary(DICTIONARY)
            .expect("a fresh deflate stream takes a dictionary");
        Codec {
            compress,
            decompress: Decompress::new(true),
        }
    }

    /// Takes one whole frame off the front of `buf`, or `None` when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if length > MAX_FRAME {
            return Err(SpdyError::Protocol(format!(
                "a frame of {length} bytes is too large"
            )));
        }
        if buf.len() < 8 + length {
            return Ok(None);
        }
        let first = buf.get_u32();
        let flags = buf[0];
        buf.advance(4);
        let mut payload = buf.split_to(length).freeze();
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: first & 0x7fff_ffff,
                flags,
                data: payload,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Protocol(format!(
                "SPDY version {version} is not supported (3 is)"
            )));
        }
        let kind = (first & 0xffff) as u16;
        let need = |payload: &Bytes, n: usize| {
            if payload.len() < n {
                Err(SpdyError::Protocol(format!(
                    "control frame {kind} is {} bytes, shorter than {n}",
                    payload.len()
                )))
            } else {
                Ok(())
            }
        };
        let frame = match kind {
            SYN_STREAM => {
                need(&payload, 10)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let associated_to = payload.get_u32() & 0x7fff_ffff;
                let priority = payload.get_u8() >> 5;
                payload.advance(1);
                let headers = self.decode_headers(&payload)?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers,
                }
            }
            SYN_REPLY | HEADERS => {
                need(&payload, 4)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let headers = self.decode_headers(&payload)?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            RST_STREAM => {
                need(&payload, 8)?;
                Frame::RstStream {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    status: payload.get_u32(),
                }
            }
            SETTINGS => {
                need(&payload, 4)?;
                let count = payload.get_u32() as usize;
                need(&payload, count.saturating_mul(8))?;
                let entries = (0..count)
                    .map(|_| {
                        let word = payload.get_u32();
                        ((word >> 24) as u8, word & 0xff_ffff, payload.get_u32())
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            PING => {
                need(&payload, 4)?;
                Frame::Ping {
                    id: payload.get_u32(),
                }
            }
            GOAWAY => {
                need(&payload, 4)?;
                let last_good_stream_id = payload.get_u32() & 0x7fff_ffff;
                // spdy/2 peers omit the status.
                let status = if payload.len() >= 4 {
                    payload.get_u32()
                } else {
                    0
                };
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                }
            }
            WINDOW_UPDATE => {
                need(&payload, 8)?;
                Frame::WindowUpdate {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    delta: payload.get_u32() & 0x7fff_ffff,
                }
            }
            other => {
                return Err(SpdyError::Protocol(format!(
                    "unknown control frame type {other}"
                )))
            }
        };
        Ok(Some(frame))
    }

    /// Appends `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        let mut payload = BytesMut::new();
        let (kind, flags) = match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                out.put_u32(stream_id & 0x7fff_ffff);
                put_flags_and_length(out, *flags, data.len())?;
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                payload.put_u32(*stream_id);
                payload.put_u32(*associated_to);
                payload.put_u8(priority << 5);
                payload.put_u8(0);
                self.encode_headers(headers, &mut payload)?;
                (SYN_STREAM, *flags)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                payload.put_u32(*stream_id);
                self.encode_headers(headers, &mut payload)?;
                (SYN_REPLY, *flags)
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                payload.put_u32(*stream_id);
                self.encode_headers(headers, &mut payload)?;
                (HEADERS, *flags)
            }
            Frame::RstStream { stream_id, status } => {
                payload.put_u32(*stream_id);
                payload.put_u32(*status);
                (RST_STREAM, 0)
            }
            Frame::Settings { flags, entries } => {
                payload.put_u32(entries.len() as u32);
                for (entry_flags, id, value) in entries {
                    payload.put_u32(((*entry_flags as u32) << 24) | (id & 0xff_ffff));
                    payload.put_u32(*value);
                }
                (SETTINGS, *flags)
            }
            Frame::Ping { id } => {
                payload.put_u32(*id);
                (PING, 0)
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                payload.put_u32(*last_good_stream_id);
                payload.put_u32(*status);
                (GOAWAY, 0)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                payload.put_u32(*stream_id);
                payload.put_u32(*delta);
                (WINDOW_UPDATE, 0)
            }
        };
        out.put_u16(0x8000 | VERSION);
        out.put_u16(kind);
        put_flags_and_length(out, flags, payload.len())?;
        out.extend_from_slice(&payload);
        Ok(())
    }

    fn encode_headers(&mut self, headers: &Headers, out: &mut BytesMut) -> Result<(), SpdyError> {
        let mut block = BytesMut::new();
        block.put_u32(headers.len() as u32);
        for (name, value) in headers {
            block.put_u32(name.len() as u32);
            block.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            block.put_u32(value.len() as u32);
            block.extend_from_slice(value.as_bytes());
        }
        let mut compressed = Vec::with_capacity(block.len() + 64);
        let start_in = self.compress.total_in();
        loop {
            let consumed = (self.compress.total_in() - start_in) as usize;
            if compressed.capacity() - compressed.len() < 64 {
                compressed.reserve(block.len() + 64);
            }
            self.compress
                .compress_vec(&block[consumed..], &mut compressed, FlushCompress::Sync)
                .map_err(|e| SpdyError::Protocol(format!("compressing headers: {e}")))?;
            let consumed = (self.compress.total_in() - start_in) as usize;
            // A sync flush is complete when all input is in and the buffer was not filled.
            if consumed == block.len() && compressed.len() < compressed.capacity() {
                break;
            }
        }
        out.extend_from_slice(&compressed);
        Ok(())
    }

    fn decode_headers(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let mut block: Vec<u8> = Vec::with_capacity(compressed.len() * 4 + 64);
        let start_in = self.decompress.total_in();
        loop {
            let consumed = (self.decompress.total_in() - start_in) as usize;
            if block.capacity() - block.len() < 256 {
                block.reserve(block.capacity().max(1024));
            }
            let before_out = block.len();
            match self.decompress.decompress_vec(
                &compressed[consumed..],
                &mut block,
                FlushDecompress::Sync,
            ) {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.decompress
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| SpdyError::Protocol(format!("header dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::Protocol(format!("decompressing headers: {e}"))),
            }
            let consumed = (self.decompress.total_in() - start_in) as usize;
            if consumed == compressed.len() && block.len() < block.capacity() {
                break;
            }
            if consumed == compressed.len() && block.len() == before_out {
                break;
            }
        }
        parse_header_block(&block)
    }
}

fn put_flags_and_length(out: &mut BytesMut, flags: u8, length: usize) -> Result<(), SpdyError> {
    if length >= MAX_FRAME {
        return Err(SpdyError::Protocol(format!(
            "a frame of {length} bytes is too large to send"
        )));
    }
    out.put_u32(((flags as u32) << 24) | length as u32);
    Ok(())
}

fn parse_header_block(mut block: &[u8]) -> Result<Headers, SpdyError> {
    let short = || SpdyError::Protocol("truncated header block".into());
    let take = |block: &mut &[u8]| -> Result<String, SpdyError> {
        if block.len() < 4 {
            return Err(short());
        }
        let len = block.get_u32() as usize;
        if block.len() < len {
            return Err(short());
        }
        let text = String::from_utf8_lossy(&block[..len]).into_owned();
        block.advance(len);
        Ok(text)
    };
    if block.len() < 4 {
        return Err(short());
    }
    let count = block.get_u32() as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take(&mut block)?.to_ascii_lowercase();
        let value = take(&mut block)?;
        headers.push((name, value));
    }
    Ok(headers)
}

/// The first value of header `name` in `headers`.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_frame_round_trips_through_two_codecs() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: headers(&[("streamtype", "error"), ("port", "8080")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 0,
                flags: FLAG_FIN,
                headers: headers(&[("streamtype", "data"), ("requestid", "0")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::Headers {
                stream_id: 3,
                flags: 0,
                headers: headers(&[("x", "y\0z")]),
            },
            Frame::RstStream {
                stream_id: 3,
                status: 5,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, 7, 65536)],
            },
            Frame::Ping { id: 2 },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: 0,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 1000,
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
        ];
        let (mut sender, mut receiver) = (Codec::new(), Codec::new());
        let mut wire = BytesMut::new();
        for frame in &frames {
            sender.encode(frame, &mut wire).unwrap();
        }
        // Arrives a byte at a time: nothing is decoded from a partial frame.
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = receiver.decode(&mut buf).unwrap() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_frame_built_by_the_spec_decodes() {
        // PING id 7: control bit + version 3, type 6, flags 0, length 4.
        let mut buf = BytesMut::from(&[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 7][..]);
        assert_eq!(
            Codec::new().decode(&mut buf).unwrap(),
            Some(Frame::Ping { id: 7 })
        );
        // A data frame for stream 5 with FIN and two bytes.
        let mut buf = BytesMut::from(&[0, 0, 0, 5, 1, 0, 0, 2, b'o', b'k'][..]);
        assert_eq!(
            Codec::new().decode(&mut buf).unwrap(),
            Some(Frame::Data {
                stream_id: 5,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"ok")
            })
        );
        // SPDY/2 is refused.
        let mut buf = BytesMut::from(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 7][..]);
        assert!(Codec::new().decode(&mut buf).is_err());
    }

    #[test]
    fn a_header_block_compressed_by_plain_zlib_with_the_dictionary_decodes() {
        // What Go's zlib.NewWriterLevelDict produces: an independent zlib implementation
        // primed with the same dictionary, sync-flushed.
        let mut block = BytesMut::new();
        block.put_u32(1);
        block.put_u32(10);
        block.extend_from_slice(b"streamtype");
        block.put_u32(6);
        block.extend_from_slice(b"stdout");
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(DICTIONARY).unwrap();
        let mut compressed = Vec::with_capacity(256);
        deflate
            .compress_vec(&block, &mut compressed, FlushCompress::Sync)
            .unwrap();
        let mut frame = BytesMut::new();
        frame.put_u16(0x8003);
        frame.put_u16(SYN_STREAM);
        frame.put_u32(10 + compressed.len() as u32);
        frame.put_u32(5);
        frame.put_u32(0);
        frame.put_u16(0);
        frame.extend_from_slice(&compressed);
        let decoded = Codec::new().decode(&mut frame).unwrap().unwrap();
        let Frame::SynStream { headers, .. } = decoded else {
            panic!("{decoded:?}")
        };
        assert_eq!(header(&headers, "streamType"), Some("stdout"));
    }
}
