//! The tracing subscriber, built once at start (the shared setup of `chat-common`).

use chat_common::telemetry::{LogFormat, Telemetry};

/// Installs the global subscriber (see `chat_common::telemetry`). Calling it twice
/// (tests) keeps the first one.
#[must_use = "dropping the guard stops exporting traces"]
pub fn init(format: LogFormat) -> Telemetry {
    chat_common::telemetry::init("token-service", format)
}
