//! AIP-158 pagination: page sizes and opaque page tokens bound to the query that made them.

use chat_common::seal::SealKey;
use chrono::{DateTime, Datelike, Utc};
use serde::{Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::error::{Error, Result};

/// A page size: 0 means `default`, negative is refused, above `max` is lowered to it.
#[derive(Debug, Clone, Copy)]
pub struct PageSize(pub i64);

impl PageSize {
    pub fn parse(field: &'static str, value: i32, default: i64, max: i64) -> Result<Self> {
        match value {
            v if v < 0 => Err(Error::invalid(field, "must not be negative")),
            0 => Ok(Self(default)),
            v => Ok(Self(i64::from(v).min(max))),
        }
    }
}

/// The last key of a page, as a page token carries it. Checked again after the token's
/// tag, so even a token sealed under a leaked key cannot put an impossible value in SQL.
pub trait PageKey: Serialize + DeserializeOwned {
    fn is_valid(&self) -> bool;
}

/// A message position.
impl PageKey for i64 {
    fn is_valid(&self) -> bool {
        *self >= 0
    }
}

/// A conversation's last activity and id.
impl PageKey for (DateTime<Utc>, Uuid) {
    fn is_valid(&self) -> bool {
        (1..=9999).contains(&self.0.year())
    }
}

/// A search hit's time, conversation and position.
impl PageKey for (DateTime<Utc>, Uuid, i64) {
    fn is_valid(&self) -> bool {
        (1..=9999).contains(&self.0.year()) && self.2 >= 0
    }
}

/// Makes and opens page tokens: the last key of a page as JSON, sealed (HMAC-SHA256)
/// for the query (filters) that produced it. A token carries only a position, never
/// access: the filters of the request are applied again on every page. A forged,
/// edited or foreign token is INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct PageTokens {
    key: SealKey,
}

impl PageTokens {
    pub fn new(key: SealKey) -> Self {
        Self { key }
    }

    pub fn encode<K: PageKey>(&self, query: &str, key: &K) -> String {
        // Serialising plain data to JSON cannot fail.
        let json = serde_json::to_vec(key).unwrap_or_default();
        self.key.seal(query, &json)
    }

    /// Decodes a token; empty means the first page.
    pub fn decode<K: PageKey>(
        &self,
        field: &'static str,
        query: &str,
        text: &str,
    ) -> Result<Option<K>> {
        if text.is_empty() {
            return Ok(None);
        }
        let bad = || Error::invalid(field, "is not a page token of this query");
        let json = self.key.open(query, text).ok_or_else(bad)?;
        let key: K = serde_json::from_slice(&json).map_err(|_| bad())?;
        if !key.is_valid() {
            return Err(bad());
        }
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> PageTokens {
        PageTokens::new(SealKey::random().expect("random key"))
    }

    #[test]
    fn token_round_trips_and_is_bound_to_its_query_and_key() {
        let pages = tokens();
        let now = chrono::Utc::now();
        let id = Uuid::new_v4();
        let token = pages.encode("provider:p1", &(now, id));
        let key: Option<(DateTime<Utc>, Uuid)> =
            pages.decode("t", "provider:p1", &token).ok().flatten();
        assert_eq!(key, Some((now, id)));
        assert!(
            pages
                .decode::<(DateTime<Utc>, Uuid)>("t", "provider:p2", &token)
                .is_err()
        );
        assert!(
            tokens()
                .decode::<(DateTime<Utc>, Uuid)>("t", "provider:p1", &token)
                .is_err()
        );
        assert!(pages.decode::<i64>("t", "provider:p1", "garbage!").is_err());
    }

    #[test]
    fn sealed_keys_out_of_range_are_refused() {
        let pages = tokens();
        let far: DateTime<Utc> = "-5000-01-01T00:00:00Z".parse().expect("chrono parses it");
        let token = pages.encode("q", &(far, Uuid::nil()));
        assert!(
            pages
                .decode::<(DateTime<Utc>, Uuid)>("t", "q", &token)
                .is_err()
        );
        let token = pages.encode("q", &-1_i64);
        assert!(pages.decode::<i64>("t", "q", &token).is_err());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(PageSize::parse("p", 0, 50, 200).map(|p| p.0).ok(), Some(50));
        assert_eq!(
            PageSize::parse("p", 1000, 50, 200).map(|p| p.0).ok(),
            Some(200)
        );
        assert!(PageSize::parse("p", -1, 50, 200).is_err());
    }
}
