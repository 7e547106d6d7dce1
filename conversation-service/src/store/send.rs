//! The SQL step of a SendMessage batch: lock the conversations, read what the batch's
//! idempotency keys already name, let [`plan`] decide, then insert, move the heads and
//! NOTIFY in one statement and commit.

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Postgres, Transaction};
use uuid::Uuid;

use super::{
    handle::Store,
    notice::{CHANNEL, Carried, Notice, Touched},
    plan::{ClientKey, Decision, Locked, Plan, plan},
    records::{MESSAGE_COLUMNS, MessageRow},
};
use crate::{
    domain::{NewMessage, active_status_sql},
    error::{Error, Result},
};

/// How long a batch waits for a conversation's row lock, and how long any of its
/// statements may run: one stuck conversation must not stall every send of the replica.
/// A batch first waits [`BATCH_LOCK_TIMEOUT`] (our own writers hold a row for a few
/// milliseconds); when that runs out it is written again one conversation at a time,
/// each waiting up to [`LOCK_TIMEOUT`], so only the locked conversation's sends wait long.
pub const BATCH_LOCK_TIMEOUT: &str = "200ms";
pub const LOCK_TIMEOUT: &str = "3s";
pub const STATEMENT_TIMEOUT: &str = "8s";

/// The message and whether it was created now (false: an idempotent retry).
pub type Sent = (MessageRow, bool);

/// Why a whole batch failed.
#[derive(Debug)]
pub enum BatchError {
    /// A row lock or a statement timed out: nothing was written, and the messages of
    /// other conversations can still be written without it.
    Busy,
    Failed(Error),
}

impl From<BatchError> for Error {
    fn from(error: BatchError) -> Self {
        match error {
            BatchError::Busy => {
                Self::Unavailable("the conversation is busy; nothing was written, retry".into())
            }
            BatchError::Failed(error) => error,
        }
    }
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> BatchError {
    move |error| {
        let timed_out = matches!(&error, sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("55P03" | "57014")));
        if timed_out {
            tracing::warn!(%error, context, "send batch timed out");
            BatchError::Busy
        } else {
            BatchError::Failed(Error::db(context, error))
        }
    }
}

/// Bytes of touched conversations per payload; the envelope adds a few dozen.
const MAX_NOTIFY_BYTES: usize = 7800;

impl Store {
    /// Writes a batch. The outer error fails the whole batch; the inner ones belong to
    /// single messages. `gone(i)` says whether the caller of message i has left; it is
    /// asked right before deciding. `patient`: wait up to [`LOCK_TIMEOUT`] for row locks
    /// instead of [`BATCH_LOCK_TIMEOUT`], taking them before deciding.
    ///
    /// A batch is first planned without a lock, on its conversations as this replica
    /// last wrote them ([`super::rows`]) or else read now, then written in one statement
    /// that is its own transaction ([`Store::write_unlocked`]): one round trip where the
    /// transaction under locks takes five. When a conversation changed meanwhile, or a
    /// stored message already has one of the batch's idempotency keys, that statement
    /// writes nothing and the batch is planned again under the row locks
    /// ([`Store::write_locked`]).
    pub(crate) async fn write_messages(
        &self,
        batch: &[NewMessage],
        gone: impl Fn(usize) -> bool,
        patient: bool,
    ) -> Result<Vec<Option<Result<Sent>>>, BatchError> {
        // Kept for the next batch only when this one succeeded: after a failure it goes
        // back to the pool, whose ping on return rolls back or closes what is left.
        let mut connection = self.writers().take().await.map_err(db("send messages"))?;
        let unlocked = if patient {
            None
        } else {
            self.write_unlocked(&mut connection, batch, &gone).await?
        };
        let written = match unlocked {
            Some(written) => written,
            None => {
                self.write_locked(&mut connection, batch, &gone, patient)
                    .await?
            }
        };
        self.writers().keep(connection);
        Ok(written)
    }

