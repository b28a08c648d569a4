//! A member: a run of a part's lines already compressed, stored in a segment
//! file in place of the blocks it covers (see `compact`). It holds one
//! complete gzip member of the part's NDJSON, exactly the bytes staging would
//! make of those blocks, so staging copies it into the object as it is.
//!
//! Layout: the record header of every spool record (a version byte, here
//! [`VERSION`], and a CRC-32 of the payload), then the lines it holds and
//! their NDJSON bytes (u64 little-endian each), then the gzip bytes.

use super::codec::{self, CorruptRecord, RecordBuf};

/// The record version that marks a member; blocks use 1 and 2.
pub const VERSION: u8 = 3;

const COUNTS: usize = 16;

/// A member as read, its gzip bytes borrowed from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub lines: u64,
    /// NDJSON bytes the gzip member holds once decompressed.
    pub ndjson_bytes: u64,
    pub gzip: &'a [u8],
}

/// Encodes a member at the end of `out`.
pub fn encode_into(member: &Member<'_>, out: &mut impl RecordBuf) {
    codec::frame_into(
        VERSION,
        &[
            &member.lines.to_le_bytes(),
            &member.ndjson_bytes.to_le_bytes(),
            member.gzip,
        ],
        out,
    );
}

/// Decodes a member's checked payload.
pub fn decode_payload(payload: &[u8]) -> Result<Member<'_>, CorruptRecord> {
    let Some((counts, gzip)) = payload.split_first_chunk::<COUNTS>() else {
        return Err(CorruptRecord::Decode(format!(
            "a member of {} bytes is shorter than its counts",
            payload.len()
        )));
    };
    let (lines, ndjson) = counts.split_at(8);
    let as_u64 = |b: &[u8]| b.try_into().map(u64::from_le_bytes).unwrap_or_default();
    let member = Member {
        lines: as_u64(lines),
        ndjson_bytes: as_u64(ndjson),
        gzip,
    };
    // gzip's own header: a member that does not start with it is not one.
    if !gzip.starts_with(&[0x1f, 0x8b, 8]) || member.lines == 0 {
        return Err(CorruptRecord::Decode(
            "a member holds no gzip member of lines".into(),
        ));
    }
    Ok(member)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_and_damage_is_seen() {
        let gzip = crate::gzip::gzip_member(b"{\"_line\":\"x\"}\n", 6).unwrap();
        let member = Member {
            lines: 1,
            ndjson_bytes: 14,
            gzip: &gzip,
        };
        let mut bytes = Vec::new();
        encode_into(&member, &mut bytes);
        let (version, payload) = codec::check(&bytes).unwrap();
        assert_eq!(version, VERSION);
        assert_eq!(decode_payload(payload).unwrap(), member);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            let read = codec::check(&bad).and_then(|(v, p)| {
                if v == VERSION {
                    decode_payload(p).map(|_| ())
                } else {
                    Err(CorruptRecord::Version(v))
                }
            });
            assert!(read.is_err(), "flip at byte {i} went unnoticed");
        }
    }
}
