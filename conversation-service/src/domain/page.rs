//! AIP-158 pagination: page sizes and opaque page tokens bound to the query that made them.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

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

/// A position in a listing, serialised as base64url JSON with a fingerprint of the query
/// (filters) that produced it. It carries only a position, never access: the filters of
/// the request are applied again on every page.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct PageToken<K> {
    /// First 8 bytes of SHA-256 over the query's filters, hex.
    q: String,
    /// The last key of the previous page.
    k: K,
}

fn fingerprint(query: &str) -> String {
    let digest = Sha256::digest(query.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl<K: Serialize + DeserializeOwned> PageToken<K> {
    pub fn encode(query: &str, key: K) -> String {
        let token = Self {
            q: fingerprint(query),
            k: key,
        };
        // Serialising plain data to JSON cannot fail.
        let json = serde_json::to_vec(&token).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// Decodes a token; empty means the first page. A token from another query, or one
    /// that was tampered with, is INVALID_ARGUMENT.
    pub fn decode(field: &'static str, query: &str, text: &str) -> Result<Option<K>> {
        if text.is_empty() {
            return Ok(None);
        }
        let bad = || Error::invalid(field, "is not a page token of this query");
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        let token: Self = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if token.q != fingerprint(query) {
            return Err(bad());
        }
        Ok(Some(token.k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_is_bound_to_its_query() {
        let token = PageToken::encode("provider:p1", (42_i64, "x".to_owned()));
        let key: Option<(i64, String)> =
            PageToken::decode("t", "provider:p1", &token).ok().flatten();
        assert_eq!(key, Some((42, "x".to_owned())));
        assert!(PageToken::<(i64, String)>::decode("t", "provider:p2", &token).is_err());
        assert!(PageToken::<(i64, String)>::decode("t", "provider:p1", "garbage!").is_err());
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
