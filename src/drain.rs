//! `larch drain`: everything in the spool archived now, for decommissioning a
//! host or before maintenance.
//!
//! Every open part is sealed at once (lines that arrive later for the same hour
//! go to a follow-up part, `.N`), and the command waits until the spool holds
//! nothing: no part open, sealed, uploading or uploaded-but-not-deleted. With a
//! running daemon it works through the admin API, sealing again on each poll so
//! that lines still arriving are drained too; with a stopped one it opens the
//! spool and runs the sync loop itself. With a time limit it stops waiting
//! cleanly and reports what is left; nothing is dropped either way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::{AdminClient, AdminError};
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::spool::{Spool, SpoolError, SpoolSummary};
use crate::status::{Board, Status};
use crate::sync::{Backoff, SyncSettings, Syncer};
use crate::target::{Target, TargetSpecError};

/// How often a running daemon is asked again.
const POLL: Duration = Duration::from_millis(500);
/// How often the sync loop goes over a stopped daemon's spool.
const PASS_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Target(#[from] TargetSpecError),
    #[error("cannot prepare {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("a drain task failed: {0}")]
    Task(String),
}

/// How a drain ended.
#[derive(Debug)]
pub enum Drained {
    /// The spool is empty.
    Empty,
    /// The time limit passed first; this is what is left.
    TimedOut(Box<Status>),
}

/// Nothing left: no part in any state before deleted.
pub fn is_empty(s: &SpoolSummary) -> bool {
    s.parts_open + s.parts_sealed + s.parts_uploading + s.parts_uploaded == 0
}

fn out_of_time(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Drains a running daemon; `progress` sees each status on the way.
pub fn through_daemon(
    client: &AdminClient,
    timeout: Option<Duration>,
    mut progress: impl FnMut(&Status),
) -> Result<Drained, DrainError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let status = client.drain()?;
        progress(&status);
        if is_empty(&status.spool) {
            return Ok(Drained::Empty);
        }
        if out_of_time(deadline) {
            return Ok(Drained::TimedOut(Box::new(status)));
        }
        std::thread::sleep(POLL);
    }
}

/// Drains a stopped daemon's spool by running the sync loop here.
pub async fn stopped_daemon(
    settings: &Settings,
    clock: SharedClock,
    timeout: Option<Duration>,
    mut progress: impl FnMut(&Status),
) -> Result<Drained, DrainError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let data = settings.data_dir.clone();
    let spool = {
        let (data, clock, seal, cache) = (
            data.clone(),
            clock.clone(),
            settings.seal,
            settings.cache_bytes,
        );
        tokio::task::spawn_blocking(move || Spool::open(&data, clock, seal, cache))
            .await
            .map_err(|e| DrainError::Task(e.to_string()))??
    };
    let spool = Arc::new(spool);
    let target = Arc::new(Target::new(settings.target.clone())?);
    let board = Arc::new(Board::default());
    board.set_identity(spool.instance_hex(), target.describe());
    let staging_dir = data.join("staging");
    let syncer = Arc::new(
        Syncer::new(
            spool.clone(),
            target,
            SyncSettings {
                staging_dir: staging_dir.clone(),
                gzip_level: settings.gzip_level,
                key_prefix: settings.key_prefix.clone(),
                backoff: Backoff {
                    cap: settings.retry_max_delay,
                    ..Backoff::default()
                },
                ledger_keep: settings.ledger_keep,
            },
            clock,
            board.clone(),
        )
        .map_err(|source| DrainError::Dir {
            path: staging_dir,
            source,
        })?,
    );
    let blocking = |f: Box<dyn FnOnce() -> Result<SpoolSummary, SpoolError> + Send>| async {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| DrainError::Task(e.to_string()))?
            .map_err(DrainError::from)
    };
    let for_seal = spool.clone();
    blocking(Box::new(move || {
        for part in for_seal.seal_all()? {
            tracing::info!(part = %part, "sealed for a drain");
        }
        for_seal.summary()
    }))
    .await?;
    loop {
        syncer.clone().pass().await;
        let for_summary = spool.clone();
        let summary = blocking(Box::new(move || for_summary.summary())).await?;
        let status = board.snapshot(summary);
        progress(&status);
        if is_empty(&status.spool) {
            break;
        }
        if out_of_time(deadline) {
            return Ok(Drained::TimedOut(Box::new(status)));
        }
        tokio::time::sleep(PASS_EVERY).await;
    }
    // The sync loop frees segment files only now and then; a drained spool frees them now.
    let for_collect = spool.clone();
    blocking(Box::new(move || {
        for_collect.collect_segments()?;
        for_collect.make_durable()?;
        for_collect.summary()
    }))
    .await?;
    Ok(Drained::Empty)
}
