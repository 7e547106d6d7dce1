//! Erasing and exporting a customer. An erasure scrubs the customer's sessions and deletes
//! the calls that carry their details in one transaction, which also queues
//! conversation-service's part in `erasures` (an outbox of its own: made until it
//! succeeds, after a restart too). With `secure_delete` on, SQLite zeroes what it deletes,
//! and a checkpoint afterwards (`Store::checkpoint`) leaves no old page in the WAL.

use rusqlite::{Connection, Row, params};

use super::{
    sql::{Cached, optional, optional_time_at, rows, time_at},
    thread::Store,
    turns::Turn,
};
use crate::{
    domain::{
        ConversationId, ConversationsErased, CustomerExport, CustomerId, Erasure, ErasureCall,
        ExportedContact, ExportedSession, RequestId, SessionId, Timestamp, to_micros,
    },
    error::{Error, StoreResultExt},
};

/// The customer's sessions: linked to them, or redeemed by them (and linked elsewhere
/// since, or refused).
const CUSTOMER_SESSIONS: &str =
    "SELECT session_id FROM chat_sessions WHERE customer_id = ?1 OR redeem_customer_id = ?1";

/// conversation-service's part of an erasure, handed out with the turns of the sessions it
/// scrubbed: a call of theirs still in flight (an UpdateCustomer made just before the
/// erasure) lands before conversation-service erases, never after.
#[derive(Debug)]
pub struct ErasureJob {
    pub call: ErasureCall,
    _turns: Vec<Turn>,
    _erasing: Turn<RequestId>,
}

/// How an attempt at conversation-service's part of an erasure ended.
#[derive(Debug)]
pub enum ErasureAttempt {
    Done(ConversationsErased),
    /// Failed with this error; to be made again at that time.
    RetryAt(Timestamp, String),
}

fn erasure_from_row(row: &Row<'_>) -> rusqlite::Result<Erasure> {
    Ok(Erasure {
        request_id: row.get("request_id")?,
        customer_id: row.get("customer_id")?,
        sessions_erased: row.get("sessions_erased")?,
        calls_erased: row.get("calls_erased")?,
        conversations_erased: row.get("conversations_erased")?,
        messages_erased: row.get("messages_erased")?,
        create_time: time_at(row, "create_time")?,
        complete_time: optional_time_at(row, "complete_time")?,
    })
}

fn erasure_by_id(conn: &Connection, request_id: RequestId) -> Result<Option<Erasure>, Error> {
    optional(conn.query_row_cached(
        "SELECT request_id, customer_id, sessions_erased, calls_erased, conversations_erased,
                messages_erased, create_time, complete_time
         FROM erasures WHERE request_id = ?1",
        [request_id],
        erasure_from_row,
    ))
    .context("reading an erasure")
}

/// token-service's part of an erasure, and the queued call for conversation-service's.
fn erase_locally(
    conn: &Connection,
    request_id: RequestId,
    customer_id: &CustomerId,
    now: Timestamp,
) -> Result<(), Error> {
    let sessions: Vec<(SessionId, Option<ConversationId>)> = rows(
        conn,
        &format!(
            "SELECT session_id, conversation_id FROM chat_sessions
             WHERE session_id IN ({CUSTOMER_SESSIONS})"
        ),
        [customer_id],
        session_and_conversation,
        "finding a customer's sessions",
    )?;
    // Queued and refused calls alike: every one of them names the customer or carries
    // their details, and none may run after conversation-service has erased.
    let calls_erased = conn
        .execute_cached(
            &format!(
                "DELETE FROM outbox WHERE customer_id = ?1 OR session_id IN ({CUSTOMER_SESSIONS})"
            ),
            [customer_id],
        )
        .context("erasing a customer's calls")?;
    // Ended, so their secrets stop working and nothing new is queued for them.
    let sessions_erased = conn
        .execute_cached(
            "UPDATE chat_sessions SET customer_id = NULL, redeem_customer_id = NULL,
                                      link_error_reason = NULL,
                                      end_time = coalesce(end_time, ?2)
             WHERE customer_id = ?1 OR redeem_customer_id = ?1",
            params![customer_id, to_micros(now)],
        )
        .context("erasing a customer's sessions")?;
    conn.execute_cached(
        "INSERT INTO erasures (request_id, customer_id, sessions_erased, calls_erased,
                               next_attempt_time, create_time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![
            request_id,
            customer_id,
            i64::try_from(sessions_erased).unwrap_or(i64::MAX),
            i64::try_from(calls_erased).unwrap_or(i64::MAX),
            to_micros(now),
        ],
    )
    .context("recording an erasure")?;
    for (session_id, conversation_id) in sessions {
        conn.execute_cached(
            "INSERT INTO erasure_sessions (request_id, session_id, conversation_id)
             VALUES (?1, ?2, ?3)",
            params![request_id, session_id, conversation_id],
        )
        .context("recording an erasure")?;
    }
    Ok(())
}

