//! How records are laid out as bytes (in sled and in segment files): a version
//! byte, a CRC-32 of the payload, then the payload in bincode. bincode is used
//! here and nowhere else, so the encoding can be swapped without touching the
//! rest of the spool; [`Fields`] writes that same encoding directly for the
//! record the ack path writes for every line (a block's).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const VERSION: u8 = 1;
const HEADER: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum CorruptRecord {
    #[error("record is {0} bytes, shorter than its header")]
    Short(usize),
    #[error("record has version {0}, which this larch does not read")]
    Version(u8),
    #[error("record checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("record does not decode: {0}")]
    Decode(String),
}

/// No record is near this size (a block holds up to one request's lines). A
/// damaged length in a record then fails to decode instead of asking for
/// exabytes of memory.
const MAX_DECODED: usize = 64 << 20;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn decode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_DECODED>,
> {
    bincode::config::standard().with_limit::<MAX_DECODED>()
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_version(VERSION, value)
}

/// Like [`encode`], for a record kind with versions of its own (blocks).
pub fn encode_version<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_version_into(version, value, &mut out);
    out
}

/// A buffer records are encoded at the end of, in place.
pub trait RecordBuf: std::io::Write {
    fn len(&self) -> usize;
    /// The bytes from `start` to the end, to finish a record's header.
    fn bytes_from(&mut self, start: usize) -> &mut [u8];
}

impl RecordBuf for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn bytes_from(&mut self, start: usize) -> &mut [u8] {
        &mut self[start..]
    }
}

