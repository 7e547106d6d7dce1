//! Edits and deletions of stored messages. Each is one transaction under the
//! conversation's row lock: check who asks and what the message allows, bump the
//! conversation's `change_seq`, rewrite the message (a deletion empties its body and
//! attachments: a tombstone keeps its seq), record the change row and NOTIFY. Changes
//! are rare next to sends, so they are not batched like SendMessage: one NOTIFY each.

use chrono::{SubsecRound, Utc};
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use uuid::Uuid;

use super::{
    handle::Store,
    notice::{Notice, notify},
    records::{MESSAGE_COLUMNS, MessageRow},
};
use crate::{
    domain::{EditWindow, MessageChange, Role, Status, check_session},
    error::{Error, Result},
};

/// What a `message_changes` row records; an unknown kind is refused when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[repr(i16)]
pub enum ChangeKind {
    Edited = 1,
    Deleted = 2,
}

/// One change as a stream delivers it: its position and the message as it is now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChangeRow {
    pub change_seq: i64,
    pub kind: ChangeKind,
    #[sqlx(flatten)]
    pub message: MessageRow,
}

#[derive(sqlx::FromRow)]
struct Locked {
    provider_id: String,
    customer_id: Option<String>,
    session_id: Option<Uuid>,
    status: Status,
}

