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
use crate::daemon::{Archiving, DaemonError};
use crate::spool::{SpoolError, SpoolSummary};
use crate::status::Status;

/// How often a running daemon is asked again.
const POLL: Duration = Duration::from_millis(500);
/// How often the sync loop goes over a stopped daemon's spool.
const PASS_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Open(#[from] DaemonError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
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
    let archiving = Archiving::open(settings, clock).await?;
    let reporter = archiving.reporter(None);
    let spool = archiving.spool;
    let syncer = Arc::new(archiving.syncer);
    spool
        .run(|spool| {
            for part in spool.seal_all()? {
                tracing::info!(part = %part, "sealed for a drain");
            }
            Ok::<_, SpoolError>(())
        })
        .await?;
    loop {
        syncer.clone().pass().await;
        let status = reporter.status().await?;
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
    spool
        .run(|spool| {
            spool.collect_segments()?;
            spool.make_durable()
        })
        .await?;
    Ok(Drained::Empty)
}
