//! Presence on this replica: who has an open stream here, kept in PostgreSQL by a beat
//! every [`BEAT`] (rows expiring after [`TTL`]), so every replica can answer whether a
//! participant is online anywhere.
//!
//! Bounds: a stream that closes keeps its participant present for [`GRACE`], so a
//! client that reconnects within it (here or on another replica) causes no
//! offline/online pair. A replica killed without a word stops counting once its rows
//! expire: GetPresence says offline at most [`TTL`] after its last beat, and the feed's
//! PresenceChanged follows at the next beat of any replica (so within TTL + BEAT, plus
//! the sequencer's second).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    domain::Participant,
    store::{PresenceKey, Store},
};

pub const BEAT: Duration = Duration::from_secs(1);
pub const TTL: Duration = Duration::from_secs(5);
pub const GRACE: Duration = Duration::from_secs(3);
/// A row is refreshed when it is this old, not at every beat: with thousands of
/// participants per replica, a write per participant per second is work PostgreSQL does
/// for nothing (a row refreshed up to REFRESH + BEAT ago still has 2 s to live).
const REFRESH: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Local {
    open: usize,
    /// When the last stream closed, while `open` is 0.
    left: Option<Instant>,
    /// When its row was last written by a beat that committed.
    refreshed: Option<Instant>,
}

/// This replica's open streams per participant.
pub struct Presence {
    replica: Uuid,
    local: Mutex<HashMap<PresenceKey, Local>>,
}

/// Held by an open stream; dropping it starts its participant's grace period.
pub struct PresenceGuard {
    presence: Arc<Presence>,
    key: PresenceKey,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        let mut local = self.presence.lock();
        if let Some(entry) = local.get_mut(&self.key) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 {
                entry.left = Some(Instant::now());
            }
        }
    }
}

impl Presence {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            replica: Uuid::new_v4(),
            local: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PresenceKey, Local>> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a stream of `participant` until the guard drops. The anonymous visitor has
    /// no id to be known by, so it is not counted.
    pub fn enter(self: &Arc<Self>, participant: &Participant) -> Option<PresenceGuard> {
        if participant.is_anonymous() {
            return None;
        }
        let key = (participant.role(), participant.id().to_owned());
        let mut local = self.lock();
        let entry = local.entry(key.clone()).or_default();
        entry.open += 1;
        entry.left = None;
        Some(PresenceGuard {
            presence: Arc::clone(self),
            key,
        })
    }

    /// Whose rows to refresh now, and who is gone for good (forgotten here).
    fn split(&self, now: Instant) -> (Vec<PresenceKey>, Vec<PresenceKey>) {
        let mut local = self.lock();
        let mut gone = Vec::new();
        local.retain(|key, entry| {
            let keep = entry.open > 0 || entry.left.is_some_and(|left| now - left < GRACE);
            if !keep {
                gone.push(key.clone());
            }
            keep
        });
        let due = local
            .iter()
            .filter(|(_, entry)| entry.refreshed.is_none_or(|at| now - at >= REFRESH))
            .map(|(key, _)| key.clone())
            .collect();
        (due, gone)
    }

    /// Notes that the rows of `keys` were written at `at`.
    fn refreshed(&self, keys: &[PresenceKey], at: Instant) {
        let mut local = self.lock();
        for key in keys {
            if let Some(entry) = local.get_mut(key) {
                entry.refreshed = Some(at);
            }
        }
    }
}

/// Beats until `stop`; at the end, removes this replica's rows, so a clean shutdown
/// says offline at once.
pub async fn run_presence(store: Store, presence: Arc<Presence>, stop: CancellationToken) {
    loop {
        let now = Instant::now();
        let (alive, gone) = presence.split(now);
        let beat = store
            .presence_beat(presence.replica, &alive, &gone, TTL)
            .await;
        if beat.is_ok() {
            presence.refreshed(&alive, now);
        }
        if let Err(error) = beat {
            tracing::warn!(%error, "presence beat failed");
            // Forgotten participants must still be removed: try them again next beat.
            let mut local = presence.lock();
            for key in gone {
                local.entry(key).or_insert(Local {
                    open: 0,
                    left: Some(Instant::now() - GRACE),
                    refreshed: None,
                });
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(BEAT) => {}
        }
    }
    let alive: Vec<PresenceKey> = presence.lock().keys().cloned().collect();
    if let Err(error) = store
        .presence_beat(presence.replica, &[], &alive, TTL)
        .await
    {
        tracing::warn!(%error, "cannot remove this replica's presence");
    }
}
