//! What the operator service (`chat.v1.TokenAdminService`) takes: outbox call ids, the page
//! tokens of ListFailedCalls and backup file names that cannot leave the backup directory.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::Timestamp;
use crate::error::Error;

/// An outbox call, as operators name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallId(i64);

impl CallId {
    pub fn parse(value: i64) -> Result<Self, Error> {
        if value > 0 {
            Ok(Self(value))
        } else {
            Err(Error::invalid(
                "call_id",
                "must be a call_id from ListFailedCalls",
            ))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// The last call of a ListFailedCalls page; the next page starts after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedCallCursor(pub i64);

const CURSOR_VERSION: u8 = 1;

impl FailedCallCursor {
    pub fn encode(self) -> String {
        let mut bytes = vec![CURSOR_VERSION];
        bytes.extend_from_slice(&self.0.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Empty means the first page.
    pub fn decode(page_token: &str) -> Result<Option<Self>, Error> {
        if page_token.is_empty() {
            return Ok(None);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(page_token)
            .map_err(|_| Error::invalid_page_token())?;
        match bytes.split_first() {
            Some((&CURSOR_VERSION, rest)) => <[u8; 8]>::try_from(rest)
                .map(|id| Some(Self(i64::from_be_bytes(id))))
                .map_err(|_| Error::invalid_page_token()),
            _ => Err(Error::invalid_page_token()),
        }
    }
}

/// What a queued call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    CreateConversation,
    UpdateCustomer,
}

/// A call conversation-service refused for good, kept for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedCall {
    pub call_id: CallId,
    pub session_id: super::SessionId,
    pub kind: CallKind,
    pub attempts: u32,
    pub last_error: String,
    pub error_reason: String,
    pub fail_time: Timestamp,
    pub create_time: Timestamp,
}

/// A file name inside the backup directory: no separators, no `..`, nothing hidden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupName(String);

impl BackupName {
    const MAX_LEN: usize = 128;

    /// Empty: `token-<UTC time>.db`.
    pub fn parse(value: &str, now: Timestamp) -> Result<Self, Error> {
        if value.is_empty() {
            return Ok(Self(format!(
                "token-{}.db",
                now.format("%Y%m%dT%H%M%S%.6fZ")
            )));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if value.len() > Self::MAX_LEN || !value.chars().all(allowed) || value.starts_with('.') {
            return Err(Error::invalid(
                "file_name",
                "must be a plain file name of letters, digits, '.', '-' and '_', not starting with '.'",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_stay_in_their_directory() {
        let now = super::super::now();
        for bad in [
            "../token.db",
            "a/b.db",
            ".hidden",
            "..",
            "x\0y",
            "sp ace.db",
        ] {
            assert!(BackupName::parse(bad, now).is_err(), "{bad:?}");
        }
        assert_eq!(
            BackupName::parse("token-1.db", now).unwrap().as_str(),
            "token-1.db"
        );
        let default = BackupName::parse("", now).unwrap();
        assert!(default.as_str().starts_with("token-") && default.as_str().ends_with("Z.db"));
        assert!(BackupName::parse(default.as_str(), now).is_ok());
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let token = FailedCallCursor(42).encode();
        assert_eq!(
            FailedCallCursor::decode(&token).unwrap(),
            Some(FailedCallCursor(42))
        );
        assert_eq!(FailedCallCursor::decode("").unwrap(), None);
        assert!(FailedCallCursor::decode("not a token").is_err());
        assert!(FailedCallCursor::decode(&URL_SAFE_NO_PAD.encode([9u8; 9])).is_err());
    }

    #[test]
    fn call_ids_are_positive() {
        assert!(CallId::parse(0).is_err());
        assert!(CallId::parse(-3).is_err());
        assert_eq!(CallId::parse(7).unwrap().get(), 7);
    }
}
