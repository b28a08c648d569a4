//! Capped exponential backoff with jitter, per part, so one failing part
//! neither spins nor holds back the others.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (1 for the first retry): somewhere
    /// in the upper half of `base * 2^(attempt-1)`, never above `cap`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let ceiling = exp.min(self.cap);
        let jitter: f64 = rand::random();
        ceiling.mul_f64(0.5 + jitter / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_stays_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        };
        for attempt in 1..40 {
            let d = b.delay(attempt);
            let ceiling = (Duration::from_millis(100) * 2u32.pow((attempt - 1).min(20))).min(b.cap);
            assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
        }
        assert!(b.delay(60) <= Duration::from_secs(10));
    }
}
