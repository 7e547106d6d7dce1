//! token-service: chat links (tokens) and customer sessions in SQLite, redeemed into
//! exactly one conversation of conversation-service through an outbox of pending calls.

pub mod config;
pub mod conversations;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod limiter;
pub mod metrics;
pub mod outbox;
pub mod privacy;
pub mod retention;
pub mod sessions;
pub mod startup;
pub mod store;
pub mod telemetry;
