//! `larch run`: wires the stages together and takes them down in order.
//!
//! Start-up opens the spool, then starts the commit thread, the file sources,
//! the seal watcher, the sync loop and the listener (which also serves the
//! admin API; its token goes to `<data>/admin.json`). Shutdown runs the other
//! way: stop accepting and finish the requests in flight, let the file sources
//! store what they read, let the committer drain, stop sealing and
//! syncing (an upload in flight is abandoned; its recorded state resumes it on
//! the next start), then flush the spool.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::ingest::listen::serve;
use crate::ingest::{self, Ingest, LiveKeys};
use crate::reload::{Reloadable, Reloader};
use crate::rules::LiveRules;
use crate::spool::{Committer, Reserve, Room, Spool, SpoolError};
use crate::status::Board;
use crate::sync::{Backoff, SyncSettings, Syncer};
use crate::target::{Target, TargetSpecError};
use crate::telemetry::Observed;
use arc_swap::ArcSwap;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Target(#[from] TargetSpecError),
    #[error("cannot listen on {addr}: {source}. Is another larch (or another program) using that address? Pick another with --listen.")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot prepare {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    TargetUnusable(String),
    #[error("{0}")]
    Tls(String),
    #[error("the {0} task failed: {1}")]
    Task(&'static str, String),
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen { addr, source })
}

/// Seal checks per second: often enough that `--late-window 0s` archives promptly.
const SEAL_TICK: Duration = Duration::from_millis(500);

