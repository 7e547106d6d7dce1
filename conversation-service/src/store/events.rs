//! The event feed: every event of every conversation in one order, numbered by windows.
//!
//! Writers record what happened in their own tables (conversation_events, messages,
//! read_events, presence_events, reminder_events), each row with its transaction id and
//! commit-ordered `pos`. The sequencer closes a window over what became visible since
//! the last one: it takes `feed_state`'s row lock, and if any source row's transaction is
//! visible to its statement but was not in the stored snapshot (the inbox's window rule:
//! a transaction that took its id early and committed late still lands in exactly one
//! window), it records window N+1 = (stored snapshot, the statement's snapshot) and
//! stores the new one. Runs are serialised by the lock, so a window is visible only once
//! every smaller one is, and a window's content never changes: reading "after a cursor"
//! never skips anything, on any replica, and resuming gives the same events in the same
//! order. Nothing is copied per event: the send path writes nothing for the feed, and a
//! window costs one small row however many events it holds.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{ConversationRow, MessageRow, Store};
use crate::{
    domain::{
        ConsumerName, ConversationId, EventKey, FeedFilter, FeedKind, FeedPosition, Participant,
        Role, Status,
    },
    error::{Error, Result},
};

/// One event of the feed, with what it carries.
#[derive(Debug, Clone)]
pub struct FeedEvent {
    pub position: FeedPosition,
    pub kind: FeedKind,
    /// The conversation's provider; for a presence change, the provider it is about.
    pub provider_id: Option<String>,
    /// When its window was recorded.
    pub recorded_at: DateTime<Utc>,
    pub payload: FeedPayload,
}

#[derive(Debug, Clone)]
pub enum FeedPayload {
    /// Created, customer updated, customer erased: the conversation as it is when read.
    Conversation(Box<ConversationRow>),
    Status(Status),
    Message(MessageRow),
    /// An edit or a deletion: the message as it is now, and the conversation's change
    /// position of it.
    Change {
        message: MessageRow,
        change_seq: i64,
    },
    Read {
        role: Role,
        reader_id: String,
        seq: i64,
    },
    Presence {
        participant: Participant,
        online: bool,
    },
    Reminder {
        participant: Participant,
        unread: i64,
        first_unread_seq: i64,
        preview: String,
    },
    /// The row the event names is gone.
    Missing,
}

/// A page of the feed.
pub struct FeedPage {
    pub events: Vec<FeedEvent>,
    /// Resume after this: the last event returned, or (when the page is not full) the
    /// end of the newest window the read covered, so a filtered reader moves past what
    /// it skips.
    pub next: FeedPosition,
    /// Whether more events may follow right away.
    pub full: bool,
}

/// The feed's source tables: name, alias, `part` (the order of tables inside one
/// transaction), the conversation, the key, and the feed kind of a row.
const SOURCES: [(&str, &str, i16, &str, &str, &str); 6] = [
    // Kinds 1-3 are the feed's own numbers; an erasure (4) is CUSTOMER_ERASED (8).
    (
        "conversation_events",
        "e",
        0,
        "e.conversation_id",
        "e.id",
        "CASE e.kind WHEN 4 THEN 8 ELSE e.kind END",
    ),
    ("messages", "m", 1, "m.conversation_id", "m.seq", "4"),
    ("read_events", "r", 2, "r.conversation_id", "r.id", "5"),
    (
        "presence_events",
        "s",
        3,
        "'00000000-0000-0000-0000-000000000000'::uuid",
        "s.id",
        "6",
    ),
    ("reminder_events", "u", 4, "u.conversation_id", "u.id", "7"),
    // An edit (9) or a deletion (10), keyed by the conversation's change_seq.
    (
        "message_changes",
        "x",
        5,
        "x.conversation_id",
        "x.change_seq",
        "CASE x.kind WHEN 1 THEN 9 ELSE 10 END",
    ),
];

