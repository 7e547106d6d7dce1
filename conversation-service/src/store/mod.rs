//! PostgreSQL: plain SQL next to the function that needs it. Refusals (not found, not a
//! participant, closed, a reused key) are decided here or in the planners as domain
//! errors; any other database error is wrapped by [`Error::db`].

/// The columns of a [`ConversationRow`] from `c` (a conversation) and `m` (its newest
/// message, see [`last_message_join`]); literals, so they can be `concat!`ed.
macro_rules! conversation_columns {
    () => {
        "SELECT c.id, c.provider_id, c.customer_id, \
         c.customer_name, c.customer_email, c.customer_phone, c.status, c.origin, c.session_id, c.head_seq, \
         c.provider_read_seq, c.customer_read_seq, c.created_at, c.last_activity_at, \
         m.id AS lm_id, m.sender_role AS lm_sender_role, m.sender_id AS lm_sender_id, \
         m.body AS lm_body, m.client_message_id AS lm_client_message_id, \
         m.created_at AS lm_created_at"
    };
}

/// Joins `m`, the newest message of `c`.
macro_rules! last_message_join {
    () => {
        " LEFT JOIN messages m ON m.conversation_id = c.id AND m.seq = c.head_seq"
    };
}

mod batcher;
mod conversations;
mod create;
mod create_plan;
mod create_queue;
mod inbox;
mod inbox_order;
mod kept;
mod messages;
mod notice;
mod plan;
mod pools;
mod rows;
mod send;
mod turns;
mod unread;
mod updates;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    domain::{ConversationId, Participant, Role, Status, check_session},
    error::{Error, Result},
};

pub use batcher::SendQueue;
pub use inbox::{InboxCursor, InboxItem, InboxWindow, Snapshot, window_sql};
pub use inbox_order::{SETTLE_EVERY, settle_inbox_order_until};
pub use kept::WRITER_PING_AFTER;
pub use messages::ListDirection;
pub use pools::PoolSettings;
pub use send::{BATCH_LOCK_TIMEOUT, LOCK_TIMEOUT, STATEMENT_TIMEOUT};
pub use unread::UnreadSummary;

pub use notice::{CHANNEL, Carried, Notice, Touched};

/// What a `conversation_events` row records for the inbox (the conversation's current
/// row is joined when it is read); an unknown kind is refused when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[repr(i16)]
pub(crate) enum EventKind {
    Created = 1,
    CustomerUpdated = 2,
    StatusChanged = 3,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// SendMessage's batches: connections of the send pool, kept between batches.
    writers: Arc<kept::Kept>,
    /// The conversation rows SendMessage's writers last read or wrote.
    known: Arc<rows::KnownRows>,
    creates: create_queue::CreateQueue,
    /// The writers' pools, closed with the store.
    writer_pools: Arc<(PgPool, PgPool)>,
}

impl Store {
    /// Builds the pools (they connect on first use) and starts CreateConversation's
    /// writer tasks, so it must run within Tokio.
    pub fn connect(settings: &PoolSettings) -> Self {
        let pools = pools::Pools::new(settings);
        Self {
            creates: create_queue::CreateQueue::start(pools.create.clone()),
            writers: Arc::new(kept::Kept::new(pools.send.clone(), settings.send_writers)),
            known: Arc::default(),
            writer_pools: Arc::new((pools.send, pools.create)),
            pool: pools.query,
        }
    }

    /// The query pool: migrations and health checks run on it too.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn writers(&self) -> &kept::Kept {
        &self.writers
    }

    /// Connections SendMessage's writers keep between batches now.
    pub fn kept_writers(&self) -> usize {
        self.writers.count()
    }

    /// Reports the pools' connections (read at each scrape).
    pub fn sample_metrics(&self) {
        let (send, create) = &*self.writer_pools;
        crate::metrics::sample_pool(&self.pool);
        crate::metrics::sample_writer_pool("send", send, self.kept_writers());
        crate::metrics::sample_writer_pool("create", create, 0);
    }

    /// Closes every pool, waiting for the connections in use. The connections
    /// SendMessage's writers keep go back to their pool first (later batches return
    /// theirs).
    pub async fn close(&self) {
        self.pool.close().await;
        self.writers.close();
        let (send, create) = &*self.writer_pools;
        send.close().await;
        create.close().await;
    }

    pub(crate) fn known(&self) -> &rows::KnownRows {
        &self.known
    }
}

