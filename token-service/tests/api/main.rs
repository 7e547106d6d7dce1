//! token-service against a real SQLite file over real gRPC on loopback (and, where the
//! flow needs it, a real conversation-service on a fresh PostgreSQL database).

// Tests may unwrap; clippy.toml's allow-unwrap-in-tests does not reach helper functions.
#![allow(clippy::unwrap_used)]

mod helpers;

mod admin;
mod consistency;
mod end_to_end;
mod faults;
mod hardening;
mod health;
mod observability;
mod privacy;
mod properties;
mod redeem;
mod replicas;
mod security;
mod sessions;
mod subcommands;
mod tokens;
