//! Staging: a part's lines turned into the exact bytes of its archive object.
//!
//! The lines stream from the spool through gzip into a file in the staging
//! directory, so memory stays flat whatever the part's size, and are compressed
//! on every core (see [`stage`]). Runs of lines the spool already compressed
//! while the part was open (members) are copied as they are. The gzip headers carry no time or name, so the
//! same part at the same level always gives the same bytes (docs/DESIGN.md invariant 4).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::gzip::PIECE_BYTES;
use crate::spool::{PartId, Spool, SpoolError, Stored, BLOCK_BYTES};

/// A piece is cut after the block that takes it past [`PIECE_BYTES`]: room
/// for that block's NDJSON too (escapes may make it longer than the block),
/// so a piece seldom grows its buffer.
const PIECE_ROOM: usize = PIECE_BYTES + 2 * BLOCK_BYTES;

/// A part's object, compressed and waiting in the staging directory.
#[derive(Debug, Clone)]
pub struct Staged {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: [u8; 32],
    pub lines: u64,
    /// NDJSON bytes before compression.
    pub input_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("cannot write staged object {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A member that is already compressed, queued behind the pieces before it.
fn ready(member: Vec<u8>) -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (done, result) = mpsc::sync_channel(1);
    // The receiver is right here: the send cannot fail.
    let _ = done.send(Ok(member));
    result
}

pub fn file_name(id: &PartId) -> String {
    format!("{}.{}.{}.json.gz", id.account, id.hour.0, id.seq)
}

/// Compresses part `id` into `dir`. Blocking: run it off the async runtime.
///
/// The part's lines stream through in pieces; the pieces are compressed on all
/// cores at once and written in order, as consecutive gzip members of one gzip
/// file (which every gzip reader reads as one stream). At most two pieces per
/// core are in memory at a time.
pub fn stage(spool: &Spool, id: &PartId, level: u32, dir: &Path) -> Result<Staged, StageError> {
    let path = dir.join(file_name(id));
    let partial = dir.join(format!("{}.partial", file_name(id)));
    let io_err = |source| StageError::Io {
        path: partial.clone(),
        source,
    };
    let file = crate::files::create_private(&partial).map_err(io_err)?;
    let mut out = Hashing {
        inner: BufWriter::with_capacity(256 * 1024, file),
        hasher: Sha256::new(),
        size: 0,
    };
    let pool = super::compress::pool();
    // Pieces in flight for this part: enough to keep every core busy.
    let in_flight = 2 * pool.threads.max(1);
    let mut pending: VecDeque<mpsc::Receiver<io::Result<Vec<u8>>>> = VecDeque::new();
    let write_oldest = |pending: &mut VecDeque<mpsc::Receiver<io::Result<Vec<u8>>>>,
                        out: &mut Hashing<BufWriter<File>>|
     -> Result<(), StageError> {
        if let Some(result) = pending.pop_front() {
            let member = result
                .recv()
                .map_err(|_| io_err(io::Error::other("a compression thread stopped")))?
                .map_err(io_err)?;
            out.write_all(&member).map_err(io_err)?;
        }
        Ok(())
    };
    let mut lines = 0u64;
    let mut input_bytes = 0u64;
    let mut piece = Vec::with_capacity(PIECE_ROOM);
    spool.for_each_record(id, |record| -> Result<(), StageError> {
        match record {
            Stored::Lines(block) => {
                for line in block {
                    line.write_ndjson(id.account.as_str(), &mut piece);
                }
                lines += block.len() as u64;
            }
            Stored::Member(member) => {
                // Members come before any raw block, so no piece is pending;
                // were one there, it would still go first, whole.
                if !piece.is_empty() {
                    input_bytes += piece.len() as u64;
                    let full = std::mem::take(&mut piece);
                    pending.push_back(pool.submit(full, level));
                }
                lines += member.lines;
                input_bytes += member.ndjson_bytes;
                if pending.is_empty() {
                    out.write_all(member.gzip).map_err(io_err)?;
                } else {
                    if pending.len() >= in_flight {
                        write_oldest(&mut pending, &mut out)?;
                    }
                    pending.push_back(ready(member.gzip.to_vec()));
                }
                return Ok(());
            }
        }
        if piece.len() >= PIECE_BYTES {
            if pending.len() >= in_flight {
                write_oldest(&mut pending, &mut out)?;
            }
            input_bytes += piece.len() as u64;
            let full = std::mem::replace(&mut piece, Vec::with_capacity(PIECE_ROOM));
            pending.push_back(pool.submit(full, level));
        }
        Ok(())
    })?;
    // A part always ends in one member, empty or not, so its file is valid gzip.
    if !piece.is_empty() || input_bytes == 0 {
        input_bytes += piece.len() as u64;
        pending.push_back(pool.submit(piece, level));
    }
    while !pending.is_empty() {
        write_oldest(&mut pending, &mut out)?;
    }
    out.flush().map_err(io_err)?;
    std::fs::rename(&partial, &path).map_err(io_err)?;
    Ok(Staged {
        path,
        size: out.size,
        sha256: out.hasher.finalize().into(),
        lines,
        input_bytes,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Read;
    use std::sync::Arc;

    use super::*;
    use crate::account::AccountId;
    use crate::clock::{ManualClock, SharedClock};
    use crate::hour::Hour;
    use crate::line::{Line, Origin};
    use crate::spool::compact::Parts;
    use crate::spool::{Along, SealRule};

    const HOUR_MS: i64 = 3_600_000 * 100;

    fn open(dir: &Path) -> Spool {
        let clock: SharedClock = Arc::new(ManualClock::new(HOUR_MS));
        Spool::open(dir, clock, SealRule::default(), 1 << 20).unwrap()
    }

    /// `n` lines of about 200 bytes each into `acme`'s part of the hour.
    fn append(spool: &Spool, from: usize, n: usize) {
        let origin = Arc::new(Origin {
            ingester: "http",
            ..Default::default()
        });
        let lines = (from..from + n)
            .map(|i| {
                Line::new(
                    HOUR_MS,
                    format!("line {i} {}", "x".repeat(i % 180)),
                    origin.clone(),
                )
            })
            .collect();
        let account = AccountId::parse("acme").unwrap();
        spool
            .append(vec![(account, lines, Along::default())])
            .unwrap();
        spool.make_durable().unwrap();
    }

    fn part() -> PartId {
        PartId {
            account: AccountId::parse("acme").unwrap(),
            hour: Hour::of(HOUR_MS),
            seq: 0,
        }
    }

    /// The part's object: its bytes, and its lines read back.
    fn object(spool: &Spool, staging: &Path) -> (Vec<u8>, Staged, usize) {
        let staged = stage(spool, &part(), 6, staging).unwrap();
        let bytes = std::fs::read(&staged.path).unwrap();
        let mut ndjson = String::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_string(&mut ndjson)
            .unwrap();
        (bytes, staged, ndjson.lines().count())
    }

    fn members(spool: &Spool) -> usize {
        let mut members = 0;
        spool
            .for_each_record(&part(), |record| -> Result<(), SpoolError> {
                members += usize::from(matches!(record, Stored::Member(_)));
                Ok(())
            })
            .unwrap();
        members
    }

    #[test]
    fn an_object_is_the_same_bytes_whether_its_lines_were_compressed_open_or_at_staging() {
        let dir = tempfile::tempdir().unwrap();
        let staging = tempfile::tempdir().unwrap();
        let spool = open(dir.path());
        // About 5 MiB of NDJSON, in groups, so blocks and pieces fall between them.
        for group in 0..25 {
            append(&spool, group * 1000, 1000);
        }
        let (raw, raw_staged, lines) = object(&spool, staging.path());
        assert_eq!(lines, 25_000);
        assert!(raw_staged.input_bytes > 4 * PIECE_BYTES as u64);

        // Open: full pieces become members, the short last one waits.
        let mut seen = HashMap::new();
        let made = spool
            .compact_pass(6, &mut seen, Parts::All, &|| true)
            .unwrap();
        assert!(made >= 4, "{made} members made of an open part");
        assert_eq!(members(&spool), made);
        let (open_bytes, open_staged, open_lines) = object(&spool, staging.path());
        assert_eq!(open_lines, lines);
        assert_eq!(open_staged.lines, raw_staged.lines);
        assert_eq!(open_staged.input_bytes, raw_staged.input_bytes);
        assert!(open_bytes == raw, "members differ from what staging makes");
        // Nothing new: the next pass reads nothing.
        assert_eq!(
            spool
                .compact_pass(6, &mut seen, Parts::All, &|| true)
                .unwrap(),
            0
        );

        // More lines, then sealed: the rest, short last piece included.
        append(&spool, 25_000, 700);
        spool.seal_all().unwrap();
        let (before, ..) = object(&spool, staging.path());
        let more = spool
            .compact_pass(6, &mut seen, Parts::All, &|| true)
            .unwrap();
        assert!(more >= 1);
        let (sealed_bytes, sealed_staged, sealed_lines) = object(&spool, staging.path());
        assert_eq!(sealed_lines, 25_700);
        assert_eq!(sealed_staged.lines, 25_700);
        assert!(sealed_bytes == before, "a sealed part's members differ");

        // Every record is a member now, and it all survives a restart.
        let count = members(&spool);
        drop(spool);
        let spool = open(dir.path());
        assert_eq!(members(&spool), count);
        let (reopened, ..) = object(&spool, staging.path());
        assert!(reopened == before);
        assert_eq!(spool.summary().unwrap().records_quarantined, 0);
    }

    #[test]
    fn a_part_being_uploaded_is_compressed_at_the_level_its_object_was_made_at() {
        let dir = tempfile::tempdir().unwrap();
        let staging = tempfile::tempdir().unwrap();
        let spool = open(dir.path());
        for group in 0..8 {
            append(&spool, group * 1000, 1000);
        }
        spool.seal_all().unwrap();
        let before = stage(&spool, &part(), 1, staging.path()).unwrap();
        let bytes = std::fs::read(&before.path).unwrap();
        let mut record = spool.record(&part()).unwrap().unwrap();
        record.state = crate::spool::PartState::Uploading(crate::spool::Upload {
            key: "k".into(),
            n: 0,
            size: before.size,
            sha256: before.sha256,
            level: 1,
            lines: before.lines,
            at: HOUR_MS,
        });
        spool.set_record(&part(), &record).unwrap();
        // Being uploaded, it is left alone: its object was just compressed.
        let mut seen = HashMap::new();
        assert_eq!(
            spool
                .compact_pass(6, &mut seen, Parts::All, &|| true)
                .unwrap(),
            0
        );
        // An attempt failed: it waits now. The configured level is 6; the
        // recorded object was made at 1.
        spool.note_upload_waiting(&part());
        let made = spool
            .compact_pass(6, &mut HashMap::new(), Parts::All, &|| true)
            .unwrap();
        assert!(made >= 2, "{made}");
        assert_eq!(members(&spool), made);
        let after = stage(&spool, &part(), 1, staging.path()).unwrap();
        assert_eq!(after.sha256, before.sha256);
        assert!(std::fs::read(&after.path).unwrap() == bytes);
    }

    #[test]
    fn a_damaged_member_is_set_aside_and_the_other_lines_still_go_up() {
        let dir = tempfile::tempdir().unwrap();
        let staging = tempfile::tempdir().unwrap();
        let spool = open(dir.path());
        for group in 0..12 {
            append(&spool, group * 1000, 1000);
        }
        let made = spool
            .compact_pass(6, &mut HashMap::new(), Parts::All, &|| true)
            .unwrap();
        assert!(made >= 2);
        // Flip a byte inside every member's gzip bytes, in the segment files.
        let mut flipped = 0;
        for entry in std::fs::read_dir(dir.path().join("segments")).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let mut at = 0;
            while let Some(found) = bytes[at..].windows(3).position(|w| w == [0x1f, 0x8b, 8]) {
                let gzip = at + found;
                // The first member's header only: one member damaged.
                if flipped == 0 {
                    bytes[gzip + 40] ^= 0x55;
                    flipped += 1;
                }
                at = gzip + 3;
            }
            std::fs::write(&path, bytes).unwrap();
        }
        assert_eq!(flipped, 1);
        let (_, staged, lines) = object(&spool, staging.path());
        assert_eq!(staged.lines as usize, lines);
        assert!(lines < 12_000 && lines > 0, "{lines} lines");
        assert_eq!(spool.summary().unwrap().records_quarantined, 1);
    }
}
