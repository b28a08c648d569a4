//! `larch run`: wires the stages together and takes them down in order.
//!
//! Start-up opens the spool and readies the sync loop ([`Archiving`]), binds
//! the listeners, then starts the commit thread, the file sources, the seal
//! watcher, the room watcher, the sync loop and the routes (ingest, admin,
//! ops; the admin token goes to `<data>/admin.json`). Shutdown runs the other
//! way: stop accepting and finish the requests in flight, let the file sources
//! store what they read, let the committer drain while sealing and syncing
//! stop (an upload in flight is abandoned; its recorded state resumes it on
//! the next start), then flush the spool.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{Admin, AdminFile};
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::ingest::listen::serve;
use crate::ingest::{self, Ingest, LiveKeys};
use crate::intake::Intake;
use crate::journald::Journals;
use crate::ops::Ops;
use crate::reload::{Reloadable, Reloader};
use crate::rules::LiveRules;
use crate::spool::compact::Compactor;
use crate::spool::{room, seal, Committer, Reserve, Room, Spool, SpoolError, SpoolHandle};
use crate::status::{Reporter, Running};
use crate::store::{Target, TargetSpecError};
use crate::sync::{Backoff, Board, SyncSettings, Syncer};
use crate::syslog::listen::Listeners as SyslogListeners;

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

/// The ingest listener, and the loopback one local tools use when the
/// ingest listener speaks TLS.
struct Listeners {
    ingest: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    local: Option<TcpListener>,
    /// Where `larch status`, `drain` and `verify` reach this daemon.
    local_addr: SocketAddr,
}

impl Listeners {
    async fn bind(settings: &Settings) -> Result<Self, DaemonError> {
        let tls = settings
            .tls
            .as_ref()
            .map(crate::ingest::tls::acceptor)
            .transpose()
            .map_err(|e| DaemonError::Tls(e.to_string()))?;
        let ingest = bind(settings.listen).await?;
        let local_addr_of = |l: &TcpListener| {
            l.local_addr().map_err(|source| DaemonError::Listen {
                addr: settings.listen,
                source,
            })
        };
        let addr = local_addr_of(&ingest)?;
        // Local tools speak plain HTTP on loopback; with TLS on the ingest
        // address they get a loopback listener of their own.
        let local = match tls {
            Some(_) => Some(bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?),
            None => None,
        };
        let local_addr = match &local {
            Some(l) => local_addr_of(l)?,
            None => addr,
        };
        Ok(Self {
            ingest,
            addr,
            tls,
            local,
            local_addr,
        })
    }

