//! The outbox: calls to conversation-service that must happen, kept in the same database
//! as the session they belong to so they are queued atomically with it. Per session they
//! run strictly in order (UpdateCustomer after CreateConversation); a call is held by one
//! caller at a time through a lease.

use rusqlite::{Connection, Row, TransactionBehavior, params};

use super::{Store, optional, sessions::session_by_id, uuid_at};
use crate::{
    domain::{ContactDetails, Session, SessionId, Timestamp, to_micros},
    error::{Error, Refusal, StoreResultExt},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxCall {
    CreateConversation {
        request_id: String,
        provider_id: String,
        customer_id: Option<String>,
        reuse_active: bool,
        origin: String,
    },
    UpdateCustomer {
        /// The session's conversation when the job was loaded; `None` while pending.
        conversation_id: Option<String>,
        customer_id: String,
        contact: ContactDetails,
    },
}

#[derive(Debug, Clone)]
pub struct OutboxJob {
    pub job_id: i64,
    pub session_id: SessionId,
    /// Attempts that failed before this one.
    pub attempts: u32,
    pub call: OutboxCall,
}

/// Only the head of a session's queue may run; a call refused for good no longer blocks.
const IS_HEAD: &str = "NOT EXISTS (SELECT 1 FROM outbox p WHERE p.session_id = o.session_id
                                   AND p.job_id < o.job_id AND p.failed_time IS NULL)";

const JOB_COLUMNS: &str = "o.job_id, o.session_id, o.kind, o.request_id, o.reuse_active, o.origin,
     o.customer_id, o.name, o.email, o.phone, o.attempts, s.provider_id, s.conversation_id";

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<OutboxJob> {
    let kind: String = row.get(2)?;
    let customer_id: Option<String> = row.get(6)?;
    let call = if kind == "create_conversation" {
        OutboxCall::CreateConversation {
            request_id: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
            provider_id: row.get(11)?,
            customer_id,
            reuse_active: row.get(4)?,
            origin: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
        }
    } else {
        OutboxCall::UpdateCustomer {
            conversation_id: row.get(12)?,
            customer_id: customer_id.unwrap_or_default(),
            contact: ContactDetails {
                name: row.get(7)?,
                email: row.get(8)?,
                phone: row.get(9)?,
            },
        }
    };
    let attempts: i64 = row.get(10)?;
    Ok(OutboxJob {
        job_id: row.get(0)?,
        session_id: SessionId::from_uuid(uuid_at(row, 1)?),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        call,
    })
}

fn load_job(conn: &Connection, job_id: i64) -> Result<Option<OutboxJob>, Error> {
    optional(conn.query_row(
        &format!(
            "SELECT {JOB_COLUMNS} FROM outbox o JOIN chat_sessions s USING (session_id)
             WHERE o.job_id = ?1"
        ),
        [job_id],
        job_from_row,
    ))
    .context("reading an outbox call")
}

/// Queues a call; `lease_until` reserves it for the caller that will make it right away.
pub(super) fn enqueue(
    conn: &Connection,
    session_id: SessionId,
    call: &OutboxCall,
    now: Timestamp,
    lease_until: Option<Timestamp>,
) -> Result<OutboxJob, Error> {
    let lease = lease_until.map_or(0, to_micros);
    match call {
        OutboxCall::CreateConversation {
            request_id,
            customer_id,
            reuse_active,
            origin,
            ..
        } => conn.execute(
            "INSERT INTO outbox (session_id, kind, request_id, reuse_active, origin, customer_id,
                                 next_attempt_time, lease_until, create_time)
             VALUES (?1, 'create_conversation', ?2, ?3, ?4, ?5, ?6, ?7, ?6)",
            params![
                session_id.to_string(),
                request_id,
                reuse_active,
                origin,
                customer_id,
                to_micros(now),
                lease
            ],
        ),
        OutboxCall::UpdateCustomer {
            customer_id,
            contact,
            ..
        } => conn.execute(
            "INSERT INTO outbox (session_id, kind, customer_id, name, email, phone,
                                 next_attempt_time, lease_until, create_time)
             VALUES (?1, 'update_customer', ?2, ?3, ?4, ?5, ?6, ?7, ?6)",
            params![
                session_id.to_string(),
                customer_id,
                contact.name,
                contact.email,
                contact.phone,
                to_micros(now),
                lease
            ],
        ),
    }
    .context("queueing a call")?;
    load_job(conn, conn.last_insert_rowid())?
        .ok_or_else(|| Error::Internal("a queued call vanished".into()))
}

/// Calls still queued for a session.
pub(super) fn queued_for(conn: &Connection, session_id: SessionId) -> Result<i64, Error> {
    conn.query_row(
        "SELECT count(*) FROM outbox WHERE session_id = ?1 AND failed_time IS NULL",
        [session_id.to_string()],
        |r| r.get(0),
    )
    .context("counting queued calls")
}

/// Takes the lease of a session's first queued call if nobody holds it.
pub(super) fn lease_head(
    conn: &Connection,
    session_id: SessionId,
    now: Timestamp,
    lease: chrono::Duration,
) -> Result<Option<OutboxJob>, Error> {
    let job_id: Option<i64> = optional(conn.query_row(
        "SELECT job_id FROM outbox WHERE session_id = ?1 AND failed_time IS NULL
         ORDER BY job_id LIMIT 1",
        [session_id.to_string()],
        |r| r.get(0),
    ))
    .context("finding a session's next call")?;
    let Some(job_id) = job_id else {
        return Ok(None);
    };
    let taken = conn
        .execute(
            "UPDATE outbox SET lease_until = ?2 WHERE job_id = ?1 AND lease_until <= ?3",
            params![job_id, to_micros(now + lease), to_micros(now)],
        )
        .context("leasing a call")?;
    if taken == 1 {
        load_job(conn, job_id)
    } else {
        Ok(None)
    }
}