fn exported_sessions(
    conn: &Connection,
    customer_id: &CustomerId,
) -> Result<Vec<ExportedSession>, Error> {
    rows(
        conn,
        &format!(
            "SELECT session_id, provider_id, token_id, conversation_id, create_time, end_time
             FROM chat_sessions WHERE session_id IN ({CUSTOMER_SESSIONS})
             ORDER BY create_time, session_id"
        ),
        [customer_id],
        |row| {
            Ok(ExportedSession {
                session_id: row.get("session_id")?,
                provider_id: row.get("provider_id")?,
                token_id: row.get("token_id")?,
                conversation_id: row.get("conversation_id")?,
                create_time: time_at(row, "create_time")?,
                end_time: optional_time_at(row, "end_time")?,
            })
        },
        "exporting sessions",
    )
}

fn exported_contacts(
    conn: &Connection,
    customer_id: &CustomerId,
) -> Result<Vec<ExportedContact>, Error> {
    rows(
        conn,
        &format!(
            "SELECT session_id, name, email, phone, create_time FROM outbox
             WHERE (customer_id = ?1 OR session_id IN ({CUSTOMER_SESSIONS}))
               AND (name IS NOT NULL OR email IS NOT NULL OR phone IS NOT NULL)
             ORDER BY job_id"
        ),
        [customer_id],
        |row| {
            Ok(ExportedContact {
                session_id: row.get("session_id")?,
                name: row.get("name")?,
                email: row.get("email")?,
                phone: row.get("phone")?,
                create_time: time_at(row, "create_time")?,
            })
        },
        "exporting contact details",
    )
}

fn session_and_conversation(
    row: &Row<'_>,
) -> rusqlite::Result<(SessionId, Option<ConversationId>)> {
    Ok((row.get("session_id")?, row.get("conversation_id")?))
}

impl Store {
    /// Erases a customer from this database, or returns the erasure `request_id` already
    /// made (the same key for another customer is refused, changing nothing).
    pub async fn erase_customer(
        &self,
        request_id: RequestId,
        customer_id: CustomerId,
        now: Timestamp,
    ) -> Result<Erasure, Error> {
        self.call(move |conn| {
            if let Some(earlier) = erasure_by_id(conn, request_id)? {
                return if earlier.customer_id == customer_id {
                    Ok(earlier)
                } else {
                    Err(Error::erase_request_id_reused())
                };
            }
            erase_locally(conn, request_id, &customer_id, now)?;
            erasure_by_id(conn, request_id)?
                .ok_or_else(|| Error::Internal("an erasure vanished as it was written".into()))
        })
        .await
    }

    /// An erasure as it stands.
    pub async fn erasure(&self, request_id: RequestId) -> Result<Option<Erasure>, Error> {
        self.call(move |conn| erasure_by_id(conn, request_id)).await
    }