impl Store {
    /// Applies an edit (`change.body` set) or a deletion, or answers its retry. Returns
    /// the message as it is afterwards.
    pub async fn change_message(
        &self,
        change: &MessageChange,
        window: EditWindow,
    ) -> Result<MessageRow> {
        let ctx = "change a message";
        let db = |e| Error::db(ctx, e);
        let id = change.conversation_id.0;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let conversation: Locked = sqlx::query_as(
            "SELECT provider_id, customer_id, session_id, status FROM conversations \
             WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .ok_or(Error::ConversationNotFound)?;
        if !change.actor.belongs_to(
            &conversation.provider_id,
            conversation.customer_id.as_deref(),
        ) {
            return Err(Error::NotParticipant);
        }
        check_session(&change.actor, change.session, conversation.session_id)?;
        let fingerprint = fingerprint(change);
        if let Some(request_id) = change.request_id {
            let earlier: Option<(Option<Vec<u8>>, i64)> = sqlx::query_as(
                "SELECT fingerprint, seq FROM message_changes \
                 WHERE conversation_id = $1 AND request_id = $2",
            )
            .bind(id)
            .bind(request_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            if let Some((stored, seq)) = earlier {
                // A deletion clears the fingerprints of the message's earlier changes
                // (they hash its text): those retries are answered as the same request.
                if stored.is_some_and(|stored| stored != fingerprint) {
                    return Err(Error::RequestIdReused);
                }
                return message_at(&mut tx, id, seq).await;
            }
        }
        // No index on `id` (it would cost every send): the conversation's messages are
        // read newest first until this one, which is near the top for what is edited
        // (the edit window) or taken back; a provider deleting an old message reads
        // back to it.
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND id = $2 \
             ORDER BY seq DESC LIMIT 1 FOR UPDATE"
        );
        let message: MessageRow = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id)
            .bind(change.message_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(Error::MessageNotFound)?;
        let own = message.sender_role == change.actor.role();
        let now = Utc::now().trunc_subsecs(6);
        let kind = match &change.body {
            Some(_) => {
                if !own {
                    return Err(Error::NotMessageSender);
                }
                if message.deleted {
                    return Err(Error::MessageDeleted);
                }
                if conversation.status == Status::Closed {
                    return Err(Error::ConversationClosed);
                }
                if !window.admits(message.created_at, now) {
                    return Err(Error::EditWindowPassed);
                }
                ChangeKind::Edited
            }
            None => {
                // The provider moderates its own conversations.
                if !own && change.actor.role() != Role::Provider {
                    return Err(Error::NotMessageSender);
                }
                if message.deleted {
                    return Err(Error::MessageDeleted);
                }
                ChangeKind::Deleted
            }
        };
        let (change_seq,): (i64,) = sqlx::query_as(
            "UPDATE conversations SET change_seq = change_seq + 1 WHERE id = $1 \
             RETURNING change_seq",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        let sql = match kind {
            ChangeKind::Edited => format!(
                "UPDATE messages SET body = $5, edited_at = $3, edit_count = edit_count + 1, \
                 last_change = $4 WHERE conversation_id = $1 AND seq = $2 \
                 RETURNING {MESSAGE_COLUMNS}"
            ),
            // The text and the references really go: a tombstone keeps seq, sender and
            // times. The fingerprints of the message's earlier edits hash its text.
            ChangeKind::Deleted => format!(
                "WITH forget AS (UPDATE message_changes SET fingerprint = NULL \
                   WHERE conversation_id = $1 AND seq = $2 AND fingerprint IS NOT NULL) \
                 UPDATE messages SET body = '', attachments = NULL, deleted_at = $3, \
                   last_change = $4 \
                 WHERE conversation_id = $1 AND seq = $2 \
                 RETURNING {MESSAGE_COLUMNS}"
            ),
        };
        let mut query = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id)
            .bind(message.seq)
            .bind(now)
            .bind(change_seq);
        if let Some(body) = &change.body {
            query = query.bind(body);
        }
        let changed: MessageRow = query.fetch_one(&mut *tx).await.map_err(db)?;
        sqlx::query(
            "INSERT INTO message_changes (conversation_id, change_seq, seq, kind, request_id, \
             fingerprint, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(change_seq)
        .bind(message.seq)
        .bind(kind)
        .bind(change.request_id)
        .bind(fingerprint)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        notify(
            &mut tx,
            &Notice::Changed {
                conversation_id: id,
                change_seq,
                deleted: kind == ChangeKind::Deleted,
                provider_id: conversation.provider_id,
                customer_id: conversation.customer_id,
            },
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(changed)
    }

    /// Changes with `after < change_seq <= up_to` to messages with `seq <= max_seq`, in
    /// change order, each with its message as it is now; at most `limit`. A message
    /// retention has deleted has no change to show.
    pub async fn changes_between(
        &self,
        id: Uuid,
        (after, up_to): (i64, i64),
        max_seq: i64,
        limit: i64,
    ) -> Result<Vec<ChangeRow>> {
        let sql = format!(
            "SELECT x.change_seq, x.kind, m.* FROM message_changes x \
             JOIN LATERAL (SELECT {MESSAGE_COLUMNS} FROM messages \
               WHERE conversation_id = x.conversation_id AND seq = x.seq) m ON true \
             WHERE x.conversation_id = $1 AND x.change_seq > $2 AND x.change_seq <= $3 \
               AND x.seq <= $4 \
             ORDER BY x.change_seq LIMIT $5"
        );
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(id)
            .bind(after)
            .bind(up_to)
            .bind(max_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("read message changes", e))
    }
}

impl Store {
    /// Changes by `(conversation_id, change_seq)`, in no particular order, each with its
    /// message as it is now (none for a message retention deleted).
    pub async fn changes_by_key(&self, keys: &[(Uuid, i64)]) -> Result<Vec<ChangeRow>> {
        let (ids, changes): (Vec<Uuid>, Vec<i64>) = keys.iter().copied().unzip();
        let sql = format!(
            "SELECT x.change_seq, x.kind, m.* FROM message_changes x \
             JOIN LATERAL (SELECT {MESSAGE_COLUMNS} FROM messages \
               WHERE conversation_id = x.conversation_id AND seq = x.seq) m ON true \
             WHERE (x.conversation_id, x.change_seq) IN \
               (SELECT * FROM unnest($1::uuid[], $2::bigint[]))"
        );
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(ids)
            .bind(changes)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("read message changes by key", e))
    }
}

/// The message at `seq` as it is now (a retry's answer).
async fn message_at(tx: &mut Transaction<'_, Postgres>, id: Uuid, seq: i64) -> Result<MessageRow> {
    let sql =
        format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 AND seq = $2");
    sqlx::query_as(AssertSqlSafe(sql))
        .bind(id)
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| Error::db("read a changed message", e))?
        .ok_or(Error::MessageNotFound)
}

/// What makes two requests under one request_id the same: who, kind, message and body.
fn fingerprint(change: &MessageChange) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update([u8::from(change.actor.role() == Role::Provider)]);
    // Length-prefixed, so no id and body can run into each other.
    hash.update(change.actor.id().len().to_le_bytes());
    hash.update(change.actor.id().as_bytes());
    hash.update(change.message_id.as_bytes());
    match &change.body {
        Some(body) => {
            hash.update([1]);
            hash.update(body.as_bytes());
        }
        None => hash.update([2]),
    }
    hash.finalize().to_vec()
}
