//! The tracing subscriber, built once at start.

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), `format` is
/// `text` or `json`. Safe to call twice (the second call does nothing).
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
