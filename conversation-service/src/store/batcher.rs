//! The write path of SendMessage. NOTIFY takes a global lock from pre-commit to the WAL
//! flush, so one transaction (and one NOTIFY) per message caps throughput; concurrent
//! sends are instead queued and written together: one transaction per batch, each caller
//! answered once its message is committed.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::AssertSqlSafe;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::{MESSAGE_COLUMNS, MessageRow, Store};
use crate::{
    domain::{ConversationId, Participant, Role, Status},
    error::{Error, Result},
    realtime::{Notice, Touched},
};

/// A validated message to append.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conversation_id: ConversationId,
    pub sender: Participant,
    pub body: String,
    pub client_message_id: Option<String>,
}

/// The message and whether it was created now (false: an idempotent retry).
pub type Sent = (MessageRow, bool);
type Job = (NewMessage, oneshot::Sender<Result<Sent>>);

/// Handle to the writer tasks; cheap to clone.
#[derive(Clone)]
pub struct SendQueue {
    jobs: mpsc::Sender<Job>,
}

impl SendQueue {
    /// Starts `writers` tasks, each writing up to `batch_max` queued messages per
    /// transaction. They stop once every handle is dropped and the queue is drained.
    pub fn start(store: Store, writers: usize, batch_max: usize) -> Self {
        let batch_max = batch_max.max(1);
        let (jobs, receiver) = mpsc::channel::<Job>(batch_max * writers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..writers.max(1) {
            let store = store.clone();
            let receiver = Arc::clone(&receiver);
            tokio::spawn(async move {
                loop {
                    let mut batch = Vec::new();
                    {
                        // Whoever holds the receiver collects the next batch; the others
                        // wait here while it is written, so batches grow under load.
                        let mut receiver = receiver.lock().await;
                        let Some(first) = receiver.recv().await else {
                            return;
                        };
                        batch.push(first);
                        while batch.len() < batch_max {
                            match receiver.try_recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => break,
                            }
                        }
                    }
                    let (size, started) = (batch.len(), std::time::Instant::now());
                    write_and_answer(&store, batch).await;
                    crate::metrics::send_batch(size, started.elapsed());
                }
            });
        }
        Self { jobs }
    }

    /// Appends one message; resolves once it is committed (or found, for a retry).
    pub async fn send(&self, message: NewMessage) -> Result<Sent> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send((message, reply))
            .await
            .map_err(|_| Error::Unavailable("the service is shutting down".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the message writer stopped".into()))?
    }
}

async fn write_and_answer(store: &Store, batch: Vec<Job>) {
    let (messages, replies): (Vec<NewMessage>, Vec<_>) = batch.into_iter().unzip();
    if messages.len() > 1 {
        match store.write_messages(&messages).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
                return;
            }
            Err(Error::Unavailable(message)) => {
                // The database is gone: writing singly would only wait longer.
                for reply in replies {
                    let _ = reply.send(Err(Error::Unavailable(message.clone())));
                }
                return;
            }
            Err(error) => {
                // One bad apple (or a race with another replica on a client_message_id)
                // must not fail its neighbours: write each alone.
                tracing::debug!(%error, size = messages.len(), "batch failed; writing singly");
            }
        }
    }
    for (message, reply) in messages.into_iter().zip(replies) {
        let _ = reply.send(write_one(store, message).await);
    }
}

async fn write_one(store: &Store, message: NewMessage) -> Result<Sent> {
    let messages = [message];
    // A duplicate client_message_id that another replica committed first shows up as a
    // unique violation; the second attempt finds that message instead.
    for _ in 0..2 {
        match store.write_messages(&messages).await {
            Ok(mut results) => return results.pop().unwrap_or(Err(Error::NotFound("message"))),
            Err(Error::FailedPrecondition {
                reason: "DUPLICATE_CLIENT_MESSAGE_ID",
                ..
            }) => {}
            Err(error) => return Err(error),
        }
    }
    Err(Error::Unavailable(
        "could not write the message, retry".into(),
    ))
}

/// What happened to one message of a batch while deciding.
enum Outcome {
    Done(Result<Sent>),
    /// Same `(conversation, client_message_id)` as an earlier message of the batch.
    SameAs(usize),
    Insert(MessageRow),
}

#[derive(sqlx::FromRow)]
struct Locked {
    id: Uuid,
    provider_id: String,
    customer_id: Option<String>,
    status: i16,
    head_seq: i64,
}

