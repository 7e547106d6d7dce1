//! Reading `chat_sessions` rows: by id (after a write) and by secret (a caller's
//! credential, compared in constant time).

use rusqlite::{Connection, Row};

use super::sql::{Cached, optional, optional_time_at, time_at};
use crate::{
    domain::{CustomerId, CustomerLink, SecretHash, Session, SessionId},
    error::{Error, StoreResultExt},
};

/// A session's columns, with whether calls are still queued for it (its link state).
const SESSION_COLUMNS: &str = "session_id, token_id, provider_id, customer_id, conversation_id,
     create_time, end_time, secret_hash, link_error_reason,
     EXISTS (SELECT 1 FROM outbox o WHERE o.session_id = chat_sessions.session_id
                                      AND o.failed_time IS NULL) AS queued";

/// Maps a row selected with `SESSION_COLUMNS`; the secret's hash is returned beside the
/// session so it can be compared and then dropped.
fn session_from_row(row: &Row<'_>) -> rusqlite::Result<(Session, Vec<u8>)> {
    let customer_id: Option<CustomerId> = row.get("customer_id")?;
    let link = CustomerLink::from_stored(
        customer_id.is_some(),
        row.get("queued")?,
        row.get("link_error_reason")?,
    );
    Ok((
        Session {
            session_id: row.get("session_id")?,
            token_id: row.get("token_id")?,
            provider_id: row.get("provider_id")?,
            customer_id,
            conversation_id: row.get("conversation_id")?,
            create_time: time_at(row, "create_time")?,
            end_time: optional_time_at(row, "end_time")?,
            link,
        },
        row.get("secret_hash")?,
    ))
}

pub(super) fn session_by_id(conn: &Connection, id: SessionId) -> Result<Session, Error> {
    optional(conn.query_row_cached(
        &format!("SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE session_id = ?1"),
        [id],
        session_from_row,
    ))
    .context("reading a session")?
    .map(|(s, _)| s)
    .ok_or(Error::SessionNotFound)
}

pub(super) fn session_by_hash(conn: &Connection, hash: &SecretHash) -> Result<Session, Error> {
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
