//! Slows down guessing: a caller whose redemptions or checks fail too often (unknown link,
//! wrong provider, malformed secret) is refused with RESOURCE_EXHAUSTED for the rest of a
//! fixed window, before any lookup. In memory, per process, bounded in size.
//!
//! A lookup first *reserves* one failure of the caller's budget, atomically with the
//! check, and gives it back when the guess was right: so however many guesses arrive at
//! once, at most `limit` of them are looked up per window. Lookups beyond what is left
//! of the budget wait (briefly) for those in flight to settle, so a burst of right
//! guesses from one caller goes through in waves rather than being refused. (The `governor` crate keeps
//! keyed budgets too, but cannot give a cell back, so it would count every successful
//! redemption against the caller.)
//!
//! Who "the caller" is ([`CallerIdentity`]): a key the BFF sets for its end user (a
//! per-user budget), else the end user's address as the trusted proxies in front of
//! this service recorded it in `x-forwarded-for`, else the peer address.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use tonic::metadata::MetadataMap;

use crate::{error::Error, metrics};

/// Callers tracked at most. When full, expired windows are dropped first, then the
/// oldest window; never everyone's at once.
const MAX_CALLERS: usize = 100_000;
/// Longest caller key kept.
const MAX_KEY_CHARS: usize = 128;
/// Longest wait for the caller's own lookups in flight to settle; then a refusal with
/// this as the retry hint.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(1);

/// How the caller of a request is named.
#[derive(Debug, Clone, Default)]
pub struct CallerIdentity {
    /// Metadata key whose whole value names the end user (set by the BFF; empty: none).
    pub key_header: String,
    /// Metadata key of the forwarded-for chain (`x-forwarded-for`).
    pub address_header: String,
    /// Proxies in front of this service that append to the chain; the caller is the
    /// entry this many from the right. 0: the chain is ignored, the peer is the caller.
    pub trusted_hops: usize,
}

impl CallerIdentity {
    /// The caller's key for the limiter.
    pub fn key(&self, metadata: &MetadataMap, peer: Option<SocketAddr>) -> String {
        if let Some(key) = header(metadata, &self.key_header).filter(|v| !v.is_empty()) {
            return format!(
                "key:{}",
                key.chars().take(MAX_KEY_CHARS).collect::<String>()
            );
        }
        if self.trusted_hops > 0
            && let Some(chain) = header(metadata, &self.address_header)
        {
            let entries: Vec<&str> = chain.split(',').map(str::trim).collect();
            // Fewer entries than trusted proxies: the furthest one there is.
            let index = entries.len().saturating_sub(self.trusted_hops);
            if let Some(address) = entries.get(index).filter(|a| !a.is_empty()) {
                return address_key(address);
            }
        }
        peer.map_or_else(|| "addr:unknown".to_owned(), |p| format!("addr:{}", p.ip()))
    }
}

fn header<'a>(metadata: &'a MetadataMap, name: &str) -> Option<&'a str> {
    if name.is_empty() {
        return None;
    }
    metadata
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// An address as written in the chain (`1.2.3.4`, `[::1]:80`, `1.2.3.4:5`), normalised
/// so one address cannot be spelt two ways.
fn address_key(text: &str) -> String {
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()));
    match ip {
        Some(ip) => format!("addr:{ip}"),
        None => format!(
            "addr:{}",
            text.chars().take(MAX_KEY_CHARS).collect::<String>()
        ),
    }
}

pub struct FailureLimiter {
    limit: u32,
    window: Duration,
    capacity: usize,
    callers: Mutex<HashMap<String, Window>>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    failures: u32,
    /// Lookups reserved and not settled yet.
    pending: u32,
    /// Wakes lookups waiting for one in flight to settle.
    settled: Arc<Notify>,
}

/// One reserved failure: given back on drop unless [`Reservation::failed`] keeps it.
#[must_use]
pub struct Reservation {
    limiter: Option<Arc<FailureLimiter>>,
    caller: String,
}

impl Reservation {
    /// The guess was wrong: the reserved failure is counted.
    pub fn failed(mut self) {
        if let Some(limiter) = self.limiter.take() {
            limiter.settle(&self.caller, true);
        }
    }

