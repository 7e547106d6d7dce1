//! chat_sessions: redemption (one use, one session, one queued CreateConversation, in one
//! transaction), identification and ending.

use rusqlite::{Connection, Row, params};

use super::{
    Cached, Store, optional,
    outbox::{self, OutboxCall, OutboxJob},
    tokens::token_by_hash,
    uuid_at,
};
use crate::{
    domain::{
        ContactDetails, CustomerId, CustomerLink, ProviderId, RequestId, SecretHash, Session,
        SessionId, Timestamp, TokenId, from_micros, to_micros,
    },
    error::{Error, StoreResultExt},
};

const SESSION_COLUMNS: &str = "session_id, token_id, provider_id, customer_id, conversation_id, create_time, end_time, secret_hash,
     link_error_reason,
     EXISTS (SELECT 1 FROM outbox o WHERE o.session_id = chat_sessions.session_id AND o.failed_time IS NULL)";

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<(Session, Vec<u8>)> {
    let customer_id = row
        .get::<_, Option<String>>(3)?
        .map(CustomerId::from_stored);
    let link = CustomerLink::from_stored(customer_id.is_some(), row.get(9)?, row.get(8)?);
    Ok((
        Session {
            session_id: SessionId::from_uuid(uuid_at(row, 0)?),
            token_id: TokenId::from_uuid(uuid_at(row, 1)?),
            provider_id: ProviderId::from_stored(row.get(2)?),
            customer_id,
            conversation_id: row.get(4)?,
            create_time: from_micros(row.get(5)?),
            end_time: row.get::<_, Option<i64>>(6)?.map(from_micros),
            link,
        },
        row.get(7)?,
    ))
}

pub(super) fn session_by_id(conn: &Connection, id: SessionId) -> Result<Session, Error> {
    optional(conn.query_row_cached(
        &format!("SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE session_id = ?1"),
        [id.to_string()],
        session_from_row,
    ))
    .context("reading a session")?
    .map(|(s, _)| s)
    .ok_or(Error::SessionNotFound)
}

fn session_by_hash(conn: &Connection, hash: &SecretHash) -> Result<Session, Error> {
    let found = optional(conn.query_row_cached(
        &format!("SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE secret_hash = ?1"),
        [hash.as_bytes().as_slice()],
        session_from_row,
    ))
    .context("looking up a session by secret")?;
    found
        .and_then(|(session, stored)| hash.matches(&stored).then_some(session))
        .ok_or(Error::SessionNotFound)
}

/// A validated RedeemToken.
#[derive(Debug)]
pub struct Redemption {
    pub request_id: RequestId,
    pub provider_id: ProviderId,
    pub token_hash: SecretHash,
    /// The hash of the session secret this redemption hands out.
    pub session_hash: SecretHash,
    pub customer_id: Option<CustomerId>,
    pub new_conversation: bool,
}

#[derive(Debug)]
pub struct Redeemed {
    pub session: Session,
    /// The CreateConversation this caller holds the turn for and should make now.
    pub job: Option<OutboxJob>,
    /// True when `request_id` had been redeemed before (no use consumed).
    pub replayed: bool,
}

#[derive(Debug)]
pub struct Identified {
    pub session: Session,
    /// The UpdateCustomer this caller holds and should make now (nothing queued before it).
    pub job: Option<OutboxJob>,
    /// The session's customer before this call, to put back if the call is refused.
    pub previous_customer: Option<CustomerId>,
}

