//! Conversations: create (idempotent), read, list, link a customer, open/close.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use sqlx::{PgPool, Postgres, QueryBuilder, Transaction};
use uuid::Uuid;

use super::{CONVERSATION_SELECT, ConversationRow, EventKind, Notice, Store};
use crate::{
    domain::{
        ConversationId, CustomerDetails, CustomerPatch, Participant, Role, Status,
        active_status_sql,
    },
    error::{Error, Result},
};

#[derive(Debug, Clone)]
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
    /// Concurrent calls are written together (see `create_queue`).
    pub async fn create_conversation(
        &self,
        new: NewConversation,
    ) -> Result<(ConversationRow, bool)> {
        self.creates.create(new).await
    }

    pub async fn get_conversation(&self, id: ConversationId) -> Result<ConversationRow> {
        let sql = format!("{CONVERSATION_SELECT} WHERE c.id = $1");
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::db("get conversation", e))?
            .ok_or(Error::ConversationNotFound)
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
        query.push(match owner.role() {
            Role::Provider => " WHERE c.provider_id = ",
            Role::Customer => " WHERE c.customer_id = ",
        });
        query.push_bind(owner.id());
        if let Some(status) = status {
            query.push(" AND c.status = ").push_bind(status);
        }
        if let Some((time, id)) = after {
            // The first condition is the one the index can seek with; the second is the
            // page key itself.
            query
                .push(" AND c.activity_minute <= chat_activity_minute(")
                .push_bind(time)
                .push(") AND (c.last_activity_at, c.id) < (")
                .push_bind(time)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        // activity_minute is chat_activity_minute(last_activity_at) (migration
        // 20261127010000_hot_activity), so this is newest activity first: the index gives
        // the minutes in order and only the conversations of one minute are sorted.
        query
            .push(" ORDER BY c.activity_minute DESC, c.last_activity_at DESC, c.id DESC LIMIT ")
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
        .ok_or(Error::ConversationNotFound)?;
        if let (Some(current), Some(wanted)) = (&current, &patch.customer_id)
            && current != wanted
        {
            return Err(Error::CustomerAlreadyLinked);
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
        record_event(&mut tx, id.0, EventKind::CustomerUpdated, None).await?;
        notify(
            &mut tx,
            &Notice::Customer {
                conversation_id: id.0,
                provider_id,
                customer_id: patch.customer_id.clone().or(current),
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
        let (provider_id, customer_id, current): (String, Option<String>, Status) = sqlx::query_as(
            "SELECT provider_id, customer_id, status FROM conversations WHERE id = $1 FOR UPDATE",
        )
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?
        .ok_or(Error::ConversationNotFound)?;
        if actor.is_some_and(|a| !a.belongs_to(&provider_id, customer_id.as_deref())) {
            return Err(Error::NotParticipant);
        }
        if current != status {
            sqlx::query("UPDATE conversations SET status = $2 WHERE id = $1")
                .bind(id.0)
                .bind(status)
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

async fn record_event(
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

/// What one CreateConversation of a batch gets, decided from what the database holds
/// (under the batch's locks) and from the calls before it in the batch, exactly as if the
/// calls had run one after another in batch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Plan {
    /// A retry: what the first call with this key returned.
    Answered(Uuid),
    /// The key belongs to another provider's conversation.
    KeyReused,
    /// The customer's active conversation with the provider; the key is recorded for it.
    Reuse(Uuid),
    /// A new conversation with this id.
    Create(Uuid),
}

/// What the database said before a batch was decided.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// Earlier answers by request_id: the conversation and its provider.
    pub(super) answered: HashMap<Uuid, (Uuid, String)>,
    /// The most recently active open conversation per (provider, customer).
    pub(super) active: HashMap<(String, String), Uuid>,
}

/// Decides every call of a batch; `new_id` names each conversation to create.
pub(super) fn plan(
    batch: &[NewConversation],
    mut known: Known,
    mut new_id: impl FnMut() -> Uuid,
) -> Vec<Plan> {
    let mut plans = Vec::with_capacity(batch.len());
    for new in batch {
        if let Some(request_id) = new.request_id
            && let Some((id, provider_id)) = known.answered.get(&request_id)
        {
            plans.push(if *provider_id == new.provider_id {
                Plan::Answered(*id)
            } else {
                Plan::KeyReused
            });
            continue;
        }
        let pair = new
            .customer
            .customer_id
            .as_ref()
            .map(|customer| (new.provider_id.clone(), customer.clone()));
        let reused = pair
            .as_ref()
            .filter(|_| new.reuse_active)
            .and_then(|pair| known.active.get(pair).copied());
        let (plan, id) = match reused {
            Some(id) => (Plan::Reuse(id), id),
            None => {
                let id = new_id();
                if let Some(pair) = pair {
                    // The newest open conversation of this pair from now on.
                    known.active.insert(pair, id);
                }
                (Plan::Create(id), id)
            }
        };
        if let Some(request_id) = new.request_id {
            // A later call with this key in the same batch is its retry.
            known
                .answered
                .insert(request_id, (id, new.provider_id.clone()));
        }
        plans.push(plan);
    }
    plans
}

/// Writes a batch of CreateConversation in one transaction with one NOTIFY statement.
/// The outer error fails the whole batch; the inner ones belong to single calls.
pub(super) async fn create_batch(
    pool: &PgPool,
    batch: &[NewConversation],
) -> Result<Vec<Result<(ConversationRow, bool)>>> {
    let ctx = "create conversations";
    let db = |e| Error::db(ctx, e);
    let mut tx = pool.begin().await.map_err(db)?;

    // Serialises calls with one key: the first decides, every retry then finds its answer
    // (READ COMMITTED: the lookup after the lock sees the winner's commit). Keys are
    // locked in one order, then (provider, customer) pairs, so batches cannot deadlock.
    let keys: Vec<Uuid> = batch.iter().filter_map(|n| n.request_id).collect();
    if !keys.is_empty() {
        sqlx::query(
            "SELECT pg_advisory_xact_lock(k) FROM \
             (SELECT DISTINCT hashtextextended(r::text, 1) AS k FROM unnest($1::uuid[]) r \
              ORDER BY k) s",
        )
        .bind(&keys)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    }
    let mut known = Known::default();
    if !keys.is_empty() {
        let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
            "SELECT c.request_id, c.id, c.provider_id FROM conversations c \
             WHERE c.request_id = ANY($1) \
             UNION ALL SELECT r.request_id, c.id, c.provider_id FROM conversation_requests r \
             JOIN conversations c ON c.id = r.conversation_id WHERE r.request_id = ANY($1)",
        )
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        known.answered = rows
            .into_iter()
            .map(|(key, id, provider)| (key, (id, provider)))
            .collect();
    }
    // Serialises "find or create" per (provider, customer) so two concurrent reusing
    // calls cannot both create.
    let (providers, customers): (Vec<&str>, Vec<&str>) = batch
        .iter()
        .filter(|n| {
            n.reuse_active
                && !n
                    .request_id
                    .is_some_and(|k| known.answered.contains_key(&k))
        })
        .filter_map(|n| Some((n.provider_id.as_str(), n.customer.customer_id.as_deref()?)))
        .unzip();
    if !providers.is_empty() {
        sqlx::query(
            "SELECT pg_advisory_xact_lock(k) FROM \
             (SELECT DISTINCT hashtextextended(p || '/' || c, 0) AS k \
              FROM unnest($1::text[], $2::text[]) AS t(p, c) ORDER BY k) s",
        )
        .bind(&providers)
        .bind(&customers)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let rows: Vec<(String, String, Uuid)> = sqlx::query_as(concat!(
            "SELECT DISTINCT ON (provider_id, customer_id) provider_id, customer_id, id \
                 FROM conversations WHERE (provider_id, customer_id) IN \
                   (SELECT * FROM unnest($1::text[], $2::text[])) AND status = ",
            active_status_sql!(),
            " ORDER BY provider_id, customer_id, last_activity_at DESC"
        ))
        .bind(&providers)
        .bind(&customers)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        known.active = rows
            .into_iter()
            .map(|(provider, customer, id)| ((provider, customer), id))
            .collect();
    }

    let plans = plan(batch, known, Uuid::now_v7);
    write_plans(&mut tx, batch, &plans).await?;
    let ids: Vec<Uuid> = plans
        .iter()
        .filter_map(|p| match p {
            Plan::Answered(id) | Plan::Reuse(id) | Plan::Create(id) => Some(*id),
            Plan::KeyReused => None,
        })
        .collect();
    // Read in the transaction: one pool connection per batch.
    let sql = format!("{CONVERSATION_SELECT} WHERE c.id = ANY($1)");
    let rows: HashMap<Uuid, ConversationRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?
        .into_iter()
        .map(|row: ConversationRow| (row.id, row))
        .collect();
    tx.commit().await.map_err(db)?;

    Ok(plans
        .into_iter()
        .map(|plan| {
            let (id, created) = match plan {
                Plan::KeyReused => {
                    return Err(Error::invalid(
                        "request_id",
                        "was already used for a different request",
                    ));
                }
                Plan::Answered(id) | Plan::Reuse(id) => (id, false),
                Plan::Create(id) => (id, true),
            };
            rows.get(&id)
                .cloned()
                .map(|row| (row, created))
                .ok_or(Error::ConversationNotFound)
        })
        .collect())
}

/// Inserts the new conversations, their inbox events and the keys of reused ones, and
/// queues one NOTIFY per new conversation in one statement (one commit-time lock).
async fn write_plans(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[NewConversation],
    plans: &[Plan],
) -> Result<()> {
    let ctx = "create conversations";
    let mut created: Vec<(Uuid, &NewConversation)> = Vec::new();
    let (mut reused_keys, mut reused_ids) = (Vec::new(), Vec::new());
    for (new, plan) in batch.iter().zip(plans) {
        match plan {
            Plan::Create(id) => created.push((*id, new)),
            // A key is decided once per batch: later calls with it are Answered.
            Plan::Reuse(id) => {
                if let Some(key) = new.request_id {
                    reused_keys.push(key);
                    reused_ids.push(*id);
                }
            }
            Plan::Answered(_) | Plan::KeyReused => {}
        }
    }
    if !created.is_empty() {
        let notices: Vec<String> = created
            .iter()
            .map(|(id, new)| {
                Notice::Created {
                    conversation_id: *id,
                    provider_id: new.provider_id.clone(),
                    customer_id: new.customer.customer_id.clone(),
                }
                .encode()
            })
            .collect();
        sqlx::query(
            "WITH ins AS (\
               INSERT INTO conversations (id, request_id, provider_id, customer_id, \
                 customer_name, customer_email, customer_phone, origin, session_id) \
               SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::text[], $9::uuid[]) RETURNING id) \
             INSERT INTO conversation_events (conversation_id, kind) SELECT id, $10 FROM ins",
        )
        .bind(created.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(
            created
                .iter()
                .map(|(_, n)| n.request_id)
                .collect::<Vec<_>>(),
        )
        .bind(
            created
                .iter()
                .map(|(_, n)| n.provider_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            created
                .iter()
                .map(|(_, n)| n.customer.customer_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            created
                .iter()
                .map(|(_, n)| n.customer.name.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            created
                .iter()
                .map(|(_, n)| n.customer.email.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            created
                .iter()
                .map(|(_, n)| n.customer.phone.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            created
                .iter()
                .map(|(_, n)| n.origin.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            created
                .iter()
                .map(|(_, n)| n.session_id)
                .collect::<Vec<_>>(),
        )
        .bind(EventKind::Created)
        .execute(&mut **tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(super::CHANNEL)
            .bind(notices)
            .execute(&mut **tx)
            .await
            .map_err(|e| Error::db("notify", e))?;
    }
    if !reused_keys.is_empty() {
        sqlx::query(
            "INSERT INTO conversation_requests (request_id, conversation_id) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[])",
        )
        .bind(&reused_keys)
        .bind(&reused_ids)
        .execute(&mut **tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(
        key: Option<u128>,
        provider: &str,
        customer: Option<&str>,
        reuse: bool,
    ) -> NewConversation {
        NewConversation {
            request_id: key.map(Uuid::from_u128),
            provider_id: provider.into(),
            customer: CustomerDetails {
                customer_id: customer.map(str::to_owned),
                ..CustomerDetails::default()
            },
            reuse_active: reuse,
            origin: String::new(),
            session_id: None,
        }
    }

    /// Ids 1001, 1002, ... for the conversations a plan creates.
    fn ids() -> impl FnMut() -> Uuid {
        let mut next = 1000;
        move || {
            next += 1;
            Uuid::from_u128(next)
        }
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn duplicates_in_one_batch_resolve_to_one_conversation() {
        let batch = [
            new(Some(1), "p", None, false),
            new(Some(1), "p", None, false),
            new(Some(2), "p", None, false),
            new(Some(1), "p", None, false),
        ];
        assert_eq!(
            plan(&batch, Known::default(), ids()),
            [
                Plan::Create(id(1001)),
                Plan::Answered(id(1001)),
                Plan::Create(id(1002)),
                Plan::Answered(id(1001)),
            ]
        );
    }

    #[test]
    fn a_key_used_by_another_provider_is_refused() {
        let mut known = Known::default();
        known.answered.insert(id(1), (id(7), "other".into()));
        let batch = [
            new(Some(1), "p", None, false),
            new(Some(2), "p", None, false),
            new(Some(2), "q", None, false),
        ];
        assert_eq!(
            plan(&batch, known, ids()),
            [Plan::KeyReused, Plan::Create(id(1001)), Plan::KeyReused]
        );
    }

    #[test]
    fn the_key_decides_before_reuse() {
        let mut known = Known::default();
        known.answered.insert(id(1), (id(7), "p".into()));
        known.active.insert(("p".into(), "c".into()), id(8));
        let batch = [
            new(Some(1), "p", Some("c"), true),
            new(Some(2), "p", Some("c"), true),
        ];
        assert_eq!(
            plan(&batch, known, ids()),
            [Plan::Answered(id(7)), Plan::Reuse(id(8))]
        );
    }

    #[test]
    fn reuse_sees_what_earlier_calls_of_the_batch_created() {
        let batch = [
            new(Some(1), "p", Some("c"), true),
            new(Some(2), "p", Some("c"), true),
            new(Some(3), "p", Some("d"), false),
            new(None, "p", Some("d"), true),
            new(Some(5), "p", Some("d"), false),
        ];
        assert_eq!(
            plan(&batch, Known::default(), ids()),
            [
                Plan::Create(id(1001)),
                Plan::Reuse(id(1001)),
                Plan::Create(id(1002)),
                Plan::Reuse(id(1002)),
                Plan::Create(id(1003)),
            ]
        );
    }
}
