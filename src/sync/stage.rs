//! Staging: a part's lines turned into the exact bytes of its archive object.
//!
//! The lines stream from the spool through gzip into a file in the staging
//! directory, so memory stays flat whatever the part's size, and are compressed
//! on every core (see [`stage`]). The gzip headers carry no time or name, so the
//! same part at the same level always gives the same bytes (docs/DESIGN.md invariant 4).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::spool::{PartId, Spool, SpoolError};

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

pub fn file_name(id: &PartId) -> String {
    format!("{}.{}.{}.json.gz", id.account, id.hour.0, id.seq)
}

/// NDJSON is cut into pieces of about this size, each compressed on its own
/// core as one gzip member. The cuts fall between blocks, so they depend only
/// on the part's content: the same part always gives the same bytes.
const PIECE_BYTES: usize = 1024 * 1024;

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
    let mut piece = Vec::with_capacity(PIECE_BYTES + 128 * 1024);
    spool.for_each_block(id, |block| -> Result<(), StageError> {
        for line in block {
            line.write_ndjson(id.account.as_str(), &mut piece);
        }
        lines += block.len() as u64;
        if piece.len() >= PIECE_BYTES {
            if pending.len() >= in_flight {
                write_oldest(&mut pending, &mut out)?;
            }
            input_bytes += piece.len() as u64;
            let full = std::mem::replace(&mut piece, Vec::with_capacity(PIECE_BYTES + 128 * 1024));
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
