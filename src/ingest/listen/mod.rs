//! Every listener's guard: the ingest address (plain or TLS), the loopback
//! address of local tools and the metrics address all accept through [`serve`].
//!
//! A connection costs a descriptor and a task, so no client, honest, slow or
//! hostile, may hold one for free: open connections are capped, and each
//! stage of a connection's life has a clock. At the cap, the connection that
//! has waited longest without a request in flight (a slow head, an idle
//! keep-alive whose last answer is out) is closed to make room; only when
//! every connection is busy with a request is a new one refused, at once,
//! with a 503.
//!
//! A new connection must send its first request head within `header_timeout`
//! (a TLS handshake gets as long again); a kept-alive connection may wait
//! `idle_timeout` for its next request, whose head must then arrive within
//! `header_timeout` of its first byte. The ingest handler bounds reading a
//! body by `body_timeout` itself, and an answer the client does not read is
//! given up after `idle_timeout`. hyper's own header timer would count the
//! idle wait of a kept-alive connection as header time, so the clocks live in
//! `guard`, an I/O wrapper that learns the stage from the service around the
//! router and from the answer's body, which marks the connection as waiting
//! again once it is written out.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

mod guard;
use guard::{Guarded, IdleAfter, Stage, BUSY, HEAD};

/// How long a listener may hold a connection in each stage, and how many it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenLimits {
    /// Open connections at once. Past this, the one that has waited longest
    /// without a request in flight makes room; a new one is refused at once
    /// only when every connection is busy with a request.
    pub max_connections: usize,
    /// From a connection's start (or a later request's first byte) to a whole
    /// request head; a TLS handshake gets as long.
    pub header_timeout: Duration,
    /// Between requests on a kept-alive connection.
    pub idle_timeout: Duration,
    /// To receive a whole request body (the ingest handler enforces it).
    pub body_timeout: Duration,
}

impl Default for ListenLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// The largest request head (request line with its query, and headers) read.
const MAX_HEAD: usize = 64 * 1024;

/// Descriptors larch needs besides its connections: the spool, segment
/// files, tailed files, store connections.
const OTHER_DESCRIPTORS: u64 = 512;

/// Raises the soft open-file limit to the hard one, so the connection cap
/// (not the shell's default of 1,024) is what bounds connections, and warns
/// when the cap leaves too few descriptors for everything else.
pub fn raise_open_file_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!("cannot raise the open-file limit: {e}");
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    if let Some(files) = now {
        if (max_connections as u64).saturating_add(OTHER_DESCRIPTORS) > files {
            tracing::warn!(
                "ingest.max_connections is {max_connections} but larch may open only {files} files; \
                 lower ingest.max_connections or raise the limit (LimitNOFILE= in the systemd unit, ulimit -n)"
            );
        }
    }
}

/// Accepts on `tcp` (with TLS when `tls` is given) and serves `app` on every
/// connection within `limits`, until `closed` is cancelled; then stops
/// accepting and lets the requests in flight finish.
pub async fn serve(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    limits: ListenLimits,
    closed: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(Open::default());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = closed.cancelled() => break,
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => match open.make_room(&slots).await {
                Some(slot) => slot,
                None => {
                    crate::telemetry::connection_refused();
                    refuse(stream);
                    continue;
                }
            },
        };
        let (app, tls, open, stopping) = (app.clone(), tls.clone(), open.clone(), closed.clone());
        tokio::spawn(async move {
            let stage = Arc::new(Stage::new());
            let id = open.add(stage.clone());
            let served = tokio::select! {
                served = serve_one(stream, peer, tls, app, stage.clone(), limits, stopping) => served,
                // A connection still owing its request head loses nothing when
                // dropped; one between requests closes after its last answer
                // is out (see `connection`).
                _ = stage.evicted_in_head() => {
                    crate::telemetry::connection_evicted();
                    Ok(())
                }
            };
            open.remove(id);
            if let Err(e) = served {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(slot);
        });
    }
    drop(tcp);
    // Requests in flight are answered and idle connections close (each
    // connection sees `closed`); all are gone once every slot is back.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_WAIT, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {}s after the listener closed; leaving them",
            SHUTDOWN_WAIT.as_secs()
        );
    }
}

/// The longest larch waits for requests in flight when it stops; each has its
/// own clocks too, so this only guards against what they miss.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// The open connections of one listener, so that one which only waits can be
/// closed when a new one finds every slot taken.
#[derive(Default)]
struct Open {
    next: std::sync::atomic::AtomicU64,
    stages: Mutex<std::collections::HashMap<u64, Arc<Stage>>>,
}

impl Open {
    fn add(&self, stage: Arc<Stage>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, stage);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, std::collections::HashMap<u64, Arc<Stage>>> {
        self.stages.lock()
    }

    /// At the cap: asks the connection that has waited longest (for its
    /// request head, or idle between requests) to close, and takes its slot.
    /// None when every connection is busy with a request.
    async fn make_room(&self, slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        let longest_waiting = self
            .lock()
            .values()
            .filter(|s| s.waiting())
            .min_by_key(|s| s.since())
            .cloned()?;
        longest_waiting.evict.notify_waiters();
        tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// How long a new connection waits for the slot of one asked to close.
const EVICTION_WAIT: Duration = Duration::from_millis(20);

/// One accepted connection: its TLS handshake, if any, then HTTP.
async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    stage: Arc<Stage>,
    limits: ListenLimits,
    stopping: CancellationToken,
) -> Result<(), hyper::Error> {
    let Some(acceptor) = tls else {
        return connection(stream, peer, app, stage, limits, stopping).await;
    };
    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            stage.enter(HEAD);
            connection(tls, peer, app, stage, limits, stopping).await
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            Ok(())
        }
        Err(_) => {
            crate::telemetry::connection_timed_out();
            tracing::debug!(%peer, "TLS handshake timed out");
            Ok(())
        }
    }
}

/// A connection over the cap: closed before anything is read, so it costs nothing.
fn refuse(stream: TcpStream) {
    // A best-effort answer; a client that sent nothing yet sees it as the reason.
    let _ = stream.try_write(
        b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n",
    );
    drop(stream);
}

async fn connection<IO>(
    io: IO,
    peer: SocketAddr,
    app: axum::Router,
    stage: Arc<Stage>,
    limits: ListenLimits,
    stopping: CancellationToken,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let guarded = Guarded {
        inner: io,
        stage: stage.clone(),
        limits,
        read_timer: None,
        write_timer: None,
    };
    let answering = stage.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let (app, stage) = (app.clone(), answering.clone());
        stage.enter(BUSY);
        async move {
            let answer = app.oneshot(request.map(axum::body::Body::new)).await?;
            // Waiting again only once the answer is written out whole.
            Ok::<_, std::convert::Infallible>(
                answer.map(|body| axum::body::Body::new(IdleAfter { body, stage })),
            )
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The stage clocks above replace hyper's header timer (which needs a timer
    // to run at all); a request head is held to a size as well as a time.
    builder.max_buf_size(MAX_HEAD);
    let connection = builder.serve_connection(TokioIo::new(guarded), service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => return served,
            // Between requests: closes once the last answer is out.
            _ = stage.evicted(), if !closing => {
                crate::telemetry::connection_evicted();
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = stopping.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
