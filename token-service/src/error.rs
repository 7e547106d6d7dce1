//! The one error type of token-service. What a caller sees of it (code, message,
//! `google.rpc.ErrorInfo` reason and details) is said once, in its
//! [`ServiceError`] impl, and turned into a status by the shared
//! [`chat_common::error::to_status`]; storage errors are logged with their context and
//! never sent.

use std::time::Duration;

use chat_common::error::{Details, ServiceError, canonical_code_name, reason_of, to_status};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {description}")]
    InvalidArgument {
        field: &'static str,
        description: String,
        reason: &'static str,
    },
    #[error("chat link not found")]
    TokenNotFound,
    #[error("chat link belongs to another provider")]
    ProviderMismatch,
    #[error("chat link has expired")]
    TokenExpired,
    #[error("chat link was revoked")]
    TokenRevoked,
    #[error("chat link has been used up")]
    TokenExhausted,
    #[error("session not found")]
    SessionNotFound,
    #[error("session has ended")]
    SessionEnded,
    #[error("session is already linked to another customer")]
    CustomerAlreadyLinked,
    #[error("too many failed redemptions; retry later")]
    TooManyFailedRedemptions { retry_after: Duration },
    #[error("no failed call with that call_id")]
    FailedCallNotFound,
    #[error("a backup with that file name exists")]
    BackupExists,
    #[error("database unavailable: {0}")]
    StoreUnavailable(String),
    #[error("database error while {context}: {source}")]
    Store {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// conversation-service could not be reached for a call the RPC needs at once (an
    /// export's conversations).
    #[error("conversation-service unavailable: {0}")]
    ConversationServiceUnavailable(String),
    /// The caller went away before the answer was complete.
    #[error("the caller cancelled")]
    Cancelled,
    /// conversation-service refused a call for good; the caller hears its reason.
    #[error("conversation-service refused: {0}")]
    Refused(Refusal),
}

/// A refusal by conversation-service that waiting cannot change (FAILED_PRECONDITION,
/// INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED), with its `ErrorInfo` reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub reason: String,
    pub message: String,
}

impl Refusal {
    /// Reads a status from conversation-service; without an `ErrorInfo` the reason is
    /// the code's name.
    pub fn from_status(status: &Status) -> Self {
        Self {
            code: status.code(),
            reason: reason_of(status).unwrap_or_else(|| canonical_code_name(status.code())),
            message: status.message().to_owned(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = canonical_code_name(self.code);
        write!(f, "{code} {}: {}", self.reason, self.message)
    }
}

impl Error {
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            description: description.into(),
            reason: "INVALID_ARGUMENT",
        }
    }

    pub fn invalid_page_token() -> Self {
        Self::InvalidArgument {
            field: "page_token",
            description: "is not a page token of this query".into(),
            reason: "INVALID_PAGE_TOKEN",
        }
    }

    pub fn request_id_reused() -> Self {
        Self::InvalidArgument {
            field: "request_id",
            description: "was already used for a different redemption (link, customer_id or new_conversation)".into(),
            reason: "REQUEST_ID_REUSED",
        }
    }

    pub fn erase_request_id_reused() -> Self {
        Self::InvalidArgument {
            field: "request_id",
            description: "was already used to erase another customer".into(),
            reason: "REQUEST_ID_REUSED",
        }
    }

    /// A guess at a secret (unknown link, wrong provider, malformed secret): counted by
    /// the failed-redemption limiter.
    pub fn is_failed_guess(&self) -> bool {
        matches!(
            self,
            Self::TokenNotFound
                | Self::ProviderMismatch
                | Self::InvalidArgument {
                    field: "secret",
                    ..
                }
        )
    }
}

impl From<rusqlite_migration::Error> for Error {
    fn from(e: rusqlite_migration::Error) -> Self {
        Self::StoreUnavailable(format!("migrating the schema: {e}"))
    }
}

/// SQLite conditions that go away by themselves (locks, I/O, a full disk).
fn is_transient(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(
            C::DatabaseBusy
                | C::DatabaseLocked
                | C::SystemIoFailure
                | C::DiskFull
                | C::CannotOpen
                | C::ReadOnly
        )
    )
}