    /// The batch planned on rows read without a lock, or known from earlier batches;
    /// `None` when the write found one of them changed or a key taken (it wrote
    /// nothing).
    async fn write_unlocked(
        &self,
        connection: &mut PgConnection,
        batch: &[NewMessage],
        gone: impl Fn(usize) -> bool,
    ) -> Result<Option<Vec<Option<Result<Sent>>>>, BatchError> {
        let ctx = "send messages";
        let ids = conversation_ids(batch);
        let Some((known, unknown)) = self.known().split(&ids) else {
            // Written from another replica lately: planning without the locks would
            // mostly fail.
            return Ok(None);
        };
        let known_ids: Vec<Uuid> = known.iter().map(|row| row.id).collect();
        let mut rows: HashMap<Uuid, Locked> = known.into_iter().map(|c| (c.id, c)).collect();
        if !unknown.is_empty() {
            let read: Vec<Locked> = sqlx::query_as(
                "SELECT id, provider_id, customer_id, status, head_seq FROM conversations \
                 WHERE id = ANY($1)",
            )
            .bind(&unknown)
            .fetch_all(&mut *connection)
            .await
            .map_err(db(ctx))?;
            rows.extend(read.into_iter().map(|c| (c.id, c)));
        }
        // Stored messages are not looked up: a retry's key fails the insert, and the
        // batch is then planned under the locks with them.
        let (plan, now) = decide(batch, gone, &rows, &HashMap::new());
        // A refusal is only given on a row read now: a known row may be stale.
        let refused_on_known = plan.decisions.iter().zip(batch).any(|(decision, message)| {
            matches!(decision, Decision::Refused(_))
                && known_ids.contains(&message.conversation_id.0)
        });
        if refused_on_known {
            self.known().forget(known_ids, false);
            return Ok(None);
        }
        let payloads = payloads(&plan);
        if !plan.touched.is_empty() {
            match insert_and_notify(&mut *connection, &plan, now, payloads).await {
                Ok(()) => {}
                Err(error) if changed_meanwhile(&error) => {
                    crate::metrics::send_replanned();
                    tracing::debug!(%error, "batch planned on changed rows; planning under locks");
                    self.known().forget(known_ids, true);
                    return Ok(None);
                }
                Err(error) => {
                    let error = db(ctx)(error);
                    // A row lock not granted in time: written elsewhere right now.
                    self.known().forget(ids, matches!(error, BatchError::Busy));
                    return Err(error);
                }
            }
        }
        self.known().remember(written(rows, &plan));
        Ok(Some(answers(plan)))
    }

    /// The batch planned under the row locks, in a transaction.
    async fn write_locked(
        &self,
        connection: &mut PgConnection,
        batch: &[NewMessage],
        gone: impl Fn(usize) -> bool,
        patient: bool,
    ) -> Result<Vec<Option<Result<Sent>>>, BatchError> {
        let ctx = "send messages";
        let ids = conversation_ids(batch);
        // The writer pool's sessions carry BATCH_LOCK_TIMEOUT and STATEMENT_TIMEOUT.
        let mut tx = connection.begin().await.map_err(db(ctx))?;
        if patient {
            sqlx::query("SELECT set_config('lock_timeout', $1, true)")
                .bind(LOCK_TIMEOUT)
                .execute(&mut *tx)
                .await
                .map_err(db(ctx))?;
        }
        // Locks in id order so concurrent batches cannot deadlock; seq is assigned under
        // these locks, which is what makes seq order commit order with no gaps, and no
        // other transaction can insert under the same idempotency key meanwhile.
        let rows: Vec<Locked> = sqlx::query_as(
            "SELECT id, provider_id, customer_id, status, head_seq FROM conversations \
             WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db(ctx))?;
        let rows: HashMap<Uuid, Locked> = rows.into_iter().map(|c| (c.id, c)).collect();
        let existing = existing_by_client_key(&mut tx, batch).await?;
        let (plan, now) = decide(batch, gone, &rows, &existing);
        if !plan.touched.is_empty() {
            let payloads = payloads(&plan);
            insert_and_notify(&mut *tx, &plan, now, payloads)
                .await
                .map_err(db("insert messages"))?;
        }
        tx.commit().await.map_err(db(ctx))?;
        self.known().remember(written(rows, &plan));
        Ok(answers(plan))
    }
}

/// The rows as a committed plan left them.
fn written(rows: HashMap<Uuid, Locked>, plan: &Plan) -> impl Iterator<Item = Locked> {
    rows.into_values().map(|mut row| {
        if let Some(touch) = plan.touched.get(&row.id) {
            row.head_seq = touch.head;
        }
        row
    })
}

/// The batch's conversations, each once.
fn conversation_ids(batch: &[NewMessage]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = batch.iter().map(|m| m.conversation_id.0).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Plans the batch on its conversation rows and the stored messages its keys name.
fn decide(
    batch: &[NewMessage],
    gone: impl Fn(usize) -> bool,
    rows: &HashMap<Uuid, Locked>,
    existing: &HashMap<ClientKey, MessageRow>,
) -> (Plan, DateTime<Utc>) {
    let gone: Vec<bool> = (0..batch.len()).map(gone).collect();
    let now: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    (plan(batch, &gone, rows, existing, now, Uuid::now_v7), now)
}

fn answers(plan: Plan) -> Vec<Option<Result<Sent>>> {
    plan.decisions
        .into_iter()
        .map(|decision| match decision {
            Decision::Refused(error) => Some(Err(error)),
            Decision::Existing(row) => Some(Ok((row, false))),
            Decision::Insert(row) => Some(Ok((row, true))),
            Decision::Abandoned => None,
        })
        .collect()
}

/// The write found a conversation changed since it was read (the statement's own
/// check), or a stored message under one of the batch's idempotency keys (or a seq
/// taken by a concurrent writer): nothing was written.
fn changed_meanwhile(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some(SEND_CONFLICT | "23505")))
}

