//! The event feed: every event of every conversation in one order, by gap-free position.
//!
//! Writers record what happened in their own tables (conversation_events, messages,
//! read_events), each row with its transaction id and commit-ordered `pos`. The
//! sequencer numbers what became visible since its last run into `feed_events`: it takes
//! `feed_state`'s row lock, then one statement reads every source row whose transaction
//! was not visible in the stored snapshot but is in the statement's (the inbox's window
//! rule: a transaction that took its id early and committed late still lands in exactly
//! one window), numbers them after the last position in `(pos, ...)` order, stores the
//! statement's snapshot and commits. Runs are serialised by the lock, so a position is
//! visible only once every smaller one is: reading "after N" never skips anything, on
//! any replica, and resuming gives the same events in the same order. The send path
//! writes nothing for the feed.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{ConversationRow, MessageRow, Store};
use crate::{
    domain::{
        ConsumerName, ConversationId, FeedFilter, FeedKind, FeedPosition, Participant, Role, Status,
    },
    error::{Error, Result},
};

/// One event of the feed, with what it carries.
#[derive(Debug, Clone)]
pub struct FeedEvent {
    pub position: FeedPosition,
    pub kind: FeedKind,
    /// `None` for a presence change.
    pub conversation_id: Option<ConversationId>,
    /// The conversation's provider; for a presence change, the provider it is about.
    pub provider_id: Option<String>,
    pub recorded_at: DateTime<Utc>,
    pub payload: FeedPayload,
}

#[derive(Debug, Clone)]
pub enum FeedPayload {
    /// Created, customer updated: the conversation as it is when read.
    Conversation(Box<ConversationRow>),
    Status(Status),
    Message(MessageRow),
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
    /// The row the event names is gone (nothing deletes them today).
    Missing,
}

/// A page of the feed.
pub struct FeedPage {
    pub events: Vec<FeedEvent>,
    /// Resume after this: the last event returned, or (when the page is not full) the
    /// newest position the read covered, so a filtered reader moves past what it skips.
    pub next: FeedPosition,
    /// Whether more events may follow right away.
    pub full: bool,
}

/// Every source row made visible after the snapshot `$1` (not visible in it: its
/// transaction started at or after its xmax, or was in progress then) and visible to
/// this statement, numbered after the last position, and the state advanced to this
/// statement's snapshot. Rows are numbered in `(pos, part, conversation, key)` order:
/// per conversation, commit order.
const SEQUENCE_SQL: &str = "\
WITH prior AS (
    SELECT pg_snapshot_xmax($1::text::pg_snapshot) AS xmax,
           ARRAY(SELECT pg_snapshot_xip($1::text::pg_snapshot)) AS xip
), fresh AS (
    SELECT e.pos, 0 AS part, e.conversation_id, e.id AS key, e.kind
      FROM conversation_events e, prior p WHERE e.xid >= p.xmax OR e.xid = ANY(p.xip)
    UNION ALL
    SELECT m.pos, 1, m.conversation_id, m.seq, 4::smallint
      FROM messages m, prior p WHERE m.xid >= p.xmax OR m.xid = ANY(p.xip)
    UNION ALL
    SELECT r.pos, 2, r.conversation_id, r.id, 5::smallint
      FROM read_events r, prior p WHERE r.xid >= p.xmax OR r.xid = ANY(p.xip)
    UNION ALL
    SELECT s.pos, 3, NULL::uuid, s.id, 6::smallint
      FROM presence_events s, prior p WHERE s.xid >= p.xmax OR s.xid = ANY(p.xip)
    UNION ALL
    SELECT u.pos, 4, u.conversation_id, u.id, 7::smallint
      FROM reminder_events u, prior p WHERE u.xid >= p.xmax OR u.xid = ANY(p.xip)
), numbered AS (
    INSERT INTO feed_events (position, kind, conversation_id, provider_id, key)
    SELECT $2 + row_number() OVER (ORDER BY f.pos, f.part, f.conversation_id, f.key),
           f.kind, f.conversation_id,
           CASE WHEN f.conversation_id IS NULL
                THEN (SELECT s.participant_id FROM presence_events s WHERE s.id = f.key AND s.role = 1)
                -- One primary-key lookup per event: a join may scan every conversation.
                ELSE (SELECT c.provider_id FROM conversations c WHERE c.id = f.conversation_id)
           END,
           f.key
      FROM fresh f
    RETURNING position
)
UPDATE feed_state SET assigned = pg_current_snapshot(), last_position = n.last
  FROM (SELECT max(position) AS last FROM numbered) n
 WHERE n.last IS NOT NULL
RETURNING last_position";