/// Adds context to a rusqlite result, as close to the query as possible.
pub trait StoreResultExt<T> {
    fn context(self, context: &'static str) -> Result<T, Error>;
}

impl<T> StoreResultExt<T> for Result<T, rusqlite::Error> {
    fn context(self, context: &'static str) -> Result<T, Error> {
        self.map_err(|source| Error::Store { context, source })
    }
}

impl ServiceError for Error {
    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::TokenNotFound | Self::FailedCallNotFound => Code::NotFound,
            Self::BackupExists => Code::AlreadyExists,
            // A session is found by its secret: an unknown one is a bad credential.
            Self::SessionNotFound | Self::SessionEnded => Code::Unauthenticated,
            Self::ProviderMismatch => Code::PermissionDenied,
            Self::TokenExpired
            | Self::TokenRevoked
            | Self::TokenExhausted
            | Self::CustomerAlreadyLinked => Code::FailedPrecondition,
            Self::TooManyFailedRedemptions { .. } => Code::ResourceExhausted,
            Self::StoreUnavailable(_) | Self::ConversationServiceUnavailable(_) => {
                Code::Unavailable
            }
            Self::Cancelled => Code::Cancelled,
            Self::Store { source, .. } if is_transient(source) => Code::Unavailable,
            Self::Store { .. } | Self::Internal(_) => Code::Internal,
            // Passed through as conversation-service said it: same code, same reason.
            Self::Refused(refusal) => refusal.code,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Self::Refused(refusal) => &refusal.reason,
            Self::InvalidArgument { reason, .. } => reason,
            Self::TokenNotFound => "TOKEN_NOT_FOUND",
            Self::ProviderMismatch => "PROVIDER_MISMATCH",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::TokenRevoked => "TOKEN_REVOKED",
            Self::TokenExhausted => "TOKEN_EXHAUSTED",
            Self::SessionNotFound => "SESSION_NOT_FOUND",
            Self::SessionEnded => "SESSION_ENDED",
            Self::CustomerAlreadyLinked => "CUSTOMER_ALREADY_LINKED",
            Self::TooManyFailedRedemptions { .. } => "TOO_MANY_FAILED_REDEMPTIONS",
            Self::FailedCallNotFound => "FAILED_CALL_NOT_FOUND",
            Self::BackupExists => "BACKUP_EXISTS",
            Self::StoreUnavailable(_) => "STORE_UNAVAILABLE",
            Self::ConversationServiceUnavailable(_) => "CONVERSATION_SERVICE_UNAVAILABLE",
            Self::Cancelled => "CANCELLED",
            Self::Store { source, .. } if is_transient(source) => "STORE_UNAVAILABLE",
            Self::Store { .. } | Self::Internal(_) => "INTERNAL",
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::SessionNotFound => "session secret is not valid".to_owned(),
            Self::Refused(refusal) => refusal.message.clone(),
            Self::ConversationServiceUnavailable(_) => {
                "conversation-service is unavailable, retry later".to_owned()
            }
            _ if self.code() == Code::Unavailable => {
                "storage is unavailable, retry later".to_owned()
            }
            _ => self.to_string(),
        }
    }

    fn details(&self) -> Details {
        match self {
            Self::InvalidArgument {
                field, description, ..
            } => Details::bad_field(field, description.clone()),
            Self::TooManyFailedRedemptions { retry_after } => Details::retry_after(*retry_after),
            _ => Details::none(),
        }
    }
}

impl From<Error> for Status {
    /// An unavailable database is logged here with its context (INTERNAL is logged by
    /// `to_status`); the caller hears only that it may retry.
    fn from(error: Error) -> Self {
        if matches!(error, Error::StoreUnavailable(_) | Error::Store { .. })
            && error.code() == Code::Unavailable
        {
            tracing::error!(%error, "database unavailable");
        }
        to_status(&error)
    }
}

#[cfg(test)]
mod tests {
    use chat_common::testing::status::{bad_field, reason};
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn each_error_keeps_its_code_message_and_reason() {
        let cases = [
            (
                Error::TokenNotFound,
                Code::NotFound,
                "chat link not found",
                "TOKEN_NOT_FOUND",
            ),
            (
                Error::SessionNotFound,
                Code::Unauthenticated,
                "session secret is not valid",
                "SESSION_NOT_FOUND",
            ),
            (
                Error::SessionEnded,
                Code::Unauthenticated,
                "session has ended",
                "SESSION_ENDED",
            ),
            (
                Error::ProviderMismatch,
                Code::PermissionDenied,
                "chat link belongs to another provider",
                "PROVIDER_MISMATCH",
            ),
            (
                Error::TokenExhausted,
                Code::FailedPrecondition,
                "chat link has been used up",
                "TOKEN_EXHAUSTED",
            ),
            (
                Error::BackupExists,
                Code::AlreadyExists,
                "a backup with that file name exists",
                "BACKUP_EXISTS",
            ),
            (
                Error::StoreUnavailable("disk gone".into()),
                Code::Unavailable,
                "storage is unavailable, retry later",
                "STORE_UNAVAILABLE",
            ),
            (
                Error::Internal("secret detail".into()),
                Code::Internal,
                "internal error",
                "INTERNAL",
            ),
        ];
        for (error, code, message, expected_reason) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(status.message(), message);
            assert_eq!(reason(&status), expected_reason);
        }
    }

    #[test]
    fn a_bad_field_names_it_and_a_refused_caller_hears_when_to_retry() {
        let status = Status::from(Error::invalid_page_token());
        assert_eq!(
            status.message(),
            "invalid page_token: is not a page token of this query"
        );
        assert_eq!(
            (reason(&status).as_str(), bad_field(&status).as_str()),
            ("INVALID_PAGE_TOKEN", "page_token")
        );
        let retry_after = Duration::from_secs(7);
        let status = Status::from(Error::TooManyFailedRedemptions { retry_after });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let retry = status.get_error_details().retry_info().cloned();
        assert_eq!(retry.and_then(|r| r.retry_delay), Some(retry_after));
    }

    #[test]
    fn a_refusal_is_passed_through_and_named_by_its_code_without_error_info() {
        let refusal = Refusal::from_status(&Status::failed_precondition("linked elsewhere"));
        assert_eq!(refusal.reason, "FAILED_PRECONDITION");
        assert_eq!(
            refusal.to_string(),
            "FAILED_PRECONDITION FAILED_PRECONDITION: linked elsewhere"
        );
        let status = Status::from(Error::Refused(refusal));
        assert_eq!(
            (status.code(), status.message()),
            (Code::FailedPrecondition, "linked elsewhere")
        );
        assert_eq!(
            canonical_code_name(Code::InvalidArgument),
            "INVALID_ARGUMENT"
        );
        assert_eq!(
            canonical_code_name(Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
        assert_eq!(canonical_code_name(Code::NotFound), "NOT_FOUND");
    }
}