/// The SQLSTATE of `chat_send_conflict()` (migration `20261126230000_send_conflict`).
const SEND_CONFLICT: &str = "CH001";

async fn existing_by_client_key(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[NewMessage],
) -> Result<HashMap<ClientKey, MessageRow>, BatchError> {
    let mut ids = Vec::new();
    let mut roles = Vec::new();
    let mut keys = Vec::new();
    for message in batch {
        if let Some(key) = &message.client_message_id {
            ids.push(message.conversation_id.0);
            roles.push(i16::from(message.sender.role()));
            keys.push(key.clone());
        }
    }
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages \
         WHERE (conversation_id, sender_role, client_message_id) \
         IN (SELECT * FROM unnest($1::uuid[], $2::smallint[], $3::text[]))"
    );
    let rows: Vec<MessageRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(ids)
        .bind(roles)
        .bind(keys)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("find messages by client id"))?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let key = (
                row.conversation_id.0,
                row.sender_role,
                row.client_message_id.clone()?,
            );
            Some((key, row))
        })
        .collect())
}

/// NOTIFY payloads naming every touched conversation, with the messages it got when they
/// fit, chunked under PostgreSQL's 8000-byte limit. Each conversation is encoded once and
/// the chunks are joined into [`Notice::Messages`]'s envelope.
fn payloads(plan: &Plan) -> Vec<String> {
    let mut added: HashMap<Uuid, Vec<Carried>> = HashMap::new();
    for row in plan.inserts() {
        added
            .entry(row.conversation_id.0)
            .or_default()
            .push(Carried::of(row));
    }
    let mut chunks: Vec<Vec<String>> = vec![Vec::new()];
    let mut chunk_bytes = 0;
    for (id, touch) in &plan.touched {
        let mut item = Touched {
            conversation_id: *id,
            head_seq: touch.head,
            provider_id: touch.provider_id.clone(),
            customer_id: touch.customer_id.clone(),
            messages: added.remove(id).unwrap_or_default(),
        };
        let mut encoded = encode(&item);
        if encoded.len() > MAX_NOTIFY_BYTES {
            // Too large to carry: the streams read these messages from the table.
            item.messages.clear();
            encoded = encode(&item);
        }
        if chunk_bytes + encoded.len() > MAX_NOTIFY_BYTES && chunk_bytes > 0 {
            chunks.push(Vec::new());
            chunk_bytes = 0;
        }
        chunk_bytes += encoded.len() + 1;
        if let Some(chunk) = chunks.last_mut() {
            chunk.push(encoded);
        }
    }
    chunks
        .into_iter()
        .filter(|chunk| !chunk.is_empty())
        .map(|chunk| Notice::messages_payload(&chunk))
        .collect()
}

/// One touched conversation as a payload carries it.
fn encode(item: &Touched) -> String {
    // Plain data always serialises.
    serde_json::to_string(item).unwrap_or_default()
}

