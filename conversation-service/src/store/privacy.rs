//! A customer's data: which conversations are theirs, erasing their side of them, and
//! the audit trail of the calls that do so.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Notice, Store, notice::notify, records::EventKind, updates::record_event};
use crate::{
    domain::Role,
    error::{Error, Result},
};

/// What an erasure changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    pub conversations: i64,
    pub messages: i64,
}

/// One administrative call, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRow {
    pub record_id: i64,
    pub caller: String,
    pub method: String,
    pub target: String,
    pub time: DateTime<Utc>,
    pub result: String,
    pub reason: String,
}

/// The customer's conversations: linked to them, or opened by one of their sessions
/// (`listed`) while no other customer is linked. `$1` the customer, `$2` the listed ids.
const CUSTOMER_CONVERSATIONS: &str = "SELECT id, provider_id FROM conversations \
     WHERE customer_id = $1 OR (id = ANY($2) AND (customer_id IS NULL OR customer_id = $1)) \
     ORDER BY id";

impl Store {
    /// The ids of a customer's conversations (see [`CUSTOMER_CONVERSATIONS`]).
    pub async fn customer_conversations(
        &self,
        customer_id: &str,
        listed: &[Uuid],
    ) -> Result<Vec<Uuid>> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(CUSTOMER_CONVERSATIONS)
            .bind(customer_id)
            .bind(listed)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("find a customer's conversations", e))?;
        Ok(rows.into_iter().map(|(id, _)| id).collect())
    }

    /// Erases the customer's side of their conversations in one transaction: name, email
    /// and phone, and the bodies of the messages the customer sent (the provider's stay).
    /// The rows are locked in id order, as every writer locks them. Each conversation
    /// where anything was erased records when (and its head then) and gets a
    /// customer-erased event, so streams and inboxes tell their clients to drop what they
    /// cached. Erasing again changes nothing and counts zero.
    pub async fn erase_customer(&self, customer_id: &str, listed: &[Uuid]) -> Result<Erased> {
        let ctx = "erase a customer";
        let mut tx = self.pool.begin().await.map_err(|e| Error::db(ctx, e))?;
        let locked: Vec<(Uuid, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{CUSTOMER_CONVERSATIONS} FOR UPDATE"
        )))
        .bind(customer_id)
        .bind(listed)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        let ids: Vec<Uuid> = locked.iter().map(|(id, _)| *id).collect();
        // Per conversation, how many of the customer's messages were blanked. Attachments
        // are the customer's content too; the fingerprints of edits of their messages
        // hash the text they wrote.
        let blanked: Vec<(Uuid, i64)> = sqlx::query_as(
            "WITH forget AS (UPDATE message_changes x SET fingerprint = NULL FROM messages m \
               WHERE x.conversation_id = ANY($1) AND x.fingerprint IS NOT NULL \
                 AND m.conversation_id = x.conversation_id AND m.seq = x.seq \
                 AND m.sender_role = $2), \
             blanked AS (\
               UPDATE messages SET body = '', attachments = NULL \
               WHERE conversation_id = ANY($1) AND sender_role = $2 \
                 AND (body <> '' OR attachments IS NOT NULL) \
               RETURNING conversation_id) \
             SELECT conversation_id, count(*) FROM blanked GROUP BY conversation_id",
        )
        .bind(&ids)
        .bind(Role::Customer)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        let with_messages: Vec<Uuid> = blanked.iter().map(|(id, _)| *id).collect();
        // `had_details`: whether name, email or phone were set before (what the reply
        // counts); the rows are locked, so `old` reads what the update replaces.
        let changed: Vec<(Uuid, String, Option<String>, bool)> = sqlx::query_as(
            "WITH old AS (\
               SELECT id, (customer_name <> '' OR customer_email <> '' OR customer_phone <> '') \
                 AS had_details \
               FROM conversations WHERE id = ANY($1)) \
             UPDATE conversations c \
             SET customer_name = '', customer_email = '', customer_phone = '', \
                 erased_at = now(), erased_through_seq = c.head_seq \
             FROM old WHERE c.id = old.id AND (old.had_details OR c.id = ANY($2)) \
             RETURNING c.id, c.provider_id, c.customer_id, old.had_details",
        )
        .bind(&ids)
        .bind(&with_messages)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        for (id, provider_id, linked, _) in &changed {
            record_event(&mut tx, *id, EventKind::CustomerErased, None).await?;
            notify(
                &mut tx,
                &Notice::Customer {
                    conversation_id: *id,
                    provider_id: provider_id.clone(),
                    customer_id: linked.clone(),
                    erased: true,
                },
            )
            .await?;
        }
        tx.commit().await.map_err(|e| Error::db(ctx, e))?;
        let with_details = changed.iter().filter(|(.., had)| *had).count();
        let erased = Erased {
            conversations: i64::try_from(with_details).unwrap_or(i64::MAX),
            messages: blanked.iter().map(|(_, n)| n).sum(),
        };
        if !changed.is_empty() {
            self.vacuum_after_erasure();
        }
        Ok(erased)
    }

    /// PostgreSQL keeps the row versions an erasure replaced until VACUUM removes them;
    /// this asks for that now instead of waiting for autovacuum. In the background, on a
    /// pool connection outside any transaction (VACUUM cannot run in one); it removes
    /// only what no open transaction can still see, and never locks out writers.
    fn vacuum_after_erasure(&self) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            for table in ["conversations", "messages"] {
                let sql = sqlx::AssertSqlSafe(format!("VACUUM {table}"));
                if let Err(error) = sqlx::query(sql).execute(&pool).await {
                    tracing::warn!(%error, table, "VACUUM after an erasure failed; autovacuum will do it");
                }
            }
        });
    }

    /// Appends an audit record.
    pub async fn audit(
        &self,
        caller: &str,
        method: &str,
        target: &str,
        result: &str,
        reason: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_records (caller, method, target, result, reason) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(caller)
        .bind(method)
        .bind(target)
        .bind(result)
        .bind(reason)
        .execute(&self.pool)
        .await
        .map_err(|e| Error::db("write an audit record", e))?;
        Ok(())
    }

    /// Up to `limit` audit records before the record `before` (0: the newest), newest
    /// first.
    pub async fn audit_records(&self, before: i64, limit: i64) -> Result<Vec<AuditRow>> {
        sqlx::query_as(
            "SELECT record_id, caller, method, target, time, result, reason FROM audit_records \
             WHERE $1 = 0 OR record_id < $1 ORDER BY record_id DESC LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::db("list audit records", e))
    }
}
