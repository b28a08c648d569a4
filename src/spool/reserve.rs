//! The reserve: a file of [`RESERVE_BYTES`] that larch keeps beside the spool
//! and deletes when the disk under it is full.
//!
//! Another program can fill the spool's disk to the last byte. Then sled
//! cannot open (it writes on open) and parts cannot be compressed for upload,
//! and uploading is the only way larch can give space back: without a reserve
//! it would stay stuck until someone freed space by hand. With it, larch
//! releases the reserve, starts, and keeps archiving (parts up to about the
//! reserve's size compress into it), refusing new lines all the while. It
//! holds the reserve again once the disk has room for it above
//! `min_free_space`; until then the missing reserve counts as used space.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const RESERVE_BYTES: u64 = 32 << 20;
pub const RESERVE_FILE: &str = "reserve";

/// Below this much free space the reserve is released.
pub const RELEASE_BELOW: u64 = 4 << 20;

#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
}

impl Reserve {
    /// The reserve of the spool under `data`.
    pub fn new(data: &Path) -> Self {
        Self {
            path: data.join(RESERVE_FILE),
        }
    }

    pub fn is_held(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= RESERVE_BYTES)
    }

    /// Deletes the reserve; whether there was one to delete.
    pub fn release(&self) -> bool {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(
                    "the spool's disk is full: released larch's {} MiB reserve ({}) so it can keep archiving; new lines stay refused until there is room again",
                    RESERVE_BYTES >> 20,
                    self.path.display()
                );
                true
            }
            Err(_) => false,
        }
    }

    /// Creates the reserve, its blocks allocated (not a sparse file).
    pub fn hold(&self) -> io::Result<()> {
        let partial = self.path.with_extension("partial");
        let result = (|| {
            let mut file = crate::files::create_private(&partial)?;
            allocate(&mut file, RESERVE_BYTES)?;
            file.sync_all()?;
            // Durable, so a cut cannot leave the space counted as held but free.
            crate::files::rename_durable(&partial, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }
}

fn allocate(file: &mut File, bytes: u64) -> io::Result<()> {
    match rustix::fs::fallocate(&*file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
        Ok(()) => Ok(()),
        // Filesystems without fallocate get the bytes written.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
            let chunk = vec![0u8; 1 << 20];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                file.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            Ok(())
        }
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_is_held_with_its_blocks_and_released_once() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::new(dir.path());
        assert!(!reserve.is_held());
        reserve.hold().unwrap();
        assert!(reserve.is_held());
        let meta = std::fs::metadata(dir.path().join(RESERVE_FILE)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 >= RESERVE_BYTES,
            "the reserve is sparse: {} blocks",
            meta.blocks()
        );
        assert!(reserve.release());
        assert!(!reserve.is_held());
        assert!(!reserve.release());
    }
}