/// One statement: move each conversation's head, activity time (never backwards:
/// replicas' clocks differ) and the senders' read positions, insert the rows and NOTIFY.
/// The indexed inbox order `inbox_at` follows the activity time only when its minute
/// changes, so the other updates stay HOT (migration `20261206091000_inbox_order`). The
/// participants' unread counts move by what each row's update changed: `old` reads the
/// rows under their locks first, so its values are the ones the update replaced.
/// It takes the row locks itself and checks each row is as the batch was planned on
/// (head, status, customer); if any is not, it raises [`SEND_CONFLICT`] and writes
/// nothing. Under the locks of [`Store::write_locked`] the check always holds. Without
/// them it takes the locks in the order of its join, not by id, so two replicas' batches
/// on the same conversations could deadlock until `lock_timeout`: a batch that waited
/// that long marks its conversations contended, and theirs are then written under locks
/// taken in id order. (Taking them in id order here too cost 8–10% of the throughput.)
async fn insert_and_notify<'c, E>(
    executor: E,
    plan: &Plan,
    now: DateTime<Utc>,
    payloads: Vec<String>,
) -> sqlx::Result<()>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let rows: Vec<&MessageRow> = plan.inserts().collect();
    let touched_ids: Vec<Uuid> = plan.touched.keys().copied().collect();
    let touches: Vec<_> = plan.touched.values().collect();
    sqlx::query(concat!(
        "WITH old AS (\
           SELECT id, head_seq, provider_read_seq, customer_read_seq FROM conversations \
           WHERE id = ANY($9::uuid[]) FOR UPDATE), \
         upd AS (\
           UPDATE conversations c \
             SET head_seq = CASE WHEN c.head_seq = u.base THEN u.head ELSE -1 END, \
             last_activity_at = GREATEST(c.last_activity_at, $8), \
             inbox_at = CASE WHEN chat_activity_minute(c.inbox_at) \
               = chat_activity_minute(GREATEST(c.last_activity_at, $8)) \
               THEN c.inbox_at ELSE GREATEST(c.last_activity_at, $8) END, \
             provider_read_seq = GREATEST(c.provider_read_seq, u.pr), \
             customer_read_seq = GREATEST(c.customer_read_seq, u.cr) \
           FROM unnest($9::uuid[], $10::bigint[], $11::bigint[], $12::bigint[], \
             $13::bigint[], $14::text[]) AS u(id, head, pr, cr, base, cu) \
             JOIN old o ON o.id = u.id \
           WHERE c.id = u.id \
           RETURNING c.head_seq = u.head AND c.status = ",
        active_status_sql!(),
        " \
             AND c.customer_id IS NOT DISTINCT FROM NULLIF(u.cu, '') AS planned, \
             c.provider_id, c.customer_id, \
             greatest(c.head_seq - c.provider_read_seq, 0) AS p_new, \
             greatest(o.head_seq - o.provider_read_seq, 0) AS p_old, \
             greatest(c.head_seq - c.customer_read_seq, 0) AS c_new, \
             greatest(o.head_seq - o.customer_read_seq, 0) AS c_old), \
         unread AS (\
           INSERT INTO unread_counts AS n (role, participant_id, unread_messages, \
             unread_conversations) \
           SELECT role, pid, sum(new - old), sum((new > 0)::int - (old > 0)::int) \
           FROM (SELECT 1::smallint, provider_id, p_new, p_old FROM upd \
             UNION ALL SELECT 2::smallint, customer_id, c_new, c_old FROM upd \
               WHERE customer_id IS NOT NULL) AS d(role, pid, new, old) \
           GROUP BY role, pid HAVING sum(new - old) <> 0 \
             OR sum((new > 0)::int - (old > 0)::int) <> 0 \
           ORDER BY role, pid \
           ON CONFLICT (role, participant_id) DO UPDATE SET \
             unread_messages = n.unread_messages + excluded.unread_messages, \
             unread_conversations = n.unread_conversations + excluded.unread_conversations), \
         ins AS (\
           INSERT INTO messages (conversation_id, seq, id, sender_role, sender_id, body, \
             client_message_id, created_at, pos, attachments) \
           SELECT c, s, i, r, si, b, NULLIF(cm, ''), $8, (SELECT inbox_pos()), \
             NULLIF(f, '')::jsonb \
           FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::smallint[], $5::text[], \
             $6::text[], $7::text[], $17::text[]) AS t(c, s, i, r, si, b, cm, f) \
           RETURNING 1) \
         SELECT CASE WHEN (SELECT count(*) FROM upd WHERE planned) = cardinality($9::uuid[]) \
           THEN pg_notify($15, p) ELSE chat_send_conflict() END \
         FROM unnest($16::text[]) AS p",
    ))
    .bind(rows.iter().map(|r| r.conversation_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.seq).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.sender_role).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.sender_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.body.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.client_message_id.as_deref().unwrap_or(""))
            .collect::<Vec<_>>(),
    )
    .bind(now)
    .bind(&touched_ids)
    .bind(touches.iter().map(|t| t.head).collect::<Vec<_>>())
    .bind(touches.iter().map(|t| t.provider_read).collect::<Vec<_>>())
    .bind(touches.iter().map(|t| t.customer_read).collect::<Vec<_>>())
    .bind(touches.iter().map(|t| t.base).collect::<Vec<_>>())
    .bind(
        touches
            .iter()
            .map(|t| t.customer_id.as_deref().unwrap_or(""))
            .collect::<Vec<_>>(),
    )
    .bind(CHANNEL)
    .bind(payloads)
    .bind(rows.iter().map(|r| attachments_json(r)).collect::<Vec<_>>())
    .execute(executor)
    .await?;
    Ok(())
}