/// Voids every lease: called when this process opens the database. It holds the
/// writer lock, so leases in the file were taken by a run that is gone (one killed
/// mid-call); their calls are due now.
pub(super) fn release_leases(conn: &Connection) -> Result<usize, Error> {
    conn.execute(
        "UPDATE outbox SET lease_until = 0, next_attempt_time = 0 WHERE lease_until <> 0",
        [],
    )
    .context("releasing leases")
}

/// What a call achieved.
#[derive(Debug, Clone)]
pub enum Done {
    ConversationCreated { conversation_id: String },
    CustomerUpdated,
}

impl Store {
    /// Leases up to `limit` due calls, each the head of its session's queue.
    pub async fn claim_due(
        &self,
        now: Timestamp,
        limit: u32,
        lease: chrono::Duration,
    ) -> Result<Vec<OutboxJob>, Error> {
        self.call(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .context("claiming outbox calls")?;
            let ids = {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "SELECT o.job_id FROM outbox o
                         WHERE o.failed_time IS NULL AND o.next_attempt_time <= ?1
                           AND o.lease_until <= ?1 AND {IS_HEAD}
                         ORDER BY o.job_id LIMIT ?2"
                    ))
                    .context("claiming outbox calls")?;
                stmt.query_map(params![to_micros(now), i64::from(limit)], |r| {
                    r.get::<_, i64>(0)
                })
                .context("claiming outbox calls")?
                .collect::<rusqlite::Result<Vec<_>>>()
                .context("claiming outbox calls")?
            };
            let mut jobs = Vec::with_capacity(ids.len());
            for id in ids {
                tx.execute(
                    "UPDATE outbox SET lease_until = ?2 WHERE job_id = ?1",
                    params![id, to_micros(now + lease)],
                )
                .context("leasing a call")?;
                jobs.extend(load_job(&tx, id)?);
            }
            tx.commit().context("claiming outbox calls")?;
            Ok(jobs)
        })
        .await
    }

    /// Records a call's effect and removes it from the queue, atomically.
    pub async fn complete(&self, job: &OutboxJob, done: Done) -> Result<Session, Error> {
        let (job_id, session_id) = (job.job_id, job.session_id);
        self.call(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .context("completing a call")?;
            match &done {
                Done::ConversationCreated { conversation_id } => {
                    // Set once: CreateConversation is idempotent by the session id, so a
                    // second success names the same conversation.
                    tx.execute(
                        "UPDATE chat_sessions SET conversation_id = ?2
                         WHERE session_id = ?1 AND conversation_id IS NULL",
                        params![session_id.to_string(), conversation_id],
                    )
                    .context("recording a conversation")?;
                }
                Done::CustomerUpdated => {
                    tx.execute(
                        "UPDATE chat_sessions SET link_error_reason = NULL WHERE session_id = ?1",
                        [session_id.to_string()],
                    )
                    .context("recording a linked customer")?;
                }
            }
            tx.execute("DELETE FROM outbox WHERE job_id = ?1", [job_id])
                .context("completing a call")?;
            let session = session_by_id(&tx, session_id)?;
            tx.commit().context("completing a call")?;
            if let Done::ConversationCreated { conversation_id } = &done
                && session.conversation_id.as_deref() != Some(conversation_id.as_str())
            {
                tracing::error!(%session_id, %conversation_id, recorded = ?session.conversation_id,
                    "conversation-service returned a different conversation for the same request_id");
            }
            Ok(session)
        })
        .await
    }

    /// Puts a call back to be retried at `next_attempt`.
    pub async fn retry_later(
        &self,
        job_id: i64,
        next_attempt: Timestamp,
        error: String,
    ) -> Result<(), Error> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_time = ?2,
                                   lease_until = 0, last_error = ?3
                 WHERE job_id = ?1",
                params![job_id, to_micros(next_attempt), error],
            )
            .context("rescheduling a call")?;
            Ok(())
        })
        .await
    }

    /// Gives a call up (conversation-service refused it for good): it stays in the outbox
    /// with `failed_time` and the reason for operators, and a refused UpdateCustomer
    /// marks its session's link as failed, with that reason.
    pub async fn give_up(
        &self,
        job_id: i64,
        now: Timestamp,
        refusal: &Refusal,
    ) -> Result<(), Error> {
        let (error, reason) = (refusal.to_string(), refusal.reason.clone());
        self.call(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .context("giving up a call")?;
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, failed_time = ?2, lease_until = 0,
                                   last_error = ?3, error_reason = ?4
                 WHERE job_id = ?1",
                params![job_id, to_micros(now), error, reason],
            )
            .context("giving up a call")?;
            tx.execute(
                "UPDATE chat_sessions SET link_error_reason = ?2
                 WHERE session_id = (SELECT session_id FROM outbox
                                     WHERE job_id = ?1 AND kind = 'update_customer')",
                params![job_id, reason],
            )
            .context("giving up a call")?;
            tx.commit().context("giving up a call")?;
            Ok(())
        })
        .await
    }
}

impl Store {
    /// Makes every queued call due at `now` (not those given up, not those leased).
    pub async fn reschedule_all(&self, now: Timestamp) -> Result<usize, Error> {
        self.call(move |conn| {
            conn.execute(
                "UPDATE outbox SET next_attempt_time = ?1
                 WHERE failed_time IS NULL AND next_attempt_time > ?1",
                [to_micros(now)],
            )
            .context("rescheduling the outbox")
        })
        .await
    }
}
