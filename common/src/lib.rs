//! Plumbing that conversation-service and token-service share, written once so the two
//! cannot drift apart. Nothing here knows about conversations or tokens.

pub mod auth;
pub mod duration;
pub mod health;
pub mod metrics;
pub mod reflection;
pub mod rpc;
pub mod scrape;
pub mod security;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tls;
