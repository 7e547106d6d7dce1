//! The one error type of the client: a refusal or failure with its gRPC code and the
//! `google.rpc.ErrorInfo` reason, so callers branch on the reason, never on text.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// A field of the request named by a `google.rpc.BadRequest` (on INVALID_ARGUMENT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// What a failed call said.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
    /// `ErrorInfo.reason` (e.g. `CONVERSATION_CLOSED`); `None` when the status had none,
    /// as from a transport failure or a proxy answering instead of the service.
    pub reason: Option<String>,
    pub domain: Option<String>,
    pub metadata: HashMap<String, String>,
    pub field_violations: Vec<FieldViolation>,
    /// The status was made on this side from a connection failure, not sent by the
    /// service (tonic says UNKNOWN "transport error" for a connection that died mid-call).
    pub from_transport: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}{}: {}", .0.code, .0.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(), .0.message)]
    Rpc(Box<RpcError>),
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// The gRPC code, for a call that failed (not for a configuration error).
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Rpc(rpc) => Some(rpc.code),
            Self::Config(_) => None,
        }
    }

    /// The `ErrorInfo` reason, if the service gave one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Rpc(rpc) => rpc.reason.as_deref(),
            Self::Config(_) => None,
        }
    }

    /// Worth calling again: the service or the way to it was down, or too slow.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Rpc(rpc) => {
                matches!(rpc.code, Code::Unavailable | Code::DeadlineExceeded)
                    || (rpc.code == Code::Unknown && rpc.from_transport)
            }
            Self::Config(_) => false,
        }
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Status::unavailable(message).into()
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let details = status.get_error_details();
        let info = details.error_info();
        let field_violations = details
            .bad_request()
            .map(|bad| {
                bad.field_violations
                    .iter()
                    .map(|v| FieldViolation {
                        field: v.field.clone(),
                        description: v.description.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self::Rpc(Box::new(RpcError {
            code: status.code(),
            message: status.message().to_owned(),
            reason: info.map(|i| i.reason.clone()).filter(|r| !r.is_empty()),
            domain: info.map(|i| i.domain.clone()).filter(|d| !d.is_empty()),
            metadata: info.map(|i| i.metadata.clone()).unwrap_or_default(),
            field_violations,
            // Only statuses tonic builds from an error carry a source; the service's never.
            from_transport: std::error::Error::source(&status).is_some(),
        }))
    }
}
