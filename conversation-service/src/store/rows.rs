//! What SendMessage's writers know of the conversations they write: each row as this
//! replica last read or wrote it, so a batch is planned without reading it again. A row
//! known here may be stale (another replica wrote the conversation, it was closed or its
//! customer linked): the write checks every row it was planned on and writes nothing when
//! one changed (`send.rs`). A conversation that was found stale is contended for
//! [`CONTENDED_FOR`]: batches that touch it are planned under the row locks, as
//! conversations written from several replicas at once would otherwise fail most writes
//! (docs/performance.md).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::plan::Locked;

/// How long batches touching a conversation found stale are planned under the locks.
pub const CONTENDED_FOR: Duration = Duration::from_secs(10);

/// Rows kept at most (about 150 bytes each); past it they are all forgotten at once.
pub const ROWS_MAX: usize = 100_000;

enum Entry {
    Known(Locked),
    Contended(Instant),
}

#[derive(Default)]
pub struct KnownRows {
    entries: Mutex<HashMap<Uuid, Entry>>,
}

impl KnownRows {
    /// The rows known of `ids`, and the ids to read; `None` when one of them is
    /// contended (the batch is better planned under the row locks).
    pub fn split(&self, ids: &[Uuid]) -> Option<(Vec<Locked>, Vec<Uuid>)> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut known = Vec::with_capacity(ids.len());
        let mut unknown = Vec::new();
        for id in ids {
            match entries.get(id) {
                Some(Entry::Known(row)) => known.push(row.clone()),
                Some(Entry::Contended(until)) if *until > now => return None,
                _ => unknown.push(*id),
            }
        }
        Some((known, unknown))
    }

    /// Rows as a committed batch left them (or as read under their locks); contended
    /// conversations stay unknown until their time is up.
    pub fn remember(&self, rows: impl IntoIterator<Item = Locked>) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= ROWS_MAX {
            entries.clear();
        }
        let now = Instant::now();
        for row in rows {
            if let Some(Entry::Contended(until)) = entries.get(&row.id)
                && *until > now
            {
                continue;
            }
            entries.insert(row.id, Entry::Known(row));
        }
    }

    /// Forgets `ids`; `contended`: and plans their batches under the locks for a while.
    pub fn forget(&self, ids: impl IntoIterator<Item = Uuid>, contended: bool) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let until = Instant::now() + CONTENDED_FOR;
        for id in ids {
            if contended {
                entries.insert(id, Entry::Contended(until));
            } else {
                entries.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    fn row(id: Uuid, head: i64) -> Locked {
        Locked {
            id,
            provider_id: "p1".into(),
            customer_id: None,
            status: Status::Active,
            head_seq: head,
        }
    }

    #[test]
    fn known_rows_are_served_and_contended_ones_are_not_planned_on() {
        let rows = KnownRows::default();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        rows.remember([row(a, 3), row(b, 5)]);
        let (known, unknown) = rows.split(&[a, b, c]).unwrap();
        assert_eq!(
            known.iter().map(|r| (r.id, r.head_seq)).collect::<Vec<_>>(),
            [(a, 3), (b, 5)]
        );
        assert_eq!(unknown, [c]);

        rows.forget([a], true);
        rows.forget([b], false);
        rows.remember([row(a, 4), row(c, 1)]);
        assert!(rows.split(&[a, c]).is_none(), "a is contended");
        let (known, unknown) = rows.split(&[b, c]).unwrap();
        assert_eq!(known.iter().map(|r| r.id).collect::<Vec<_>>(), [c]);
        assert_eq!(unknown, [b]);
    }
}
