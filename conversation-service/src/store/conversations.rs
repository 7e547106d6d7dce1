//! Conversations: create (idempotent), read, list, link a customer, open/close.

use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use sqlx::{Postgres, QueryBuilder, Transaction};
use uuid::Uuid;

use super::{CONVERSATION_SELECT, ConversationRow, Store};
use crate::{
    domain::{ConversationId, CustomerDetails, CustomerPatch, Participant, Role, Status},
    error::{Error, Result},
    realtime::Notice,
};

/// Inbox event kinds stored in `conversation_events.kind`.
pub(crate) const EVENT_CREATED: i16 = 1;
pub(crate) const EVENT_CUSTOMER: i16 = 2;
pub(crate) const EVENT_STATUS: i16 = 3;

pub struct NewConversation {
    pub request_id: Option<Uuid>,
    pub provider_id: String,
    pub customer: CustomerDetails,
    pub reuse_active: bool,
    pub origin: String,
    pub session_id: Option<Uuid>,
}

impl Store {
    /// Creates a conversation, or returns what an earlier call with the same
    /// `request_id` returned (`false`): the key decides before `reuse_active` does, so a
    /// retry never gets another conversation, even when reuse would now pick one.
    pub async fn create_conversation(
        &self,
        new: NewConversation,
    ) -> Result<(ConversationRow, bool)> {
        let ctx = "create conversation";
        let mut tx = self.pool.begin().await.map_err(|e| Error::db(ctx, e))?;
        if let Some(request_id) = new.request_id {
            // Serialises calls with one key: the first decides, every retry then finds its
            // answer (READ COMMITTED: the lookup after the lock sees the winner's commit).
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 1))")
                .bind(request_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(ctx, e))?;
            if let Some(id) = answered(&mut tx, request_id).await? {
                let row = conversation_in(&mut tx, id).await?;
                tx.commit().await.map_err(|e| Error::db(ctx, e))?;
                if row.provider_id != new.provider_id {
                    return Err(Error::invalid(
                        "request_id",
                        "was already used for a different request",
                    ));
                }
                return Ok((row, false));
            }
        }
        if let (true, Some(customer_id)) = (new.reuse_active, new.customer.customer_id.as_deref()) {
            // Serialises "find or create" per (provider, customer) so two concurrent
            // reusing calls cannot both create.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
                .bind(&new.provider_id)
                .bind(customer_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(ctx, e))?;
            let existing: Option<(Uuid,)> = sqlx::query_as(
                "SELECT id FROM conversations WHERE provider_id = $1 AND customer_id = $2 \
                 AND status = 1 ORDER BY last_activity_at DESC LIMIT 1",
            )
            .bind(&new.provider_id)
            .bind(customer_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| Error::db(ctx, e))?;
            if let Some((id,)) = existing {
                if let Some(request_id) = new.request_id {
                    sqlx::query(
                        "INSERT INTO conversation_requests (request_id, conversation_id) \
                         VALUES ($1, $2)",
                    )
                    .bind(request_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::db(ctx, e))?;
                }
                let row = conversation_in(&mut tx, id).await?;
                tx.commit().await.map_err(|e| Error::db(ctx, e))?;
                return Ok((row, false));
            }
        }
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO conversations (id, request_id, provider_id, customer_id, customer_name, \
             customer_email, customer_phone, origin, session_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(new.request_id)
        .bind(&new.provider_id)
        .bind(new.customer.customer_id.as_deref())
        .bind(&new.customer.name)
        .bind(&new.customer.email)
        .bind(&new.customer.phone)
        .bind(&new.origin)
        .bind(new.session_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        record_event(&mut tx, id, EVENT_CREATED, None).await?;
        notify(
            &mut tx,
            &Notice::Created {
                c: id,
                p: new.provider_id.clone(),
                u: new.customer.customer_id.clone(),
            },
        )
        .await?;
        // Read in the transaction: one pool connection per call, even when duplicates
        // queue on the key's lock.
        let row = conversation_in(&mut tx, id).await?;
        tx.commit().await.map_err(|e| Error::db(ctx, e))?;
        Ok((row, true))
    }

    pub async fn get_conversation(&self, id: ConversationId) -> Result<ConversationRow> {
        let sql = format!("{CONVERSATION_SELECT} WHERE c.id = $1");
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::db("get conversation", e))?
            .ok_or(Error::NotFound("conversation"))
    }

    pub async fn get_conversations(&self, ids: &[Uuid]) -> Result<Vec<ConversationRow>> {
        let sql = format!("{CONVERSATION_SELECT} WHERE c.id = ANY($1)");
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("get conversations", e))
    }

    /// A page of `owner`'s conversations, newest activity first, after the key
    /// `(last_activity_at, id)` of the previous page.
    pub async fn list_conversations(
        &self,
        owner: &Participant,
        status: Option<Status>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<ConversationRow>> {
        let mut query = QueryBuilder::<Postgres>::new(CONVERSATION_SELECT);
        query.push(match owner.role {
            Role::Provider => " WHERE c.provider_id = ",
            Role::Customer => " WHERE c.customer_id = ",
        });
        query.push_bind(&owner.id);
        if let Some(status) = status {
            query.push(" AND c.status = ").push_bind(status.as_i16());
        }
        if let Some((time, id)) = after {
            query
                .push(" AND (c.last_activity_at, c.id) < (")
                .push_bind(time)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        query
            .push(" ORDER BY c.last_activity_at DESC, c.id DESC LIMIT ")
            .push_bind(limit);
        query
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("list conversations", e))
    }

    /// Applies a partial customer update. Linking a customer when a different one is
    /// linked already is refused (CUSTOMER_ALREADY_LINKED).
    pub async fn update_customer(
        &self,
        id: ConversationId,
        patch: &CustomerPatch,
    ) -> Result<ConversationRow> {
        let ctx = "update customer";
        let mut tx = self.pool.begin().await.map_err(|e| Error::db(ctx, e))?;
        let (provider_id, current): (String, Option<String>) = sqlx::query_as(
            "SELECT provider_id, customer_id FROM conversations WHERE id = $1 FOR UPDATE",
        )
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?
        .ok_or(Error::NotFound("conversation"))?;
        if let (Some(current), Some(wanted)) = (&current, &patch.customer_id)
            && current != wanted
        {
            return Err(Error::FailedPrecondition {
                reason: "CUSTOMER_ALREADY_LINKED",
                message: "the conversation is linked to another customer".into(),
            });
        }
        sqlx::query(
            "UPDATE conversations SET customer_id = COALESCE($2, customer_id), \
             customer_name = COALESCE($3, customer_name), \
             customer_email = COALESCE($4, customer_email), \
             customer_phone = COALESCE($5, customer_phone) WHERE id = $1",
        )
        .bind(id.0)
        .bind(patch.customer_id.as_deref())
        .bind(patch.name.as_deref())
        .bind(patch.email.as_deref())
        .bind(patch.phone.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        record_event(&mut tx, id.0, EVENT_CUSTOMER, None).await?;
        notify(
            &mut tx,
            &Notice::Customer {
                c: id.0,
                p: provider_id,
                u: patch.customer_id.clone().or(current),
            },
        )
        .await?;
        tx.commit().await.map_err(|e| Error::db(ctx, e))?;
        self.get_conversation(id).await
    }

    /// Opens or closes a conversation; setting the status it already has changes nothing.
    pub async fn set_status(
        &self,
        id: ConversationId,
        status: Status,
        actor: Option<&Participant>,
    ) -> Result<ConversationRow> {
        let ctx = "set conversation status";
        let mut tx = self.pool.begin().await.map_err(|e| Error::db(ctx, e))?;
        let (provider_id, customer_id, current): (String, Option<String>, i16) = sqlx::query_as(
            "SELECT provider_id, customer_id, status FROM conversations WHERE id = $1 FOR UPDATE",
        )
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?
        .ok_or(Error::NotFound("conversation"))?;
        if actor.is_some_and(|a| !a.belongs_to(&provider_id, customer_id.as_deref())) {
            return Err(Error::not_participant());
        }
        if current != status.as_i16() {
            sqlx::query("UPDATE conversations SET status = $2 WHERE id = $1")
                .bind(id.0)
                .bind(status.as_i16())
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(ctx, e))?;
            record_event(&mut tx, id.0, EVENT_STATUS, Some(status.as_i16())).await?;
            notify(
                &mut tx,
                &Notice::Status {
                    c: id.0,
                    status: status.as_i16(),
                    p: provider_id,
                    u: customer_id,
                },
            )
            .await?;
        }
        tx.commit().await.map_err(|e| Error::db(ctx, e))?;
        self.get_conversation(id).await
    }
}

