//! PostgreSQL: plain SQL next to the function that needs it. Constraint violations become
//! domain errors here, named by constraint.

mod batcher;
mod conversations;
mod inbox;
mod messages;

use chat_proto::v1;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    domain::{ConversationId, Participant, Role, Status, check_session},
    error::{Error, Result},
};

pub use batcher::{NewMessage, SendQueue};
pub use conversations::NewConversation;
pub use inbox::{InboxCursor, InboxItem, InboxWindow};
pub use messages::ListDirection;

/// The channel every replica LISTENs on. NOTIFY payloads only say "look"; the tables are
/// the truth.
pub const CHANNEL: &str = "chat_events";

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

pub(crate) fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
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
    pub status: i16,
    pub origin: String,
    /// The token-service session that opened it for an anonymous visitor.
    pub session_id: Option<Uuid>,
    pub head_seq: i64,
    pub provider_read_seq: i64,
    pub customer_read_seq: i64,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
    pub lm_id: Option<Uuid>,
    pub lm_sender_role: Option<i16>,
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

    pub fn status(&self) -> Status {
        Status::from_i16(self.status)
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
            return Err(Error::not_participant());
        }
        check_session(participant, session, self.session_id)
    }

    /// The conversation as the API shows it; `viewer` fills `unread_count`. Sending a
    /// message advances the sender's read position, so every message after a
    /// participant's read position is from the other side and unread = head - read.
    pub fn to_proto(&self, viewer: Option<Role>) -> v1::Conversation {
        let last_message = match (
            self.lm_id,
            self.lm_sender_role,
            &self.lm_sender_id,
            &self.lm_body,
            self.lm_created_at,
        ) {
            (Some(id), Some(role), Some(sender_id), Some(body), Some(created_at)) => Some(
                MessageRow {
                    conversation_id: self.id,
                    seq: self.head_seq,
                    id,
                    sender_role: role,
                    sender_id: sender_id.clone(),
                    body: body.clone(),
                    client_message_id: self.lm_client_message_id.clone(),
                    created_at,
                }
                .to_proto(),
            ),
            _ => None,
        };
        v1::Conversation {
            conversation_id: self.id.to_string(),
            provider_id: self.provider_id.clone(),
            customer: Some(v1::Customer {
                customer_id: self.customer_id.clone().unwrap_or_default(),
                name: self.customer_name.clone(),
                email: self.customer_email.clone(),
                phone: self.customer_phone.clone(),
            }),
            status: self.status().to_proto().into(),
            head_seq: self.head_seq,
            create_time: Some(timestamp(self.created_at)),
            last_activity_time: Some(timestamp(self.last_activity_at)),
            last_message,
            provider_read_seq: self.provider_read_seq,
            customer_read_seq: self.customer_read_seq,
            unread_count: viewer.map_or(0, |role| (self.head_seq - self.read_seq(role)).max(0)),
            origin: self.origin.clone(),
        }
    }
}

/// One stored message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub conversation_id: Uuid,
    pub seq: i64,
    pub id: Uuid,
    pub sender_role: i16,
    pub sender_id: String,
    pub body: String,
    pub client_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub(crate) const MESSAGE_COLUMNS: &str =
    "conversation_id, seq, id, sender_role, sender_id, body, client_message_id, created_at";

impl MessageRow {
    pub fn to_proto(&self) -> v1::Message {
        v1::Message {
            conversation_id: self.conversation_id.to_string(),
            seq: self.seq,
            message_id: self.id.to_string(),
            sender: Some(
                Participant {
                    role: Role::from_i16(self.sender_role),
                    id: self.sender_id.clone(),
                }
                .to_proto(),
            ),
            body: self.body.clone(),
            client_message_id: self.client_message_id.clone().unwrap_or_default(),
            create_time: Some(timestamp(self.created_at)),
        }
    }
}
