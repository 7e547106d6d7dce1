//! ListTokens page tokens: opaque, sealed (HMAC-SHA256) for the provider whose list made
//! them, and only a position in that list (the provider filter still comes from the
//! request). A forged, edited or foreign token is INVALID_ARGUMENT.

use chat_common::seal::SealKey;
use uuid::Uuid;

use super::{ProviderId, Timestamp, TokenId, to_micros};
use crate::error::Error;

const LEN: usize = 8 + 16;

/// The last link of a page: the next page starts strictly after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCursor {
    pub create_time: Timestamp,
    pub token_id: TokenId,
}

fn purpose(provider_id: &ProviderId) -> String {
    format!("ListTokens/{provider_id}")
}

impl TokenCursor {
    pub fn encode(&self, key: &SealKey, provider_id: &ProviderId) -> String {
        let mut bytes = Vec::with_capacity(LEN);
        bytes.extend_from_slice(&to_micros(self.create_time).to_be_bytes());
        bytes.extend_from_slice(self.token_id.as_uuid().as_bytes());
        key.seal(&purpose(provider_id), &bytes)
    }

    /// Empty means the first page.
    pub fn decode(
        key: &SealKey,
        page_token: &str,
        provider_id: &ProviderId,
    ) -> Result<Option<Self>, Error> {
        if page_token.is_empty() {
            return Ok(None);
        }
        let bytes = key
            .open(&purpose(provider_id), page_token)
            .filter(|b| b.len() == LEN)
            .ok_or_else(Error::invalid_page_token)?;
        let (micros, uuid) = bytes.split_at(8);
        let micros =
            i64::from_be_bytes(micros.try_into().map_err(|_| Error::invalid_page_token())?);
        let create_time = chrono::DateTime::from_timestamp_micros(micros)
            .filter(|t| micros >= 0 && t.timestamp() < 253_402_300_800)
            .ok_or_else(Error::invalid_page_token)?;
        let uuid = Uuid::from_slice(uuid).map_err(|_| Error::invalid_page_token())?;
        Ok(Some(Self {
            create_time,
            token_id: TokenId::from_uuid(uuid),
        }))
    }
}