/// Closes window `$2 + 1` from the snapshot `$1` to this statement's, if any source row
/// became visible in between (its transaction started at or after `$1`'s xmax or was in
/// progress then, and is visible to this statement); returns the new window's id.
///
/// Each test is written so the planner cannot pick a sequential scan: `max(xid)` is one
/// step down the `xid` index, and the in-progress ids are probed one by one. (`xid >=
/// x OR xid = ANY(...)` with values unknown at planning reads the whole table, and
/// `EXISTS` makes a sequential scan look cheap.)
fn sequence_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let newer = SOURCES
            .iter()
            .map(|(table, ..)| format!("(SELECT max(xid) FROM {table}) >= p.xmax"))
            .collect::<Vec<_>>()
            .join("\n        OR ");
        let late = SOURCES
            .iter()
            .map(|(table, alias, ..)| {
                format!("EXISTS (SELECT 1 FROM {table} {alias} WHERE {alias}.xid = late.id)")
            })
            .collect::<Vec<_>>()
            .join("\n                 OR ");
        format!(
            "WITH prior AS (
    SELECT pg_snapshot_xmax($1::text::pg_snapshot) AS xmax,
           ARRAY(SELECT pg_snapshot_xip($1::text::pg_snapshot)) AS xip
), news AS (
    SELECT {newer}
        OR EXISTS (SELECT 1 FROM unnest(p.xip) late(id)
            WHERE {late}) AS any
      FROM prior p
), added AS (
    INSERT INTO feed_windows (id, lower, upper)
    SELECT $2 + 1, $1::text::pg_snapshot, pg_current_snapshot() FROM news WHERE news.any
    RETURNING id, upper
)
UPDATE feed_state s SET assigned = a.upper, last_window = a.id
  FROM added a
RETURNING s.last_window"
        )
    })
}

/// The source rows of a window as `(pos, part, conv, key, kind)`, given as parameters
/// `$lo_xmax`, `$hi_xmax` (xid8 as text), `$lo_xip` (text[]) and `$upper` (snapshot
/// text): transactions that started in `[lo_xmax, hi_xmax)` or were in progress at the
/// lower snapshot, visible in the upper one. Two index scans per table, whatever plan
/// the parameters get.
pub(super) fn window_rows_sql(lo_xmax: &str, hi_xmax: &str, lo_xip: &str, upper: &str) -> String {
    SOURCES
        .iter()
        .map(|(table, a, part, conv, key, kind)| {
            let columns =
                format!("{a}.pos, {part}::smallint AS part, {conv} AS conv, {key} AS key, ({kind})::smallint AS kind");
            format!(
                "SELECT {columns} FROM {table} {a}
                  WHERE {a}.xid >= {lo_xmax}::text::xid8 AND {a}.xid < {hi_xmax}::text::xid8
                    AND pg_visible_in_snapshot({a}.xid, {upper}::text::pg_snapshot)
                 UNION ALL
                 SELECT t.* FROM unnest({lo_xip}::text[]::xid8[]) late(id)
                  CROSS JOIN LATERAL (
                      SELECT {columns} FROM {table} {a}
                       WHERE {a}.xid = late.id
                         AND pg_visible_in_snapshot({a}.xid, {upper}::text::pg_snapshot)
                      -- Not flattened into a join: one index probe per late transaction.
                      OFFSET 0) t"
            )
        })
        .collect::<Vec<_>>()
        .join("\n UNION ALL\n")
}

