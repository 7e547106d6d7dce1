//! Plumbing that conversation-service and token-service share, written once so the two
//! cannot drift apart. Nothing here knows about conversations or tokens.

pub mod auth;
pub mod healthcheck;
pub mod seal;
pub mod security;
pub mod server;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod tls;
