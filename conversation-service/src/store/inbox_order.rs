//! Settling the inbox order: after a minute has closed, the conversations last active in
//! it get `inbox_at = last_activity_at`, and `inbox_settled.through` moves past it, so
//! ListConversations reads them in index order (migration `20261206091000_inbox_order`).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::handle::Store;
use crate::error::{Error, Result};

/// How often a replica settles. Until then a minute's conversations are sorted when
/// listed, which is correct, only slower.
pub const SETTLE_EVERY: Duration = Duration::from_secs(10);

/// A minute is settled only this long after it ended: a SendMessage batch timestamped
/// inside it may still be writing (its statement may run up to `STATEMENT_TIMEOUT`, 8 s)
/// and replicas' clocks differ by a little.
const SETTLE_AFTER: &str = "20 seconds";

/// A settling run waits this long for a conversation's row lock, then gives up until the
/// next run, so it never holds up SendMessage (and never becomes a deadlock's victim's
/// cause: PostgreSQL looks for deadlocks only after `deadlock_timeout`, 1 s).
const SETTLE_LOCK_TIMEOUT: &str = "200ms";

/// How many conversations one settling statement changes at most. Each holds their row
/// locks until it commits, and a SendMessage batch that writes to one of them waits that
/// long: a minute of a busy replica's conversations settled in one statement held them
/// for over a second.
const SETTLE_CHUNK: i64 = 100;

/// One chunk of the settling: up to `$3` lagging conversations with `inbox_at` in
/// [`$1`, `$2`), oldest first, skipping those a send holds; returns each one's `inbox_at`
/// before. (`EXPLAIN` in tests.)
pub const SETTLE_CHUNK_SQL: &str = "WITH todo AS (\
       SELECT c.id, c.inbox_at FROM conversations c \
       WHERE c.inbox_at >= $1 AND c.inbox_at < $2 AND c.inbox_at <> c.last_activity_at \
       ORDER BY c.inbox_at LIMIT $3 FOR UPDATE OF c SKIP LOCKED) \
     UPDATE conversations c SET inbox_at = c.last_activity_at FROM todo \
     WHERE c.id = todo.id RETURNING todo.inbox_at";

impl Store {
    /// Settles the minutes that closed since the last run; returns how many
    /// conversations it changed. First in chunks of [`SETTLE_CHUNK`], each its own
    /// transaction, skipping conversations a send holds; then one statement settles what
    /// they skipped and moves `inbox_settled.through`. Replicas take turns on
    /// `inbox_settled`'s row lock for that last statement; their chunks skip each other's.
    pub async fn settle_inbox_order(&self) -> Result<u64> {
        let ctx = "settle inbox order";
        // The range as values, so that each chunk is planned as a range scan of
        // `conversations_inbox_at_idx` (with the bounds in a joined row, the planner
        // walked the index from its oldest entry, testing each against them).
        let (through, cutoff): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
            "SELECT through, chat_activity_minute(now() - $1::interval) FROM inbox_settled",
        )
        .bind(SETTLE_AFTER)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        let mut chunked = 0;
        // Each chunk starts where the last one stopped (a row settled moves to its last
        // activity, later in the same minute, and is passed over once more there), not
        // at `through`, which would read every row settled so far again.
        let mut from = through;
        while from < cutoff {
            let last: Vec<(DateTime<Utc>,)> = sqlx::query_as(SETTLE_CHUNK_SQL)
                .bind(from)
                .bind(cutoff)
                .bind(SETTLE_CHUNK)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| Error::db(ctx, e))?;
            chunked += last.len() as u64;
            match last.iter().map(|(at,)| *at).max() {
                Some(at) if last.len() == SETTLE_CHUNK as usize => from = at,
                _ => break,
            }
        }
        let mut tx = self.pool.begin().await.map_err(|e| Error::db(ctx, e))?;
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(SETTLE_LOCK_TIMEOUT)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(ctx, e))?;
        // Data-modifying CTEs run whether or not they are read. A conversation a send
        // moves meanwhile is re-checked under its lock: its inbox_at is then past
        // `cutoff`, and it is left alone. The chunks' `cutoff`, so this statement settles
        // no minute they did not (a minute that closed since waits for the next run);
        // `through` as of the lock, which another replica may have moved.
        let settled: i64 = sqlx::query_scalar(
            "WITH w AS (\
               SELECT through, $1::timestamptz AS cutoff FROM inbox_settled FOR UPDATE), \
             s AS (\
               UPDATE conversations c SET inbox_at = c.last_activity_at FROM w \
               WHERE c.inbox_at >= w.through AND c.inbox_at < w.cutoff \
                 AND c.inbox_at <> c.last_activity_at RETURNING 1), \
             a AS (\
               UPDATE inbox_settled SET through = w.cutoff FROM w \
               WHERE w.cutoff > w.through RETURNING 1) \
             SELECT count(*) FROM s",
        )
        .bind(cutoff)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        tx.commit().await.map_err(|e| Error::db(ctx, e))?;
        Ok(chunked + u64::try_from(settled).unwrap_or_default())
    }
}

/// Settles every [`SETTLE_EVERY`] until `stop`; a failed run (a row lock not granted in
/// time, the database away) is retried at the next.
pub async fn settle_inbox_order_until(store: Store, stop: tokio_util::sync::CancellationToken) {
    let mut ticks = tokio::time::interval(SETTLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match store.settle_inbox_order().await {
            Ok(settled) => tracing::debug!(settled, "inbox order settled"),
            Err(error) => tracing::debug!(%error, "inbox order not settled this time"),
        }
    }
}
