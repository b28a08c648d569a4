//! gzip members: the unit an archive object is made of. A part's NDJSON is
//! cut into pieces of about [`PIECE_BYTES`] and each piece becomes one
//! complete gzip member; an object is its members one after another, which
//! every gzip reader reads as one stream. The spool compresses pieces while a
//! part is open and staging the rest, both through here, so the same piece
//! gives the same bytes wherever it was made.
//!
//! Members are made by libdeflate: it compresses a whole buffer at once, which
//! suits pieces of 1 MiB, and on archived NDJSON at level 6 it ran about 1.5
//! times as fast as zlib-rs with a tenth fewer bytes (`larch-bench deflate`).
//! ISA-L is faster still but only at low levels, whose larger objects a
//! metered link pays for.

use std::cell::RefCell;
use std::io;

use libdeflater::{CompressionLvl, Compressor};

/// NDJSON is cut into pieces of about this size. The cuts fall between
/// blocks, once a piece holds at least this much, so they depend only on the
/// part's content: the same part always gives the same bytes.
pub const PIECE_BYTES: usize = 1024 * 1024;

/// One complete gzip member. libdeflate's header carries no time or name, so
/// the same input gives the same bytes (docs/DESIGN.md invariant 4).
pub fn gzip_member(piece: &[u8], level: u32) -> io::Result<Vec<u8>> {
    thread_local! {
        // A compressor holds about a MiB of tables: one per thread, kept, with
        // the room it compresses into (the worst case of a piece, so members
        // waiting to be written hold only their own bytes).
        static COMPRESSOR: RefCell<Option<(u32, Compressor)>> = const { RefCell::new(None) };
        static ROOM: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some((at, compressor)) if *at == level => compressor,
            slot => {
                let lvl = i32::try_from(level)
                    .ok()
                    .and_then(|l| CompressionLvl::new(l).ok())
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("gzip level {level} is not one of 0 to 12"),
                        )
                    })?;
                &mut slot.insert((level, Compressor::new(lvl))).1
            }
        };
        ROOM.with_borrow_mut(|room| {
            room.resize(compressor.gzip_compress_bound(piece.len()), 0);
            let n = compressor
                .gzip_compress(piece, room)
                .map_err(|e| io::Error::other(format!("libdeflate: {e:?}")))?;
            Ok(room[..n].to_vec())
        })
    })
}

/// Lowers the calling thread's scheduling priority (nice 10), for work that
/// can wait while lines are answered.
#[cfg(target_os = "linux")]
pub fn lower_priority() {
    // On Linux, PRIO_PROCESS with 0 applies to the calling thread alone.
    // SAFETY: setpriority takes no pointers; a failure only leaves the priority as is.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

#[cfg(not(target_os = "linux"))]
pub fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn members_are_the_same_bytes_every_time_and_read_back() {
        let piece: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{{\"_line\":\"line {i}\"}}\n").into_bytes())
            .collect();
        for level in [0, 1, 6, 9] {
            let member = gzip_member(&piece, level).unwrap();
            assert_eq!(member, gzip_member(&piece, level).unwrap(), "level {level}");
            assert_eq!(&member[..4], [0x1f, 0x8b, 8, 0], "a plain gzip header");
            assert_eq!(&member[4..8], [0; 4], "no time in the header");
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&member[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, piece, "level {level}");
        }
        assert!(gzip_member(&piece, 13).is_err());
    }
}
