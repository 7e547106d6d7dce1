//! Real-time delivery: one LISTEN connection per process, a hub that routes wake-ups to
//! the streams that want them, and the per-stream tasks that read the tables.

pub mod events;
mod feed;
mod hub;
mod listener;
pub mod presence;
pub mod streams;

pub use hub::{Hub, Wake};
pub use listener::run_listener;
