//! One call to conversation-service at a time per session: a session's queued calls are
//! handed out only with its [`Turn`], so they never overlap and apply in queue order.
//! Erasures take turns the same way, by their request id, so one is never made twice at
//! once (by its RPC and by the worker).

use std::{
    collections::HashSet,
    hash::Hash,
    sync::{Arc, Mutex, PoisonError},
};

use crate::domain::SessionId;

/// Sessions with a call being made right now, by an RPC or by the worker. A session's
/// calls are handed out only while it is absent, so they never overlap and apply in
/// queue order. It lives in this process, which alone holds the database's writer lock:
/// reopening the connection cannot void it (leases in the file could be, and were), and
/// a crash clears it with the calls it guarded.
pub(super) struct InFlight<K = SessionId>(Arc<Mutex<HashSet<K>>>);

impl<K> Clone for InFlight<K> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K> Default for InFlight<K> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<K: Hash + Eq + Copy> InFlight<K> {
    pub(super) fn take(&self, session_id: K) -> Option<Turn<K>> {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        held.insert(session_id).then(|| Turn {
            session_id,
            in_flight: self.clone(),
        })
    }
}

/// One session's (or erasure's) turn to call conversation-service; dropping it lets the
/// next go.
pub(super) struct Turn<K: Hash + Eq + Copy = SessionId> {
    session_id: K,
    in_flight: InFlight<K>,
}

impl<K: Hash + Eq + Copy> Drop for Turn<K> {
    fn drop(&mut self) {
        let mut held = self
            .in_flight
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.remove(&self.session_id);
    }
}

impl<K: Hash + Eq + Copy + std::fmt::Debug> std::fmt::Debug for Turn<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Turn").field(&self.session_id).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_has_one_turn_at_a_time_and_dropping_it_frees_it() {
        let in_flight = InFlight::<SessionId>::default();
        let (a, b) = (SessionId::new(), SessionId::new());
        let turn = in_flight.take(a).expect("a free session");
        assert!(in_flight.take(a).is_none(), "two turns for one session");
        let other = in_flight.take(b).expect("another session is independent");
        drop(turn);
        assert!(in_flight.take(a).is_some(), "the turn was not freed");
        drop(other);
        assert!(in_flight.0.lock().unwrap().is_empty());
    }
}
