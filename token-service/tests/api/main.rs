//! token-service against a real SQLite file over real gRPC on loopback (and, where the
//! flow needs it, a real conversation-service on a fresh PostgreSQL database).

#![allow(clippy::unwrap_used)]

mod helpers;

mod health;
mod redeem;
mod sessions;
mod tokens;
