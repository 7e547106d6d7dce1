//! API tests: real PostgreSQL, real gRPC on loopback. One binary, one module per
//! capability.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conversations;
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
mod privacy;
mod properties;
mod search;
mod security;
mod send_path;
mod startup;
mod stream_faults;
mod streams;
mod subcommands;
mod unread;
mod unread_stream;
