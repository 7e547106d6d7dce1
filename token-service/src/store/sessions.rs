//! chat_sessions: redemption (one use, one session, one queued CreateConversation, in one
//! transaction), identification and ending.

use rusqlite::{Connection, params};

use super::{
    outbox::{self, OutboxCall, OutboxJob},
    session_rows::{session_by_hash, session_by_id},
    sql::{Cached, optional},
    thread::Store,
    tokens::token_by_hash,
    turns::InFlight,
};
use crate::{
    domain::{
        CallId, CallKind, ContactDetails, CustomerId, CustomerLink, ProviderId, RequestId,
        SecretHash, Session, SessionId, Timestamp, Token, TokenId, to_micros,
    },
    error::{Error, StoreResultExt},
};

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
            match earlier_redemption(conn, r.request_id)? {
                Some(earlier) => replay(conn, &in_flight, &r, &token, &earlier),
                None => open_session(conn, &in_flight, &r, &token, now),
            }
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
                        params![session.session_id, customer_id],
                    )
                    .context("identifying a session")?;
                }
            }
            let call = OutboxCall::UpdateCustomer {
                conversation_id: None,
                customer_id,
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
        job_id: CallId,
        session_id: SessionId,
        previous: Option<CustomerId>,
    ) -> Result<Session, Error> {
        self.call(move |conn| {
            let withdrawn = conn
                .execute_cached("DELETE FROM outbox WHERE job_id = ?1", [job_id])
                .context("withdrawing a call")?;
            // Gone already: an erasure deleted it while it was being made, and the
            // customer it would restore was erased with it.
            if withdrawn == 0 {
                return session_by_id(conn, session_id);
            }
            conn.execute_cached(
                "UPDATE chat_sessions SET customer_id = ?2
                 WHERE session_id = ?1 AND NOT EXISTS (
                     SELECT 1 FROM outbox WHERE session_id = ?1 AND kind = ?3
                                           AND failed_time IS NULL)",
                params![session_id, previous, CallKind::UpdateCustomer],
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
                params![session.session_id, to_micros(now)],
            )
            .context("ending a session")?;
            let session = session_by_id(conn, session.session_id)?;
            Ok(session)
        })
        .await
    }
}

/// What a redemption recorded of its request, to tell a retry from a reuse of its
/// `request_id`.
struct Earlier {
    session_id: SessionId,
    token_id: TokenId,
    customer_id: Option<CustomerId>,
    new_conversation: bool,
}

fn earlier_redemption(conn: &Connection, request_id: RequestId) -> Result<Option<Earlier>, Error> {
    optional(conn.query_row_cached(
        "SELECT s.session_id, s.token_id, s.redeem_customer_id, s.new_conversation
         FROM redeem_requests r JOIN chat_sessions s ON s.session_id = r.session_id
         WHERE r.request_id = ?1",
        [request_id],
        |row| {
            Ok(Earlier {
                session_id: row.get("session_id")?,
                token_id: row.get("token_id")?,
                customer_id: row.get("redeem_customer_id")?,
                new_conversation: row.get("new_conversation")?,
            })
        },
    ))
    .context("looking up a redemption")
}

/// A retry: the same session, whatever the link's state is now, with a fresh secret, but
/// only for the same request. No use is consumed.
fn replay(
    conn: &Connection,
    in_flight: &InFlight,
    r: &Redemption,
    token: &Token,
    earlier: &Earlier,
) -> Result<Redeemed, Error> {
    if earlier.token_id != token.token_id
        || earlier.customer_id != r.customer_id
        || earlier.new_conversation != r.new_conversation
    {
        return Err(Error::request_id_reused());
    }
    let session = session_by_id(conn, earlier.session_id)?;
    session.ensure_open()?;
    conn.execute_cached(
        "UPDATE chat_sessions SET secret_hash = ?2 WHERE session_id = ?1",
        params![session.session_id, r.session_hash.as_bytes().as_slice()],
    )
    .context("rotating a session secret")?;
    let job = outbox::head_of(conn, in_flight, session.session_id)?;
    Ok(Redeemed {
        session,
        job,
        replayed: true,
    })
}

/// A first redemption: one use consumed, a session opened and its CreateConversation
/// queued, all in the caller's savepoint.
fn open_session(
    conn: &Connection,
    in_flight: &InFlight,
    r: &Redemption,
    token: &Token,
    now: Timestamp,
) -> Result<Redeemed, Error> {
    token.ensure_redeemable(now)?;
    let used = conn
        .execute(
            "UPDATE chat_tokens SET use_count = use_count + 1
             WHERE token_id = ?1 AND (max_uses = 0 OR use_count < max_uses)",
            [token.token_id],
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
         VALUES (?1, ?2, ?3, ?1, ?4, ?5, ?6, ?5, ?7)",
        params![
            session.session_id,
            session.token_id,
            session.provider_id,
            r.session_hash.as_bytes().as_slice(),
            session.customer_id,
            to_micros(now),
            r.new_conversation,
        ],
    )
    .context("opening a session")?;
    // The caller's request id is kept apart, for REDEEM_RETRY_WINDOW: see
    // migrations/token/0004_redeem_requests.sql.
    conn.execute_cached(
        "INSERT INTO redeem_requests (request_id, session_id, create_time) VALUES (?1, ?2, ?3)",
        params![r.request_id, session.session_id, to_micros(now)],
    )
    .context("keeping a request id")?;
    // The session id is CreateConversation's request_id: every retry, by this RPC or the
    // worker, after any crash, names the same conversation.
    let call = OutboxCall::CreateConversation {
        request_id: session.session_id,
        provider_id: session.provider_id.clone(),
        customer_id: session.customer_id.clone(),
        reuse_active: session.customer_id.is_some() && !r.new_conversation,
        origin: format!("token:{}", token.token_id),
    };
    let job_id = outbox::enqueue(conn, session.session_id, &call, now)?;
    let job = outbox::hand_out(conn, in_flight, job_id)?;
    Ok(Redeemed {
        session,
        job,
        replayed: false,
    })
}
