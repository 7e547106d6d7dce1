//! The service's one error type, mapped to a gRPC status in exactly one place.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `google.rpc.ErrorInfo` domain of every reason this service gives.
pub const DOMAIN: &str = "chat.v1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: names the field, changes nothing.
    #[error("{field}: {description}")]
    InvalidArgument {
        field: &'static str,
        description: String,
    },
    /// The only thing a caller can name that may not exist.
    #[error("conversation not found")]
    ConversationNotFound,
    #[error("{message}")]
    PermissionDenied {
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    #[error("{field}: {message}")]
    OutOfRange {
        field: &'static str,
        message: String,
    },
    #[error("{message}")]
    ResourceExhausted {
        reason: &'static str,
        message: String,
    },
    /// PostgreSQL cannot be reached (or the service is still starting).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: logged with context, answered without detail.
    #[error("{context}: {source}")]
    Internal {
        context: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            description: description.into(),
        }
    }

    pub fn not_participant() -> Self {
        Self::PermissionDenied {
            reason: "NOT_A_PARTICIPANT",
            message: "the caller is not a participant of this conversation".into(),
        }
    }

    /// An anonymous visitor's access ends once a customer is linked.
    pub fn customer_linked() -> Self {
        Self::PermissionDenied {
            reason: "CUSTOMER_LINKED",
            message: "a customer is linked to this conversation; act as that customer".into(),
        }
    }

    pub fn closed() -> Self {
        Self::FailedPrecondition {
            reason: "CONVERSATION_CLOSED",
            message: "the conversation is closed".into(),
        }
    }

    /// Wraps a database error with what was being done; the constraint-aware mapping
    /// happens in the store before this.
    pub fn db(context: &'static str, source: sqlx::Error) -> Self {
        if is_unreachable(&source) {
            tracing::warn!(error = %source, context, "database unavailable");
            return Self::Unavailable("the database is unavailable, retry later".into());
        }
        Self::Internal {
            context,
            source: Box::new(source),
        }
    }
}

fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        // SQLSTATEs meaning "this database cannot serve you now", mostly raised while a
        // new connection is opened: 08 connection exception, 53 insufficient resources
        // (too many connections), 57P operator intervention (shutdown, starting up),
        // 3D000 no such database, 28 authorization, 55000 database not accepting
        // connections. Anything else is a bug and stays INTERNAL.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            ["08", "53", "57P", "28"]
                .iter()
                .any(|class| c.starts_with(class))
                || c == "3D000"
                || c == "55000"
        }),
        _ => false,
    }
}

fn reason_for(error: &Error) -> &'static str {
    match error {
        Error::InvalidArgument { .. } => "INVALID_ARGUMENT",
        Error::ConversationNotFound => "CONVERSATION_NOT_FOUND",
        Error::PermissionDenied { reason, .. }
        | Error::FailedPrecondition { reason, .. }
        | Error::ResourceExhausted { reason, .. } => reason,
        Error::OutOfRange { .. } => "CURSOR_OUT_OF_RANGE",
        Error::Unavailable(_) => "DATABASE_UNAVAILABLE",
        Error::Internal { .. } => "INTERNAL",
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let reason = reason_for(&error);
        let mut details = ErrorDetails::new();
        let (code, message) = match &error {
            Error::InvalidArgument { field, description } => {
                details.add_bad_request_violation(*field, description.clone());
                (Code::InvalidArgument, error.to_string())
            }
            Error::ConversationNotFound => (Code::NotFound, error.to_string()),
            Error::PermissionDenied { .. } => (Code::PermissionDenied, error.to_string()),
            Error::FailedPrecondition { .. } => (Code::FailedPrecondition, error.to_string()),
            Error::OutOfRange { .. } => (Code::OutOfRange, error.to_string()),
            Error::ResourceExhausted { .. } => (Code::ResourceExhausted, error.to_string()),
            Error::Unavailable(message) => (Code::Unavailable, message.clone()),
            Error::Internal { context, source } => {
                tracing::error!(context, error = %source, "internal error");
                (Code::Internal, "internal error".to_owned())
            }
        };
        details.set_error_info(reason, DOMAIN, std::collections::HashMap::new());
        Status::with_error_details(code, message, details)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