/// Up to `$5` events of a window (bounds `$8`-`$11`, see [`window_rows_sql`]) after the
/// key `($1, $2, $3, $4)` that the kinds `$6` and providers `$7` admit (empty: all), in
/// feed order, with what they carry.
fn window_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let fresh = window_rows_sql("$8", "$9", "$10", "$11");
        format!(
            "WITH fresh AS (
{fresh}
), admitted AS (
    SELECT f.* FROM fresh f
     WHERE (f.pos, f.part, f.conv, f.key) > ($1, $2, $3, $4)
       AND (cardinality($6::smallint[]) = 0 OR f.kind = ANY($6::smallint[]))
)
SELECT f.pos, f.part, f.conv, f.key, f.kind,
       CASE WHEN f.kind = 6 THEN CASE WHEN pe.role = 1 THEN pe.participant_id END
            ELSE c.provider_id END AS provider_id,
       e.status,
       m.seq AS m_seq, m.id AS m_id, m.sender_role, m.sender_id, m.body,
       m.client_message_id, m.created_at AS m_created_at, m.edited_at AS m_edited_at,
       m.edit_count AS m_edit_count, m.deleted_at IS NOT NULL AS m_deleted,
       m.attachments AS m_attachments, m.last_change AS m_last_change,
       r.role AS r_role, r.reader_id, r.seq AS r_seq,
       pe.role AS pe_role, pe.participant_id AS pe_participant, pe.online AS pe_online,
       u.role AS u_role, u.participant_id AS u_participant, u.unread AS u_unread,
       u.first_seq AS u_first_seq,
       COALESCE(left(um.body, 200), '') AS u_preview
  FROM (
      SELECT * FROM admitted a
       -- The provider is looked up per event only when a filter needs it; the page's
       -- own rows get theirs from the join below.
       WHERE cardinality($7::text[]) = 0
          OR CASE WHEN a.kind = 6
                  THEN (SELECT s.participant_id FROM presence_events s
                         WHERE s.id = a.key AND s.role = 1)
                  ELSE (SELECT c.provider_id FROM conversations c WHERE c.id = a.conv)
             END = ANY($7::text[])
       ORDER BY a.pos, a.part, a.conv, a.key LIMIT $5
  ) f
  LEFT JOIN conversations c ON f.kind <> 6 AND c.id = f.conv
  LEFT JOIN conversation_events e ON f.kind IN (1, 2, 3) AND e.id = f.key
  LEFT JOIN message_changes x ON f.kind IN (9, 10) AND x.conversation_id = f.conv
        AND x.change_seq = f.key
  -- The message sent, or the one an edit or deletion changed, as it is now.
  LEFT JOIN messages m ON m.conversation_id = f.conv
        AND m.seq = CASE WHEN f.kind = 4 THEN f.key ELSE x.seq END
  LEFT JOIN read_events r ON f.kind = 5 AND r.id = f.key
  LEFT JOIN presence_events pe ON f.kind = 6 AND pe.id = f.key
  LEFT JOIN reminder_events u ON f.kind = 7 AND u.id = f.key
  -- A reminder's preview: its first unread message as it is now (erased, pruned: empty).
  LEFT JOIN messages um ON um.conversation_id = u.conversation_id AND um.seq = u.first_seq
 ORDER BY f.pos, f.part, f.conv, f.key"
        )
    })
}

/// A window's snapshots as the row queries take them: its lower xmax and in-progress
/// ids, its upper xmax and the upper snapshot, as text; and when it was recorded.
#[derive(sqlx::FromRow)]
pub(super) struct WindowBounds {
    pub lo_xmax: String,
    pub lo_xip: Vec<String>,
    pub hi_xmax: String,
    pub upper: String,
    pub recorded_at: DateTime<Utc>,
}

/// The bounds of each window from `$1` to `$2`, in order.
const WINDOWS_SQL: &str = "\
SELECT id, pg_snapshot_xmax(lower)::text AS lo_xmax,
       ARRAY(SELECT pg_snapshot_xip(lower)::text) AS lo_xip,
       pg_snapshot_xmax(upper)::text AS hi_xmax, upper::text AS upper, recorded_at
  FROM feed_windows WHERE id BETWEEN $1 AND $2 ORDER BY id";

#[derive(sqlx::FromRow)]
struct Window {
    id: i64,
    #[sqlx(flatten)]
    bounds: WindowBounds,
}

