//! The memory all ingest requests may hold at once (`ingest.max_request_memory`).
//!
//! A request holds memory from its first body byte until its lines are stored:
//! the body as received, the body after gunzip, and the parsed lines (whose
//! texts may be slices of the body's text, which is then held with them). Each is
//! taken from one shared budget before it is allocated (the lines as they are
//! read), so however many clients send at once, and whatever their bodies
//! hold, the total stays bounded. A request that cannot get its share within
//! [`WAIT`] is refused with 503 and Retry-After; nothing of it is stored.
//! Waiting for a share while the body is being read leaves the rest of it in
//! the client's socket, which slows the client down instead of filling memory.
//!
//! Shares are granted in the order they are asked for, so none starves. Bodies
//! past [`LARGE`] also take turns, one at a time: many large requests each
//! holding part of what they need could otherwise leave none of them room to
//! finish, and ordinary requests keep the rest of the budget.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::body::MAX_BODY;

/// How long a request waits for its share before it is refused.
pub const WAIT: Duration = Duration::from_secs(5);

/// A body is large past this many bytes (received, or after gunzip).
pub const LARGE: usize = 1 << 20;

/// Bytes of parsed lines per byte of JSON for lines with no fields of their
/// own, at most: the shortest line object (`{"line":"x"},`, 13 bytes) becomes
/// a [`crate::line::Line`] of 64 bytes, and 33 are counted for its text (a
/// slice of the body, or of the buffer of unescaped texts, but counted as if
/// it were an allocation of its own). Lines with fields of their own take
/// more, and are charged what they take.
pub const PARSED_PER_BYTE: usize = 8;

/// The smallest budget: the largest body, gzipped, its text after gunzip and
/// its lines (of the kind [`PARSED_PER_BYTE`] covers), so any ordinary request
/// can eventually be taken.
pub const LARGEST_REQUEST: u64 = (MAX_BODY * (2 + PARSED_PER_BYTE)) as u64;

/// A request whose body is small and whose length is known takes this many
/// times its length at once: the body and, about, its lines. Asking once
/// means it never holds its body while it waits for room for its lines.
pub const SMALL_REQUEST_SHARE: usize = 3;

#[derive(Debug, thiserror::Error)]
#[error("larch is already holding as many requests as its memory budget allows (ingest.max_request_memory)")]
pub struct Busy;

#[derive(Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    /// One large body at a time (see [`LARGE`]).
    large: Arc<Semaphore>,
    total: usize,
    wait: Duration,
}

/// A request's share of the budget, given back when dropped.
pub struct Share {
    budget: Arc<Semaphore>,
    large_gate: Arc<Semaphore>,
    total: usize,
    wait: Duration,
    held: Option<OwnedSemaphorePermit>,
    large: Option<OwnedSemaphorePermit>,
}

impl Budget {
    /// `bytes` in all (never less than [`LARGEST_REQUEST`]); a request waits
    /// up to `wait` for its share.
    pub fn new(bytes: u64, wait: Duration) -> Self {
        // Only a single grant must fit in u32; the whole may be larger.
        let total = usize::try_from(bytes.max(LARGEST_REQUEST)).unwrap_or(usize::MAX >> 4);
        Self {
            bytes: Arc::new(Semaphore::new(total)),
            large: Arc::new(Semaphore::new(1)),
            total,
            wait,
        }
    }

    /// An empty share, to grow as the request needs.
    pub fn share(&self) -> Share {
        Share {
            budget: self.bytes.clone(),
            large_gate: self.large.clone(),
            total: self.total,
            wait: self.wait,
            held: None,
            large: None,
        }
    }
}

impl Share {
    /// Takes `bytes` more, waiting up to the budget's wait.
    pub async fn grow(&mut self, bytes: usize) -> Result<(), Busy> {
        if bytes == 0 {
            return Ok(());
        }
        let n = u32::try_from(bytes).map_err(|_| Busy)?;
        let more = tokio::time::timeout(self.wait, self.budget.clone().acquire_many_owned(n))
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        match &mut self.held {
            Some(held) => held.merge(more),
            None => self.held = Some(more),
        }
        Ok(())
    }

    /// Holds at least `bytes` in all.
    pub async fn hold(&mut self, bytes: usize) -> Result<(), Busy> {
        self.grow(bytes.saturating_sub(self.held())).await
    }

    /// Marks the request as large (its body past [`LARGE`]), waiting for the
    /// large requests' single turn.
    pub async fn large(&mut self) -> Result<(), Busy> {
        if self.large.is_none() {
            let turn = tokio::time::timeout(self.wait, self.large_gate.clone().acquire_owned())
                .await
                .map_err(|_| Busy)?
                .map_err(|_| Busy)?;
            self.large = Some(turn);
        }
        Ok(())
    }

    /// Gives back all but `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if let Some(held) = &mut self.held {
            let excess = held.num_permits().saturating_sub(bytes);
            if excess > 0 {
                drop(held.split(excess));
            }
        }
    }

    pub fn held(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.num_permits())
    }

    /// The whole budget: a request that needs more can never be taken.
    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_share_waits_for_room_then_gives_up() {
        let budget = Budget::new(0, Duration::from_millis(50));
        let mut first = budget.share();
        first.grow(LARGEST_REQUEST as usize).await.unwrap();
        let mut second = budget.share();
        assert!(second.grow(1).await.is_err(), "no room left: refused");
        first.shrink_to(10);
        assert_eq!(first.held(), 10);
        second.grow(100).await.unwrap();
        assert!(
            second.grow(LARGEST_REQUEST as usize - 100).await.is_err(),
            "what the first still holds is not free"
        );
        first.large().await.unwrap();
        assert!(second.large().await.is_err(), "one large request at a time");
        drop(first);
        second.large().await.unwrap();
        second.grow(LARGEST_REQUEST as usize - 100).await.unwrap();
    }
}