/// The head, time and senders' read positions a batch leaves on one conversation.
struct Touch {
    head: i64,
    provider_read: i64,
    customer_read: i64,
    provider_id: String,
    customer_id: Option<String>,
}

const MAX_NOTIFY_BYTES: usize = 7000;

impl Store {
    /// Writes a batch in one transaction. The outer error fails the whole batch; the
    /// inner ones belong to single messages (not found, not a participant, closed).
    pub(crate) async fn write_messages(&self, batch: &[NewMessage]) -> Result<Vec<Result<Sent>>> {
        let ctx = "send messages";
        let mut ids: Vec<Uuid> = batch.iter().map(|m| m.conversation_id.0).collect();
        ids.sort_unstable();
        ids.dedup();

        let mut tx = self.pool.begin().await.map_err(|e| Error::db(ctx, e))?;
        // Locks in id order so concurrent batches cannot deadlock; seq is assigned under
        // these locks, which is what makes seq order commit order with no gaps.
        let locked: Vec<Locked> = sqlx::query_as(
            "SELECT id, provider_id, customer_id, status, head_seq FROM conversations \
             WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| Error::db(ctx, e))?;
        let mut conversations: HashMap<Uuid, Locked> =
            locked.into_iter().map(|c| (c.id, c)).collect();

        let existing = existing_by_client_id(&mut tx, batch).await?;
        let now: DateTime<Utc> = Utc::now().trunc_subsecs(6);
        let mut seen: HashMap<(Uuid, &str), usize> = HashMap::new();
        let mut touched: HashMap<Uuid, Touch> = HashMap::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            let conversation_id = message.conversation_id.0;
            let Some(conversation) = conversations.get_mut(&conversation_id) else {
                outcomes.push(Outcome::Done(Err(Error::NotFound("conversation"))));
                continue;
            };
            if !message.sender.belongs_to(
                &conversation.provider_id,
                conversation.customer_id.as_deref(),
            ) {
                outcomes.push(Outcome::Done(Err(Error::not_participant())));
                continue;
            }
            if let Some(client_id) = message.client_message_id.as_deref() {
                if let Some(found) = existing.get(&(conversation_id, client_id.to_owned())) {
                    outcomes.push(Outcome::Done(Ok((found.clone(), false))));
                    continue;
                }
                if let Some(&first) = seen.get(&(conversation_id, client_id)) {
                    outcomes.push(Outcome::SameAs(first));
                    continue;
                }
                seen.insert((conversation_id, client_id), index);
            }
            if Status::from_i16(conversation.status) == Status::Closed {
                outcomes.push(Outcome::Done(Err(Error::closed())));
                continue;
            }
            conversation.head_seq += 1;
            let seq = conversation.head_seq;
            let touch = touched.entry(conversation_id).or_insert_with(|| Touch {
                head: seq,
                provider_read: 0,
                customer_read: 0,
                provider_id: conversation.provider_id.clone(),
                customer_id: conversation.customer_id.clone(),
            });
            touch.head = seq;
            match message.sender.role {
                Role::Provider => touch.provider_read = seq,
                Role::Customer => touch.customer_read = seq,
            }
            outcomes.push(Outcome::Insert(MessageRow {
                conversation_id,
                seq,
                id: Uuid::now_v7(),
                sender_role: message.sender.role.as_i16(),
                sender_id: message.sender.id.clone(),
                body: message.body.clone(),
                client_message_id: message.client_message_id.clone(),
                created_at: now,
            }));
        }

        if !touched.is_empty() {
            insert_and_notify(&mut tx, &outcomes, &touched, now).await?;
        }
        tx.commit().await.map_err(|e| Error::db(ctx, e))?;

        let mut results: Vec<Result<Sent>> = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let result = match outcome {
                Outcome::Done(result) => result,
                Outcome::Insert(row) => Ok((row, true)),
                Outcome::SameAs(first) => match results.get(first) {
                    Some(Ok((row, _))) => Ok((row.clone(), false)),
                    Some(Err(error)) => Err(clone_error(error)),
                    None => Err(Error::NotFound("message")),
                },
            };
            results.push(result);
        }
        Ok(results)
    }
}

