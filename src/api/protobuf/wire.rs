//! The protobuf wire format: a reader of (field number, value) pairs over a byte slice.
//! Knows nothing of messages or JSON.

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum WireError {
    #[error("unexpected end of data")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    VarintOverflow,
    #[error("unsupported wire type {0}")]
    WireType(u8),
    #[error("field number 0")]
    FieldZero,
}

/// One value as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Reads the fields of one message in wire order.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.buf.split_first().ok_or(WireError::Truncated)?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::VarintOverflow)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn fixed64(&mut self) -> Result<u64, WireError> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    fn fixed32(&mut self) -> Result<u32, WireError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    /// The next field, or None at the end of the message.
    pub fn field(&mut self) -> Result<Option<(u32, Wire<'a>)>, WireError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| WireError::FieldZero)?;
        if number == 0 {
            return Err(WireError::FieldZero);
        }
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(self.fixed64()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                Wire::Bytes(self.take(len)?)
            }
            5 => Wire::Fixed32(self.fixed32()?),
            other => return Err(WireError::WireType(other as u8)),
        };
        Ok(Some((number, value)))
    }

    /// All fields of the message, in wire order.
    pub fn fields(buf: &'a [u8]) -> Result<Vec<(u32, Wire<'a>)>, WireError> {
        let mut reader = Reader::new(buf);
        let mut fields = Vec::new();
        while let Some(field) = reader.field()? {
            fields.push(field);
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_wire_type() {
        let buf = [
            0x08, 0x96, 0x01, // 1: varint 150
            0x11, 1, 0, 0, 0, 0, 0, 0, 0, // 2: fixed64 1
            0x1a, 2, b'h', b'i', // 3: bytes "hi"
            0x25, 7, 0, 0, 0, // 4: fixed32 7
        ];
        assert_eq!(
            Reader::fields(&buf).unwrap(),
            vec![
                (1, Wire::Varint(150)),
                (2, Wire::Fixed64(1)),
                (3, Wire::Bytes(b"hi")),
                (4, Wire::Fixed32(7)),
            ]
        );
    }

    #[test]
    fn rejects_malformed_input() {
        assert_eq!(Reader::fields(&[0x08]), Err(WireError::Truncated));
        assert_eq!(Reader::fields(&[0x0a, 5, 1]), Err(WireError::Truncated));
        assert_eq!(Reader::fields(&[0x0b]), Err(WireError::WireType(3)));
        assert_eq!(Reader::fields(&[0x00, 1]), Err(WireError::FieldZero));
        assert_eq!(
            Reader::fields(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(WireError::VarintOverflow)
        );
    }
}
