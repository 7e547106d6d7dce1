//! chat_tokens: issue, list, revoke, look up by secret hash.

use rusqlite::{Connection, Row, params};

use super::{
    sql::{Cached, optional, optional_time_at, time_at},
    thread::Store,
};
use crate::{
    domain::{NewToken, ProviderId, SecretHash, Timestamp, Token, TokenCursor, TokenId, to_micros},
    error::{Error, StoreResultExt},
};

const TOKEN_COLUMNS: &str = "token_id, provider_id, label, create_time, expire_time, max_uses,
     use_count, revoke_time, secret_hash";

/// Maps a row selected with `TOKEN_COLUMNS`; the hash is returned beside the token so it
/// can be compared in constant time and then dropped.
fn token_from_row(row: &Row<'_>) -> rusqlite::Result<(Token, Vec<u8>)> {
    Ok((
        Token {
            token_id: row.get("token_id")?,
            provider_id: row.get("provider_id")?,
            label: row.get("label")?,
            create_time: time_at(row, "create_time")?,
            expire_time: time_at(row, "expire_time")?,
            max_uses: row.get("max_uses")?,
            use_count: row.get("use_count")?,
            revoke_time: optional_time_at(row, "revoke_time")?,
        },
        row.get("secret_hash")?,
    ))
}

/// The link whose secret hashes to `hash`, if any.
pub(super) fn token_by_hash(conn: &Connection, hash: &SecretHash) -> Result<Option<Token>, Error> {
    let found = optional(conn.query_row_cached(
        &format!("SELECT {TOKEN_COLUMNS} FROM chat_tokens WHERE secret_hash = ?1"),
        [hash.as_bytes().as_slice()],
        token_from_row,
    ))
    .context("looking up a link by secret")?;
    Ok(found.and_then(|(token, stored)| hash.matches(&stored).then_some(token)))
}

fn token_by_id(conn: &Connection, token_id: TokenId) -> Result<Option<Token>, Error> {
    Ok(optional(conn.query_row_cached(
        &format!("SELECT {TOKEN_COLUMNS} FROM chat_tokens WHERE token_id = ?1"),
        [token_id],
        token_from_row,
    ))
    .context("reading a link")?
    .map(|(token, _)| token))
}

impl Store {
    pub async fn issue_token(
        &self,
        new: NewToken,
        hash: SecretHash,
        now: Timestamp,
    ) -> Result<Token, Error> {
        self.call(move |conn| {
            let token = Token {
                token_id: TokenId::new(),
                provider_id: new.provider_id.clone(),
                label: new.label.as_str().to_owned(),
                create_time: now,
                expire_time: now + new.ttl.as_duration(),
                max_uses: new.max_uses(),
                use_count: 0,
                revoke_time: None,
            };
            conn.execute_cached(
                "INSERT INTO chat_tokens (token_id, provider_id, secret_hash, label, create_time, expire_time, max_uses)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    token.token_id,
                    token.provider_id,
                    hash.as_bytes().as_slice(),
                    token.label,
                    to_micros(token.create_time),
                    to_micros(token.expire_time),
                    i64::from(token.max_uses),
                ],
            )
            .context("issuing a link")?;
            Ok(token)
        })
        .await
    }

    /// One page of a provider's links, newest first, after `cursor`; `limit + 1` rows are
    /// read so the caller knows whether another page follows.
    pub async fn list_tokens(
        &self,
        provider_id: ProviderId,
        cursor: Option<TokenCursor>,
        limit: u32,
    ) -> Result<Vec<Token>, Error> {
        self.call(move |conn| {
            let (after_time, after_id) = match cursor {
                Some(c) => (Some(to_micros(c.create_time)), Some(c.token_id)),
                None => (None, None),
            };
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM chat_tokens
                     WHERE provider_id = ?1
                       AND (?2 IS NULL OR (create_time, token_id) < (?2, ?3))
                     ORDER BY create_time DESC, token_id DESC
                     LIMIT ?4"
                ))
                .context("listing links")?;
            let rows = stmt
                .query_map(
                    params![provider_id, after_time, after_id, i64::from(limit) + 1],
                    token_from_row,
                )
                .context("listing links")?;
            rows.map(|r| r.map(|(token, _)| token))
                .collect::<rusqlite::Result<Vec<_>>>()
                .context("listing links")
        })
        .await
    }

    /// Revokes a provider's link; revoking it again keeps the first revoke time.
    pub async fn revoke_token(
        &self,
        provider_id: ProviderId,
        token_id: TokenId,
        now: Timestamp,
    ) -> Result<Token, Error> {
        self.call(move |conn| {
            let token = token_by_id(conn, token_id)?.ok_or(Error::TokenNotFound)?;
            token.ensure_provider(&provider_id)?;
            conn.execute_cached(
                "UPDATE chat_tokens SET revoke_time = ?2 WHERE token_id = ?1 AND revoke_time IS NULL",
                params![token_id, to_micros(now)],
            )
            .context("revoking a link")?;
            let token = token_by_id(conn, token_id)?.ok_or(Error::TokenNotFound)?;
            Ok(token)
        })
        .await
    }

    /// Side-effect free: the link behind a secret, checked against the provider.
    pub async fn check_token(
        &self,
        provider_id: ProviderId,
        hash: SecretHash,
    ) -> Result<Token, Error> {
        self.call(move |conn| {
            let token = token_by_hash(conn, &hash)?.ok_or(Error::TokenNotFound)?;
            token.ensure_provider(&provider_id)?;
            Ok(token)
        })
        .await
    }
}
