//! Staging: a part's lines turned into the exact bytes of its archive object.
//!
//! The lines stream from the spool through gzip into a file in the staging
//! directory, so memory stays flat whatever the part's size. The gzip header
//! carries no time or name, so the same part at the same level always gives
//! the same bytes (DESIGN.md invariant 4).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
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

/// Compresses part `id` into `dir`. Blocking: run it off the async runtime.
pub fn stage(spool: &Spool, id: &PartId, level: u32, dir: &Path) -> Result<Staged, StageError> {
    let path = dir.join(file_name(id));
    let partial = dir.join(format!("{}.partial", file_name(id)));
    let io_err = |source| StageError::Io {
        path: partial.clone(),
        source,
    };
    let file = File::create(&partial).map_err(io_err)?;
    let hashing = Hashing {
        inner: BufWriter::with_capacity(256 * 1024, file),
        hasher: Sha256::new(),
        size: 0,
    };
    let mut gz = GzBuilder::new().write(hashing, Compression::new(level));
    let mut ndjson = Vec::with_capacity(128 * 1024);
    let mut lines = 0u64;
    let mut input_bytes = 0u64;
    spool.for_each_block(id, |block| -> Result<(), StageError> {
        ndjson.clear();
        for line in block {
            line.write_ndjson(id.account.as_str(), &mut ndjson);
        }
        lines += block.len() as u64;
        input_bytes += ndjson.len() as u64;
        gz.write_all(&ndjson).map_err(io_err)
    })?;
    let mut hashing = gz.finish().map_err(io_err)?;
    hashing.flush().map_err(io_err)?;
    std::fs::rename(&partial, &path).map_err(io_err)?;
    Ok(Staged {
        path,
        size: hashing.size,
        sha256: hashing.hasher.finalize().into(),
        lines,
        input_bytes,
    })
}
