//! A chat link and the rules that decide whether it can be redeemed.

use super::{Label, MaxUses, ProviderId, Timestamp, TokenId, Ttl};
use crate::error::Error;

/// What a provider asked for in IssueToken, validated.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub provider_id: ProviderId,
    pub label: Label,
    pub ttl: Ttl,
    pub max_uses: MaxUses,
}

/// A stored link (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub token_id: TokenId,
    pub provider_id: ProviderId,
    pub label: String,
    pub create_time: Timestamp,
    pub expire_time: Timestamp,
    /// 0 = unlimited.
    pub max_uses: u32,
    pub use_count: u32,
    pub revoke_time: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Valid,
    Expired,
    Revoked,
    Exhausted,
}

impl Token {
    /// Revocation wins over expiry, expiry over exhaustion: the most deliberate cause first.
    pub fn state(&self, now: Timestamp) -> TokenState {
        if self.revoke_time.is_some() {
            TokenState::Revoked
        } else if now >= self.expire_time {
            TokenState::Expired
        } else if self.max_uses != 0 && self.use_count >= self.max_uses {
            TokenState::Exhausted
        } else {
            TokenState::Valid
        }
    }

    /// The refusal for a link that cannot be redeemed now.
    pub fn ensure_redeemable(&self, now: Timestamp) -> Result<(), Error> {
        match self.state(now) {
            TokenState::Valid => Ok(()),
            TokenState::Expired => Err(Error::TokenExpired),
            TokenState::Revoked => Err(Error::TokenRevoked),
            TokenState::Exhausted => Err(Error::TokenExhausted),
        }
    }

    /// The link path only works with its own provider id.
    pub fn ensure_provider(&self, provider_id: &ProviderId) -> Result<(), Error> {
        if &self.provider_id == provider_id {
            Ok(())
        } else {
            Err(Error::ProviderMismatch)
        }
    }
}

impl NewToken {
    pub fn max_uses(&self) -> u32 {
        self.max_uses.limit().unwrap_or(0)
    }
}
