//! CreateConversation's batched write: the SQL that reads what a batch's plan needs
//! (`create_plan.rs`) and carries it out in one transaction with one NOTIFY statement.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{
    create_plan::{Known, Plan, plan},
    notice::{CHANNEL, Notice},
    records::{CONVERSATION_SELECT, ConversationRow, EventKind},
};
use crate::{
    domain::{NewConversation, active_status_sql},
    error::{Error, Result},
};

/// Writes a batch of CreateConversation in one transaction with one NOTIFY statement.
/// The outer error fails the whole batch; the inner ones belong to single calls.
pub(super) async fn create_batch(
    pool: &PgPool,
    batch: &[NewConversation],
) -> Result<Vec<Result<(ConversationRow, bool)>>> {
    let db = |e| Error::db(CONTEXT, e);
    let mut tx = pool.begin().await.map_err(db)?;
    let mut known = Known {
        answered: answered(&mut tx, batch).await?,
        ..Known::default()
    };
    known.active = active(&mut tx, batch, &known).await?;
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
        .map(|row: ConversationRow| (row.id.0, row))
        .collect();
    tx.commit().await.map_err(db)?;
    Ok(plans.into_iter().map(|plan| answer(plan, &rows)).collect())
}

const CONTEXT: &str = "create conversations";

/// What one call of the batch is answered, once its plan is committed.
fn answer(plan: Plan, rows: &HashMap<Uuid, ConversationRow>) -> Result<(ConversationRow, bool)> {
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
}

/// The earlier answers under the batch's keys, read under the keys' locks.
async fn answered(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[NewConversation],
) -> Result<HashMap<Uuid, (Uuid, String)>> {
    let db = |e| Error::db(CONTEXT, e);
    // Serialises calls with one key: the first decides, every retry then finds its answer
    // (READ COMMITTED: the lookup after the lock sees the winner's commit). Keys are
    // locked in one order, then (provider, customer) pairs, so batches cannot deadlock.
    let keys: Vec<Uuid> = batch.iter().filter_map(|n| n.request_id).collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM \
         (SELECT DISTINCT hashtextextended(r::text, 1) AS k FROM unnest($1::uuid[]) r \
          ORDER BY k) s",
    )
    .bind(&keys)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT c.request_id, c.id, c.provider_id FROM conversations c \
         WHERE c.request_id = ANY($1) \
         UNION ALL SELECT r.request_id, c.id, c.provider_id FROM conversation_requests r \
         JOIN conversations c ON c.id = r.conversation_id WHERE r.request_id = ANY($1)",
    )
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|(key, id, provider)| (key, (id, provider)))
        .collect())
}

/// The most recently active open conversation of each (provider, customer) pair of the
/// batch's reusing calls, read under the pairs' locks.
async fn active(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[NewConversation],
    known: &Known,
) -> Result<HashMap<(String, String), Uuid>> {
    let db = |e| Error::db(CONTEXT, e);
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
    if providers.is_empty() {
        return Ok(HashMap::new());
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM \
         (SELECT DISTINCT hashtextextended(p || '/' || c, 0) AS k \
          FROM unnest($1::text[], $2::text[]) AS t(p, c) ORDER BY k) s",
    )
    .bind(&providers)
    .bind(&customers)
    .execute(&mut **tx)
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
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    Ok(rows
        .into_iter()
        .map(|(provider, customer, id)| ((provider, customer), id))
        .collect())
}

/// Inserts the new conversations, their inbox events and the keys of reused ones, and
/// queues one NOTIFY per new conversation in one statement (one commit-time lock).
async fn write_plans(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[NewConversation],
    plans: &[Plan],
) -> Result<()> {
    let ctx = CONTEXT;
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
        .bind(column(&created, |n| n.request_id))
        .bind(column(&created, |n| n.provider_id.as_str()))
        .bind(column(&created, |n| n.customer.customer_id.as_deref()))
        .bind(column(&created, |n| n.customer.name.as_str()))
        .bind(column(&created, |n| n.customer.email.as_str()))
        .bind(column(&created, |n| n.customer.phone.as_str()))
        .bind(column(&created, |n| n.origin.as_str()))
        .bind(column(&created, |n| n.session_id))
        .bind(EventKind::Created)
        .execute(&mut **tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(CHANNEL)
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

/// One column of the conversations a batch creates, as the array its INSERT unnests.
fn column<'a, T>(
    created: &'a [(Uuid, &'a NewConversation)],
    value: impl Fn(&'a NewConversation) -> T,
) -> Vec<T> {
    created.iter().map(|(_, new)| value(new)).collect()
}