/// A page after `$1`, with the feed's state read in the same snapshot (so an expired or
/// forged cursor is judged against exactly what the page saw).
const PAGE_SQL: &str = "\
SELECT s.last_position, s.pruned_through,
       f.position, f.kind, f.conversation_id, f.provider_id, f.recorded_at,
       e.status,
       m.seq AS m_seq, m.id AS m_id, m.sender_role, m.sender_id, m.body,
       m.client_message_id, m.created_at AS m_created_at,
       r.role AS r_role, r.reader_id, r.seq AS r_seq,
       pe.role AS pe_role, pe.participant_id AS pe_participant, pe.online AS pe_online,
       u.role AS u_role, u.participant_id AS u_participant, u.unread AS u_unread,
       u.first_seq AS u_first_seq,
       COALESCE(left(um.body, 200), '') AS u_preview
  FROM feed_state s
  LEFT JOIN LATERAL (
      SELECT * FROM feed_events f
       WHERE f.position > $1 AND f.position <= s.last_position
         AND (cardinality($3::smallint[]) = 0 OR f.kind = ANY($3::smallint[]))
         AND (cardinality($4::text[]) = 0 OR f.provider_id = ANY($4::text[]))
       ORDER BY f.position LIMIT $2
  ) f ON true
  LEFT JOIN conversation_events e ON f.kind IN (1, 2, 3) AND e.id = f.key
  LEFT JOIN messages m ON f.kind = 4 AND m.conversation_id = f.conversation_id AND m.seq = f.key
  LEFT JOIN read_events r ON f.kind = 5 AND r.id = f.key
  LEFT JOIN presence_events pe ON f.kind = 6 AND pe.id = f.key
  LEFT JOIN reminder_events u ON f.kind = 7 AND u.id = f.key
  -- A reminder's preview: its first unread message as it is now (erased, pruned: empty).
  LEFT JOIN messages um ON um.conversation_id = u.conversation_id AND um.seq = u.first_seq
 ORDER BY f.position";

/// Most events deleted by one pruning statement, so pruning never holds long locks.
const PRUNE_BATCH: i64 = 1000;

