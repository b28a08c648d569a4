//! The upload bandwidth cap (`target.upload_rate_limit`): one bucket of bytes
//! that every upload of the process draws from, so concurrent uploads share
//! the rate instead of each getting it. Bytes are taken in slices of at most
//! 64 KiB and the bucket holds no more than one slice, so the rate holds over
//! any stretch longer than a few slices.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

const SLICE: u64 = 64 * 1024;

pub struct UploadRate {
    limiter: DefaultDirectRateLimiter,
    slice: NonZeroU32,
    bytes_per_second: u64,
}

impl UploadRate {
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = bytes_per_second.clamp(1, u64::from(u32::MAX));
        let slice = rate.min(SLICE) as u32;
        let (rate, slice) = (
            NonZeroU32::new(rate as u32).unwrap_or(NonZeroU32::MIN),
            NonZeroU32::new(slice).unwrap_or(NonZeroU32::MIN),
        );
        Self {
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(slice)),
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
                // `n` never exceeds the burst, so this cannot fail.
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
    async fn taking_more_than_a_slice_waits_for_the_rate() {
        let rate = UploadRate::new(1 << 20);
        let started = std::time::Instant::now();
        rate.take(256 * 1024).await;
        // 256 KiB at 1 MiB/s, less the one slice the bucket starts with.
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
    }
}
