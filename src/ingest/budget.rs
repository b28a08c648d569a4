//! The memory all ingest requests may hold at once (`ingest.max_request_memory`).
//!
//! A request holds memory from its first body byte until its lines are stored:
//! the body as received, the body after gunzip, and the parsed lines. Each is
//! taken from one shared budget before it is allocated, so however many
//! clients send at once, and whatever their bodies hold, the total stays
//! bounded. A request that cannot get its share within [`WAIT`] is refused
//! with 503 and Retry-After; nothing of it is stored. Waiting for a share
//! while the body is being read leaves the rest of it in the client's socket,
//! which slows the client down instead of filling memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::body::MAX_BODY;
use crate::line::{Line, OwnFields};

/// How long a request waits for its share before it is refused.
pub const WAIT: Duration = Duration::from_secs(5);

/// A body is large past this many bytes (received, or after gunzip).
pub const LARGE: usize = 1 << 20;

/// Shares up to this size wait in line for room; larger ones look for it
/// without holding the line up (ordinary requests are far smaller).
const QUEUES_UP_TO: usize = 1 << 20;
const LOOK_AGAIN: Duration = Duration::from_millis(10);

/// Bytes of parsed lines per byte of JSON, at most: the shortest line object
/// (`{"line":"x"},`, 13 bytes) becomes a [`crate::line::Line`] of 56 bytes and
/// an allocation of 32 for its text.
pub const PARSED_PER_BYTE: usize = 7;

/// What the largest request holds at its peak: a gzip body of the maximum
/// size, its decoded text, and that text's lines. The budget is never smaller,
/// so any valid request can eventually be taken.
pub const LARGEST_REQUEST: u64 = (MAX_BODY * (2 + PARSED_PER_BYTE)) as u64;

#[derive(Debug, thiserror::Error)]
#[error("larch is already decoding as many request bodies as its memory budget allows (ingest.max_request_memory)")]
pub struct Busy;

#[derive(Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    /// One large body at a time (see [`LARGE`]).
    large: Arc<Semaphore>,
    wait: Duration,
}

/// A request's share of the budget, given back when dropped.
pub struct Share {
    budget: Arc<Semaphore>,
    large_gate: Arc<Semaphore>,
    wait: Duration,
    held: Option<OwnedSemaphorePermit>,
    large: Option<OwnedSemaphorePermit>,
}

impl Budget {
    /// `bytes` in all (never less than [`LARGEST_REQUEST`]); a request waits
    /// up to `wait` for its share.
    pub fn new(bytes: u64, wait: Duration) -> Self {
        let bytes = bytes.clamp(LARGEST_REQUEST, u64::from(u32::MAX)) as usize;
        Self {
            bytes: Arc::new(Semaphore::new(bytes)),
            large: Arc::new(Semaphore::new(1)),
            wait,
        }
    }

    /// An empty share, to grow as the request needs.
    pub fn share(&self) -> Share {
        Share {
            budget: self.bytes.clone(),
            large_gate: self.large.clone(),
            wait: self.wait,
            held: None,
            large: None,
        }
    }
}

/// Memory the parsed lines hold: their slots in the vector, their text and
/// their own fields, with an allocation's overhead for each.
pub fn held_by(lines: &[Line], capacity: usize) -> usize {
    const ALLOCATION: usize = 32;
    let slots = capacity * std::mem::size_of::<Line>();
    let each: usize = lines
        .iter()
        .map(|l| {
            let own = l.own.as_deref().map_or(0, |o| {
                std::mem::size_of::<OwnFields>()
                    + ALLOCATION
                    + [
                        &o.host,
                        &o.app,
                        &o.file,
                        &o.level,
                        &o.env,
                        &o.label_json,
                        &o.meta_json,
                    ]
                    .into_iter()
                    .flatten()
                    .map(|s| s.len() + ALLOCATION)
                    .sum::<usize>()
            });
            l.line.len() + ALLOCATION + own
        })
        .sum();
    slots + each
}

impl Share {
    /// Takes `bytes` more, waiting up to the budget's wait.
    pub async fn grow(&mut self, bytes: usize) -> Result<(), Busy> {
        if bytes == 0 {
            return Ok(());
        }
        let n = u32::try_from(bytes).map_err(|_| Busy)?;
        let more = if bytes <= QUEUES_UP_TO {
            tokio::time::timeout(self.wait, self.budget.clone().acquire_many_owned(n))
                .await
                .map_err(|_| Busy)?
                .map_err(|_| Busy)?
        } else {
            self.look_for_room(n).await?
        };
        match &mut self.held {
            Some(held) => held.merge(more),
            None => self.held = Some(more),
        }
        Ok(())
    }

    /// Marks the request as large (its body past [`LARGE`]), waiting for the
    /// large requests' single turn. Large requests taken one at a time can
    /// never hold parts of the budget that together leave none of them room
    /// to finish, and the rest of the budget stays for ordinary requests.
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

    /// A large share is taken only when it fits as a whole, looked for every
    /// few milliseconds: waiting in line, it would hold up every smaller
    /// request behind it until enough memory came free.
    async fn look_for_room(&self, n: u32) -> Result<OwnedSemaphorePermit, Busy> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            if let Ok(more) = self.budget.clone().try_acquire_many_owned(n) {
                return Ok(more);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Busy);
            }
            tokio::time::sleep(LOOK_AGAIN).await;
        }
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
        assert!(
            second.grow(QUEUES_UP_TO + 1).await.is_err(),
            "nor for a large share"
        );
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
