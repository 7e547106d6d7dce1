//! PostgreSQL: plain SQL next to the function that needs it. Refusals (not found, not a
//! participant, closed, a reused key) are decided here or in the planners as domain
//! errors; any other database error is wrapped by [`crate::error::Error::db`].

/// The columns of a [`ConversationRow`] from `c` (a conversation) and `m` (its newest
/// message, see [`last_message_join`]); literals, so they can be `concat!`ed.
macro_rules! conversation_columns {
    () => {
        "SELECT c.id, c.provider_id, c.customer_id, \
         c.customer_name, c.customer_email, c.customer_phone, c.status, c.origin, c.session_id, c.head_seq, c.kept_from_seq, \
         c.erased_at, c.erased_through_seq, \
         c.provider_read_seq, c.customer_read_seq, c.created_at, c.last_activity_at, c.change_seq, \
         m.id AS lm_id, m.sender_role AS lm_sender_role, m.sender_id AS lm_sender_id, \
         m.body AS lm_body, m.client_message_id AS lm_client_message_id, \
         m.created_at AS lm_created_at, m.edited_at AS lm_edited_at, \
         m.edit_count AS lm_edit_count, m.deleted_at IS NOT NULL AS lm_deleted, \
         m.attachments AS lm_attachments, m.last_change AS lm_last_change"
    };
}

/// Joins `m`, the newest message of `c`.
macro_rules! last_message_join {
    () => {
        " LEFT JOIN messages m ON m.conversation_id = c.id AND m.seq = c.head_seq"
    };
}

mod batcher;
mod changes;
mod conversations;
mod create;
mod create_plan;
mod create_queue;
mod events;
mod handle;
mod inbox;
mod inbox_order;
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
mod search;
mod send;
mod turns;
mod unread;
mod updates;
mod walk;

pub use batcher::SendQueue;
pub use changes::{ChangeKind, ChangeRow};
pub use conversations::{CUSTOMER_WALK, List, ListStep, list_sql};
pub use events::{FeedEvent, FeedPage, FeedPayload};
pub use handle::Store;
pub use inbox::{InboxCursor, InboxItem, InboxWindow, Snapshot, window_sql};
pub use inbox_order::{SETTLE_CHUNK_SQL, SETTLE_EVERY, settle_inbox_order_until};
pub use kept::WRITER_PING_AFTER;
pub use messages::ListDirection;
pub use notice::{CHANNEL, Carried, Notice, PresenceNote, Touched};
pub use pools::PoolSettings;
pub use presence::PresenceKey;
pub use privacy::{AuditRow, Erased};
pub use records::{ConversationRow, Erasure, MessageRow, expired_after};
pub use search::{Search, SearchKey, SearchRow, SearchStart, SearchStep, WALK_PER_HIT, search_sql};
pub use send::{BATCH_LOCK_TIMEOUT, LOCK_TIMEOUT, STATEMENT_TIMEOUT};
pub use unread::UnreadSummary;
