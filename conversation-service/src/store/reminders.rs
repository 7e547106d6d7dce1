//! Unread reminders: the scan that claims them. It reads the feed's windows in order once
//! they are older than the delay, as one span (consecutive windows make one window: rows
//! visible in the last one's upper snapshot and not in the first one's lower). For each
//! conversation and side that sent messages in the span, the recipient (the other side:
//! the provider, or the linked customer) gets a reminder when one of those messages is
//! still unread, the recipient has no open stream on any replica, and its current unread
//! streak (named by its read position) has had none. The claim (`reminders`' primary
//! key), the reminder (`reminder_events`, in the feed) and the scan's window commit
//! together under `reminder_state`'s row lock, which one replica holds at a time (the
//! others skip their turn): no duplicates, and a scanner that dies rolls back, so the
//! next one sends what it would have. Work per scan grows with the conversations that
//! had messages, not with the messages.

use std::time::Duration;

use super::{
    Store,
    events::{BOUNDS_SQL, WindowBounds, window_rows_sql},
};
use crate::error::{Error, Result};

/// Windows read per scan.
const SCAN_WINDOWS: i64 = 2000;

/// The windows due: the next ones after `$1` recorded at least `$2` ago, at most `$3`.
const SPAN_SQL: &str = "\
SELECT min(id), max(id) FROM (
    SELECT id FROM feed_windows
     WHERE id > $1 AND recorded_at <= now() - $2::interval
     ORDER BY id LIMIT $3) due";

/// Claims and sends the reminders of a span whose bounds are `$1`-`$4` (see
/// [`window_rows_sql`]); returns how many were sent.
fn scan_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "WITH span AS (
    {rows}
), sent AS (
    SELECT m.conversation_id, m.sender_role, max(m.seq) AS seq
      FROM span s JOIN messages m ON m.conversation_id = s.conv AND m.seq = s.key
     WHERE s.kind = 4
     GROUP BY m.conversation_id, m.sender_role
), candidates AS (
    SELECT s.conversation_id, s.seq,
           CASE WHEN s.sender_role = 1 THEN 2 ELSE 1 END::smallint AS role,
           CASE WHEN s.sender_role = 1 THEN c.customer_id ELSE c.provider_id END
               AS participant_id,
           CASE WHEN s.sender_role = 1 THEN c.customer_read_seq ELSE c.provider_read_seq END
               AS read_seq,
           c.head_seq
      FROM sent s JOIN conversations c ON c.id = s.conversation_id
), eligible AS (
    SELECT * FROM candidates e
     WHERE e.participant_id IS NOT NULL AND e.read_seq < e.seq
       AND NOT EXISTS (SELECT 1 FROM presence p
                        WHERE p.role = e.role AND p.participant_id = e.participant_id
                          AND p.expires_at > now())
), claimed AS (
    INSERT INTO reminders (conversation_id, role, read_seq)
    SELECT conversation_id, role, read_seq FROM eligible
    ON CONFLICT DO NOTHING
    RETURNING conversation_id, role, read_seq
), reminded AS (
    INSERT INTO reminder_events (conversation_id, role, participant_id, unread, first_seq)
    SELECT e.conversation_id, e.role, e.participant_id, e.head_seq - e.read_seq, e.read_seq + 1
      FROM eligible e JOIN claimed USING (conversation_id, role, read_seq)
     ORDER BY e.conversation_id, e.role
    RETURNING 1
)
SELECT count(*) FROM reminded",
            rows = window_rows_sql("$1", "$2", "$3", "$4"),
        )
    })
}

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
        let (first, last): (Option<i64>, Option<i64>) = sqlx::query_as(SPAN_SQL)
            .bind(position)
            .bind(delay)
            .bind(SCAN_WINDOWS)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| Error::db(ctx, e))?;
        let (Some(first), Some(scanned)) = (first, last) else {
            return Ok(0);
        };
        let bounds: Option<WindowBounds> = sqlx::query_as(BOUNDS_SQL)
            .bind(first)
            .bind(scanned)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| Error::db(ctx, e))?;
        let mut sent: i64 = 0;
        if let Some(bounds) = bounds {
            sent = sqlx::query_scalar(sqlx::AssertSqlSafe(scan_sql()))
                .bind(&bounds.lo_xmax)
                .bind(&bounds.hi_xmax)
                .bind(&bounds.lo_xip)
                .bind(&bounds.upper)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| Error::db(ctx, e))?;
        }
        {
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
