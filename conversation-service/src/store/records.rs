//! What the tables hold, as read: a conversation with its newest message, a message,
//! an inbox event's kind.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::{
    domain::{Attachment, ConversationId, Participant, Role, Status, check_session},
    error::{Error, Result},
};

/// What a `conversation_events` row records for the inbox (the conversation's current
/// row is joined when it is read); an unknown kind is refused when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[repr(i16)]
pub(crate) enum EventKind {
    Created = 1,
    CustomerUpdated = 2,
    StatusChanged = 3,
    CustomerErased = 4,
}

/// A conversation with its newest message (`lm_*`, from a LEFT JOIN on `head_seq`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConversationRow {
    pub id: ConversationId,
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
    /// Messages up to this seq were deleted by retention (0: none).
    pub kept_from_seq: i64,
    /// When the customer side was last erased, and the head seq then.
    pub erased_at: Option<DateTime<Utc>>,
    pub erased_through_seq: i64,
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
    pub lm_edited_at: Option<DateTime<Utc>>,
    pub lm_edit_count: Option<i32>,
    pub lm_deleted: Option<bool>,
    pub lm_attachments: Option<Json<Vec<Attachment>>>,
    pub lm_last_change: Option<i64>,
    /// The conversation's position of changes (edits and deletions; 0: none).
    pub change_seq: i64,
}

/// The select list and joins that fill a [`ConversationRow`]; callers add WHERE/ORDER.
pub(crate) const CONVERSATION_SELECT: &str = concat!(
    conversation_columns!(),
    " FROM conversations c",
    last_message_join!()
);

/// The last erasure of a conversation's customer side, as streams and inboxes announce
/// it: no details, only what a client needs to drop its copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub conversation_id: Uuid,
    pub customer_id: Option<String>,
    /// The head seq when it ran: the customer's messages up to it were blanked.
    pub through_seq: i64,
    pub at: DateTime<Utc>,
}

impl ConversationRow {
    pub fn conversation_id(&self) -> ConversationId {
        self.id
    }

    /// Its last erasure, if its customer was ever erased.
    pub fn erasure(&self) -> Option<Erasure> {
        Some(Erasure {
            conversation_id: self.id.0,
            customer_id: self.customer_id.clone(),
            through_seq: self.erased_through_seq,
            at: self.erased_at?,
        })
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

    /// Refuses to read on from `after` (field `field`) when retention deleted messages
    /// after it: `after + 1 ..= kept_from_seq` are gone, and a read from there would skip
    /// them silently.
    pub fn check_kept(&self, field: &'static str, after: i64) -> Result<()> {
        if after < self.kept_from_seq {
            return Err(Error::MessagesExpired {
                field,
                oldest_seq: self.kept_from_seq + 1,
            });
        }
        Ok(())
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
                    edited_at: self.lm_edited_at,
                    edit_count: self.lm_edit_count.unwrap_or(0),
                    deleted: self.lm_deleted.unwrap_or(false),
                    attachments: self.lm_attachments.clone(),
                    last_change: self.lm_last_change.unwrap_or(0),
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

/// The oldest seq still held when a forward read of the messages after `after` found
/// `first` first, and `None` when nothing is missing. Seq has no gaps and only retention
/// deletes messages, oldest first: a first message later than `after + 1`, or none while
/// the read was bounded by a head (`up_to`) past `after`, means retention took the ones
/// between (it ran after the conversation's `kept_from_seq` was read).
pub fn expired_after(after: i64, up_to: i64, first: Option<i64>) -> Option<i64> {
    match first {
        Some(seq) if seq > after + 1 => Some(seq),
        None if up_to > after => Some(up_to + 1),
        _ => None,
    }
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MessageRow {
    pub conversation_id: ConversationId,
    pub seq: i64,
    pub id: Uuid,
    pub sender_role: Role,
    pub sender_id: String,
    pub body: String,
    pub client_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub edit_count: i32,
    /// A tombstone: body and attachments are gone.
    pub deleted: bool,
    /// `None` when it has none (what the column holds then).
    pub attachments: Option<Json<Vec<Attachment>>>,
    /// The conversation's `change_seq` of its latest edit or deletion (0: none). A
    /// stream that reads it from the table knows which changes it already shows.
    pub last_change: i64,
}

pub(crate) const MESSAGE_COLUMNS: &str = "conversation_id, seq, id, sender_role, sender_id, body, \
     client_message_id, created_at, edited_at, edit_count, deleted_at IS NOT NULL AS deleted, \
     attachments, last_change";

impl MessageRow {
    pub fn sender(&self) -> Participant {
        Participant::stored(self.sender_role, self.sender_id.clone())
    }

    pub fn attachments(&self) -> &[Attachment] {
        self.attachments
            .as_ref()
            .map_or(&[], |list| list.0.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::expired_after;

    #[test]
    fn a_forward_read_that_skips_seqs_lost_them_to_retention() {
        assert_eq!(
            expired_after(0, 5, Some(1)),
            None,
            "from the start, complete"
        );
        assert_eq!(expired_after(3, 5, Some(4)), None, "the next seq first");
        assert_eq!(expired_after(3, 5, Some(6)), Some(6), "4 and 5 are gone");
        assert_eq!(
            expired_after(5, 5, None),
            None,
            "at the head: nothing to read"
        );
        assert_eq!(
            expired_after(3, 5, None),
            Some(6),
            "everything up to the head is gone"
        );
    }
}
