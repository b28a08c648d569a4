//! The contents of one regular file: the durable bytes in its backing file plus
//! the unsynced pages and size changes held in memory.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Size of an in-memory page.
pub(crate) const PAGE: u64 = 4096;

/// One 4 KiB page of a file held in memory. The page is a full snapshot of its
/// range, so it is authoritative for reads.
struct Page {
    buf: Box<[u8]>,
    /// Written since the last successful fsync and not yet covered by a failed one.
    /// A page that is not dirty is "clean but not durable": the fsync that should
    /// have written it failed, so it stays readable but is never written back.
    dirty: bool,
}

/// A regular file's data.
pub(crate) struct FileData {
    /// Current logical size.
    pub(crate) size: u64,
    /// Length of the backing file (the durable size).
    durable_size: u64,
    /// Lowest size since the last successful fsync: backing bytes at or past it
    /// read back as zeros (they were cut off by a shrink).
    low: u64,
    pages: BTreeMap<u64, Page>,
    /// The last write since the last fsync, for torn-write simulation.
    last_write: Option<(u64, Vec<u8>)>,
}

fn read_full_at(file: &File, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, off) {
            Ok(0) => {
                buf.fill(0);
                break;
            }
            Ok(n) => {
                buf = &mut buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl FileData {
    /// A file whose durable image is `durable_size` bytes long.
    pub(crate) fn new(durable_size: u64) -> FileData {
        FileData {
            size: durable_size,
            durable_size,
            low: durable_size,
            pages: BTreeMap::new(),
            last_write: None,
        }
    }

    /// Fill `out` with the logical bytes at `off` that are not in memory.
    fn read_backing(&self, path: &Path, out: &mut [u8], off: u64) -> io::Result<()> {
        let end = (off + out.len() as u64)
            .min(self.low)
            .min(self.durable_size);
        if end > off {
            let file = File::open(path)?;
            read_full_at(&file, &mut out[..(end - off) as usize], off)?;
        }
        Ok(())
    }

    /// Read up to `len` bytes at `off`.
    pub(crate) fn read(&self, path: &Path, off: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = off.saturating_add(len).min(self.size);
        if off >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - off) as usize];
        self.read_backing(path, &mut out, off)?;
        for (&idx, page) in self.pages.range(off / PAGE..=(end - 1) / PAGE) {
            let start = (idx * PAGE).max(off);
            let stop = ((idx + 1) * PAGE).min(end);
            out[(start - off) as usize..(stop - off) as usize].copy_from_slice(
                &page.buf[(start - idx * PAGE) as usize..(stop - idx * PAGE) as usize],
            );
        }
        Ok(out)
    }

    fn page_mut(&mut self, path: &Path, idx: u64) -> io::Result<&mut Page> {
        if !self.pages.contains_key(&idx) {
            let mut buf = vec![0u8; PAGE as usize].into_boxed_slice();
            self.read_backing(path, &mut buf, idx * PAGE)?;
            self.pages.insert(idx, Page { buf, dirty: false });
        }
        self.pages
            .get_mut(&idx)
            .ok_or_else(|| io::Error::other("page vanished"))
    }

    /// Write `data` at `off` into memory, extending the size if needed.
    pub(crate) fn write(&mut self, path: &Path, off: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = off + data.len() as u64;
        for idx in off / PAGE..=(end - 1) / PAGE {
            let start = (idx * PAGE).max(off);
            let stop = ((idx + 1) * PAGE).min(end);
            let page = self.page_mut(path, idx)?;
            page.buf[(start - idx * PAGE) as usize..(stop - idx * PAGE) as usize]
                .copy_from_slice(&data[(start - off) as usize..(stop - off) as usize]);
            page.dirty = true;
        }
        self.size = self.size.max(end);
        self.last_write = Some((off, data.to_vec()));
        Ok(())
    }

    /// Change the size; bytes past a shrink read back as zeros after a re-extend.
    pub(crate) fn truncate(&mut self, new: u64) {
        if new < self.size {
            self.low = self.low.min(new);
            let first_gone = new.div_ceil(PAGE);
            self.pages.split_off(&first_gone);
            if !new.is_multiple_of(PAGE) {
                if let Some(page) = self.pages.get_mut(&(new / PAGE)) {
                    page.buf[(new % PAGE) as usize..].fill(0);
                }
            }
        }
        self.size = new;
    }

    /// Whether anything differs from the durable image.
    pub(crate) fn is_dirty(&self) -> bool {
        !self.pages.is_empty() || self.size != self.durable_size || self.low != self.durable_size
    }

    /// Bytes held in memory.
    pub(crate) fn unsynced_bytes(&self) -> u64 {
        self.pages.len() as u64 * PAGE
    }

    /// A successful fsync: write dirty pages and the size to the backing file.
    /// Pages whose earlier fsync failed stay in memory and are not written.
    pub(crate) fn fsync(&mut self, path: &Path) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        if self.low < self.durable_size {
            file.set_len(self.low)?;
        }
        for (&idx, page) in &self.pages {
            if page.dirty && idx * PAGE < self.size {
                let n = PAGE.min(self.size - idx * PAGE) as usize;
                file.write_all_at(&page.buf[..n], idx * PAGE)?;
            }
        }
        file.set_len(self.size)?;
        self.pages.retain(|_, p| !p.dirty);
        self.durable_size = self.size;
        self.low = self.size;
        self.last_write = None;
        Ok(())
    }

    /// A failed fsync (Linux "fsyncgate"): the dirty pages stay readable but are
    /// marked clean, so no later fsync makes them durable.
    pub(crate) fn fail_fsync(&mut self) {
        for page in self.pages.values_mut() {
            page.dirty = false;
        }
        self.last_write = None;
    }

    /// Evicts the pages a failed fsync left behind (clean, never written), as
    /// a kernel does when it needs the memory or is asked to
    /// (`posix_fadvise(DONTNEED)`, which FUSE does not pass on): reads then
    /// see what the disk holds there. The size stays, as the inode's does.
    pub(crate) fn evict_clean(&mut self) {
        self.pages.retain(|_, p| p.dirty);
    }

    /// Power cut with tearing: a random sector-aligned prefix of the last unsynced
    /// write reaches the backing file. Returns whether a non-empty prefix did.
    pub(crate) fn tear(&mut self, path: &Path, sector: u64, rand: u64) -> io::Result<bool> {
        let Some((off, data)) = self.last_write.take() else {
            return Ok(false);
        };
        let end = off + data.len() as u64;
        let sector = sector.max(1);
        // Candidate ends: the start, every sector boundary inside, and the end.
        let mut cands = vec![off];
        let mut b = (off / sector + 1) * sector;
        while b < end {
            cands.push(b);
            b += sector;
        }
        cands.push(end);
        let cut = cands[(rand % cands.len() as u64) as usize];
        if cut == off {
            return Ok(false);
        }
        let file = OpenOptions::new().write(true).open(path)?;
        file.write_all_at(&data[..(cut - off) as usize], off)?;
        self.durable_size = file.metadata()?.len();
        Ok(true)
    }

    /// Power cut: forget everything in memory; the backing file is the truth.
    pub(crate) fn revert(&mut self) {
        *self = FileData::new(self.durable_size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrink_then_extend_reads_zeros() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 10000])?;
        let mut d = FileData::new(10000);
        d.truncate(100);
        d.truncate(9000);
        let got = d.read(&path, 0, 9000)?;
        assert!(got[..100].iter().all(|&b| b == 7));
        assert!(got[100..].iter().all(|&b| b == 0));
        d.write(&path, 5000, b"abc")?;
        d.fsync(&path)?;
        let disk = std::fs::read(&path)?;
        assert_eq!(disk.len(), 9000);
        assert_eq!(&disk[5000..5003], b"abc");
        assert!(disk[100..5000].iter().all(|&b| b == 0));
        Ok(())
    }
}
