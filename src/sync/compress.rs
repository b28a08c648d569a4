//! The compression pool: one thread per core, shared by every part being
//! staged, so a backlog uses every core while ingest keeps its latency.
//!
//! Members are made by [`crate::gzip`]; pieces the spool already compressed
//! while their part was open (`spool::compact`) are not compressed again.
//!
//! The threads run at a lower scheduling priority (nice 10): when lines arrive
//! while a backlog drains, answering them comes first and compression takes the
//! rest of the CPU. The threads live as long as the process, so their memory
//! stays in a few allocator arenas instead of a new one per part.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, OnceLock};

use crate::gzip::{gzip_member, lower_priority};

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
