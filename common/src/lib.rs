//! Plumbing that conversation-service and token-service share, written once so the two
//! cannot drift apart. Nothing here knows about conversations or tokens.

pub mod auth;
pub mod duration;
pub mod error;
pub mod health;
pub mod healthcheck;
pub mod metrics;
pub mod reflection;
pub mod rpc;
pub mod runtime;
pub mod scrape;
pub mod seal;
pub mod security;
pub mod server;
pub mod shutdown;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod tls;
