//! Exponential backoff with full jitter: each delay is uniform in
//! `[0, min(max, initial * 2^n)]`. When a replica dies every client it served
//! reconnects; jitter keeps them from reaching the survivors in the same instant.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

pub(crate) struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// The next delay; each call doubles the ceiling, up to `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .config
            .initial
            .saturating_mul(1_u32 << self.attempt.min(20))
            .min(self.config.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::rng().random::<f64>())
    }

    /// After progress, the next failure starts small again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_ceiling_capped_at_max() {
        let config = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        };
        let mut backoff = Backoff::new(config);
        for ceiling_ms in [100, 200, 400, 800, 800, 800] {
            assert!(backoff.next_delay() <= Duration::from_millis(ceiling_ms));
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
