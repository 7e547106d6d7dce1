//! PostgreSQL: plain SQL next to the function that needs it. Refusals (not found, not a
//! participant, closed, a reused key) are decided here or in the planners as domain
//! errors; any other database error is wrapped by [`crate::error::Error::db`].

mod batcher;
mod conversations;
mod create;
mod create_plan;
mod create_queue;
mod events;
mod handle;
mod inbox;
mod kept;
mod messages;
mod notice;
mod plan;
mod pools;
mod presence;
mod privacy;
mod records;
mod reminders;
mod retention;
mod rows;
mod send;
mod turns;
mod updates;

pub use batcher::SendQueue;
pub use events::{FeedEvent, FeedPage, FeedPayload};
pub use handle::Store;
pub use inbox::{InboxCursor, InboxItem, InboxWindow, Snapshot, window_sql};
pub use kept::WRITER_PING_AFTER;
pub use messages::ListDirection;
pub use notice::{CHANNEL, Carried, Notice, Touched};
pub use pools::PoolSettings;
pub use presence::PresenceKey;
pub use privacy::{AuditRow, Erased};
pub use records::{ConversationRow, MessageRow};
pub use send::{BATCH_LOCK_TIMEOUT, LOCK_TIMEOUT, STATEMENT_TIMEOUT};
