//! Unread reminders: the scan that claims them. It reads the feed's message events in
//! position order once they are older than the delay; for each, the recipient (the other
//! side: the provider, or the linked customer) gets a reminder when the message is still
//! unread, the recipient has no open stream on any replica, and its current unread
//! streak (named by its read position) has had none. The claim (`reminders`' primary
//! key), the reminder (`reminder_events`, numbered into the feed) and the scan's
//! position commit together under `reminder_state`'s row lock, which one replica holds
//! at a time (the others skip their turn): no duplicates, and a scanner that dies rolls
//! back, so the next one sends what it would have.

use std::time::Duration;

use super::Store;
use crate::error::{Error, Result};

/// Message events read per scan.
const SCAN_BATCH: i64 = 500;

const SCAN_SQL: &str = "\
WITH due AS (
    SELECT f.position, f.conversation_id, f.key AS seq
      FROM feed_events f
     WHERE f.position > $1 AND f.kind = 4 AND f.recorded_at <= now() - $2::interval
     ORDER BY f.position LIMIT $3
), candidates AS (
    SELECT d.position, d.conversation_id, d.seq, x.*
      FROM due d, LATERAL (
          SELECT CASE WHEN m.sender_role = 1 THEN 2 ELSE 1 END::smallint AS role,
                 CASE WHEN m.sender_role = 1 THEN c.customer_id ELSE c.provider_id END
                     AS participant_id,
                 CASE WHEN m.sender_role = 1 THEN c.customer_read_seq ELSE c.provider_read_seq END
                     AS read_seq,
                 c.head_seq
            FROM messages m, conversations c
           WHERE m.conversation_id = d.conversation_id AND m.seq = d.seq
             AND c.id = d.conversation_id) x
), eligible AS (
    SELECT DISTINCT ON (conversation_id, role) *
      FROM candidates e
     WHERE e.participant_id IS NOT NULL AND e.read_seq < e.seq
       AND NOT EXISTS (SELECT 1 FROM presence p
                        WHERE p.role = e.role AND p.participant_id = e.participant_id
                          AND p.expires_at > now())
     ORDER BY conversation_id, role, position
), claimed AS (
    INSERT INTO reminders (conversation_id, role, read_seq)
    SELECT conversation_id, role, read_seq FROM eligible
    ON CONFLICT DO NOTHING
    RETURNING conversation_id, role, read_seq
), sent AS (
    INSERT INTO reminder_events (conversation_id, role, participant_id, unread, first_seq)
    SELECT e.conversation_id, e.role, e.participant_id, e.head_seq - e.read_seq, e.read_seq + 1
      FROM eligible e JOIN claimed USING (conversation_id, role, read_seq)
    RETURNING 1
)
SELECT (SELECT max(position) FROM due), (SELECT count(*) FROM sent)";

impl Store {
    /// One scan, unless another replica's is running; returns the reminders sent.
    pub async fn scan_reminders(&self, delay: Duration) -> Result<u64> {
        let ctx = "scan unread reminders";
        let mut tx = self.pool.begin().await.map_err(|e| Error::db(ctx, e))?;
        let Some(position): Option<i64> =
            sqlx::query_scalar("SELECT position FROM reminder_state FOR UPDATE SKIP LOCKED")
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| Error::db(ctx, e))?
        else {
            return Ok(0);
        };
        let (scanned, sent): (Option<i64>, i64) = sqlx::query_as(SCAN_SQL)
            .bind(position)
            .bind(delay)
            .bind(SCAN_BATCH)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| Error::db(ctx, e))?;
        if let Some(scanned) = scanned {
            sqlx::query("UPDATE reminder_state SET position = $1")
                .bind(scanned)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(ctx, e))?;
        }
        tx.commit().await.map_err(|e| Error::db(ctx, e))?;
        Ok(u64::try_from(sent).unwrap_or(0))
    }
}
