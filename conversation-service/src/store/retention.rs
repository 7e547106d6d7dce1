//! Retention: the messages of conversations closed for longer than the configured time
//! are deleted, a bounded batch per transaction. Conversations another transaction holds
//! are skipped (`SKIP LOCKED`), so replicas sweeping at once never wait on each other,
//! and a sweep never holds a row lock a send waits for for more than one batch.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Store;
use crate::{
    domain::Status,
    error::{Error, Result},
};

impl Store {
    /// Deletes up to `batch` of the oldest messages of one conversation closed before
    /// `cutoff`, and raises its `kept_from_seq` past them; returns how many went (0: none
    /// is due).
    pub async fn sweep_closed_messages(&self, cutoff: DateTime<Utc>, batch: i64) -> Result<u64> {
        let ctx = "sweep closed conversations";
        let mut tx = self.pool.begin().await.map_err(|e| Error::db(ctx, e))?;
        let due: Option<(Uuid, i64)> = sqlx::query_as(
            "SELECT id, head_seq FROM conversations \
             WHERE status = $1 AND closed_at < $2 AND kept_from_seq < head_seq \
             ORDER BY closed_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(Status::Closed)
        .bind(cutoff)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        let Some((id, head_seq)) = due else {
            return Ok(0);
        };
        // Oldest first, so every message up to the highest one deleted is gone.
        let deleted: Vec<(i64,)> = sqlx::query_as(
            "DELETE FROM messages WHERE conversation_id = $1 AND seq IN ( \
                 SELECT seq FROM messages WHERE conversation_id = $1 AND seq <= $2 \
                 ORDER BY seq LIMIT $3) \
             RETURNING seq",
        )
        .bind(id)
        .bind(head_seq)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        let floor = deleted.iter().map(|(seq,)| *seq).max().unwrap_or(head_seq);
        let floor = if deleted.len() < usize::try_from(batch).unwrap_or(usize::MAX) {
            head_seq
        } else {
            floor
        };
        // Their changes go with them: a change names a message that no longer exists.
        sqlx::query("DELETE FROM message_changes WHERE conversation_id = $1 AND seq <= $2")
            .bind(id)
            .bind(floor)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(ctx, e))?;
        sqlx::query("UPDATE conversations SET kept_from_seq = $2 WHERE id = $1")
            .bind(id)
            .bind(floor)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(ctx, e))?;
        tx.commit().await.map_err(|e| Error::db(ctx, e))?;
        Ok(u64::try_from(deleted.len()).unwrap_or(u64::MAX))
    }
}
