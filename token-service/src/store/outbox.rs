//! The outbox: calls to conversation-service that must happen, kept in the same database
//! as the session they belong to so they are queued atomically with it. Per session they
//! run strictly in order (UpdateCustomer after CreateConversation), and never two at once:
//! a call is handed out only with its session's [`Turn`].

use rusqlite::{Connection, Row, params};

use super::{
    session_rows::session_by_id,
    sql::{Cached, optional},
    thread::Store,
    turns::{InFlight, Turn},
};
use crate::{
    domain::{
        CallId, CallKind, ContactDetails, ConversationId, CustomerId, ProviderId, Session,
        SessionId, Timestamp, to_micros,
    },
    error::{Error, Refusal, StoreResultExt},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxCall {
    CreateConversation {
        /// The session's id: every retry names the same conversation.
        request_id: SessionId,
        provider_id: ProviderId,
        customer_id: Option<CustomerId>,
        reuse_active: bool,
        origin: String,
    },
    UpdateCustomer {
        /// The session's conversation when the job was loaded; `None` while pending.
        conversation_id: Option<ConversationId>,
        customer_id: CustomerId,
        contact: ContactDetails,
    },
}

impl OutboxCall {
    fn kind(&self) -> CallKind {
        match self {
            Self::CreateConversation { .. } => CallKind::CreateConversation,
            Self::UpdateCustomer { .. } => CallKind::UpdateCustomer,
        }
    }
}

/// A queued call handed out to be made now, with its session's turn.
#[derive(Debug)]
pub struct OutboxJob {
    pub job_id: CallId,
    pub session_id: SessionId,
    /// Attempts that failed before this one.
    pub attempts: u32,
    pub call: OutboxCall,
    /// Held until the job is dropped, after its outcome is recorded.
    _turn: Turn,
}

/// A queued call as stored.
struct Queued {
    job_id: CallId,
    session_id: SessionId,
    attempts: u32,
    call: OutboxCall,
}

/// Only the head of a session's queue may run; a call refused for good no longer blocks.
const IS_HEAD: &str = "NOT EXISTS (SELECT 1 FROM outbox p WHERE p.session_id = o.session_id
                                   AND p.job_id < o.job_id AND p.failed_time IS NULL)";

const JOB_COLUMNS: &str = "o.job_id AS job_id, o.session_id AS session_id, o.kind AS kind,
     o.request_id AS request_id, o.reuse_active AS reuse_active, o.origin AS origin,
     o.customer_id AS customer_id, o.name AS name, o.email AS email, o.phone AS phone,
     o.attempts AS attempts, s.provider_id AS provider_id, s.conversation_id AS conversation_id";

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Queued> {
    let call = match row.get("kind")? {
        CallKind::CreateConversation => OutboxCall::CreateConversation {
            request_id: row.get("request_id")?,
            provider_id: row.get("provider_id")?,
            customer_id: row.get("customer_id")?,
            reuse_active: row.get("reuse_active")?,
            origin: row.get("origin")?,
        },
        CallKind::UpdateCustomer => OutboxCall::UpdateCustomer {
            conversation_id: row.get("conversation_id")?,
            customer_id: row.get("customer_id")?,
            contact: ContactDetails {
                name: row.get("name")?,
                email: row.get("email")?,
                phone: row.get("phone")?,
            },
        },
    };
    Ok(Queued {
        job_id: row.get("job_id")?,
        session_id: row.get("session_id")?,
        attempts: row.get("attempts")?,
        call,
    })
}

fn load_job(conn: &Connection, job_id: CallId) -> Result<Option<Queued>, Error> {
    optional(conn.query_row_cached(
        &format!(
            "SELECT {JOB_COLUMNS} FROM outbox o JOIN chat_sessions s USING (session_id)
             WHERE o.job_id = ?1"
        ),
        [job_id],
        job_from_row,
    ))
    .context("reading an outbox call")
}

/// Hands a queued call out with its session's turn; `None` while another call of the
/// session is being made (or the call is gone).
pub(super) fn hand_out(
    conn: &Connection,
    in_flight: &InFlight,
    job_id: CallId,
) -> Result<Option<OutboxJob>, Error> {
    let Some(queued) = load_job(conn, job_id)? else {
        return Ok(None);
    };
    Ok(in_flight.take(queued.session_id).map(|turn| OutboxJob {
        job_id: queued.job_id,
        session_id: queued.session_id,
        attempts: queued.attempts,
        call: queued.call,
        _turn: turn,
    }))
}

/// Queues a call; returns its id.
pub(super) fn enqueue(
    conn: &Connection,
    session_id: SessionId,
    call: &OutboxCall,
    now: Timestamp,
) -> Result<CallId, Error> {
    let kind = call.kind();
    match call {
        OutboxCall::CreateConversation {
            request_id,
            customer_id,
            reuse_active,
            origin,
            ..
        } => conn.execute_cached(
            "INSERT INTO outbox (session_id, kind, request_id, reuse_active, origin, customer_id,
                                 next_attempt_time, create_time)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![
                session_id,
                kind,
                request_id,
                reuse_active,
                origin,
                customer_id,
                to_micros(now),
            ],
        ),
        OutboxCall::UpdateCustomer {
            customer_id,
            contact,
            ..
        } => conn.execute_cached(
            "INSERT INTO outbox (session_id, kind, customer_id, name, email, phone,
                                 next_attempt_time, create_time)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![
                session_id,
                kind,
                customer_id,
                contact.name,
                contact.email,
                contact.phone,
                to_micros(now),
            ],
        ),
    }
    .context("queueing a call")?;
    CallId::parse(conn.last_insert_rowid())
        .map_err(|_| Error::Internal("the outbox handed out a call id below 1".into()))
}

