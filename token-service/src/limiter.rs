//! Slows down guessing: a caller whose redemptions or checks fail too often (unknown link,
//! wrong provider, malformed secret) is refused with RESOURCE_EXHAUSTED for the rest of a
//! fixed window, before any lookup. In memory, per process, bounded in size.
//!
//! The caller is the first address in the configured metadata key (`x-forwarded-for` by
//! default, which the BFF in front of this internal service sets to the end user's
//! address), else the peer address of the connection.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use tonic::metadata::MetadataMap;

use crate::error::Error;

/// Callers tracked at most; beyond, expired entries are dropped, then all of them.
const MAX_CALLERS: usize = 100_000;

pub struct FailureLimiter {
    limit: u32,
    window: Duration,
    callers: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

impl FailureLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            callers: Mutex::new(HashMap::new()),
        }
    }

    /// Who is calling, for the limiter.
    pub fn caller_key(header: &str, metadata: &MetadataMap, peer: Option<SocketAddr>) -> String {
        if !header.is_empty()
            && let Some(first) = metadata
                .get(header)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        {
            return first.chars().take(64).collect();
        }
        peer.map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string())
    }

    /// Refuses a caller that used up its failures in the current window.
    pub fn check(&self, caller: &str) -> Result<(), Error> {
        if self.limit == 0 {
            return Ok(());
        }
        let callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        match callers.get(caller) {
            Some(w) if w.failures >= self.limit && w.start.elapsed() < self.window => {
                Err(Error::TooManyFailedRedemptions {
                    retry_after: self.window.saturating_sub(w.start.elapsed()),
                })
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, caller: &str) {
        if self.limit == 0 {
            return;
        }
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        if callers.len() >= MAX_CALLERS && !callers.contains_key(caller) {
            let window = self.window;
            callers.retain(|_, w| w.start.elapsed() < window);
            if callers.len() >= MAX_CALLERS {
                callers.clear();
            }
        }
        let entry = callers.entry(caller.to_owned()).or_insert(Window {
            start: Instant::now(),
            failures: 0,
        });
        if entry.start.elapsed() >= self.window {
            *entry = Window {
                start: Instant::now(),
                failures: 0,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_is_refused_after_its_failures_until_the_window_ends() {
        let limiter = FailureLimiter::new(3, Duration::from_millis(200));
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
            limiter.record_failure("a");
        }
        assert!(matches!(
            limiter.check("a"),
            Err(Error::TooManyFailedRedemptions { .. })
        ));
        assert!(limiter.check("b").is_ok());
        std::thread::sleep(Duration::from_millis(220));
        assert!(limiter.check("a").is_ok());
    }

    #[test]
    fn the_caller_is_the_first_forwarded_address_else_the_peer() {
        let mut md = MetadataMap::new();
        let peer: SocketAddr = "10.1.2.3:555".parse().unwrap();
        assert_eq!(
            FailureLimiter::caller_key("x-forwarded-for", &md, Some(peer)),
            "10.1.2.3"
        );
        md.insert("x-forwarded-for", "203.0.113.9, 10.0.0.1".parse().unwrap());
        assert_eq!(
            FailureLimiter::caller_key("x-forwarded-for", &md, Some(peer)),
            "203.0.113.9"
        );
        assert_eq!(FailureLimiter::caller_key("", &md, Some(peer)), "10.1.2.3");
    }
}