impl Store {
    /// Consumes one use and opens a session with its CreateConversation queued, or, for
    /// a `request_id` seen before, hands that session a fresh secret.
    ///
    /// The single SQLite writer plus `BEGIN IMMEDIATE` serialise redemptions, so the use
    /// count check and increment cannot interleave: N concurrent redemptions of a k-use
    /// link succeed exactly k times.
    pub async fn redeem(&self, r: Redemption, now: Timestamp) -> Result<Redeemed, Error> {
        let in_flight = self.in_flight.clone();
        self.call(move |conn| {
            let token = token_by_hash(conn, &r.token_hash)?.ok_or(Error::TokenNotFound)?;
            token.ensure_provider(&r.provider_id)?;

            let previous = optional(conn.query_row_cached(
                "SELECT session_id, token_id, redeem_customer_id, new_conversation
                 FROM chat_sessions WHERE request_id = ?1",
                [r.request_id.to_string()],
                |row| {
                    Ok((
                        SessionId::from_uuid(uuid_at(row, 0)?),
                        TokenId::from_uuid(uuid_at(row, 1)?),
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, bool>(3)?,
                    ))
                },
            ))
            .context("looking up a redemption")?;
            if let Some((session_id, token_id, customer_id, new_conversation)) = previous {
                // A retry: the same session, whatever the link's state is now, but only
                // for the same request.
                if token_id != token.token_id
                    || customer_id.as_deref() != r.customer_id.as_ref().map(CustomerId::as_str)
                    || new_conversation != r.new_conversation
                {
                    return Err(Error::request_id_reused());
                }
                let session = session_by_id(conn, session_id)?;
                session.ensure_open()?;
                conn.execute_cached(
                    "UPDATE chat_sessions SET secret_hash = ?2 WHERE session_id = ?1",
                    params![session.session_id.to_string(), r.session_hash.as_bytes().as_slice()],
                )
                .context("rotating a session secret")?;
                let job = outbox::head_of(conn, &in_flight, session.session_id)?;
                return Ok(Redeemed {
                    session,
                    job,
                    replayed: true,
                });
            }

            token.ensure_redeemable(now)?;
            let used = conn
                .execute(
                    "UPDATE chat_tokens SET use_count = use_count + 1
                     WHERE token_id = ?1 AND (max_uses = 0 OR use_count < max_uses)",
                    [token.token_id.to_string()],
                )
                .context("counting a use")?;
            if used != 1 {
                return Err(Error::TokenExhausted);
            }
            let session = Session {
                session_id: SessionId::new(),
                token_id: token.token_id,
                provider_id: token.provider_id.clone(),
                customer_id: r.customer_id.clone(),
                conversation_id: None,
                create_time: now,
                end_time: None,
                link: CustomerLink::from_stored(r.customer_id.is_some(), true, None),
            };
            conn.execute_cached(
                "INSERT INTO chat_sessions (session_id, token_id, provider_id, request_id, secret_hash,
                                            customer_id, create_time, redeem_customer_id, new_conversation)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, ?8)",
                params![
                    session.session_id.to_string(),
                    session.token_id.to_string(),
                    session.provider_id.as_str(),
                    r.request_id.to_string(),
                    r.session_hash.as_bytes().as_slice(),
                    session.customer_id.as_ref().map(CustomerId::as_str),
                    to_micros(now),
                    r.new_conversation,
                ],
            )
            .context("opening a session")?;
            // The session id is CreateConversation's request_id: every retry, by this RPC
            // or the worker, after any crash, names the same conversation.
            let call = OutboxCall::CreateConversation {
                request_id: session.session_id.to_string(),
                provider_id: session.provider_id.as_str().to_owned(),
                customer_id: session.customer_id.as_ref().map(|c| c.as_str().to_owned()),
                reuse_active: session.customer_id.is_some() && !r.new_conversation,
                origin: format!("token:{}", token.token_id),
            };
            let job_id = outbox::enqueue(conn, session.session_id, &call, now)?;
            let job = outbox::hand_out(conn, &in_flight, job_id)?;
            Ok(Redeemed {
                session,
                job,
                replayed: false,
            })
        })
        .await
    }

    pub async fn session_by_secret(&self, hash: SecretHash) -> Result<Session, Error> {
        self.call(move |conn| {
            let session = session_by_hash(conn, &hash)?;
            session.ensure_open()?;
            Ok(session)
        })
        .await
    }

    /// Links the session to a customer and queues UpdateCustomer behind whatever the
    /// session still has queued (its CreateConversation, if pending).
    pub async fn identify(
        &self,
        hash: SecretHash,
        customer_id: CustomerId,
        contact: ContactDetails,
        now: Timestamp,
    ) -> Result<Identified, Error> {
        let in_flight = self.in_flight.clone();
        self.call(move |conn| {
            let session = session_by_hash(conn, &hash)?;
            session.ensure_open()?;
            match &session.customer_id {
                Some(linked) if linked != &customer_id => return Err(Error::CustomerAlreadyLinked),
                Some(_) => {}
                None => {
                    conn.execute_cached(
                        "UPDATE chat_sessions SET customer_id = ?2 WHERE session_id = ?1",
                        params![session.session_id.to_string(), customer_id.as_str()],
                    )
                    .context("identifying a session")?;
                }
            }
            let call = OutboxCall::UpdateCustomer {
                conversation_id: None,
                customer_id: customer_id.as_str().to_owned(),
                contact,
            };
            // Made by this caller only if nothing is queued before it.
            let ahead = outbox::queued_for(conn, session.session_id)?;
            let job_id = outbox::enqueue(conn, session.session_id, &call, now)?;
            let job = if ahead == 0 {
                outbox::hand_out(conn, &in_flight, job_id)?
            } else {
                None
            };
            let previous_customer = session.customer_id;
            let session = session_by_id(conn, session.session_id)?;
            Ok(Identified {
                session,
                job,
                previous_customer,
            })
        })
        .await
    }

    /// Takes back an UpdateCustomer that conversation-service refused while its caller
    /// waited (the caller hears the refusal instead): the call is dropped and the session
    /// gets its customer back, unless another UpdateCustomer of it is still queued.
    pub async fn withdraw_link(
        &self,
        job_id: i64,
        session_id: SessionId,
        previous: Option<CustomerId>,
    ) -> Result<Session, Error> {
        self.call(move |conn| {
            conn.execute_cached("DELETE FROM outbox WHERE job_id = ?1", [job_id])
                .context("withdrawing a call")?;
            conn.execute_cached(
                "UPDATE chat_sessions SET customer_id = ?2
                 WHERE session_id = ?1 AND NOT EXISTS (
                     SELECT 1 FROM outbox WHERE session_id = ?1 AND kind = 'update_customer'
                                           AND failed_time IS NULL)",
                params![
                    session_id.to_string(),
                    previous.as_ref().map(CustomerId::as_str)
                ],
            )
            .context("withdrawing a call")?;
            let session = session_by_id(conn, session_id)?;
            Ok(session)
        })
        .await
    }

    /// Ends a session; ending it again returns it unchanged.
    pub async fn end_session(&self, hash: SecretHash, now: Timestamp) -> Result<Session, Error> {
        self.call(move |conn| {
            let session = session_by_hash(conn, &hash)?;
            conn.execute_cached(
                "UPDATE chat_sessions SET end_time = ?2 WHERE session_id = ?1 AND end_time IS NULL",
                params![session.session_id.to_string(), to_micros(now)],
            )
            .context("ending a session")?;
            let session = session_by_id(conn, session.session_id)?;
            Ok(session)
        })
        .await
    }
}