/// A conversation with its newest message (`lm_*`, from a LEFT JOIN on `head_seq`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConversationRow {
    pub id: Uuid,
    pub provider_id: String,
    pub customer_id: Option<String>,
    pub customer_name: String,
    pub customer_email: String,
    pub customer_phone: String,
    pub status: Status,
    pub origin: String,
    /// The token-service session that opened it for an anonymous visitor.
    pub session_id: Option<Uuid>,
    pub head_seq: i64,
    pub provider_read_seq: i64,
    pub customer_read_seq: i64,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
    pub lm_id: Option<Uuid>,
    pub lm_sender_role: Option<Role>,
    pub lm_sender_id: Option<String>,
    pub lm_body: Option<String>,
    pub lm_client_message_id: Option<String>,
    pub lm_created_at: Option<DateTime<Utc>>,
}

/// The select list and joins that fill a [`ConversationRow`]; callers add WHERE/ORDER.
pub(crate) const CONVERSATION_SELECT: &str = concat!(
    conversation_columns!(),
    " FROM conversations c",
    last_message_join!()
);

impl ConversationRow {
    pub fn conversation_id(&self) -> ConversationId {
        ConversationId(self.id)
    }

    pub fn read_seq(&self, role: Role) -> i64 {
        match role {
            Role::Provider => self.provider_read_seq,
            Role::Customer => self.customer_read_seq,
        }
    }

    pub fn admits(&self, participant: &Participant) -> bool {
        participant.belongs_to(&self.provider_id, self.customer_id.as_deref())
    }

    /// A participant of this conversation, and the anonymous customer only with the
    /// session that opened it (see [`crate::domain::check_session`]).
    pub fn authorize(&self, participant: &Participant, session: Option<Uuid>) -> Result<()> {
        if !self.admits(participant) {
            return Err(Error::NotParticipant);
        }
        check_session(participant, session, self.session_id)
    }

    /// The newest message, from the LEFT JOIN (`None` when there is none).
    pub fn last_message(&self) -> Option<MessageRow> {
        match (
            self.lm_id,
            self.lm_sender_role,
            &self.lm_sender_id,
            &self.lm_body,
            self.lm_created_at,
        ) {
            (Some(id), Some(role), Some(sender_id), Some(body), Some(created_at)) => {
                Some(MessageRow {
                    conversation_id: self.id,
                    seq: self.head_seq,
                    id,
                    sender_role: role,
                    sender_id: sender_id.clone(),
                    body: body.clone(),
                    client_message_id: self.lm_client_message_id.clone(),
                    created_at,
                })
            }
            _ => None,
        }
    }

    /// Messages from the other side after `role`'s read position. Sending a message
    /// advances the sender's read position, so every message after it is from the other
    /// side and unread = head - read.
    pub fn unread(&self, role: Role) -> i64 {
        (self.head_seq - self.read_seq(role)).max(0)
    }
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MessageRow {
    pub conversation_id: Uuid,
    pub seq: i64,
    pub id: Uuid,
    pub sender_role: Role,
    pub sender_id: String,
    pub body: String,
    pub client_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub(crate) const MESSAGE_COLUMNS: &str =
    "conversation_id, seq, id, sender_role, sender_id, body, client_message_id, created_at";

impl MessageRow {
    pub fn sender(&self) -> Participant {
        Participant::stored(self.sender_role, self.sender_id.clone())
    }
}