    /// Hands out conversation-service's part of the erasure `request_id` if it is still to
    /// be made and none of its sessions has a call in flight; `None` otherwise.
    pub async fn claim_erasure(&self, request_id: RequestId) -> Result<Option<ErasureJob>, Error> {
        let (in_flight, erasing) = (self.in_flight.clone(), self.erasing.clone());
        self.call(move |conn| {
            let Some(erasure) = erasure_by_id(conn, request_id)? else {
                return Ok(None);
            };
            if erasure.complete_time.is_some() {
                return Ok(None);
            }
            let Some(claim) = erasing.take(request_id) else {
                return Ok(None);
            };
            let attempts: u32 = conn
                .query_row_cached(
                    "SELECT attempts FROM erasures WHERE request_id = ?1",
                    [request_id],
                    |r| r.get("attempts"),
                )
                .context("reading an erasure")?;
            let sessions = rows(
                conn,
                "SELECT session_id, conversation_id FROM erasure_sessions
                 WHERE request_id = ?1 ORDER BY session_id",
                [request_id],
                session_and_conversation,
                "reading an erasure's sessions",
            )?;
            let mut turns = Vec::with_capacity(sessions.len());
            for (session_id, _) in &sessions {
                match in_flight.take(*session_id) {
                    Some(turn) => turns.push(turn),
                    // Dropping the turns taken so far frees them again.
                    None => return Ok(None),
                }
            }
            // A conversation created after the erasure was written (its call was in
            // flight) is read from the session, where that call recorded it.
            let mut conversation_ids = Vec::new();
            for (session_id, recorded) in sessions {
                let current: Option<ConversationId> = optional(conn.query_row_cached(
                    "SELECT conversation_id FROM chat_sessions WHERE session_id = ?1",
                    [session_id],
                    |r| r.get("conversation_id"),
                ))
                .context("reading an erasure's sessions")?
                .flatten();
                conversation_ids.extend(current.or(recorded));
            }
            conversation_ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            conversation_ids.dedup();
            Ok(Some(ErasureJob {
                call: ErasureCall {
                    request_id,
                    customer_id: erasure.customer_id,
                    conversation_ids,
                    attempts,
                },
                _turns: turns,
                _erasing: claim,
            }))
        })
        .await
    }

    /// Erasures whose conversation-service part is due at `now`, oldest first.
    pub async fn due_erasures(&self, now: Timestamp, limit: u32) -> Result<Vec<RequestId>, Error> {
        self.call(move |conn| {
            rows(
                conn,
                "SELECT request_id FROM erasures
                 WHERE complete_time IS NULL AND next_attempt_time <= ?1
                 ORDER BY next_attempt_time LIMIT ?2",
                params![to_micros(now), i64::from(limit)],
                |r| r.get("request_id"),
                "finding due erasures",
            )
        })
        .await
    }

    /// Records an attempt at conversation-service's part: done, with what it erased, or
    /// put back to be made at a later time. Returns the erasure as it now stands.
    pub async fn settle_erasure(
        &self,
        job: &ErasureJob,
        attempt: ErasureAttempt,
        now: Timestamp,
    ) -> Result<Erasure, Error> {
        let request_id = job.call.request_id;
        self.call(move |conn| {
            match attempt {
                ErasureAttempt::Done(erased) => conn.execute_cached(
                    "UPDATE erasures SET conversations_erased = conversations_erased + ?2,
                                         messages_erased = messages_erased + ?3,
                                         attempts = attempts + 1, last_error = NULL,
                                         complete_time = ?4
                     WHERE request_id = ?1 AND complete_time IS NULL",
                    params![
                        request_id,
                        erased.conversations,
                        erased.messages,
                        to_micros(now)
                    ],
                ),
                ErasureAttempt::RetryAt(next_attempt, error) => conn.execute_cached(
                    "UPDATE erasures SET attempts = attempts + 1, next_attempt_time = ?2,
                                         last_error = ?3
                     WHERE request_id = ?1",
                    params![request_id, to_micros(next_attempt), error],
                ),
            }
            .context("recording an erasure attempt")?;
            erasure_by_id(conn, request_id)?
                .ok_or_else(|| Error::Internal("an erasure vanished as it was attempted".into()))
        })
        .await
    }

    /// What this database holds about a customer.
    pub async fn export_customer(&self, customer_id: CustomerId) -> Result<CustomerExport, Error> {
        self.call(move |conn| {
            Ok(CustomerExport {
                sessions: exported_sessions(conn, &customer_id)?,
                contacts: exported_contacts(conn, &customer_id)?,
            })
        })
        .await
    }

    /// Moves every page of the WAL into the database file and truncates the WAL, so the
    /// page versions an erasure replaced are gone from disk (with `secure_delete`, the
    /// database file itself holds no deleted text).
    pub async fn checkpoint(&self) -> Result<(), Error> {
        self.call_alone(|conn| {
            let busy: i64 = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .context("checkpointing the WAL")?;
            if busy != 0 {
                return Err(Error::StoreUnavailable(
                    "the WAL checkpoint was blocked by a reader".into(),
                ));
            }
            Ok(())
        })
        .await
    }
}