/// The bounds of the span from window `$1`'s lower snapshot to window `$2`'s upper.
pub(super) const BOUNDS_SQL: &str = "\
SELECT pg_snapshot_xmax(lo.lower)::text AS lo_xmax,
       ARRAY(SELECT pg_snapshot_xip(lo.lower)::text) AS lo_xip,
       pg_snapshot_xmax(hi.upper)::text AS hi_xmax, hi.upper::text AS upper,
       hi.recorded_at
  FROM feed_windows lo, feed_windows hi WHERE lo.id = $1 AND hi.id = $2";

/// Most windows (and rows of the feed's own tables) deleted by one pruning statement, so
/// pruning never holds long locks.
const PRUNE_BATCH: i64 = 1000;
/// Most windows one page reads, so a narrow filter on a busy feed still answers soon;
/// the page then ends at the last window read.
const WINDOWS_PER_PAGE: i64 = 256;

impl Store {
    /// Closes a window over what became visible since the last one (any replica's), unless
    /// another replica is doing so right now; returns the newest window then known, and
    /// whether another replica held the turn (then its window is not known yet).
    pub async fn sequence_feed(&self) -> Result<(FeedPosition, bool)> {
        let ctx = "sequence the event feed";
        let mut tx = self.pool.begin().await.map_err(|e| Error::db(ctx, e))?;
        let state: Option<(String, i64)> = sqlx::query_as(
            "SELECT assigned::text, last_window FROM feed_state FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        let Some((assigned, last)) = state else {
            // Another replica is closing a window; its result is read on the next turn.
            drop(tx);
            return Ok((self.feed_head().await?, true));
        };
        // A new statement, so its snapshot is taken after the lock was granted: it sees
        // every run before this one.
        let closed: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sequence_sql()))
            .bind(assigned)
            .bind(last)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| Error::db(ctx, e))?;
        tx.commit().await.map_err(|e| Error::db(ctx, e))?;
        Ok((FeedPosition::end_of(closed.unwrap_or(last)), false))
    }

    /// The end of the newest window (no event has a later position yet).
    pub async fn feed_head(&self) -> Result<FeedPosition> {
        sqlx::query_scalar("SELECT last_window FROM feed_state")
            .fetch_one(&self.pool)
            .await
            .map(FeedPosition::end_of)
            .map_err(|e| Error::db("read the feed's head", e))
    }

    /// The position before the oldest event kept: a reader starting here loses nothing
    /// still held.
    pub async fn feed_oldest(&self) -> Result<FeedPosition> {
        sqlx::query_scalar("SELECT pruned_through FROM feed_state")
            .fetch_one(&self.pool)
            .await
            .map(FeedPosition::end_of)
            .map_err(|e| Error::db("read the feed's oldest position", e))
    }

    /// Whether reading after `after` can start: a cursor in a window not closed yet is
    /// forged (INVALID_ARGUMENT on `field`), one whose next events were pruned is
    /// CURSOR_EXPIRED. Returns the newest window. Reads the feed's state only.
    pub async fn check_feed_cursor(&self, field: &'static str, after: FeedPosition) -> Result<i64> {
        let (head, pruned): (i64, i64) =
            sqlx::query_as("SELECT last_window, pruned_through FROM feed_state")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| Error::db("read the event feed", e))?;
        if after.window > head {
            return Err(Error::invalid(field, "is not a cursor this feed gave"));
        }
        let first_needed = if after.is_end_of_window() {
            after.window + 1
        } else {
            after.window
        };
        if first_needed <= pruned {
            return Err(Error::CursorExpired {
                oldest: FeedPosition::end_of(pruned).cursor(),
            });
        }
        Ok(head)
    }

    /// Up to `limit` events after `after` that `filter` admits. A cursor in a window not
    /// closed yet is forged (INVALID_ARGUMENT on `field`); one whose next events were
    /// pruned is CURSOR_EXPIRED.
    pub async fn feed_page(
        &self,
        field: &'static str,
        after: FeedPosition,
        limit: i64,
        filter: &FeedFilter,
    ) -> Result<FeedPage> {
        let ctx = "read the event feed";
        let head = self.check_feed_cursor(field, after).await?;
        // The first window still needed: the cursor's own, unless it was read to its end.
        let (mut window, mut key) = if after.is_end_of_window() {
            (after.window + 1, EventKey::START)
        } else {
            (after.window, after.key)
        };
        let kinds: Vec<i16> = filter.kinds.iter().map(|k| *k as i16).collect();
        let mut events = Vec::new();
        let mut next = after;
        let last_to_read = head.min(window.saturating_add(WINDOWS_PER_PAGE - 1));
        // Every window's bounds in one read, not one per window.
        let windows: Vec<Window> = if window <= last_to_read {
            sqlx::query_as(WINDOWS_SQL)
                .bind(window)
                .bind(last_to_read)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| Error::db(ctx, e))?
        } else {
            Vec::new()
        };
        let mut windows = windows.into_iter();
        while window <= last_to_read {
            let wanted = limit - i64::try_from(events.len()).unwrap_or(i64::MAX);
            let Some(Window { bounds, .. }) = windows.next().filter(|w| w.id == window) else {
                // Pruned since the state was read.
                let pruned: i64 = sqlx::query_scalar("SELECT pruned_through FROM feed_state")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| Error::db(ctx, e))?;
                return Err(Error::CursorExpired {
                    oldest: FeedPosition::end_of(pruned).cursor(),
                });
            };
            let rows = sqlx::query(sqlx::AssertSqlSafe(window_sql()))
                .bind(key.pos)
                .bind(key.part)
                .bind(key.conversation)
                .bind(key.key)
                .bind(wanted)
                .bind(&kinds)
                .bind(&filter.provider_ids)
                .bind(&bounds.lo_xmax)
                .bind(&bounds.hi_xmax)
                .bind(&bounds.lo_xip)
                .bind(&bounds.upper)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| Error::db(ctx, e))?;
            let before = events.len();
            for row in &rows {
                if let Some(event) =
                    feed_event(window, bounds.recorded_at, row).map_err(|e| Error::db(ctx, e))?
                {
                    events.push(event);
                }
            }
            let got = i64::try_from(events.len() - before).unwrap_or(i64::MAX);
            if got >= wanted {
                if let Some(last) = events.last() {
                    next = last.position;
                }
                self.fill_conversations(&mut events).await?;
                return Ok(FeedPage {
                    events,
                    next,
                    full: true,
                });
            }
            next = FeedPosition::end_of(window);
            window += 1;
            key = EventKey::START;
        }
        self.fill_conversations(&mut events).await?;
        Ok(FeedPage {
            events,
            next,
            // Stopped at the page's window bound, not at the head: more may follow.
            full: last_to_read < head,
        })
    }

    /// Reads the conversations that created / customer-updated events carry.
    async fn fill_conversations(&self, events: &mut [FeedEvent]) -> Result<()> {
        let wanted = |e: &FeedEvent| {
            matches!(
                e.kind,
                FeedKind::ConversationCreated
                    | FeedKind::CustomerUpdated
                    | FeedKind::CustomerErased
            )
        };
        let ids: Vec<Uuid> = events
            .iter()
            .filter(|e| wanted(e))
            .filter_map(|e| e.conversation_id().map(|id| id.0))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let rows: std::collections::HashMap<ConversationId, ConversationRow> = self
            .get_conversations(&ids)
            .await?
            .into_iter()
            .map(|row| (row.id, row))
            .collect();
        for event in events.iter_mut().filter(|e| wanted(e)) {
            if let Some(row) = event.conversation_id().and_then(|id| rows.get(&id)) {
                event.payload = FeedPayload::Conversation(Box::new(row.clone()));
            }
        }
        Ok(())
    }

    /// Deletes up to one batch of the oldest windows recorded before `retention` ago, and
    /// of the feed's own event rows (reads, presence, reminders) as old; returns how many
    /// rows went. `pruned_through` moves in the same statement as the windows, so a
    /// reader sees either the window or the mark that it is gone.
    pub async fn prune_feed(&self, retention: std::time::Duration) -> Result<u64> {
        let ctx = "prune the event feed";
        let windows: Option<i64> = sqlx::query_scalar(
            "WITH gone AS (
                 DELETE FROM feed_windows WHERE id IN (
                     SELECT id FROM feed_windows
                      WHERE recorded_at < now() - $1::interval ORDER BY id LIMIT $2)
                 RETURNING id)
             UPDATE feed_state SET pruned_through = GREATEST(pruned_through, g.last)
               FROM (SELECT max(id) AS last, count(*) AS n FROM gone) g
              WHERE g.last IS NOT NULL
             RETURNING g.n",
        )
        .bind(retention)
        .bind(PRUNE_BATCH)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        let mut removed = windows.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        // Their windows are gone first (they are older still), so no reader misses them.
        for table in ["read_events", "presence_events", "reminder_events"] {
            let sql = format!(
                "DELETE FROM {table} WHERE id IN (
                     SELECT id FROM {table} WHERE created_at < now() - $1::interval
                      ORDER BY id LIMIT $2)"
            );
            removed += sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(retention)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await
                .map_err(|e| Error::db(ctx, e))?
                .rows_affected();
        }
        Ok(removed)
    }

    /// The position `consumer` acknowledged last.
    pub async fn consumer_position(&self, consumer: &ConsumerName) -> Result<FeedPosition> {
        let row: Option<(i64, i64, i16, Uuid, i64)> = sqlx::query_as(
            "SELECT window_id, pos, part, conversation_id, key FROM feed_consumers WHERE name = $1",
        )
        .bind(consumer.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::db("read a feed consumer", e))?;
        row.map(stored_position).ok_or(Error::ConsumerNotFound)
    }

    /// Moves `consumer`'s position to `position` unless it is further already (creating
    /// the consumer at its first acknowledgement); returns the position kept. A position
    /// in a window not closed yet is refused and nothing is written.
    pub async fn ack_feed(
        &self,
        consumer: &ConsumerName,
        position: FeedPosition,
    ) -> Result<FeedPosition> {
        let k = position.key;
        let kept: Option<(i64, i64, i16, Uuid, i64)> = sqlx::query_as(
            "WITH valid AS (
                 SELECT 1 FROM feed_state WHERE $2 <= last_window
             ), up AS (
                 INSERT INTO feed_consumers (name, window_id, pos, part, conversation_id, key)
                 SELECT $1, $2, $3, $4, $5, $6 FROM valid
                 ON CONFLICT (name) DO UPDATE
                    SET window_id = EXCLUDED.window_id, pos = EXCLUDED.pos,
                        part = EXCLUDED.part, conversation_id = EXCLUDED.conversation_id,
                        key = EXCLUDED.key, acked_at = now()
                  WHERE (feed_consumers.window_id, feed_consumers.pos, feed_consumers.part,
                         feed_consumers.conversation_id, feed_consumers.key)
                      < (EXCLUDED.window_id, EXCLUDED.pos, EXCLUDED.part,
                         EXCLUDED.conversation_id, EXCLUDED.key)
                 RETURNING window_id, pos, part, conversation_id, key)
             SELECT * FROM up
             UNION ALL
             SELECT c.window_id, c.pos, c.part, c.conversation_id, c.key
               FROM feed_consumers c, valid
              WHERE c.name = $1 AND NOT EXISTS (SELECT 1 FROM up)",
        )
        .bind(consumer.as_str())
        .bind(position.window)
        .bind(k.pos)
        .bind(k.part)
        .bind(k.conversation)
        .bind(k.key)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::db("acknowledge feed events", e))?;
        kept.map(stored_position)
            .ok_or_else(|| Error::invalid("cursor", "is not a cursor this feed gave"))
    }
}