async fn conversation_in(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> Result<ConversationRow> {
    let sql = format!("{CONVERSATION_SELECT} WHERE c.id = $1");
    sqlx::query_as(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| Error::db("create conversation", e))?
        .ok_or(Error::NotFound("conversation"))
}

/// The conversation an earlier CreateConversation with this key returned, if any.
async fn answered(tx: &mut Transaction<'_, Postgres>, request_id: Uuid) -> Result<Option<Uuid>> {
    sqlx::query_scalar(
        "SELECT id FROM conversations WHERE request_id = $1 \
         UNION ALL SELECT conversation_id FROM conversation_requests WHERE request_id = $1 \
         LIMIT 1",
    )
    .bind(request_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(|e| Error::db("create conversation", e))
}

async fn record_event(
    tx: &mut Transaction<'_, Postgres>,
    conversation_id: Uuid,
    kind: i16,
    status: Option<i16>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO conversation_events (conversation_id, kind, status) VALUES ($1, $2, $3)",
    )
    .bind(conversation_id)
    .bind(kind)
    .bind(status)
    .execute(&mut **tx)
    .await
    .map_err(|e| Error::db("record conversation event", e))?;
    Ok(())
}

/// Queues a NOTIFY in the transaction: delivered at commit, dropped on rollback.
pub(crate) async fn notify(tx: &mut Transaction<'_, Postgres>, notice: &Notice) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(super::CHANNEL)
        .bind(notice.encode())
        .execute(&mut **tx)
        .await
        .map_err(|e| Error::db("notify", e))?;
    Ok(())
}
