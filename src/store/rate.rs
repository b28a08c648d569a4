//! The upload bandwidth cap (`target.upload_rate_limit`): one bucket of bytes
//! that every upload of the process draws from, so concurrent uploads share
//! the rate instead of each getting it. Bytes are taken in slices of at most
//! 64 KiB. The bucket holds two slices, or 50 ms of the rate if that is more:
//! an upload pauses now and then (a multipart upload hands a piece over and
//! waits for room, a waiter wakes a little late), and what the rate gave
//! meanwhile is there when it comes back. A bucket of one slice (8 ms at
//! 8 MiB/s) lost every pause longer than that, about a tenth of the rate. So
//! the rate holds over any stretch longer than a few slices, and no burst is
//! longer than a twentieth of a second of it (or two slices).

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

const SLICE: u64 = 64 * 1024;
/// The bucket holds at least this much of a second's rate.
const BURST_PER_SECOND: u64 = 20;

pub struct UploadRate {
    limiter: DefaultDirectRateLimiter,
    slice: NonZeroU32,
    bytes_per_second: u64,
}

impl UploadRate {
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = bytes_per_second.clamp(1, u64::from(u32::MAX));
        let slice = rate.min(SLICE);
        // Within a u32: two slices are 128 KiB at most, and the rate is a u32.
        let burst = (2 * slice).max(rate / BURST_PER_SECOND);
        let (rate, slice, burst) = (
            NonZeroU32::new(rate as u32).unwrap_or(NonZeroU32::MIN),
            NonZeroU32::new(slice as u32).unwrap_or(NonZeroU32::MIN),
            NonZeroU32::new(burst as u32).unwrap_or(NonZeroU32::MIN),
        );
        Self {
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            slice,
            bytes_per_second,
        }
    }

    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    /// Waits until `bytes` more may be sent.
    pub async fn take(&self, mut bytes: u64) {
        while bytes > 0 {
            let n = bytes.min(u64::from(self.slice.get())) as u32;
            if let Some(n) = NonZeroU32::new(n) {
                // `n` is at most a slice, less than the burst, so this cannot fail.
                let _ = self.limiter.until_n_ready(n).await;
            }
            bytes -= u64::from(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn taking_more_than_the_bucket_waits_for_the_rate() {
        let rate = UploadRate::new(1 << 20);
        let started = std::time::Instant::now();
        rate.take(512 * 1024).await;
        // 512 KiB at 1 MiB/s, less the two slices the bucket starts with.
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(370),
            "{:?}",
            started.elapsed()
        );
    }

    /// An upload stops now and then (a multipart upload hands a part over
    /// and waits for room for the next); the rate it did not use meanwhile is
    /// there when it comes back, up to the bucket. A bucket of one slice
    /// lost every pause longer than a slice.
    #[tokio::test]
    async fn an_upload_that_pauses_still_gets_the_whole_rate() {
        let per_second = 8 << 20;
        let rate = UploadRate::new(per_second);
        // Empty the bucket first, so only the rate counts.
        rate.take(rate.bytes_per_second() / BURST_PER_SECOND).await;
        let started = std::time::Instant::now();
        let rounds = 12;
        for _ in 0..rounds {
            rate.take(1 << 20).await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        // 12 MiB, one and a half seconds of the rate, and 0.24 s of pauses
        // the bucket makes up for.
        let achieved = f64::from(rounds << 20) / seconds;
        assert!(
            achieved >= 0.96 * per_second as f64,
            "{achieved:.0} B/s of {per_second} in {seconds:.2} s"
        );
        assert!(
            achieved <= 1.05 * per_second as f64,
            "{achieved:.0} B/s of {per_second} in {seconds:.2} s"
        );
    }
}
