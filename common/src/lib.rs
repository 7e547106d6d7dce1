//! Plumbing that conversation-service and token-service share, written once so the two
//! cannot drift apart. Nothing here knows about conversations or tokens.

pub mod seal;
pub mod server;
