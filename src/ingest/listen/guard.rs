//! The clocks of one connection: the stage it is in (waiting, sending a
//! request head, being served), shared by its I/O wrapper, which times out a
//! read or a write that takes longer than the stage allows, and by the answer's
//! body, which marks the connection as waiting again once it is written out.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::ListenLimits;

/// Where a connection is in its life, which decides its reading clock.
pub(super) const IDLE: u8 = 0;
pub(super) const HEAD: u8 = 1;
pub(super) const BUSY: u8 = 2;

/// The stage of one connection, shared by its I/O wrapper and its service.
pub(super) struct Stage {
    stage: AtomicU8,
    /// When the current stage began.
    since: Mutex<Instant>,
    /// A read left waiting while a request was answered: hyper polls the
    /// socket then only to notice a close, and does not poll it again once
    /// the answer is out, so the idle clock would never start. Woken when the
    /// stage changes, it starts.
    waiting_read: Mutex<Option<Waker>>,
    /// Asks the connection to close, to make room for a new one.
    pub(super) evict: Notify,
}

impl Stage {
    /// A new connection owes its first request head at once.
    pub(super) fn new() -> Self {
        Self {
            stage: AtomicU8::new(HEAD),
            since: Mutex::new(Instant::now()),
            waiting_read: Mutex::new(None),
            evict: Notify::new(),
        }
    }

    /// Whether the connection only waits (for a request, or its head), so
    /// closing it loses nothing.
    pub(super) fn waiting(&self) -> bool {
        self.stage.load(Ordering::Acquire) != BUSY
    }

    /// Returns once the connection is asked to close while it waits between
    /// requests.
    pub(super) async fn evicted(&self) {
        self.evicted_in(IDLE).await
    }

    /// Returns once the connection is asked to close while it still owes its
    /// request head.
    pub(super) async fn evicted_in_head(&self) {
        self.evicted_in(HEAD).await
    }

    /// An ask that finds the connection in another stage (a request came in
    /// meanwhile) is let go: the new connection that needed the room has
    /// been refused by then.
    pub(super) async fn evicted_in(&self, stage: u8) {
        loop {
            self.evict.notified().await;
            if self.stage.load(Ordering::Acquire) == stage {
                return;
            }
        }
    }

    pub(super) fn enter(&self, stage: u8) {
        *self.since.lock() = Instant::now();
        self.stage.store(stage, Ordering::Release);
        let waiting = self.waiting_read.lock().take();
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    pub(super) fn wait_for_change(&self, waker: &Waker) {
        *self.waiting_read.lock() = Some(waker.clone());
    }

    pub(super) fn since(&self) -> Instant {
        *self.since.lock()
    }
}

/// A connection's byte stream, timed by its stage.
pub(super) struct Guarded<IO> {
    pub(super) inner: IO,
    pub(super) stage: Arc<Stage>,
    pub(super) limits: ListenLimits,
    pub(super) read_timer: Option<Pin<Box<Sleep>>>,
    pub(super) write_timer: Option<(Instant, Pin<Box<Sleep>>)>,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

/// Arms `timer` for `deadline`; true once the deadline has passed.
fn expired(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if sleep.deadline() != deadline {
        sleep.as_mut().reset(deadline);
    }
    sleep.as_mut().poll(cx).is_ready()
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.stage.stage.load(Ordering::Acquire) == IDLE {
                    this.stage.enter(HEAD);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // While a request is being answered, the handler keeps its own clock.
                let deadline = match this.stage.stage.load(Ordering::Acquire) {
                    IDLE => this.stage.since() + this.limits.idle_timeout,
                    HEAD => this.stage.since() + this.limits.header_timeout,
                    _ => {
                        this.stage.wait_for_change(cx.waker());
                        return Poll::Pending;
                    }
                };
                if expired(&mut this.read_timer, deadline, cx) {
                    crate::telemetry::connection_timed_out();
                    return Poll::Ready(Err(timed_out(
                        "the client sent no complete request in time",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<IO> Guarded<IO> {
    /// A write, flush or shutdown that stays pending: a client that does not
    /// read its answer is given up after the idle timeout (with TLS, a write
    /// is taken into a buffer at once and the wait shows in the flush).
    pub(super) fn write_clock<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.write_timer = None;
            return polled;
        }
        let idle = self.limits.idle_timeout;
        let (_, sleep) = self.write_timer.get_or_insert_with(|| {
            let deadline = Instant::now() + idle;
            (deadline, Box::pin(tokio::time::sleep_until(deadline)))
        });
        if sleep.as_mut().poll(cx).is_ready() {
            crate::telemetry::connection_timed_out();
            return Poll::Ready(Err(timed_out("the client does not read its answer")));
        }
        Poll::Pending
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.write_clock(polled, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.write_clock(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.write_clock(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // One slice at a time keeps the write clock in one place.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        self.as_mut().poll_write(cx, first)
    }
}

/// An answer's body that marks its connection as waiting again once hyper
/// has written all of it (and drops it).
pub(super) struct IdleAfter {
    pub(super) body: axum::body::Body,
    pub(super) stage: Arc<Stage>,
}

impl http_body::Body for IdleAfter {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for IdleAfter {
    fn drop(&mut self) {
        self.stage.enter(IDLE);
    }
}
