//! Changing a conversation: its customer side, its status. Each change records its inbox
//! event and queues its notice in the same transaction.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{
    handle::Store,
    notice::{Notice, notify},
    records::{ConversationRow, EventKind},
    unread::{UnreadSummary, add_unread},
};
use crate::{
    domain::{ConversationId, CustomerPatch, Participant, Role, Status},
    error::{Error, Result},
};

impl Store {
    /// Applies a partial customer update. Linking a customer when a different one is
    /// linked already is refused (CUSTOMER_ALREADY_LINKED).
    pub async fn update_customer(
        &self,
        id: ConversationId,
        patch: &CustomerPatch,
    ) -> Result<ConversationRow> {
        let ctx = "update customer";
        let mut tx = self.pool.begin().await.map_err(|e| Error::db(ctx, e))?;
        let Parties {
            provider_id,
            customer_id: current,
            ..
        } = lock(&mut tx, id, ctx).await?;
        if let (Some(current), Some(wanted)) = (&current, &patch.customer_id)
            && current != wanted
        {
            return Err(Error::CustomerAlreadyLinked);
        }
        let (head, customer_read): (i64, i64) = sqlx::query_as(
            "UPDATE conversations SET customer_id = COALESCE($2, customer_id), \
             customer_name = COALESCE($3, customer_name), \
             customer_email = COALESCE($4, customer_email), \
             customer_phone = COALESCE($5, customer_phone) WHERE id = $1 \
             RETURNING head_seq, customer_read_seq",
        )
        .bind(id.0)
        .bind(patch.customer_id.as_deref())
        .bind(patch.name.as_deref())
        .bind(patch.email.as_deref())
        .bind(patch.phone.as_deref())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        if let (None, Some(linked)) = (&current, &patch.customer_id) {
            // What the anonymous visitor left unread is now the customer's.
            let change = UnreadSummary::change((0, 0), (head, customer_read));
            add_unread(&mut tx, Role::Customer, linked, change).await?;
        }
        record_event(&mut tx, id.0, EventKind::CustomerUpdated, None).await?;
        notify(
            &mut tx,
            &Notice::Customer {
                conversation_id: id.0,
                provider_id,
                customer_id: patch.customer_id.clone().or(current),
                erased: false,
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
        let Parties {
            provider_id,
            customer_id,
            status: current,
        } = lock(&mut tx, id, ctx).await?;
        if actor.is_some_and(|a| !a.belongs_to(&provider_id, customer_id.as_deref())) {
            return Err(Error::NotParticipant);
        }
        if current != status {
            // closed_at starts the retention clock of the conversation's messages.
            sqlx::query(
                "UPDATE conversations SET status = $2, \
                 closed_at = CASE WHEN $2 = $3 THEN now() END WHERE id = $1",
            )
            .bind(id.0)
            .bind(status)
            .bind(Status::Closed)
            .execute(&mut *tx)
            .await
            .map_err(|e| Error::db(ctx, e))?;
            record_event(&mut tx, id.0, EventKind::StatusChanged, Some(status)).await?;
            notify(
                &mut tx,
                &Notice::Status {
                    conversation_id: id.0,
                    status,
                    provider_id,
                    customer_id,
                },
            )
            .await?;
        }
        tx.commit().await.map_err(|e| Error::db(ctx, e))?;
        self.get_conversation(id).await
    }
}

pub(super) async fn record_event(
    tx: &mut Transaction<'_, Postgres>,
    conversation_id: Uuid,
    kind: EventKind,
    status: Option<Status>,
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

/// Who a conversation is between, and whether it is open.
#[derive(sqlx::FromRow)]
struct Parties {
    provider_id: String,
    customer_id: Option<String>,
    status: Status,
}

/// Reads the conversation's row and locks it until the transaction ends, so a change
/// decided on it cannot race another.
async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    id: ConversationId,
    ctx: &'static str,
) -> Result<Parties> {
    sqlx::query_as(
        "SELECT provider_id, customer_id, status FROM conversations WHERE id = $1 FOR UPDATE",
    )
    .bind(id.0)
    .fetch_optional(&mut **tx)
    .await
    .map_err(|e| Error::db(ctx, e))?
    .ok_or(Error::ConversationNotFound)
}