impl Store {
    /// Numbers what became visible since the last run (any replica's); returns the
    /// newest position. Runs of all replicas queue on one row lock, so when this returns
    /// every event committed before it was called has a position.
    pub async fn sequence_feed(&self) -> Result<FeedPosition> {
        let ctx = "sequence the event feed";
        let mut tx = self.pool.begin().await.map_err(|e| Error::db(ctx, e))?;
        let (assigned, last): (String, i64) =
            sqlx::query_as("SELECT assigned::text, last_position FROM feed_state FOR UPDATE")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| Error::db(ctx, e))?;
        // A new statement, so its snapshot is taken after the lock was granted: it sees
        // every run before this one.
        let numbered: Option<i64> = sqlx::query_scalar(SEQUENCE_SQL)
            .bind(assigned)
            .bind(last)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| Error::db(ctx, e))?;
        tx.commit().await.map_err(|e| Error::db(ctx, e))?;
        Ok(FeedPosition(numbered.unwrap_or(last)))
    }

    /// The newest position given (no event has a larger one yet).
    pub async fn feed_head(&self) -> Result<FeedPosition> {
        sqlx::query_scalar("SELECT last_position FROM feed_state")
            .fetch_one(&self.pool)
            .await
            .map(FeedPosition)
            .map_err(|e| Error::db("read the feed's head", e))
    }

    /// The position before the oldest event kept: a reader starting here loses nothing
    /// still held.
    pub async fn feed_oldest(&self) -> Result<FeedPosition> {
        sqlx::query_scalar("SELECT pruned_through FROM feed_state")
            .fetch_one(&self.pool)
            .await
            .map(FeedPosition)
            .map_err(|e| Error::db("read the feed's oldest position", e))
    }

    /// Up to `limit` events after `after` that `filter` admits. A cursor beyond the
    /// newest position is forged (INVALID_ARGUMENT on `field`); one whose next events
    /// were pruned is CURSOR_EXPIRED.
    pub async fn feed_page(
        &self,
        field: &'static str,
        after: FeedPosition,
        limit: i64,
        filter: &FeedFilter,
    ) -> Result<FeedPage> {
        let ctx = "read the event feed";
        let kinds: Vec<i16> = filter.kinds.iter().map(|k| *k as i16).collect();
        let rows = sqlx::query(PAGE_SQL)
            .bind(after.0)
            .bind(limit)
            .bind(kinds)
            .bind(&filter.provider_ids)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db(ctx, e))?;
        let Some(first) = rows.first() else {
            return Err(Error::Internal {
                context: ctx,
                source: "feed_state has no row".into(),
            });
        };
        let head: i64 = first
            .try_get("last_position")
            .map_err(|e| Error::db(ctx, e))?;
        let pruned: i64 = first
            .try_get("pruned_through")
            .map_err(|e| Error::db(ctx, e))?;
        if after.0 > head {
            return Err(Error::invalid(field, "is not a cursor this feed gave"));
        }
        if after.0 < pruned {
            return Err(Error::CursorExpired {
                oldest: FeedPosition(pruned).cursor(),
            });
        }
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(event) = feed_event(row).map_err(|e| Error::db(ctx, e))? {
                events.push(event);
            }
        }
        self.fill_conversations(&mut events).await?;
        let full = i64::try_from(events.len()).unwrap_or(i64::MAX) >= limit;
        let next = match events.last() {
            Some(last) if full => last.position,
            _ => FeedPosition(head.max(after.0)),
        };
        Ok(FeedPage { events, next, full })
    }

    /// Reads the conversations that created / customer-updated events carry.
    async fn fill_conversations(&self, events: &mut [FeedEvent]) -> Result<()> {
        let wanted = |e: &FeedEvent| {
            matches!(
                e.kind,
                FeedKind::ConversationCreated | FeedKind::CustomerUpdated
            )
        };
        let ids: Vec<Uuid> = events
            .iter()
            .filter(|e| wanted(e))
            .filter_map(|e| e.conversation_id.map(|id| id.0))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let rows = self.get_conversations(&ids).await?;
        for event in events.iter_mut().filter(|e| wanted(e)) {
            if let Some(row) = rows.iter().find(|r| Some(r.id) == event.conversation_id) {
                event.payload = FeedPayload::Conversation(Box::new(row.clone()));
            }
        }
        Ok(())
    }

    /// Deletes up to one batch of the oldest events recorded before `retention` ago;
    /// returns how many. `pruned_through` moves in the same statement, so a reader sees
    /// either the events or the mark that they are gone.
    pub async fn prune_feed(&self, retention: std::time::Duration) -> Result<u64> {
        let ctx = "prune the event feed";
        let pruned: Option<i64> = sqlx::query_scalar(
            "WITH gone AS (
                 DELETE FROM feed_events WHERE position <= (
                     SELECT max(position) FROM (
                         SELECT position, recorded_at FROM feed_events
                          ORDER BY position LIMIT $2) oldest
                      WHERE recorded_at < now() - $1::interval)
                 RETURNING position)
             UPDATE feed_state SET pruned_through = g.last
               FROM (SELECT max(position) AS last, count(*) AS n FROM gone) g
              WHERE g.last IS NOT NULL
             RETURNING g.n",
        )
        .bind(retention)
        .bind(PRUNE_BATCH)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        Ok(pruned.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
    }

    /// The position `consumer` acknowledged last.
    pub async fn consumer_position(&self, consumer: &ConsumerName) -> Result<FeedPosition> {
        sqlx::query_scalar("SELECT position FROM feed_consumers WHERE name = $1")
            .bind(consumer.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::db("read a feed consumer", e))?
            .map(FeedPosition)
            .ok_or(Error::ConsumerNotFound)
    }

    /// Moves `consumer`'s position to `position` unless it is further already (creating
    /// the consumer at its first acknowledgement); returns the position kept. A position
    /// beyond the newest is refused and nothing is written.
    pub async fn ack_feed(
        &self,
        consumer: &ConsumerName,
        position: FeedPosition,
    ) -> Result<FeedPosition> {
        let kept: Option<i64> = sqlx::query_scalar(
            "INSERT INTO feed_consumers (name, position)
             SELECT $1, $2 FROM feed_state WHERE $2 <= last_position
             ON CONFLICT (name) DO UPDATE
                SET position = GREATEST(feed_consumers.position, EXCLUDED.position),
                    acked_at = now()
             RETURNING position",
        )
        .bind(consumer.as_str())
        .bind(position.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::db("acknowledge feed events", e))?;
        kept.map(FeedPosition)
            .ok_or_else(|| Error::invalid("cursor", "is not a cursor this feed gave"))
    }
}

/// The event a page row holds (`None` for the row of an empty page).
fn feed_event(row: &sqlx::postgres::PgRow) -> Result<Option<FeedEvent>, sqlx::Error> {
    let Some(position) = row.try_get::<Option<i64>, _>("position")? else {
        return Ok(None);
    };
    let kind: FeedKind = row.try_get("kind")?;
    let conversation_id: Option<ConversationId> = row.try_get("conversation_id")?;
    let payload = match kind {
        // Filled from the conversation rows afterwards.
        FeedKind::ConversationCreated | FeedKind::CustomerUpdated => FeedPayload::Missing,
        FeedKind::StatusChanged => row
            .try_get::<Option<Status>, _>("status")?
            .map_or(FeedPayload::Missing, FeedPayload::Status),
        FeedKind::MessageSent => match (row.try_get::<Option<i64>, _>("m_seq")?, conversation_id) {
            (Some(seq), Some(conversation_id)) => FeedPayload::Message(MessageRow {
                conversation_id,
                seq,
                id: row.try_get("m_id")?,
                sender_role: row.try_get("sender_role")?,
                sender_id: row.try_get("sender_id")?,
                body: row.try_get("body")?,
                client_message_id: row.try_get("client_message_id")?,
                created_at: row.try_get("m_created_at")?,
            }),
            _ => FeedPayload::Missing,
        },
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
        position: FeedPosition(position),
        kind,
        conversation_id,
        provider_id: row.try_get("provider_id")?,
        recorded_at: row.try_get("recorded_at")?,
        payload,
    }))
}