pub async fn run(
    settings: Settings,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloader: Option<Reloader>,
) -> Result<(), DaemonError> {
    let data = settings.data_dir.clone();
    crate::ingest::listen::raise_open_file_limit(settings.listen_limits.max_connections);
    // The default archive lives in here, so archive readers may need to pass
    // through it; what larch keeps in it is private either way.
    let archive_modes = settings.target.modes();
    crate::files::create_dirs_durable(&data, archive_modes.dir).map_err(|source| {
        DaemonError::Dir {
            path: data.clone(),
            source,
        }
    })?;
    let Archiving {
        spool,
        target,
        board,
        syncer,
    } = Archiving::open(&settings, clock.clone()).await?;

    let tls = settings
        .tls
        .as_ref()
        .map(crate::ingest::tls::acceptor)
        .transpose()
        .map_err(|e| DaemonError::Tls(e.to_string()))?;
    let listener = bind(settings.listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| DaemonError::Listen {
            addr: settings.listen,
            source,
        })?;
    // Local tools (`larch status`, `drain`, `verify`) speak plain HTTP on
    // loopback; with TLS on the ingest address they get a loopback listener of their own.
    let local = match tls {
        Some(_) => Some(bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?),
        None => None,
    };
    let local_addr = match &local {
        Some(l) => l
            .local_addr()
            .map_err(|source| DaemonError::Listen { addr, source })?,
        None => addr,
    };

    let admin_file =
        crate::admin::AdminFile::create(&data, local_addr).map_err(|source| DaemonError::Dir {
            path: data.join(crate::admin::ADMIN_FILE),
            source,
        })?;

    let room = Arc::new(Room::new(&data, settings.room));
    measure_room(&room, &spool).await;
    let (committer, commit_thread) = Committer::start(spool.clone(), room.clone())
        .map_err(|e| DaemonError::Task("commit", format!("cannot start its thread: {e}")))?;
    let keys: LiveKeys = Arc::new(ArcSwap::from_pointee(settings.keys.clone()));
    let rules: LiveRules = Arc::new(ArcSwap::new(settings.rules.clone()));
    let tail_shared = crate::tail::Shared {
        committer: committer.clone(),
        spool: spool.clone(),
        rules: rules.clone(),
        clock: clock.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let tails = crate::tail::start(settings.file_sources.clone(), tail_shared.clone())
        .map_err(|e| DaemonError::Task("file source", format!("cannot start its thread: {e}")))?;
    let reloadable = Arc::new(Reloadable {
        keys: keys.clone(),
        rules: rules.clone(),
        tails: std::sync::Mutex::new(Some(tails)),
        tail_shared,
        current: std::sync::Mutex::new(settings.clone()),
    });
    let (stop, stopped) = watch::channel(false);
    let sealed = Arc::new(Notify::new());
    let seal_task = tokio::spawn(crate::seal::run(
        spool.clone(),
        SEAL_TICK,
        sealed.clone(),
        stopped.clone(),
    ));
    let admin = crate::admin::router(Arc::new(crate::admin::Admin {
        token: admin_file.token,
        spool: spool.clone(),
        board: board.clone(),
        rules: rules.clone(),
        sealed: sealed.clone(),
        room: room.clone(),
    }));
    let room_task = tokio::spawn(watch_room(
        room.clone(),
        spool.clone(),
        sealed.clone(),
        stopped.clone(),
    ));
    let sync_task = tokio::spawn(Arc::new(syncer).run(sealed, stopped.clone()));

    let observed = crate::telemetry::router(Arc::new(Observed {
        spool: spool.clone(),
        board: board.clone(),
        room: room.clone(),
        rules: rules.clone(),
        clock: clock.clone(),
        exporter: crate::telemetry::install(),
        data_dir: data.clone(),
    }));
    if let Some(metrics_addr) = settings.metrics_listen {
        tokio::spawn(serve(
            bind(metrics_addr).await?,
            None,
            observed.clone(),
            settings.listen_limits,
            stopped.clone(),
        ));
        tracing::info!("metrics, health and readiness also on http://{metrics_addr}");
    }
    if let Some(reloader) = reloader {
        tokio::spawn(crate::reload::on_hangup(
            reloadable.clone(),
            reloader,
            stopped.clone(),
        ));
    }
    let app = ingest::router(Arc::new(Ingest {
        keys,
        budget: ingest::budget::Budget::new(settings.max_request_memory, ingest::budget::WAIT),
        body_timeout: settings.listen_limits.body_timeout,
        committer,
        clock,
        max_skew_ms: settings.max_skew_ms,
        spool: spool.clone(),
        board,
        rules,
    }))
    .merge(admin)
    .merge(observed);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        "larch listening on {scheme}://{addr}, spool in {}, archiving to {}",
        data.display(),
        target.describe()
    );
    if tls.is_some() {
        tracing::info!("local tools (larch status, drain, verify) use http://{local_addr}");
    }
    if settings.demo_key {
        tracing::warn!(
            "no ingestion keys configured: accepting the demo key {:?} for account {:?}. Configure [keys] before real use.",
            crate::config::DEMO_KEY,
            crate::config::DEMO_ACCOUNT
        );
    }
    let (unusable_tx, unusable_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(probe_at_start(target.clone(), unusable_tx));
    let unusable = Arc::new(std::sync::Mutex::new(None));
    let stop_reason = unusable.clone();
    let stop_on = async move {
        tokio::select! {
            _ = shutdown => {}
            Ok(why) = unusable_rx => {
                tracing::error!("{why}");
                *stop_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            }
        }
    };
    let (closing, closed) = watch::channel(false);
    tokio::spawn(async move {
        stop_on.await;
        let _ = closing.send(true);
    });
    let limits = settings.listen_limits;
    let ingest_served = serve(listener, tls, app.clone(), limits, closed.clone());
    let local_served = async {
        if let Some(local) = local {
            serve(local, None, app.clone(), limits, closed.clone()).await;
        }
    };
    tokio::join!(ingest_served, local_served);
    // The router holds a committer handle: the commit thread ends only once it is gone.
    drop(app);
    tracing::info!("shutting down: no longer accepting lines");

    // File sources store what they have read (partial last lines included),
    // then drop their committer handles.
    let tails = reloadable
        .tails
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    drop(reloadable);
    if let Some(tails) = tails {
        let _ = tokio::task::spawn_blocking(move || tails.stop()).await;
    }
    // The router (and with it the last committer handle) is gone: the commit
    // thread drains what it holds and ends.
    let _ = stop.send(true);
    let joined = tokio::task::spawn_blocking(move || commit_thread.join()).await;
    let _ = seal_task.await;
    let _ = room_task.await;
    let _ = sync_task.await;
    let flushed = tokio::task::spawn_blocking(move || spool.make_durable()).await;
    crate::admin::AdminFile::remove(&data);
    if !matches!(joined, Ok(Ok(()))) {
        return Err(DaemonError::Task(
            "commit",
            "the commit thread panicked".into(),
        ));
    }
    flushed.map_err(|e| DaemonError::Task("final flush", e.to_string()))??;
    if let Some(why) = unusable.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(DaemonError::TargetUnusable(why));
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The stages that take lines from the spool to the target: what `larch run`
/// starts, and what `larch drain` runs by itself on a stopped daemon's spool.
pub struct Archiving {
    pub spool: Arc<Spool>,
    pub target: Arc<Target>,
    pub board: Arc<Board>,
    pub syncer: Syncer,
}

impl Archiving {
    /// Opens the spool under the settings' data directory and readies the sync loop.
    pub async fn open(settings: &Settings, clock: SharedClock) -> Result<Self, DaemonError> {
        let data = settings.data_dir.clone();
        let spool = {
            let (data, clock, seal, cache) = (
                data.clone(),
                clock.clone(),
                settings.seal,
                settings.cache_bytes,
            );
            tokio::task::spawn_blocking(move || {
                match Spool::open(&data, clock.clone(), seal, cache) {
                    // sled writes as it opens: a full disk would keep larch from
                    // starting, and so from emptying it. Staged objects left by a
                    // crash are derived data (the sync loop clears them anyway).
                    Err(e) if e.is_disk_full() => {
                        let _ = std::fs::remove_dir_all(data.join(crate::sync::STAGING_DIR));
                        Reserve::new(&data).release();
                        Spool::open(&data, clock, seal, cache)
                    }
                    opened => opened,
                }
            })
            .await
            .map_err(|e| DaemonError::Task("spool open", e.to_string()))??
        };
        // Fail-stop: nothing after a failed flush may be acknowledged, and the
        // group that failed must not be answered (it may be durable or not).
        spool.on_durability_lost(Box::new(|what| {
            tracing::error!(
                "larch stops: {what}. What the disk holds past this point cannot be trusted, so larch takes no more lines and exits without answering the requests that were being stored (their senders retry). Check the disk (dmesg, SMART); started again, larch recovers everything that was acknowledged."
            );
            std::process::exit(1);
        }));
        let spool = Arc::new(spool);

        let target = Arc::new(Target::new(settings.target.clone())?);
        // The default archive lives under the data directory; create it. A target the
        // user named must exist already: creating it could write to the wrong disk.
        if let Some(dir) = target.local_dir() {
            if dir.starts_with(&data) {
                let mode = settings.target.modes().dir;
                crate::files::create_dirs_durable(dir, mode).map_err(|source| {
                    DaemonError::Dir {
                        path: dir.to_owned(),
                        source,
                    }
                })?;
            }
        }
        let board = Arc::new(Board::default());
        board.set_identity(spool.instance_hex(), target.describe());

        let syncer = Syncer::new(
            spool.clone(),
            target.clone(),
            SyncSettings {
                staging_dir: data.join(crate::sync::STAGING_DIR),
                gzip_level: settings.gzip_level,
                key_prefix: settings.key_prefix.clone(),
                backoff: Backoff {
                    cap: settings.retry_max_delay,
                    ..Backoff::default()
                },
                ledger_keep: settings.ledger_keep,
            },
            clock.clone(),
            board.clone(),
        )
        .map_err(|source| DaemonError::Dir {
            path: data.join(crate::sync::STAGING_DIR),
            source,
        })?;
        Ok(Self {
            spool,
            target,
            board,
            syncer,
        })
    }
}

/// How often the spool's size and the free disk are measured.
const ROOM_EVERY: Duration = Duration::from_secs(1);

async fn measure_room(room: &Arc<Room>, spool: &Arc<Spool>) {
    let (room, spool) = (room.clone(), spool.clone());
    let measured = tokio::task::spawn_blocking(move || {
        room.measure(|| spool.waiting_by_account().unwrap_or_default())
    })
    .await;
    match measured {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot measure the spool's size and free disk: {e}"),
        Err(e) => tracing::warn!("spool measuring task failed: {e}"),
    }
}

/// Measures the room every second and says when refusing starts and ends.
/// While it refuses, open parts are sealed at once: their lines can only make
/// room by being archived, and waiting for their hour to end could take hours.
async fn watch_room(
    room: Arc<Room>,
    spool: Arc<Spool>,
    sealed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut refusing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ROOM_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        measure_room(&room, &spool).await;
        let why = room.refusing();
        if why.is_some() {
            let spool = spool.clone();
            match tokio::task::spawn_blocking(move || spool.seal_all()).await {
                Ok(Ok(parts)) if !parts.is_empty() => {
                    tracing::warn!("sealed {} open part(s) early to make room; later lines of their hours go to follow-up parts", parts.len());
                    sealed.notify_one();
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!("cannot seal parts to make room, will try again: {e}")
                }
                Err(e) => tracing::error!("sealing task failed: {e}"),
            }
        }
        match (why, refusing) {
            (Some(why), false) => {
                tracing::error!(
                    "refusing new lines: {why}. Held lines are still archived; file sources pause."
                );
                refusing = true;
            }
            (None, true) => {
                tracing::info!("the spool has room again; taking lines");
                refusing = false;
            }
            _ => {}
        }
    }
}

/// Probes a cloud target once at start-up and logs the verdict. A store that
/// answers but cannot refuse overwrites stops larch, unless single-writer mode
/// was chosen; a store that cannot be reached yet is left to the sync loop,
/// which keeps the lines and tries again.
async fn probe_at_start(target: Arc<Target>, unusable: tokio::sync::oneshot::Sender<String>) {
    if target.local_dir().is_some() {
        return;
    }
    let report = match target.probe().await {
        Ok(report) => report,
        Err(e) => {
            tracing::warn!(
                "cannot check the target yet: {e}. Lines are kept; uploads start once it answers."
            );
            return;
        }
    };
    if report.usable(target.single_writer()) {
        tracing::info!("target checked:\n{report}");
        return;
    }
    if let Err(e) = report.problem() {
        if e.needs_operator() {
            tracing::error!("target check failed; uploads wait until this is fixed:\n{report}");
        } else {
            tracing::warn!("target not reachable yet; lines are kept and uploads start once it answers:\n{report}");
        }
        return;
    }
    let _ = unusable.send(format!(
        "refusing to run: {} cannot refuse to overwrite objects, so another writer could destroy archives. If this larch is the only writer under this prefix, set target.single_writer = true in the config.\n{report}",
        target.describe()
    ));
}