/// A message's attachments as the jsonb column takes them; empty (stored NULL) when it
/// has none, which costs a send without attachments nothing but the empty string.
fn attachments_json(row: &MessageRow) -> String {
    match row.attachments() {
        [] => String::new(),
        // Plain data always serialises.
        list => serde_json::to_string(list).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::plan::Touch;

    fn plan(conversations: usize, messages_each: usize, body: &str) -> Plan {
        let mut decisions = Vec::new();
        let mut touched = BTreeMap::new();
        for _ in 0..conversations {
            let id = Uuid::now_v7();
            for seq in 1..=messages_each {
                decisions.push(Decision::Insert(MessageRow {
                    conversation_id: crate::domain::ConversationId(id),
                    seq: i64::try_from(seq).unwrap(),
                    id: Uuid::now_v7(),
                    sender_role: crate::domain::Role::Provider,
                    sender_id: "p1".into(),
                    body: body.into(),
                    client_message_id: None,
                    created_at: Utc::now().trunc_subsecs(6),
                    edited_at: None,
                    edit_count: 0,
                    deleted: false,
                    attachments: None,
                    last_change: 0,
                }));
            }
            let touch = Touch {
                base: 0,
                head: i64::try_from(messages_each).unwrap(),
                provider_read: 0,
                customer_read: 0,
                provider_id: "p1".into(),
                customer_id: None,
            };
            touched.insert(id, touch);
        }
        Plan { decisions, touched }
    }

    fn decoded(payloads: &[String]) -> Vec<Touched> {
        payloads
            .iter()
            .flat_map(|payload| match Notice::decode(payload) {
                Some(Notice::Messages { touched }) => touched,
                other => panic!("not a messages notice: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn payloads_carry_every_message_that_fits_and_stay_under_the_limit() {
        let plan = plan(40, 5, &"x".repeat(100));
        let payloads = payloads(&plan);
        assert!(payloads.len() > 1, "chunked");
        assert!(payloads.iter().all(|p| p.len() < 8000));
        let touched = decoded(&payloads);
        assert_eq!(touched.len(), 40);
        for t in &touched {
            let seqs: Vec<i64> = t.messages.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
            let rows: Vec<MessageRow> = t
                .messages
                .iter()
                .filter_map(|m| m.clone().into_row(t.conversation_id))
                .collect();
            let stored: Vec<&MessageRow> = plan
                .inserts()
                .filter(|r| r.conversation_id.0 == t.conversation_id)
                .collect();
            assert_eq!(rows.iter().collect::<Vec<_>>(), stored);
        }
    }

    #[test]
    fn messages_too_large_to_carry_are_left_to_be_read() {
        let plan = plan(3, 1, &"€".repeat(3000));
        let payloads = payloads(&plan);
        assert!(payloads.iter().all(|p| p.len() < 8000));
        let touched = decoded(&payloads);
        assert_eq!(touched.len(), 3);
        assert!(
            touched
                .iter()
                .all(|t| t.messages.is_empty() && t.head_seq == 1)
        );
    }
}