    /// Settles the reservation by one step of a lookup: a failed guess (see
    /// [`Error::is_failed_guess`]) is counted against the caller at once; any other
    /// outcome leaves the reservation for the next step, and dropping it gives it back.
    pub fn settle<T>(&mut self, outcome: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &outcome
            && e.is_failed_guess()
        {
            if let Some(limiter) = self.limiter.take() {
                limiter.settle(&self.caller, true);
            }
            metrics::failed_guess();
        }
        outcome
    }
}

/// The refusal of a caller whose failures fill its budget, counted as it is made.
fn refuse(retry_after: Duration) -> Error {
    metrics::failed_guess_refused();
    Error::TooManyFailedRedemptions { retry_after }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(limiter) = self.limiter.take() {
            limiter.settle(&self.caller, false);
        }
    }
}

impl FailureLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self::with_capacity(limit, window, MAX_CALLERS)
    }

    fn with_capacity(limit: u32, window: Duration, capacity: usize) -> Self {
        Self {
            limit,
            window,
            capacity: capacity.max(1),
            callers: Mutex::new(HashMap::new()),
        }
    }

    /// Reserves one failure of `caller`'s budget before a lookup. Refuses the caller
    /// when its failures fill the budget; waits while its failures and its lookups in
    /// flight do.
    pub async fn reserve(self: &Arc<Self>, caller: &str) -> Result<Reservation, Error> {
        if self.limit == 0 {
            return Ok(Reservation {
                limiter: None,
                caller: String::new(),
            });
        }
        let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
        loop {
            let settled = {
                let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
                let window = self.window_of(&mut callers, caller);
                if window.failures >= self.limit {
                    return Err(refuse(self.window.saturating_sub(window.start.elapsed())));
                }
                if window.failures + window.pending < self.limit {
                    window.pending += 1;
                    return Ok(Reservation {
                        limiter: Some(Arc::clone(self)),
                        caller: caller.to_owned(),
                    });
                }
                Arc::clone(&window.settled)
            };
            // A `Notified` hears every notify_waiters() made after its creation, and
            // settle() takes the lock to notify, so no wake-up falls in between.
            let notified = settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.still_busy(caller) {
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(refuse(IN_FLIGHT_WAIT));
            }
        }
    }

    /// Whether `caller`'s budget is still all taken (rechecked after registering to wait).
    fn still_busy(&self, caller: &str) -> bool {
        let callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        callers
            .get(caller)
            .is_some_and(|w| w.failures < self.limit && w.failures + w.pending >= self.limit)
    }

    /// `caller`'s current window, made (room permitting) or restarted as needed.
    fn window_of<'a>(
        &self,
        callers: &'a mut HashMap<String, Window>,
        caller: &str,
    ) -> &'a mut Window {
        if !callers.contains_key(caller) && callers.len() >= self.capacity {
            self.make_room(callers);
        }
        let now = Instant::now();
        let window = callers.entry(caller.to_owned()).or_insert_with(|| Window {
            start: now,
            failures: 0,
            pending: 0,
            settled: Arc::new(Notify::new()),
        });
        if now.duration_since(window.start) >= self.window {
            window.start = now;
            window.failures = 0;
        }
        window
    }

    fn settle(&self, caller: &str, failed: bool) {
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = callers.get_mut(caller) {
            entry.pending = entry.pending.saturating_sub(1);
            entry.settled.notify_waiters();
            if failed {
                entry.failures = entry.failures.saturating_add(1);
            } else if entry.failures == 0 && entry.pending == 0 {
                // Nothing to remember about a caller whose guesses were all right.
                callers.remove(caller);
            }
        }
    }

    /// Drops expired windows; if none has expired, the one that started first (callers
    /// with lookups in flight are kept). O(n), only when the table is full.
    fn make_room(&self, callers: &mut HashMap<String, Window>) {
        let window = self.window;
        callers.retain(|_, w| w.pending > 0 || w.start.elapsed() < window);
        if callers.len() >= self.capacity
            && let Some(oldest) = callers
                .iter()
                .filter(|(_, w)| w.pending == 0)
                .min_by_key(|(_, w)| w.start)
                .map(|(k, _)| k.clone())
        {
            callers.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.callers.lock().map(|c| c.len()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fail(limiter: &Arc<FailureLimiter>, caller: &str) {
        limiter.reserve(caller).await.unwrap().failed();
    }

    #[tokio::test]
    async fn a_caller_is_refused_after_its_failures_until_the_window_ends() {
        let limiter = Arc::new(FailureLimiter::new(3, Duration::from_millis(200)));
        for _ in 0..3 {
            fail(&limiter, "a").await;
        }
        assert!(matches!(
            limiter.reserve("a").await,
            Err(Error::TooManyFailedRedemptions { .. })
        ));
        assert!(limiter.reserve("b").await.is_ok());
        tokio::time::sleep(Duration::from_millis(220)).await;
        assert!(limiter.reserve("a").await.is_ok());
    }

    #[tokio::test]
    async fn right_guesses_give_their_reservation_back() {
        let limiter = Arc::new(FailureLimiter::new(2, Duration::from_secs(60)));
        for _ in 0..10 {
            drop(limiter.reserve("a").await.unwrap());
        }
        fail(&limiter, "a").await;
        assert!(limiter.reserve("a").await.is_ok());
        assert_eq!(limiter.tracked(), 1);
    }

    #[tokio::test]
    async fn lookups_beyond_the_budget_wait_for_those_in_flight() {
        let limiter = Arc::new(FailureLimiter::new(3, Duration::from_secs(60)));
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(limiter.reserve("a").await.unwrap());
        }
        let waiting = tokio::spawn({
            let limiter = Arc::clone(&limiter);
            async move { limiter.reserve("a").await.map(drop).is_ok() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a fourth lookup at once waits");
        // Two wrong guesses and a right one settle: one failure is left for the waiter.
        let mut held = held.into_iter();
        held.next().unwrap().failed();
        held.next().unwrap().failed();
        drop(held);
        assert!(waiting.await.unwrap());
        // All three failures spent on wrong guesses refuse at once, without waiting.
        fail(&limiter, "a").await;
        assert!(limiter.reserve("a").await.is_err());
    }

    #[tokio::test]
    async fn a_full_table_drops_one_window_not_everyones() {
        let limiter = Arc::new(FailureLimiter::with_capacity(1, Duration::from_secs(60), 3));
        for caller in ["a", "b", "c"] {
            fail(&limiter, caller).await;
        }
        fail(&limiter, "d").await;
        assert_eq!(limiter.tracked(), 3);
        assert!(limiter.reserve("b").await.is_err(), "b is still limited");
        assert!(limiter.reserve("c").await.is_err(), "c is still limited");
    }

    fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut md = MetadataMap::new();
        for (k, v) in pairs {
            md.insert(*k, v.parse().unwrap());
        }
        md
    }

    #[test]
    fn the_caller_is_the_trusted_hop_from_the_right_else_the_peer() {
        let peer: SocketAddr = "10.1.2.3:555".parse().unwrap();
        let chain = metadata(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.1")]);
        let identity = |hops| CallerIdentity {
            key_header: String::new(),
            address_header: "x-forwarded-for".into(),
            trusted_hops: hops,
        };
        assert_eq!(identity(0).key(&chain, Some(peer)), "addr:10.1.2.3");
        assert_eq!(identity(1).key(&chain, Some(peer)), "addr:10.0.0.1");
        assert_eq!(identity(2).key(&chain, Some(peer)), "addr:203.0.113.9");
        assert_eq!(identity(5).key(&chain, Some(peer)), "addr:6.6.6.6");
        let no_chain = MetadataMap::new();
        assert_eq!(identity(1).key(&no_chain, Some(peer)), "addr:10.1.2.3");
        let port = metadata(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(identity(1).key(&port, Some(peer)), "addr:2001:db8::1");
    }

    #[test]
    fn a_key_set_by_the_bff_names_the_end_user() {
        let peer: SocketAddr = "10.1.2.3:555".parse().unwrap();
        let identity = CallerIdentity {
            key_header: "x-end-user".into(),
            address_header: "x-forwarded-for".into(),
            trusted_hops: 1,
        };
        let md = metadata(&[("x-end-user", "user-42"), ("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(identity.key(&md, Some(peer)), "key:user-42");
        let md = metadata(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(identity.key(&md, Some(peer)), "addr:1.2.3.4");
    }
}