/// Calls still queued for a session.
pub(super) fn queued_for(conn: &Connection, session_id: SessionId) -> Result<i64, Error> {
    conn.query_row_cached(
        "SELECT count(*) AS queued FROM outbox WHERE session_id = ?1 AND failed_time IS NULL",
        [session_id],
        |r| r.get("queued"),
    )
    .context("counting queued calls")
}

/// Hands out a session's first queued call, unless one of its calls is being made.
pub(super) fn head_of(
    conn: &Connection,
    in_flight: &InFlight,
    session_id: SessionId,
) -> Result<Option<OutboxJob>, Error> {
    let job_id: Option<CallId> = optional(conn.query_row_cached(
        "SELECT job_id FROM outbox WHERE session_id = ?1 AND failed_time IS NULL
         ORDER BY job_id LIMIT 1",
        [session_id],
        |r| r.get("job_id"),
    ))
    .context("finding a session's next call")?;
    match job_id {
        Some(job_id) => hand_out(conn, in_flight, job_id),
        None => Ok(None),
    }
}

/// What a call achieved.
#[derive(Debug, Clone)]
pub enum Done {
    ConversationCreated { conversation_id: ConversationId },
    CustomerUpdated,
}

impl Store {
    /// Hands out up to `limit` due calls, each the head of its session's queue and of a
    /// session with no call being made.
    pub async fn claim_due(&self, now: Timestamp, limit: u32) -> Result<Vec<OutboxJob>, Error> {
        let in_flight = self.in_flight.clone();
        self.call(move |conn| {
            let conn: &Connection = conn;
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT o.job_id FROM outbox o
                     WHERE o.failed_time IS NULL AND o.next_attempt_time <= ?1 AND {IS_HEAD}
                     ORDER BY o.job_id"
                ))
                .context("claiming outbox calls")?;
            let mut ids = stmt
                .query_map([to_micros(now)], |r| r.get::<_, CallId>("job_id"))
                .context("claiming outbox calls")?;
            let mut jobs = Vec::new();
            // Lazily: sessions in flight are skipped without reading the whole queue.
            while jobs.len() < limit as usize
                && let Some(id) = ids.next()
            {
                let id = id.context("claiming outbox calls")?;
                jobs.extend(hand_out(conn, &in_flight, id)?);
            }
            Ok(jobs)
        })
        .await
    }

    /// Records a call's effect and removes it from the queue, atomically.
    pub async fn complete(&self, job: &OutboxJob, done: Done) -> Result<Session, Error> {
        let (job_id, session_id) = (job.job_id, job.session_id);
        self.call(move |conn| {
            match &done {
                Done::ConversationCreated { conversation_id } => {
                    // Set once: CreateConversation is idempotent by the session id, so a
                    // second success names the same conversation.
                    conn.execute_cached(
                        "UPDATE chat_sessions SET conversation_id = ?2
                         WHERE session_id = ?1 AND conversation_id IS NULL",
                        params![session_id, conversation_id],
                    )
                    .context("recording a conversation")?;
                }
                Done::CustomerUpdated => {
                    conn.execute_cached(
                        "UPDATE chat_sessions SET link_error_reason = NULL WHERE session_id = ?1",
                        [session_id],
                    )
                    .context("recording a linked customer")?;
                }
            }
            conn.execute_cached("DELETE FROM outbox WHERE job_id = ?1", [job_id])
                .context("completing a call")?;
            let session = session_by_id(conn, session_id)?;
            if let Done::ConversationCreated { conversation_id } = &done
                && session.conversation_id.as_ref() != Some(conversation_id)
            {
                tracing::error!(%session_id, %conversation_id, recorded = ?session.conversation_id.as_ref().map(ConversationId::as_str),
                    "conversation-service returned a different conversation for the same request_id");
            }
            Ok(session)
        })
        .await
    }

    /// Puts a call back to be retried at `next_attempt`.
    pub async fn retry_later(
        &self,
        job_id: CallId,
        next_attempt: Timestamp,
        error: String,
    ) -> Result<(), Error> {
        self.call(move |conn| {
            conn.execute_cached(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_time = ?2,
                                   last_error = ?3
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
        job_id: CallId,
        now: Timestamp,
        refusal: &Refusal,
    ) -> Result<(), Error> {
        let (error, reason) = (refusal.to_string(), refusal.reason.clone());
        self.call(move |conn| {
            conn.execute_cached(
                "UPDATE outbox SET attempts = attempts + 1, failed_time = ?2, last_error = ?3,
                                   error_reason = ?4
                 WHERE job_id = ?1",
                params![job_id, to_micros(now), error, reason],
            )
            .context("giving up a call")?;
            conn.execute_cached(
                "UPDATE chat_sessions SET link_error_reason = ?2
                 WHERE session_id = (SELECT session_id FROM outbox
                                     WHERE job_id = ?1 AND kind = ?3)",
                params![job_id, reason, CallKind::UpdateCustomer],
            )
            .context("giving up a call")?;
            Ok(())
        })
        .await
    }
}

impl Store {
    /// Makes every queued call due at `now` (not those given up).
    pub async fn reschedule_all(&self, now: Timestamp) -> Result<usize, Error> {
        self.call(move |conn| {
            conn.execute_cached(
                "UPDATE outbox SET next_attempt_time = ?1
                 WHERE failed_time IS NULL AND next_attempt_time > ?1",
                [to_micros(now)],
            )
            .context("rescheduling the outbox")
        })
        .await
    }
}
