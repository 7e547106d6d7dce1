//! SQLite, owned by one dedicated thread: every query runs there, never on an async
//! worker. That thread is the only writer; it runs the calls waiting in its queue together
//! in one `BEGIN IMMEDIATE` transaction (group commit, see `group`), so an outside reader
//! (a backup) cannot turn them into SQLITE_BUSY and one fsync serves many callers.
//!
//! One process at a time: an exclusive lock on `<database>.lock` (released by the kernel
//! when the process dies, even by SIGKILL) keeps a second token-service off the file.
//!
//! If the database cannot be opened (a missing volume, a full disk, the lock held by
//! another process), calls fail with UNAVAILABLE and the next call or health probe tries
//! again.

mod admin;
mod audit;
mod group;
mod outbox;
mod privacy;
mod retention;
mod session_rows;
mod sessions;
mod sql;
mod stats;
mod thread;
mod tokens;
mod turns;

pub use outbox::{Done, OutboxCall, OutboxJob};
pub use privacy::{ErasureAttempt, ErasureJob};
pub use retention::Retained;
pub use sessions::{Identified, Redeemed, Redemption};
pub use stats::OutboxStats;
pub use thread::Store;