fn stored_position(
    (window, pos, part, conversation, key): (i64, i64, i16, Uuid, i64),
) -> FeedPosition {
    FeedPosition {
        window,
        key: EventKey {
            pos,
            part,
            conversation,
            key,
        },
    }
}

impl FeedEvent {
    /// Its conversation (in its position); `None` for a presence change.
    pub fn conversation_id(&self) -> Option<ConversationId> {
        let id = self.position.key.conversation;
        (!id.is_nil()).then_some(ConversationId(id))
    }
}

/// The event a page row holds (`None` for the row of an empty page).
fn feed_event(
    window: i64,
    recorded_at: DateTime<Utc>,
    row: &sqlx::postgres::PgRow,
) -> Result<Option<FeedEvent>, sqlx::Error> {
    let Some(pos) = row.try_get::<Option<i64>, _>("pos")? else {
        return Ok(None);
    };
    let position = FeedPosition {
        window,
        key: EventKey {
            pos,
            part: row.try_get("part")?,
            conversation: row.try_get("conv")?,
            key: row.try_get("key")?,
        },
    };
    let kind: FeedKind = row.try_get("kind")?;
    let conversation: Uuid = row.try_get("conv")?;
    let conversation_id = (!conversation.is_nil()).then_some(ConversationId(conversation));
    let payload = match kind {
        // Filled from the conversation rows afterwards.
        FeedKind::ConversationCreated | FeedKind::CustomerUpdated | FeedKind::CustomerErased => {
            FeedPayload::Missing
        }
        FeedKind::StatusChanged => row
            .try_get::<Option<Status>, _>("status")?
            .map_or(FeedPayload::Missing, FeedPayload::Status),
        FeedKind::MessageSent => match message(row, conversation_id)? {
            Some(message) => FeedPayload::Message(message),
            None => FeedPayload::Missing,
        },
        FeedKind::MessageEdited | FeedKind::MessageDeleted => {
            match message(row, conversation_id)? {
                Some(message) => FeedPayload::Change {
                    message,
                    change_seq: position.key.key,
                },
                None => FeedPayload::Missing,
            }
        }
        FeedKind::ReadPositionMoved => match row.try_get::<Option<Role>, _>("r_role")? {
            Some(role) => FeedPayload::Read {
                role,
                reader_id: row.try_get("reader_id")?,
                seq: row.try_get("r_seq")?,
            },
            None => FeedPayload::Missing,
        },
        FeedKind::UnreadReminder => match row.try_get::<Option<Role>, _>("u_role")? {
            Some(role) => FeedPayload::Reminder {
                participant: Participant::stored(role, row.try_get("u_participant")?),
                unread: row.try_get("u_unread")?,
                first_unread_seq: row.try_get("u_first_seq")?,
                preview: row.try_get("u_preview")?,
            },
            None => FeedPayload::Missing,
        },
        FeedKind::PresenceChanged => match row.try_get::<Option<Role>, _>("pe_role")? {
            Some(role) => FeedPayload::Presence {
                participant: Participant::stored(role, row.try_get("pe_participant")?),
                online: row.try_get("pe_online")?,
            },
            None => FeedPayload::Missing,
        },
    };
    Ok(Some(FeedEvent {
        position,
        kind,
        provider_id: row.try_get("provider_id")?,
        recorded_at,
        payload,
    }))
}

/// The message a page row joined, if it is still there.
fn message(
    row: &sqlx::postgres::PgRow,
    conversation_id: Option<ConversationId>,
) -> Result<Option<MessageRow>, sqlx::Error> {
    let (Some(seq), Some(conversation_id)) =
        (row.try_get::<Option<i64>, _>("m_seq")?, conversation_id)
    else {
        return Ok(None);
    };
    Ok(Some(MessageRow {
        conversation_id,
        seq,
        id: row.try_get("m_id")?,
        sender_role: row.try_get("sender_role")?,
        sender_id: row.try_get("sender_id")?,
        body: row.try_get("body")?,
        client_message_id: row.try_get("client_message_id")?,
        created_at: row.try_get("m_created_at")?,
        edited_at: row.try_get("m_edited_at")?,
        edit_count: row.try_get("m_edit_count")?,
        deleted: row.try_get("m_deleted")?,
        attachments: row.try_get("m_attachments")?,
        last_change: row.try_get("m_last_change")?,
    }))
}
