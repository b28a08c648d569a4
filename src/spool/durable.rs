//! Making the spool durable before an acknowledgement.
//!
//! `sled::Db::flush` writes its buffers out, but on Linux it makes them stable
//! with `sync_file_range`, which does not flush the drive's cache, and values
//! large enough to become blob files are never fsynced at all (sled issue #1452).
//! So after every flush this fsyncs sled's log file and every blob file written
//! since the last call, and the blob directory that names them.
//!
//! A flush or fsync that fails is never retried: after a failed fsync the
//! kernel may have dropped the pages it could not write and report the next
//! fsync as a success (PostgreSQL's "fsyncgate"), and sled's log would then
//! hold a hole that its recovery stops at, taking every later commit with it.
//! So the first failure is final (and so is a sled batch that did not apply,
//! which may have left part of itself in memory for the next flush): every later flush fails too, nothing more is
//! acknowledged, and the spool's owner is told (the daemon exits, so that it
//! restarts from what is durable).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::files::sync_dir;

pub struct Durability {
    log: File,
    blobs_dir: PathBuf,
    /// Held across a whole flush, so that no flush can succeed after one
    /// that failed: Linux reports a failed writeback once per open file, so
    /// a second fsync racing the first could return success for the pages
    /// the first lost. Holds the newest blob file synced (blob files are
    /// named by a log sequence number that only grows).
    flushing: Mutex<u64>,
    /// What failed first; once set, every flush fails.
    failed: OnceLock<String>,
    /// Called once, with what failed, when the first flush (or sled batch) fails.
    on_failure: OnceLock<FailureHook>,
}

/// What the spool's owner does when durability is lost (see the module doc).
pub type FailureHook = Box<dyn Fn(&str) + Send + Sync>;

impl Durability {
    pub fn open(sled_dir: &Path) -> io::Result<Self> {
        let log = File::open(sled_dir.join("db"))?;
        // sled rewrites `conf` at every open and never fsyncs it: a cut would
        // leave it empty. Then the names sled made (db, conf, blobs/).
        match File::open(sled_dir.join("conf")) {
            Ok(conf) => conf.sync_all()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        log.sync_all()?;
        sync_dir(sled_dir)?;
        Ok(Self {
            log,
            blobs_dir: sled_dir.join("blobs"),
            flushing: Mutex::new(0),
            failed: OnceLock::new(),
            on_failure: OnceLock::new(),
        })
    }

    /// Sets what happens when a flush fails (once; later calls are ignored).
    pub fn on_failure(&self, hook: FailureHook) {
        let _ = self.on_failure.set(hook);
    }

    /// Flush sled and fsync what the flush wrote. Returns once the data is on
    /// stable storage; after a failure, never again.
    pub fn flush(&self, db: &sled::Db) -> Result<(), sled::Error> {
        let mut last_blob = self.flushing.lock();
        if let Some(failed) = self.failed.get() {
            return Err(Self::lost(failed));
        }
        let flushed = db
            .flush()
            .map_err(|e| format!("sled's flush failed: {e}"))
            .and_then(|_| {
                self.log
                    .sync_data()
                    .map_err(|e| format!("the fsync of sled's log failed: {e}"))
            })
            .and_then(|()| {
                self.sync_new_blobs(&mut last_blob)
                    .map_err(|e| format!("the fsync of a sled blob file failed: {e}"))
            });
        match flushed {
            Ok(()) => Ok(()),
            Err(what) => {
                // Still holding the lock: the hook exits before anyone else flushes.
                self.mark_failed(&what);
                Err(sled::Error::Io(io::Error::other(what)))
            }
        }
    }

    /// Marks the spool as no longer durable (the first failure wins) and
    /// calls the hook, for a failure found outside a flush (a sled batch that
    /// did not apply). Taken under the flush lock, so that no flush running
    /// meanwhile can make what the failed batch left in memory durable.
    pub fn fail(&self, what: &str) {
        let _flushing = self.flushing.lock();
        self.mark_failed(what);
    }

    fn mark_failed(&self, what: &str) {
        if self.failed.set(what.to_owned()).is_ok() {
            if let Some(hook) = self.on_failure.get() {
                hook(what);
            }
        }
    }

    fn lost(failed: &str) -> sled::Error {
        sled::Error::Io(io::Error::other(format!(
            "the spool can no longer be made durable, since {failed}"
        )))
    }

    fn sync_new_blobs(&self, last: &mut u64) -> io::Result<()> {
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

/// Drops the page cache's copy of sled's log before sled reads it. After a
/// failed fsync, Linux keeps the pages it could not write, marked clean: a
/// larch restarted in the same boot would read them from the cache, build on
/// them, and lose everything after the hole they leave on disk at the next
/// power cut. Read from the disk instead, sled recovers what is really there.
pub fn forget_cached(log: &Path) {
    if let Ok(file) = File::open(log) {
        // Advice only: a filesystem that ignores it loses nothing it had.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
    }
}
