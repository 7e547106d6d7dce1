//! Reading messages, read positions and typing. Writing messages is the batcher's job.

use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::{
    handle::Store,
    notice::{CHANNEL, Notice, notify},
    records::{ConversationRow, MESSAGE_COLUMNS, MessageRow, expired_after},
    unread::{UnreadSummary, add_unread},
};
use crate::{
    domain::{ConversationId, Participant, Role},
    error::{Error, Result},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListDirection {
    /// Oldest first: `seq > cursor`.
    Forward,
    /// Newest first: `seq < cursor` (`None`: from the head).
    Backward,
}

impl Store {
    /// [`Store::list_messages`] for a caller: forward from below what retention kept
    /// would skip messages, so it is refused (MESSAGES_EXPIRED, with the oldest seq held
    /// and `field`, the one the cursor came from), also when retention ran after
    /// `conversation` was read. Backward simply ends where the kept messages do.
    pub async fn list_kept_messages(
        &self,
        conversation: &ConversationRow,
        direction: ListDirection,
        field: &'static str,
        cursor: i64,
        limit: i64,
    ) -> Result<Vec<MessageRow>> {
        let forward = direction == ListDirection::Forward;
        if forward {
            conversation.check_kept(field, cursor)?;
        }
        let rows = self
            .list_messages(conversation.id, direction, cursor, limit)
            .await?;
        let first = rows.first().map(|m| m.seq);
        match expired_after(cursor, conversation.head_seq, first) {
            Some(oldest_seq) if forward => Err(Error::MessagesExpired { field, oldest_seq }),
            _ => Ok(rows),
        }
    }

    /// Up to `limit` messages of a conversation, from `cursor` in `direction`.
    pub async fn list_messages(
        &self,
        id: ConversationId,
        direction: ListDirection,
        cursor: i64,
        limit: i64,
    ) -> Result<Vec<MessageRow>> {
        let sql = match direction {
            ListDirection::Forward => format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3"
            ),
            ListDirection::Backward => format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 \
                 AND ($2 = 0 OR seq < $2) ORDER BY seq DESC LIMIT $3"
            ),
        };
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(id.0)
            .bind(cursor)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("list messages", e))
    }

    /// Messages with `after < seq <= up_to`, oldest first, at most `limit`.
    pub async fn messages_between(
        &self,
        id: Uuid,
        after: i64,
        up_to: i64,
        limit: i64,
    ) -> Result<Vec<MessageRow>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND seq > $2 \
             AND seq <= $3 ORDER BY seq LIMIT $4"
        );
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(id)
            .bind(after)
            .bind(up_to)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("read messages", e))
    }

    /// Messages by `(conversation_id, seq)`, in no particular order.
    pub async fn messages_by_key(&self, keys: &[(Uuid, i64)]) -> Result<Vec<MessageRow>> {
        let (ids, seqs): (Vec<Uuid>, Vec<i64>) = keys.iter().copied().unzip();
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE (conversation_id, seq) IN (SELECT * FROM unnest($1::uuid[], $2::bigint[]))"
        );
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(ids)
            .bind(seqs)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("read messages by key", e))
    }

    /// Advances `reader`'s read position to `seq` (never back). Returns the position and
    /// the unread count afterwards.
    pub async fn mark_read(
        &self,
        id: ConversationId,
        reader: &Participant,
        seq: i64,
    ) -> Result<(i64, i64)> {
        let ctx = "mark read";
        let mut tx = self.pool.begin().await.map_err(|e| Error::db(ctx, e))?;
        let (provider_id, customer_id, head_seq, read_seq): (String, Option<String>, i64, i64) =
            sqlx::query_as(
                "SELECT provider_id, customer_id, head_seq, \
                 CASE WHEN $2 THEN provider_read_seq ELSE customer_read_seq END \
                 FROM conversations WHERE id = $1 FOR UPDATE",
            )
            .bind(id.0)
            .bind(reader.role() == Role::Provider)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| Error::db(ctx, e))?
            .ok_or(Error::ConversationNotFound)?;
        if !reader.belongs_to(&provider_id, customer_id.as_deref()) {
            return Err(Error::NotParticipant);
        }
        if seq > head_seq {
            return Err(Error::invalid(
                "seq",
                format!("is beyond the newest message ({head_seq})"),
            ));
        }
        if seq <= read_seq {
            tx.rollback().await.map_err(|e| Error::db(ctx, e))?;
            return Ok((read_seq, head_seq - read_seq));
        }
        let column = match reader.role() {
            Role::Provider => "provider_read_seq",
            Role::Customer => "customer_read_seq",
        };
        // The move is recorded for the event feed in the same statement.
        sqlx::query(AssertSqlSafe(format!(
            "WITH moved AS (UPDATE conversations SET {column} = $2 WHERE id = $1 RETURNING id) \
             INSERT INTO read_events (conversation_id, role, reader_id, seq) \
             SELECT id, $3, $4, $2 FROM moved"
        )))
        .bind(id.0)
        .bind(seq)
        .bind(reader.role())
        .bind(reader.id())
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        let change = UnreadSummary::change((head_seq, read_seq), (head_seq, seq));
        let owner = match reader.role() {
            Role::Provider => provider_id.as_str(),
            Role::Customer => customer_id.as_deref().unwrap_or_default(),
        };
        add_unread(&mut tx, reader.role(), owner, change).await?;
        notify(
            &mut tx,
            &Notice::Read {
                conversation_id: id.0,
                role: reader.role(),
                reader_id: reader.id().to_owned(),
                seq,
            },
        )
        .await?;
        tx.commit().await.map_err(|e| Error::db(ctx, e))?;
        Ok((seq, head_seq - seq))
    }

    /// Tells every replica that `sender` is typing. Nothing is stored.
    pub async fn typing(&self, id: ConversationId, sender: &Participant) -> Result<()> {
        let notice = Notice::Typing {
            conversation_id: id.0,
            role: sender.role(),
            sender_id: sender.id().to_owned(),
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(notice.encode())
            .execute(&self.pool)
            .await
            .map_err(|e| Error::db("typing", e))?;
        Ok(())
    }
}