/// Like [`encode_version`], at the end of `out`: no buffer of its own and no copy.
pub fn encode_version_into<T: Serialize>(version: u8, value: &T, out: &mut impl RecordBuf) {
    let start = out.len();
    // Writing into memory cannot fail, and our records hold only serde-friendly types.
    if let Err(e) = out
        .write_all(&[version, 0, 0, 0, 0])
        .map_err(|e| e.to_string())
        .and_then(|()| {
            bincode::serde::encode_into_std_write(value, out, config()).map_err(|e| e.to_string())
        })
    {
        unreachable!("spool record failed to encode: {e}");
    }
    let record = out.bytes_from(start);
    let crc = crc32fast::hash(&record[HEADER..]);
    record[1..HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Like [`encode_version_into`], with the payload written by `write` through
/// [`Fields`]: the encoding is bincode's, field by field, for records too
/// hot for the serde path (a block's lines, on the ack path).
pub fn encode_fields_into<B: RecordBuf>(
    version: u8,
    out: &mut B,
    write: impl FnOnce(&mut Fields<'_, B>),
) {
    let start = out.len();
    let mut fields = Fields {
        out,
        small: [0; SMALL],
        held: 0,
        failed: None,
    };
    fields.bytes(&[version, 0, 0, 0, 0]);
    write(&mut fields);
    fields.flush();
    // Writing into memory cannot fail.
    if let Some(e) = fields.failed {
        unreachable!("spool record failed to encode: {e}");
    }
    let record = out.bytes_from(start);
    let crc = crc32fast::hash(&record[HEADER..]);
    record[1..HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes [`Fields`] gathers before writing them out as one.
const SMALL: usize = 128;

/// Writes values exactly as bincode's standard configuration does
/// (little-endian, integers of variable length, `i64` zigzagged, lengths as
/// `u64`, `Option` as a tag byte), so any record written through it decodes
/// as if serialized. Small values gather on the stack and go out together:
/// through serde each one was a write of its own, and a block's lines were
/// a good part of what the ack path spent. The tests hold it to bincode's
/// output byte for byte.
pub struct Fields<'o, B: RecordBuf> {
    out: &'o mut B,
    small: [u8; SMALL],
    held: usize,
    failed: Option<String>,
}

impl<B: RecordBuf> Fields<'_, B> {
    #[inline]
    pub fn u64(&mut self, value: u64) {
        if self.held + 9 > SMALL {
            self.flush();
        }
        let at = self.held;
        let small = &mut self.small;
        self.held += if value < 251 {
            small[at] = value as u8;
            1
        } else if value <= u64::from(u16::MAX) {
            small[at] = 251;
            small[at + 1..at + 3].copy_from_slice(&(value as u16).to_le_bytes());
            3
        } else if value <= u64::from(u32::MAX) {
            small[at] = 252;
            small[at + 1..at + 5].copy_from_slice(&(value as u32).to_le_bytes());
            5
        } else {
            small[at] = 253;
            small[at + 1..at + 9].copy_from_slice(&value.to_le_bytes());
            9
        };
    }

    /// Lengths and `u32`s share the `u64` form: bincode picks the width by value.
    #[inline]
    pub fn u32(&mut self, value: u32) {
        self.u64(u64::from(value));
    }

    #[inline]
    pub fn len(&mut self, len: usize) {
        self.u64(len as u64);
    }

    #[inline]
    pub fn i64(&mut self, value: i64) {
        self.u64(((value << 1) ^ (value >> 63)) as u64);
    }

    #[inline]
    pub fn bool(&mut self, value: bool) {
        self.bytes(&[u8::from(value)]);
    }

    #[inline]
    pub fn str(&mut self, text: &str) {
        self.text(text.as_bytes());
    }

    /// A `str` given as its bytes, which the caller knows are UTF-8.
    #[inline]
    pub fn text(&mut self, text: &[u8]) {
        self.len(text.len());
        self.bytes(text);
    }

    /// `N` `Option`s that are `None`.
    #[inline]
    pub fn nones<const N: usize>(&mut self) {
        self.bytes(&[0; N]);
    }

    pub fn option_str(&mut self, text: Option<&str>) {
        match text {
            None => self.bytes(&[0]),
            Some(text) => {
                self.bytes(&[1]);
                self.str(text);
            }
        }
    }

    /// A value of a kind written seldom, through serde.
    pub fn serde<T: Serialize>(&mut self, value: &T) {
        self.flush();
        if let Err(e) = bincode::serde::encode_into_std_write(value, &mut *self.out, config()) {
            self.failed.get_or_insert(e.to_string());
        }
    }

    #[inline]
    fn bytes(&mut self, bytes: &[u8]) {
        if bytes.len() <= SMALL - self.held {
            self.small[self.held..self.held + bytes.len()].copy_from_slice(bytes);
            self.held += bytes.len();
            return;
        }
        self.flush();
        if bytes.len() < SMALL {
            self.small[..bytes.len()].copy_from_slice(bytes);
            self.held = bytes.len();
        } else {
            self.write_out(bytes);
        }
    }

    fn flush(&mut self) {
        let held = std::mem::take(&mut self.held);
        if held > 0 {
            if let Err(e) = self.out.write_all(&self.small[..held]) {
                self.failed.get_or_insert(e.to_string());
            }
        }
    }

    fn write_out(&mut self, bytes: &[u8]) {
        if let Err(e) = self.out.write_all(bytes) {
            self.failed.get_or_insert(e.to_string());
        }
    }
}

/// A record of raw byte `parts`, framed like every other (version and CRC),
/// at the end of `out`.
pub fn frame_into(version: u8, parts: &[&[u8]], out: &mut impl RecordBuf) {
    let start = out.len();
    if let Err(e) = out
        .write_all(&[version, 0, 0, 0, 0])
        .and_then(|()| parts.iter().try_for_each(|part| out.write_all(part)))
    {
        unreachable!("spool record failed to encode: {e}");
    }
    let record = out.bytes_from(start);
    let crc = crc32fast::hash(&record[HEADER..]);
    record[1..HEADER].copy_from_slice(&crc.to_le_bytes());
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CorruptRecord> {
    decode_borrowed(bytes)
}

/// Like [`decode`], for values that borrow their strings from `bytes`.
pub fn decode_borrowed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CorruptRecord> {
    match check(bytes)? {
        (VERSION, payload) => decode_payload(payload),
        (other, _) => Err(CorruptRecord::Version(other)),
    }
}

/// A record's version and its payload, once the checksum holds.
pub fn check(bytes: &[u8]) -> Result<(u8, &[u8]), CorruptRecord> {
    if bytes.len() < HEADER {
        return Err(CorruptRecord::Short(bytes.len()));
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let computed = crc32fast::hash(&bytes[HEADER..]);
    if stored != computed {
        return Err(CorruptRecord::Checksum { stored, computed });
    }
    Ok((bytes[0], &bytes[HEADER..]))
}

/// Decodes a checked payload, whole.
pub fn decode_payload<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, CorruptRecord> {
    let (value, used) = bincode::serde::borrow_decode_from_slice(payload, decode_config())
        .map_err(|e| CorruptRecord::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(CorruptRecord::Decode(format!(
            "{} trailing bytes",
            payload.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v = (7u64, "hello".to_string(), vec![Some(1i64), None]);
        let back: (u64, String, Vec<Option<i64>>) = decode(&encode(&v)).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let bytes = encode(&("a line worth keeping".to_string(), 42u32));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x5a;
            assert!(
                decode::<(String, u32)>(&bad).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert!(decode::<(String, u32)>(&bytes[..3]).is_err());
    }
}

/// Fuzzing the spool record decoder: damaged bytes, and well-framed records
/// (right version and checksum) whose payload is anything at all, must give
/// an error, never a panic or a runaway allocation.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::spool::{FilePosition, PartRecord};
    use proptest::prelude::*;

    /// `payload` framed as a record, checksum included.
    fn framed(payload: &[u8]) -> Vec<u8> {
        framed_as(VERSION, payload)
    }

    fn framed_as(version: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![version, 0, 0, 0, 0];
        out.extend_from_slice(payload);
        let crc = crc32fast::hash(&out[HEADER..]);
        out[1..HEADER].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn try_all(bytes: &[u8]) {
        let _ = decode::<PartRecord>(bytes);
        let _ = decode::<FilePosition>(bytes);
        if let Ok(block) = crate::spool::block::decode(bytes) {
            let _ = block.lines();
        }
        if let Ok((_, payload)) = check(bytes) {
            let _ = crate::spool::member::decode_payload(payload);
        }
    }

    proptest! {
        #[test]
        fn fuzz_spool_records_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            try_all(&bytes);
            try_all(&framed(&bytes));
            // Blocks that share their origins have a version of their own, members too.
            try_all(&framed_as(2, &bytes));
            try_all(&framed_as(crate::spool::member::VERSION, &bytes));
        }

        #[test]
        fn fuzz_spool_records_with_huge_lengths_never_allocate_them(
            prefix in prop::collection::vec(any::<u8>(), 0..16),
            tail in prop::collection::vec(any::<u8>(), 0..16),
        ) {
            // bincode's varint marker for a u64 (251 = u16, 252 = u32, 253 = u64) with a
            // huge value, where a length is read.
            let mut payload = prefix;
            payload.push(253);
            payload.extend_from_slice(&(u64::MAX / 3).to_le_bytes());
            payload.extend(tail);
            try_all(&framed(&payload));
        }
    }
}
