//! API tests: real PostgreSQL, real gRPC on loopback. One binary, one module per
//! capability.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conversations;
mod events;
mod faults;
mod filters;
mod hardening;
mod helpers;
mod inbox;
mod inbox_order;
mod interop;
mod limits;
mod messages;
mod observability;
mod pagination;
mod presence;
mod privacy;
mod properties;
mod reminders;
mod security;
mod send_path;
mod startup;
mod stream_faults;
mod streams;
mod subcommands;
mod unread;
