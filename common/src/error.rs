//! The one bridge from a service's errors to a gRPC status, shared by both services (the
//! shape of Quickwit's `ServiceError`): an error says its code, its `google.rpc.ErrorInfo`
//! reason and the details a caller may act on; [`to_status`] builds the `Status` with
//! those details in one place, and keeps internal failures' text in the log.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `google.rpc.ErrorInfo` domain of every reason either service gives.
pub const DOMAIN: &str = "chat.v1";

/// What a caller may learn from an error beyond its code and reason.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Details {
    /// A `google.rpc.BadRequest` violation: the field and what is wrong with it.
    pub violation: Option<(String, String)>,
    /// A `google.rpc.RetryInfo` delay.
    pub retry_after: Option<Duration>,
    /// Extra `ErrorInfo` metadata.
    pub metadata: HashMap<String, String>,
}

impl Details {
    pub fn none() -> Self {
        Self::default()
    }

    /// A bad field: a `BadRequest` violation, and `field` in the `ErrorInfo` metadata.
    pub fn bad_field(field: &str, description: impl Into<String>) -> Self {
        Self {
            violation: Some((field.to_owned(), description.into())),
            metadata: HashMap::from([("field".to_owned(), field.to_owned())]),
            ..Self::default()
        }
    }

    pub fn retry_after(delay: Duration) -> Self {
        Self {
            retry_after: Some(delay),
            ..Self::default()
        }
    }

    pub fn with_metadata(mut self, key: &str, value: impl Into<String>) -> Self {
        self.metadata.insert(key.to_owned(), value.into());
        self
    }
}

/// An error a service answers with. Its `Display` is what the log says; callers read
/// [`ServiceError::public_message`], which never carries an internal failure's text.
pub trait ServiceError: std::fmt::Display {
    fn code(&self) -> Code;

    /// The `ErrorInfo` reason: stable, UPPER_SNAKE_CASE, what clients branch on.
    fn reason(&self) -> &str;

    /// The status message. Not used for INTERNAL, whose message is fixed.
    fn public_message(&self) -> String {
        self.to_string()
    }

    fn details(&self) -> Details {
        Details::none()
    }
}

/// The status for `error`: its code, message and details, with an `ErrorInfo` always.
/// INTERNAL is logged here with the error's full text and answered without it.
pub fn to_status<E: ServiceError + ?Sized>(error: &E) -> Status {
    let code = error.code();
    let message = if code == Code::Internal {
        tracing::error!(error = %error, "internal error");
        "internal error".to_owned()
    } else {
        error.public_message()
    };
    let Details {
        violation,
        retry_after,
        metadata,
    } = error.details();
    let mut details = ErrorDetails::with_error_info(error.reason(), DOMAIN, metadata);
    if let Some((field, description)) = violation {
        details.add_bad_request_violation(field, description);
    }
    if retry_after.is_some() {
        details.set_retry_info(retry_after);
    }
    Status::with_error_details(code, message, details)
}

/// A code's canonical name (`FAILED_PRECONDITION`), written from the shared table of code
/// names (`FailedPrecondition`): what operators read in stored errors and audit records.
pub fn canonical_code_name(code: Code) -> String {
    let mut name = String::new();
    for (at, c) in crate::rpc::code_name(code).char_indices() {
        if at > 0 && c.is_ascii_uppercase() {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// How an administrative call ended, as its audit record says it: `("OK", "")`, or the
/// code's canonical name and the reason. `None` for bad input, which did nothing and is
/// not recorded, so a refused call writes nothing.
pub fn audit_outcome<E: ServiceError + ?Sized>(error: Option<&E>) -> Option<(String, String)> {
    match error {
        None => Some(("OK".to_owned(), String::new())),
        Some(error) if error.code() == Code::InvalidArgument => None,
        Some(error) => Some((canonical_code_name(error.code()), error.reason().to_owned())),
    }
}

/// The `ErrorInfo` reason of a status from either service, if it has one.
pub fn reason_of(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .filter(|reason| !reason.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum Sample {
        Bad,
        Busy,
        Broken,
    }

    impl std::fmt::Display for Sample {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Self::Bad => f.write_str("name: is empty"),
                Self::Busy => f.write_str("too many"),
                Self::Broken => f.write_str("disk on fire at /var/secret"),
            }
        }
    }

    impl ServiceError for Sample {
        fn code(&self) -> Code {
            match self {
                Self::Bad => Code::InvalidArgument,
                Self::Busy => Code::ResourceExhausted,
                Self::Broken => Code::Internal,
            }
        }

        fn reason(&self) -> &str {
            match self {
                Self::Bad => "INVALID_ARGUMENT",
                Self::Busy => "TOO_MANY",
                Self::Broken => "INTERNAL",
            }
        }

        fn details(&self) -> Details {
            match self {
                Self::Bad => Details::bad_field("name", "is empty"),
                Self::Busy => Details::retry_after(Duration::from_secs(3)),
                Self::Broken => Details::none(),
            }
        }
    }

    #[test]
    fn a_bad_field_carries_its_violation_and_reason() {
        let status = to_status(&Sample::Bad);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "name: is empty");
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_ARGUMENT", DOMAIN)
        );
        assert_eq!(info.metadata.get("field").map(String::as_str), Some("name"));
        let violations = &details.bad_request().expect("BadRequest").field_violations;
        assert_eq!(violations[0].field, "name");
        assert_eq!(reason_of(&status).as_deref(), Some("INVALID_ARGUMENT"));
    }

    #[test]
    fn retry_info_is_sent_when_given() {
        let status = to_status(&Sample::Busy);
        let retry = status.get_error_details().retry_info().cloned();
        assert_eq!(
            retry.and_then(|r| r.retry_delay),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn internal_failures_keep_their_text_out_of_the_status() {
        let status = to_status(&Sample::Broken);
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
        assert_eq!(reason_of(&status).as_deref(), Some("INTERNAL"));
    }

    #[test]
    fn a_status_without_error_info_has_no_reason() {
        assert_eq!(reason_of(&Status::not_found("x")), None);
    }
}
