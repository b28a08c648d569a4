//! The compression pool: one thread per core, shared by every part being
//! staged, so a backlog uses every core while ingest keeps its latency.
//!
//! Members are made by libdeflate: it compresses a whole buffer at once, which
//! suits pieces of 1 MiB, and on archived NDJSON at level 6 it ran about 1.5
//! times as fast as zlib-rs with a tenth fewer bytes (`larch-bench deflate`).
//! ISA-L is faster still but only at low levels, whose larger objects a
//! metered link pays for.
//!
//! The threads run at a lower scheduling priority (nice 10): when lines arrive
//! while a backlog drains, answering them comes first and compression takes the
//! rest of the CPU. The threads live as long as the process, so their memory
//! stays in a few allocator arenas instead of a new one per part.

use std::cell::RefCell;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, OnceLock};

use libdeflater::{CompressionLvl, Compressor};
use parking_lot::Mutex;

struct Job {
    piece: Vec<u8>,
    level: u32,
    done: SyncSender<io::Result<Vec<u8>>>,
}

pub struct Pool {
    jobs: Mutex<Sender<Job>>,
    pub threads: usize,
}

/// The process's pool, started on first use.
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("larch-gzip-{i}"))
                .spawn(move || work(&rx));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!("could not start compression thread {i}: {e}"),
            }
        }
        if started == 0 {
            // Without threads, jobs are compressed by the caller (see `submit`).
            tracing::warn!("no compression threads; compressing on the sync thread");
        }
        Pool {
            jobs: Mutex::new(tx),
            threads: started,
        }
    })
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    lower_priority();
    loop {
        let job = {
            let rx = jobs.lock();
            rx.recv()
        };
        let Ok(job) = job else { return };
        // The stager may have given up (an error elsewhere); then nobody listens.
        let _ = job.done.send(gzip_member(&job.piece, job.level));
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // On Linux, PRIO_PROCESS with 0 applies to the calling thread alone.
    // SAFETY: setpriority takes no pointers; a failure only leaves the priority as is.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

impl Pool {
    /// Queues `piece` for compression; its gzip member arrives on the returned channel.
    pub fn submit(&self, piece: Vec<u8>, level: u32) -> Receiver<io::Result<Vec<u8>>> {
        let (done, result) = mpsc::sync_channel(1);
        let job = Job { piece, level, done };
        let sent = if self.threads > 0 {
            let jobs = self.jobs.lock();
            jobs.send(job).map_err(|e| e.0)
        } else {
            Err(job)
        };
        if let Err(job) = sent {
            let _ = job.done.send(gzip_member(&job.piece, job.level));
        }
        result
    }
}

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
