//! chat-client against real conversation-service processes (one test binary).
mod follow;
mod helpers;
mod postgres_restart;
mod send;
mod tls;