    /// Serves `app` until `closed`; returns once the requests in flight are answered.
    async fn serve(self, app: axum::Router, settings: &Settings, closed: CancellationToken) {
        let limits = settings.listen_limits;
        let ingest_served = serve(self.ingest, self.tls, app.clone(), limits, closed.clone());
        let local_served = async {
            if let Some(local) = self.local {
                serve(local, None, app.clone(), limits, closed.clone()).await;
            }
        };
        tokio::join!(ingest_served, local_served);
    }
}

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
    let archiving = Archiving::open(&settings, clock.clone()).await?;
    let spool = archiving.spool.clone();
    let listeners = Listeners::bind(&settings).await?;
    let admin_file =
        AdminFile::create(&data, listeners.local_addr).map_err(|source| DaemonError::Dir {
            path: data.join(crate::admin::ADMIN_FILE),
            source,
        })?;

    let room = Arc::new(Room::new(&data, settings.room));
    room::measure(&room, &spool).await;
    let (committer, commit_thread) = Committer::start(spool.blocking().clone(), room.clone())
        .map_err(|e| DaemonError::Task("commit", format!("cannot start its thread: {e}")))?;
    let compactor = Compactor::start(spool.blocking().clone(), settings.gzip_level)
        .map_err(|e| DaemonError::Task("compactor", format!("cannot start its thread: {e}")))?;
    let keys: LiveKeys = Arc::new(ArcSwap::from_pointee(settings.keys.clone()));
    let rules: LiveRules = Arc::new(ArcSwap::new(settings.rules.clone()));
    let intake = Intake {
        committer,
        rules: rules.clone(),
        clock: clock.clone(),
        spool: spool.clone(),
    };
    let tails = crate::tail::start(settings.file_sources.clone(), intake.clone())
        .map_err(|e| DaemonError::Task("file source", format!("cannot start its thread: {e}")))?;
    // Background work stops on `stop`, after the listeners and the committer.
    let stop = CancellationToken::new();
    // Also stops them should start-up fail from here on.
    let _stop_on_return = stop.clone().drop_guard();
    let syslog = SyslogListeners::start(&settings.syslog_sources, &intake, &stop)
        .await
        .map_err(|e| DaemonError::Task("syslog source", e))?;
    let journals = Journals::start(&settings.journal_sources, &intake)
        .map_err(|e| DaemonError::Task("journal source", e))?;
    let reloadable = Arc::new(Reloadable {
        keys: keys.clone(),
        intake: intake.clone(),
        tails: Mutex::new(Some(tails)),
        syslog: Mutex::new(Some(syslog)),
        journals: Mutex::new(Some(journals)),
        stop: stop.clone(),
        current: Mutex::new(settings.clone()),
    });

    let tasks = TaskTracker::new();
    let sealed = Arc::new(Notify::new());
    tasks.spawn(seal::run(
        spool.clone(),
        SEAL_TICK,
        sealed.clone(),
        stop.clone(),
    ));
    tasks.spawn(room::watch(
        room.clone(),
        spool.clone(),
        sealed.clone(),
        stop.clone(),
    ));
    let reporter = Arc::new(archiving.reporter(Some(Running {
        rules: rules.clone(),
        room: room.clone(),
    })));
    tasks.spawn(Arc::new(archiving.syncer).run(sealed.clone(), stop.clone()));
    tasks.close();
    if let Some(reloader) = reloader {
        tokio::spawn(crate::reload::on_hangup(
            reloadable.clone(),
            reloader,
            stop.clone(),
        ));
    }

    let ops = Arc::new(Ops {
        reporter: reporter.clone(),
        room,
        clock,
        exporter: crate::telemetry::install(),
        data_dir: data.clone(),
    });
    if let Some(metrics_addr) = settings.metrics_listen {
        tokio::spawn(serve(
            bind(metrics_addr).await?,
            None,
            crate::ops::probes(ops.clone()),
            settings.listen_limits,
            stop.clone(),
        ));
        tracing::info!("metrics, health and readiness also on http://{metrics_addr}");
    }
    let admin = crate::admin::router(Arc::new(Admin {
        token: admin_file.token,
        spool: spool.clone(),
        reporter,
        sealed,
    }));
    let app = ingest::router(Arc::new(Ingest {
        keys,
        budget: ingest::budget::Budget::new(settings.max_request_memory, ingest::budget::WAIT),
        body_timeout: settings.listen_limits.body_timeout,
        max_skew_ms: settings.max_skew_ms,
        intake,
    }))
    .merge(admin)
    .merge(crate::ops::router(ops));
    announce(&settings, &listeners, &archiving.target);

    let (closed, unusable) = close_on(shutdown, archiving.target.clone());
    listeners.serve(app, &settings, closed).await;
    tracing::info!("shutting down: no longer accepting lines");
    let stopped = Stages {
        reloadable,
        stop,
        tasks,
        commit_thread,
        compactor,
        spool,
    }
    .stop()
    .await;
    AdminFile::remove(&data);
    stopped?;
    if let Some(why) = unusable.lock().take() {
        return Err(DaemonError::TargetUnusable(why));
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The token the listeners close on: cancelled by the shutdown signal, or
/// when the probe finds the target unusable (the reason is kept beside it).
fn close_on(
    shutdown: impl Future<Output = ()> + Send + 'static,
    target: Arc<Target>,
) -> (CancellationToken, Arc<Mutex<Option<String>>>) {
    let (unusable_tx, unusable_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(probe_at_start(target, unusable_tx));
    let unusable = Arc::new(Mutex::new(None));
    let closed = CancellationToken::new();
    tokio::spawn({
        let (closed, stop_reason) = (closed.clone(), unusable.clone());
        async move {
            tokio::select! {
                _ = shutdown => {}
                Ok(why) = unusable_rx => {
                    tracing::error!("{why}");
                    *stop_reason.lock() = Some(why);
                }
            }
            closed.cancel();
        }
    });
    (closed, unusable)
}

/// What stays to take down once the listeners have closed and the requests
/// in flight are answered.
struct Stages {
    /// Holds the file sources.
    reloadable: Arc<Reloadable>,
    /// Stops sealing, the room watcher, the sync loop and the reloader.
    stop: CancellationToken,
    tasks: TaskTracker,
    commit_thread: std::thread::JoinHandle<()>,
    compactor: Compactor,
    spool: SpoolHandle,
}

impl Stages {
    async fn stop(self) -> Result<(), DaemonError> {
        // File sources store what they have read (partial last lines
        // included), then drop their committer handles.
        let tails = self.reloadable.tails.lock().take();
        let syslog = self.reloadable.syslog.lock().take();
        let journals = self.reloadable.journals.lock().take();
        drop(self.reloadable);
        if let Some(tails) = tails {
            let _ = tokio::task::spawn_blocking(move || tails.stop()).await;
        }
        // Journal sources end journalctl; what they committed stays.
        if let Some(journals) = journals {
            let _ = tokio::task::spawn_blocking(move || journals.stop()).await;
        }
        // Syslog listeners commit what they read, then drop theirs.
        if let Some(syslog) = syslog {
            syslog.stop().await;
        }
        // The routes (and with them the last committer handle) are gone: the
        // commit thread drains what it holds and ends.
        self.stop.cancel();
        let commit_thread = self.commit_thread;
        let joined = tokio::task::spawn_blocking(move || commit_thread.join()).await;
        self.tasks.wait().await;
        let compactor = self.compactor;
        let _ = tokio::task::spawn_blocking(move || compactor.stop()).await;
        let flushed = self.spool.run(Spool::make_durable).await;
        if !matches!(joined, Ok(Ok(()))) {
            return Err(DaemonError::Task(
                "commit",
                "the commit thread panicked".into(),
            ));
        }
        Ok(flushed?)
    }
}

/// Says where larch listens, where it keeps and sends lines, and whether it
/// runs on the demo key.
fn announce(settings: &Settings, listeners: &Listeners, target: &Target) {
    let scheme = if listeners.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        "larch listening on {scheme}://{}, spool in {}, archiving to {}",
        listeners.addr,
        settings.data_dir.display(),
        target.describe()
    );
    if listeners.tls.is_some() {
        tracing::info!(
            "local tools (larch status, drain, verify) use http://{}",
            listeners.local_addr
        );
    }
    if settings.demo_key {
        tracing::warn!(
            "no ingestion keys configured: accepting the demo key {:?} for account {:?}. Configure [keys] before real use.",
            crate::config::DEMO_KEY,
            crate::config::DEMO_ACCOUNT
        );
    }
}

/// The stages that take lines from the spool to the target: what `larch run`
/// starts, and what `larch drain` runs by itself on a stopped daemon's spool.
pub struct Archiving {
    pub spool: SpoolHandle,
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
            let opened = tokio::task::spawn_blocking(move || {
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
            .map_err(|e| DaemonError::Task("spool open", e.to_string()))??;
            SpoolHandle::new(opened)
        };
        // Fail-stop: nothing after a failed flush may be acknowledged, and the
        // group that failed must not be answered (it may be durable or not).
        spool.blocking().on_durability_lost(Box::new(|what| {
            tracing::error!(
                "larch stops: {what}. What the disk holds past this point cannot be trusted, so larch takes no more lines and exits without answering the requests that were being stored (their senders retry). Check the disk (dmesg, SMART); started again, larch recovers everything that was acknowledged."
            );
            std::process::exit(1);
        }));

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

        let syncer = Syncer::new(
            spool.clone(),
            target.clone(),
            SyncSettings {
                staging_dir: data.join(crate::sync::STAGING_DIR),
                gzip_level: settings.gzip_level,
                key_prefix: settings.key_prefix.clone(),
                fleet_size: settings.fleet_size,
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

    /// The status builder of this spool and its sync loop.
    pub fn reporter(&self, running: Option<Running>) -> Reporter {
        Reporter {
            spool: self.spool.clone(),
            board: self.board.clone(),
            target: self.target.describe(),
            running,
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
