//! Making the spool durable before an acknowledgement.
//!
//! `sled::Db::flush` writes its buffers out, but on Linux it makes them stable
//! with `sync_file_range`, which does not flush the drive's cache, and values
//! large enough to become blob files are never fsynced at all (sled issue #1452).
//! So after every flush this fsyncs sled's log file and every blob file written
//! since the last call, and the blob directory that names them.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct Durability {
    log: File,
    blobs_dir: PathBuf,
    /// Blob files are named by a log sequence number that only grows.
    last_synced_blob: Mutex<u64>,
}

impl Durability {
    pub fn open(sled_dir: &Path) -> io::Result<Self> {
        let log = File::open(sled_dir.join("db"))?;
        sync_dir(sled_dir)?;
        Ok(Self {
            log,
            blobs_dir: sled_dir.join("blobs"),
            last_synced_blob: Mutex::new(0),
        })
    }

    /// Flush sled and fsync what the flush wrote. Returns once the data is on stable storage.
    pub fn flush(&self, db: &sled::Db) -> Result<(), sled::Error> {
        db.flush()?;
        self.log.sync_data()?;
        self.sync_new_blobs()?;
        Ok(())
    }

    fn sync_new_blobs(&self) -> io::Result<()> {
        let mut last = self
            .last_synced_blob
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut newest = *last;
        let mut synced_any = false;
        for entry in entries {
            let entry = entry?;
            let Some(lsn) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if lsn > *last {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    // sled removes blobs it no longer needs; a vanished one needs no sync.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                newest = newest.max(lsn);
                synced_any = true;
            }
        }
        if synced_any {
            sync_dir(&self.blobs_dir)?;
        }
        *last = newest;
        Ok(())
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
