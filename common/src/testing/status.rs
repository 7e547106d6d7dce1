//! Assertions on the statuses both services answer with.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::error::DOMAIN;

/// The `google.rpc.ErrorInfo` reason of a status, asserting its domain.
///
/// # Panics
/// When the status carries no `ErrorInfo` or another domain's.
#[track_caller]
pub fn reason(status: &Status) -> String {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("status carries no ErrorInfo: {status:?}"));
    assert_eq!(info.domain, DOMAIN, "{status:?}");
    info.reason.clone()
}

/// The `ErrorInfo` metadata value under `key`, or `""` when there is none.
pub fn info_metadata(status: &Status, key: &str) -> String {
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get(key).cloned())
        .unwrap_or_default()
}

/// The field named by the first `BadRequest` violation, or `""` when there is none.
pub fn bad_field(status: &Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

/// Asserts the code and `ErrorInfo` reason of a refusal, and returns it.
///
/// # Panics
/// When `result` succeeded or was refused otherwise.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    expected_reason: &str,
) -> Status {
    let status = result.expect_err("expected a refusal");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(&status), expected_reason, "{status:?}");
    status
}

/// Asserts INVALID_ARGUMENT with a `BadRequest` violation naming `field`.
///
/// # Panics
/// When `result` succeeded or was refused otherwise.
#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = result.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let bad = details
        .bad_request()
        .unwrap_or_else(|| panic!("no BadRequest details: {status:?}"));
    assert!(
        bad.field_violations.iter().any(|v| v.field == field),
        "no violation for {field}: {bad:?}"
    );
}

/// Polls `f` every 50 ms until it returns `Some`.
///
/// # Panics
/// After `timeout` without one.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback address free right now, for a server that must restart at the same place.
///
/// # Panics
/// When no port can be bound (tests only).
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a free loopback port")
}
