//! The outbox: calls to conversation-service that must happen, kept in the same database
//! as the session they belong to so they are queued atomically with it. Per session they
//! run strictly in order (UpdateCustomer after CreateConversation), and never two at once:
//! a call is handed out only with its session's [`Turn`].

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
};

use rusqlite::{Connection, Row, params};

use super::{Cached, Store, optional, sessions::session_by_id, uuid_at};
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

/// A queued call handed out to be made now, with its session's turn.
#[derive(Debug)]
pub struct OutboxJob {
    pub job_id: i64,
    pub session_id: SessionId,
    /// Attempts that failed before this one.
    pub attempts: u32,
    pub call: OutboxCall,
    /// Held until the job is dropped, after its outcome is recorded.
    _turn: Turn,
}

/// Sessions with a call being made right now, by an RPC or by the worker. A session's
/// calls are handed out only while it is absent, so they never overlap and apply in
/// queue order. It lives in this process, which alone holds the database's writer lock:
/// reopening the connection cannot void it (leases in the file could be, and were), and
/// a crash clears it with the calls it guarded.
#[derive(Clone, Default)]
pub(super) struct InFlight(Arc<Mutex<HashSet<SessionId>>>);

impl InFlight {
    fn take(&self, session_id: SessionId) -> Option<Turn> {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        held.insert(session_id).then(|| Turn {
            session_id,
            in_flight: self.clone(),
        })
    }
}

/// One session's turn to call conversation-service; dropping it lets the next go.
struct Turn {
    session_id: SessionId,
    in_flight: InFlight,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut held = self
            .in_flight
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.remove(&self.session_id);
    }
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Turn").field(&self.session_id).finish()
    }
}

/// A queued call as stored.
struct Queued {
    job_id: i64,
    session_id: SessionId,
    attempts: u32,
    call: OutboxCall,
}

/// Only the head of a session's queue may run; a call refused for good no longer blocks.
const IS_HEAD: &str = "NOT EXISTS (SELECT 1 FROM outbox p WHERE p.session_id = o.session_id
                                   AND p.job_id < o.job_id AND p.failed_time IS NULL)";

const JOB_COLUMNS: &str = "o.job_id, o.session_id, o.kind, o.request_id, o.reuse_active, o.origin,
     o.customer_id, o.name, o.email, o.phone, o.attempts, s.provider_id, s.conversation_id";

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Queued> {
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
    Ok(Queued {
        job_id: row.get(0)?,
        session_id: SessionId::from_uuid(uuid_at(row, 1)?),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        call,
    })
}

fn load_job(conn: &Connection, job_id: i64) -> Result<Option<Queued>, Error> {
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
    job_id: i64,
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
) -> Result<i64, Error> {
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
             VALUES (?1, 'create_conversation', ?2, ?3, ?4, ?5, ?6, ?6)",
            params![
                session_id.to_string(),
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
             VALUES (?1, 'update_customer', ?2, ?3, ?4, ?5, ?6, ?6)",
            params![
                session_id.to_string(),
                customer_id,
                contact.name,
                contact.email,
                contact.phone,
                to_micros(now),
            ],
        ),
    }
    .context("queueing a call")?;
    Ok(conn.last_insert_rowid())
}

/// Calls still queued for a session.
pub(super) fn queued_for(conn: &Connection, session_id: SessionId) -> Result<i64, Error> {
    conn.query_row_cached(
        "SELECT count(*) FROM outbox WHERE session_id = ?1 AND failed_time IS NULL",
        [session_id.to_string()],
        |r| r.get(0),
    )
    .context("counting queued calls")
}

/// Hands out a session's first queued call, unless one of its calls is being made.
pub(super) fn head_of(
    conn: &Connection,
    in_flight: &InFlight,
    session_id: SessionId,
) -> Result<Option<OutboxJob>, Error> {
    let job_id: Option<i64> = optional(conn.query_row_cached(
        "SELECT job_id FROM outbox WHERE session_id = ?1 AND failed_time IS NULL
         ORDER BY job_id LIMIT 1",
        [session_id.to_string()],
        |r| r.get(0),
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
    ConversationCreated { conversation_id: String },
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
                .query_map([to_micros(now)], |r| r.get::<_, i64>(0))
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
                        params![session_id.to_string(), conversation_id],
                    )
                    .context("recording a conversation")?;
                }
                Done::CustomerUpdated => {
                    conn.execute_cached(
                        "UPDATE chat_sessions SET link_error_reason = NULL WHERE session_id = ?1",
                        [session_id.to_string()],
                    )
                    .context("recording a linked customer")?;
                }
            }
            conn.execute_cached("DELETE FROM outbox WHERE job_id = ?1", [job_id])
                .context("completing a call")?;
            let session = session_by_id(conn, session_id)?;
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
        job_id: i64,
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
                                     WHERE job_id = ?1 AND kind = 'update_customer')",
                params![job_id, reason],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_has_one_turn_at_a_time_and_dropping_it_frees_it() {
        let in_flight = InFlight::default();
        let (a, b) = (SessionId::new(), SessionId::new());
        let turn = in_flight.take(a).expect("a free session");
        assert!(in_flight.take(a).is_none(), "two turns for one session");
        let other = in_flight.take(b).expect("another session is independent");
        drop(turn);
        assert!(in_flight.take(a).is_some(), "the turn was not freed");
        drop(other);
        assert!(in_flight.0.lock().unwrap().is_empty());
    }
}
