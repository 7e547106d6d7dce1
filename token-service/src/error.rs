//! The one error type of token-service and the one place it becomes a gRPC status: the
//! code, the message a caller may see and the `google.rpc.ErrorInfo` reason (domain
//! `chat.v1`). Storage errors are logged here with their context and never sent.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub const DOMAIN: &str = "chat.v1";

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
        let reason = status
            .get_error_details()
            .error_info()
            .map(|info| info.reason.clone())
            .filter(|reason| !reason.is_empty())
            .unwrap_or_else(|| code_name(status.code()).to_owned());
        Self {
            code: status.code(),
            reason,
            message: status.message().to_owned(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            code_name(self.code),
            self.reason,
            self.message
        )
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::PermissionDenied => "PERMISSION_DENIED",
        _ => "UNKNOWN",
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
            Self::Store { source, .. } if is_transient(source) => "STORE_UNAVAILABLE",
            Self::Store { .. } | Self::Internal(_) => "INTERNAL",
        }
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

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let reason = error.reason();
        let with_info = |metadata: HashMap<String, String>| {
            ErrorDetails::with_error_info(reason, DOMAIN, metadata)
        };
        let (code, message, details) = match &error {
            Error::InvalidArgument {
                field, description, ..
            } => {
                let mut details =
                    with_info(HashMap::from([("field".to_owned(), (*field).to_owned())]));
                details.add_bad_request_violation(*field, description.clone());
                (Code::InvalidArgument, error.to_string(), details)
            }
            Error::TokenNotFound | Error::FailedCallNotFound => {
                (Code::NotFound, error.to_string(), with_info(HashMap::new()))
            }
            Error::BackupExists => (
                Code::AlreadyExists,
                error.to_string(),
                with_info(HashMap::new()),
            ),
            // A session is found by its secret: an unknown one is a bad credential.
            Error::SessionNotFound => (
                Code::Unauthenticated,
                "session secret is not valid".to_owned(),
                with_info(HashMap::new()),
            ),
            Error::ProviderMismatch => (
                Code::PermissionDenied,
                error.to_string(),
                with_info(HashMap::new()),
            ),
            Error::TokenExpired | Error::TokenRevoked | Error::TokenExhausted => (
                Code::FailedPrecondition,
                error.to_string(),
                with_info(HashMap::new()),
            ),
            Error::SessionEnded => (
                Code::Unauthenticated,
                error.to_string(),
                with_info(HashMap::new()),
            ),
            Error::CustomerAlreadyLinked => (
                Code::FailedPrecondition,
                error.to_string(),
                with_info(HashMap::new()),
            ),
            Error::TooManyFailedRedemptions { retry_after } => {
                crate::metrics::failed_guess_refused();
                let mut details = with_info(HashMap::new());
                details.set_retry_info(Some(*retry_after));
                (Code::ResourceExhausted, error.to_string(), details)
            }
            Error::StoreUnavailable(context) => {
                tracing::error!(%context, "database unavailable");
                (
                    Code::Unavailable,
                    "storage is unavailable, retry later".to_owned(),
                    with_info(HashMap::new()),
                )
            }
            Error::Store { context, source } => {
                tracing::error!(%context, error = %source, "database error");
                if is_transient(source) {
                    (
                        Code::Unavailable,
                        "storage is unavailable, retry later".to_owned(),
                        with_info(HashMap::new()),
                    )
                } else {
                    (
                        Code::Internal,
                        "internal error".to_owned(),
                        with_info(HashMap::new()),
                    )
                }
            }
            // Passed through as conversation-service said it: same code, same reason.
            Error::Refused(refusal) => (
                refusal.code,
                refusal.message.clone(),
                with_info(HashMap::new()),
            ),
            Error::Internal(context) => {
                tracing::error!(%context, "internal error");
                (
                    Code::Internal,
                    "internal error".to_owned(),
                    with_info(HashMap::new()),
                )
            }
        };
        Status::with_error_details(code, message, details)
    }
}