async fn existing_by_client_id(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &[NewMessage],
) -> Result<HashMap<(Uuid, String), MessageRow>> {
    let (ids, client_ids): (Vec<Uuid>, Vec<String>) = batch
        .iter()
        .filter_map(|m| Some((m.conversation_id.0, m.client_message_id.clone()?)))
        .unzip();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE (conversation_id, client_message_id) \
         IN (SELECT * FROM unnest($1::uuid[], $2::text[]))"
    );
    let rows: Vec<MessageRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(ids)
        .bind(client_ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| Error::db("find messages by client id", e))?;
    Ok(rows
        .into_iter()
        .filter_map(|row| Some(((row.conversation_id, row.client_message_id.clone()?), row)))
        .collect())
}

/// One statement: insert the rows, move each conversation's head, time and the senders'
/// read positions, and queue the NOTIFY (chunked under PostgreSQL's 8000-byte payload).
async fn insert_and_notify(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    outcomes: &[Outcome],
    touched: &HashMap<Uuid, Touch>,
    now: DateTime<Utc>,
) -> Result<()> {
    let rows: Vec<&MessageRow> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Insert(row) => Some(row),
            _ => None,
        })
        .collect();
    let mut payloads = Vec::new();
    let mut chunk: Vec<Touched> = Vec::new();
    let mut chunk_bytes = 0;
    for (id, touch) in touched {
        let item = Touched {
            c: *id,
            s: touch.head,
            p: touch.provider_id.clone(),
            u: touch.customer_id.clone(),
        };
        let size = 80 + item.p.len() + item.u.as_ref().map_or(0, String::len);
        if chunk_bytes + size > MAX_NOTIFY_BYTES && !chunk.is_empty() {
            payloads.push(
                Notice::Messages {
                    m: std::mem::take(&mut chunk),
                }
                .encode(),
            );
            chunk_bytes = 0;
        }
        chunk_bytes += size;
        chunk.push(item);
    }
    if !chunk.is_empty() {
        payloads.push(Notice::Messages { m: chunk }.encode());
    }
    let touched_ids: Vec<Uuid> = touched.keys().copied().collect();
    sqlx::query(
        "WITH ins AS (\
           INSERT INTO messages (conversation_id, seq, id, sender_role, sender_id, body, \
             client_message_id, created_at) \
           SELECT c, s, i, r, si, b, NULLIF(cm, ''), $8 \
           FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::smallint[], $5::text[], \
             $6::text[], $7::text[]) AS t(c, s, i, r, si, b, cm) \
           RETURNING 1), \
         upd AS (\
           UPDATE conversations c SET head_seq = u.head, last_activity_at = $8, \
             provider_read_seq = GREATEST(c.provider_read_seq, u.pr), \
             customer_read_seq = GREATEST(c.customer_read_seq, u.cr) \
           FROM unnest($9::uuid[], $10::bigint[], $11::bigint[], $12::bigint[]) AS u(id, head, pr, cr) \
           WHERE c.id = u.id RETURNING 1) \
         SELECT pg_notify($13, p) FROM unnest($14::text[]) AS p",
    )
    .bind(rows.iter().map(|r| r.conversation_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.seq).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.sender_role).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.sender_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.client_message_id.as_deref().unwrap_or(""))
            .collect::<Vec<_>>(),
    )
    .bind(now)
    .bind(&touched_ids)
    .bind(touched_ids.iter().map(|id| touched[id].head).collect::<Vec<_>>())
    .bind(touched_ids.iter().map(|id| touched[id].provider_read).collect::<Vec<_>>())
    .bind(touched_ids.iter().map(|id| touched[id].customer_read).collect::<Vec<_>>())
    .bind(super::CHANNEL)
    .bind(payloads)
    .execute(&mut **tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.constraint() == Some("messages_client_message_id_key") => {
            Error::FailedPrecondition {
                reason: "DUPLICATE_CLIENT_MESSAGE_ID",
                message: "a message with this client_message_id was written concurrently".into(),
            }
        }
        _ => Error::db("insert messages", e),
    })?;
    Ok(())
}

/// Per-message outcomes are only the plain kinds below; anything else is a batch error.
fn clone_error(error: &Error) -> Error {
    match error {
        Error::NotFound(what) => Error::NotFound(what),
        Error::PermissionDenied { reason, message } => Error::PermissionDenied {
            reason,
            message: message.clone(),
        },
        Error::FailedPrecondition { reason, message } => Error::FailedPrecondition {
            reason,
            message: message.clone(),
        },
        other => Error::Unavailable(other.to_string()),
    }
}
