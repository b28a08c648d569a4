//! The syslog listeners: UDP (a message per datagram) and TCP, with or
//! without TLS (messages framed as RFC 6587 allows; RFC 5425 for TLS), each
//! feeding one account's lines to the spool.
//!
//! Lines are committed in small batches (at most `BATCH_LINES`, or what came
//! within `BATCH_WAIT`). Syslog has no acknowledgement, so what larch can do
//! differs by transport: a TCP sender is slowed down while the spool has no
//! room (its messages wait in the socket, nothing is dropped), while a UDP
//! datagram that arrives when the spool refuses is lost and counted. A TCP
//! connection that sends nothing for `idle_timeout` is closed, the message it
//! was in the middle of stored as partial; connections past
//! `max_connections` are refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncRead;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

use super::frame::{Frame, Frames};
use super::message::line_of;
use crate::account::AccountId;
use crate::ingest::tls::{server_config, TlsFiles};
use crate::intake::Intake;
use crate::line::{Line, Origin};
use crate::spool::{Along, CommitError};
use crate::telemetry::sources::SourceEntry;
use crate::telemetry::Source;

/// Lines committed at once, at most.
const BATCH_LINES: usize = 1000;
/// How long the first line of a batch waits for others.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// A refused TCP batch is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Messages read and waiting for the batch being committed, at most: past
/// this, TCP connections stop reading (a bound on memory, with `max_message`).
const WAITING: usize = 256;
/// The largest UDP datagram.
const MAX_DATAGRAM: usize = 65_535;

/// One listener's settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SyslogListener {
    pub account: AccountId,
    pub transport: Transport,
    pub listen: SocketAddr,
    /// Bytes kept of one message; the rest is cut.
    pub max_message: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// Message times further ahead than this are not believed.
    pub max_skew_ms: i64,
    /// The certificate and key of a `tls` listener.
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    /// TCP with TLS (RFC 5425), framed as TCP is.
    Tls,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// A message as it arrived, before it is a line.
struct Arrived {
    frame: Frame,
    peer: SocketAddr,
    received_ms: i64,
}

impl Arrived {
    fn now(frame: Frame, peer: SocketAddr, intake: &Intake) -> Self {
        Self {
            frame,
            peer,
            received_ms: intake.clock.now_ms(),
        }
    }
}

/// The running listeners, started and stopped together.
pub struct Listeners {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Listeners {
    /// Binds every listener (a port that is taken fails them all, with the
    /// address named), then serves each until `stop` or [`Self::stop`].
    pub async fn start(
        listeners: &[SyslogListener],
        intake: &Intake,
        stop: &CancellationToken,
    ) -> Result<Self, String> {
        let mut bound = Vec::with_capacity(listeners.len());
        for listener in listeners {
            bound.push(Bound::bind(listener.clone()).await?);
        }
        let stop = stop.child_token();
        let tasks = bound
            .into_iter()
            .map(|b| tokio::spawn(b.serve(intake.clone(), stop.clone())))
            .collect();
        Ok(Self { stop, tasks })
    }

    /// Stops every listener and waits until what they read is committed and
    /// their ports are free.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// A listener whose address is bound, so start-up fails at once on a port
/// that is taken.
struct Bound {
    listener: Arc<SyslogListener>,
    socket: Socket,
}

enum Socket {
    Udp(UdpSocket),
    /// With TLS on each connection when the acceptor is there.
    Tcp(TcpListener, Option<TlsAcceptor>),
}

impl Bound {
    /// Binds the address (and reads the certificate first, for TLS); the
    /// error says what to change.
    async fn bind(listener: SyslogListener) -> Result<Self, String> {
        let tls = match &listener.tls {
            Some(files) => Some(TlsAcceptor::from(Arc::new(
                server_config(files)
                    .map_err(|e| format!("syslog listener {} (tls): {e}", listener.listen))?,
            ))),
            None => None,
        };
        let taken = |e: std::io::Error| {
            format!(
                "cannot listen for syslog on {} ({}): {e}. Free the port or change [[sources.syslog]] listen",
                listener.listen,
                listener.transport.name()
            )
        };
        let socket = match listener.transport {
            Transport::Udp => Socket::Udp(UdpSocket::bind(listener.listen).await.map_err(taken)?),
            Transport::Tcp | Transport::Tls => Socket::Tcp(
                TcpListener::bind(listener.listen).await.map_err(taken)?,
                tls,
            ),
        };
        Ok(Self {
            listener: Arc::new(listener),
            socket,
        })
    }

