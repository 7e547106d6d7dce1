//! ListTokens page tokens: opaque, bound to the provider whose list made them, and only a
//! position in that list (the provider filter still comes from the request).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{ProviderId, Timestamp, TokenId, from_micros, to_micros};
use crate::error::Error;

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 8 + 16;

/// The last link of a page: the next page starts strictly after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCursor {
    pub create_time: Timestamp,
    pub token_id: TokenId,
}

fn fingerprint(provider_id: &ProviderId) -> [u8; 8] {
    let digest = Sha256::digest(provider_id.as_str().as_bytes());
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&digest[..8]);
    fp
}

impl TokenCursor {
    pub fn encode(&self, provider_id: &ProviderId) -> String {
        let mut bytes = Vec::with_capacity(LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&fingerprint(provider_id));
        bytes.extend_from_slice(&to_micros(self.create_time).to_be_bytes());
        bytes.extend_from_slice(self.token_id.as_uuid().as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Empty means the first page. A token of another provider's list, or no token at
    /// all, is INVALID_ARGUMENT.
    pub fn decode(page_token: &str, provider_id: &ProviderId) -> Result<Option<Self>, Error> {
        if page_token.is_empty() {
            return Ok(None);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(page_token)
            .map_err(|_| Error::invalid_page_token())?;
        if bytes.len() != LEN || bytes[0] != VERSION || bytes[1..9] != fingerprint(provider_id) {
            return Err(Error::invalid_page_token());
        }
        let mut micros = [0u8; 8];
        micros.copy_from_slice(&bytes[9..17]);
        let uuid = Uuid::from_slice(&bytes[17..]).map_err(|_| Error::invalid_page_token())?;
        Ok(Some(Self {
            create_time: from_micros(i64::from_be_bytes(micros)),
            token_id: TokenId::from_uuid(uuid),
        }))
    }
}
