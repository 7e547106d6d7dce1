//! PostgreSQL: plain SQL next to the function that needs it. Refusals (not found, not a
//! participant, closed, a reused key) are decided here or in the planners as domain
//! errors; any other database error is wrapped by [`Error::db`].

mod batcher;
mod conversations;
mod create_queue;
mod inbox;
mod kept;
mod messages;
mod notice;
mod plan;
mod rows;
mod send;
mod turns;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, postgres::PgConnectOptions};
use uuid::Uuid;

use crate::{
    domain::{ConversationId, Participant, Role, Status, check_session},
    error::{Error, Result},
};

pub use batcher::SendQueue;
pub use conversations::NewConversation;
pub use inbox::{InboxCursor, InboxItem, InboxWindow, Snapshot, window_sql};
pub use kept::WRITER_PING_AFTER;
pub use messages::ListDirection;
pub use send::{BATCH_LOCK_TIMEOUT, LOCK_TIMEOUT, STATEMENT_TIMEOUT};

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
    /// SendMessage's batches: connections of the writer pool, opened with
    /// [`BATCH_LOCK_TIMEOUT`] and [`STATEMENT_TIMEOUT`] (see [`send_options`]) so a batch
    /// spends no round trip on them, and kept between batches.
    writers: std::sync::Arc<kept::Kept>,
    /// The conversation rows SendMessage's writers last read or wrote.
    known: std::sync::Arc<rows::KnownRows>,
    creates: create_queue::CreateQueue,
}

impl Store {
    /// Also starts CreateConversation's writer tasks on `creates` (connections opened
    /// with [`create_options`]), so it must run within Tokio. SendMessage's `send_writers`
    /// keep one connection each of `writer` between batches.
    pub fn new(pool: PgPool, writer: PgPool, send_writers: usize, creates: PgPool) -> Self {
        Self {
            creates: create_queue::CreateQueue::start(creates),
            pool,
            writers: std::sync::Arc::new(kept::Kept::new(writer, send_writers)),
            known: std::sync::Arc::default(),
        }
    }

    pub(crate) fn writers(&self) -> &kept::Kept {
        &self.writers
    }

    /// Connections SendMessage's writers keep between batches now.
    pub fn kept_writers(&self) -> usize {
        self.writers.count()
    }

    /// Hands the connections SendMessage's writers keep back to their pool, which waits
    /// for them when it closes; later batches return theirs.
    pub fn release_writers(&self) {
        self.writers.close();
    }

    pub(crate) fn known(&self) -> &rows::KnownRows {
        &self.known
    }
}

/// The connection options of SendMessage's writers: the session starts with their lock
/// and statement timeouts set.
pub fn send_options(options: &PgConnectOptions) -> PgConnectOptions {
    options.clone().options([
        ("lock_timeout", BATCH_LOCK_TIMEOUT),
        ("statement_timeout", STATEMENT_TIMEOUT),
    ])
}

/// The connection options of CreateConversation's writers: each statement is planned for
/// the arrays it is given. A batch runs each statement once, so planning costs little,
/// and a plan cached while `conversations` was nearly empty (a fresh deployment) would
/// otherwise keep scanning the whole table until autovacuum's first ANALYZE.
pub fn create_options(options: &PgConnectOptions) -> PgConnectOptions {
    options
        .clone()
        .options([("plan_cache_mode", "force_custom_plan")])
}

/// Connections CreateConversation's writers use, one per writer.
pub const CREATE_CONNECTIONS: u32 = create_queue::WRITERS as u32;

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
pub(crate) const CONVERSATION_SELECT: &str = "SELECT c.id, c.provider_id, c.customer_id, \
     c.customer_name, c.customer_email, c.customer_phone, c.status, c.origin, c.session_id, c.head_seq, \
     c.provider_read_seq, c.customer_read_seq, c.created_at, c.last_activity_at, \
     m.id AS lm_id, m.sender_role AS lm_sender_role, m.sender_id AS lm_sender_id, \
     m.body AS lm_body, m.client_message_id AS lm_client_message_id, \
     m.created_at AS lm_created_at \
     FROM conversations c \
     LEFT JOIN messages m ON m.conversation_id = c.id AND m.seq = c.head_seq";

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