    /// Serves until `stop`, then commits what arrived before it.
    async fn serve(self, intake: Intake, stop: CancellationToken) {
        let listener = self.listener;
        let (tx, rx) = mpsc::channel::<Arrived>(WAITING);
        let row = SourceEntry::register(
            "syslog",
            format!("{} {}", listener.transport.name(), listener.listen),
            &listener.account,
        );
        let committing = tokio::spawn(commit_batches(listener.clone(), intake.clone(), rx, row));
        let served = match self.socket {
            Socket::Udp(socket) => serve_udp(socket, &listener, &intake, tx, stop).await,
            Socket::Tcp(socket, tls) => {
                serve_tcp(socket, tls, listener.clone(), intake, tx, stop).await
            }
        };
        if let Err(e) = served {
            tracing::error!("syslog listener {} stopped: {e}", listener.listen);
        }
        let _ = committing.await;
    }
}

async fn serve_udp(
    socket: UdpSocket,
    listener: &SyslogListener,
    intake: &Intake,
    tx: mpsc::Sender<Arrived>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = tokio::select! {
            got = socket.recv_from(&mut buf) => got?,
            _ = stop.cancelled() => return Ok(()),
        };
        let keep = n.min(listener.max_message);
        let frame = Frame {
            bytes: bytes::BytesMut::from(&buf[..keep]),
            cut: keep < n,
            partial: false,
        };
        if tx.send(Arrived::now(frame, peer, intake)).await.is_err() {
            return Ok(());
        }
    }
}

async fn serve_tcp(
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
    listener: Arc<SyslogListener>,
    intake: Intake,
    tx: mpsc::Sender<Arrived>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(listener.max_connections.max(1)));
    loop {
        let (stream, peer) = tokio::select! {
            got = socket.accept() => match got {
                Ok(got) => got,
                // Out of descriptors and the like: the next accept may work.
                Err(e) => {
                    tracing::warn!("syslog listener {}: accept failed: {e}", listener.listen);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return Ok(()),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                "syslog listener {}: refusing {peer}: {} connections open (max_connections)",
                listener.listen,
                listener.max_connections
            );
            drop(stream);
            continue;
        };
        // A connection still in its TLS handshake holds no sender, so a stop
        // never waits for it.
        let (listener, intake, weak_tx, stop, tls) = (
            listener.clone(),
            intake.clone(),
            tx.downgrade(),
            stop.clone(),
            tls.clone(),
        );
        tokio::spawn(async move {
            let read =
                |stream, tx| read_connection(stream, peer, &listener, &intake, tx, stop.clone());
            match tls {
                None => {
                    if let Some(tx) = weak_tx.upgrade() {
                        read(Box::new(stream) as Box<dyn AsyncRead + Unpin + Send>, tx).await
                    }
                }
                // The handshake is bounded by the idle timeout, as silence is.
                Some(tls) => {
                    let handshake = tokio::select! {
                        done = tokio::time::timeout(listener.idle_timeout, tls.accept(stream)) => done,
                        _ = stop.cancelled() => return,
                    };
                    match handshake {
                        Ok(Ok(stream)) => {
                            if let Some(tx) = weak_tx.upgrade() {
                                read(Box::new(stream), tx).await
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::debug!("syslog TLS handshake with {peer} failed: {e}")
                        }
                        Err(_) => tracing::debug!("syslog TLS handshake with {peer} timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
}

/// Reads one TCP connection's messages until it closes, falls idle or `stop`.
async fn read_connection(
    stream: impl AsyncRead + Unpin,
    peer: SocketAddr,
    listener: &SyslogListener,
    intake: &Intake,
    tx: mpsc::Sender<Arrived>,
    stop: CancellationToken,
) {
    let mut framed = FramedRead::new(stream, Frames::new(listener.max_message));
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(listener.idle_timeout, framed.next()) => next,
            _ = stop.cancelled() => return,
        };
        let frame = match next {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => {
                tracing::debug!("syslog connection from {peer} failed: {e}");
                return;
            }
            Ok(None) => return,
            Err(_) => {
                // Idle: what the sender was in the middle of is kept, partial.
                let mut parts = framed.into_parts();
                if let Ok(Some(frame)) = parts.codec.decode_eof(&mut parts.read_buf) {
                    let _ = tx.send(Arrived::now(frame, peer, intake)).await;
                }
                tracing::debug!("syslog connection from {peer} idle; closed");
                return;
            }
        };
        if frame.bytes.is_empty() && !frame.partial {
            continue;
        }
        if tx.send(Arrived::now(frame, peer, intake)).await.is_err() {
            return;
        }
    }
}

/// Turns arrived messages into lines and commits them in batches.
async fn commit_batches(
    listener: Arc<SyslogListener>,
    intake: Intake,
    mut rx: mpsc::Receiver<Arrived>,
    row: SourceEntry,
) {
    let retry = listener.transport != Transport::Udp;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH_LINES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(more)) => batch.push(more),
                _ => break,
            }
        }
        let rules = intake.rules.load();
        // A batch mostly comes from a few senders: their lines share an origin.
        let mut origin: Option<Arc<Origin>> = None;
        let mut lines: Vec<Line> = Vec::with_capacity(batch.len());
        for a in batch {
            let ip = a.peer.ip().to_string();
            let shared = match &origin {
                Some(o) if o.ip.as_deref() == Some(ip.as_str()) => o.clone(),
                _ => origin
                    .insert(Arc::new(Origin {
                        ip: Some(ip),
                        ingester: "syslog",
                        ..Origin::default()
                    }))
                    .clone(),
            };
            let line = line_of(&a.frame, a.received_ms, listener.max_skew_ms, shared);
            if rules.keeps(&listener.account, &line) {
                lines.push(line);
            }
        }
        let count = lines.len();
        while !lines.is_empty() {
            // Only a TCP batch is tried again, so only it keeps a copy.
            let attempt = if retry {
                lines.clone()
            } else {
                std::mem::take(&mut lines)
            };
            let result = intake
                .committer
                .commit_along(
                    listener.account.clone(),
                    attempt,
                    Along::default(),
                    Source::Syslog,
                )
                .await;
            match result {
                Ok(_) => {
                    lines.clear();
                    row.stored(count, intake.clock.now_ms());
                }
                Err(CommitError::ShuttingDown) => return,
                Err(e) if retry => {
                    row.problem(format!("senders held back: {e}"));
                    tracing::warn!("syslog {}: {e}; holding the senders back", listener.listen);
                    tokio::time::sleep(RETRY_AFTER).await;
                }
                Err(e) => {
                    row.problem(format!("UDP messages lost: {e}"));
                    crate::telemetry::syslog_lost(count);
                    tracing::warn!("syslog {}: {count} UDP messages lost: {e}", listener.listen);
                }
            }
        }
    }
}
