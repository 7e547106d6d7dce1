//! Store rows and domain values to wire messages: the only place that builds them.

use chat_proto::v1;
use chrono::{DateTime, Utc};

use crate::{
    domain::{Participant, Role, Status},
    store::{ConversationRow, MessageRow},
};

pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn role(role: Role) -> v1::Role {
    match role {
        Role::Provider => v1::Role::Provider,
        Role::Customer => v1::Role::Customer,
    }
}

pub fn status(status: Status) -> v1::ConversationStatus {
    match status {
        Status::Active => v1::ConversationStatus::Active,
        Status::Closed => v1::ConversationStatus::Closed,
    }
}

pub fn participant(participant: &Participant) -> v1::Participant {
    v1::Participant {
        role: role(participant.role()).into(),
        id: participant.id().to_owned(),
        // Never echoed: a session id is what the anonymous visitor proves itself with.
        session_id: String::new(),
    }
}

pub fn message(row: &MessageRow) -> v1::Message {
    into_message(row.clone())
}

/// [`message`] for a row no longer needed: its strings move instead of being copied.
pub fn into_message(row: MessageRow) -> v1::Message {
    v1::Message {
        conversation_id: row.conversation_id.to_string(),
        seq: row.seq,
        message_id: row.id.to_string(),
        sender: Some(participant(&row.sender())),
        create_time: Some(timestamp(row.created_at)),
        body: row.body,
        client_message_id: row.client_message_id.unwrap_or_default(),
    }
}

/// The conversation as the API shows it; `viewer` fills `unread_count`.
pub fn conversation(row: &ConversationRow, viewer: Option<Role>) -> v1::Conversation {
    v1::Conversation {
        conversation_id: row.id.to_string(),
        provider_id: row.provider_id.clone(),
        customer: Some(v1::Customer {
            customer_id: row.customer_id.clone().unwrap_or_default(),
            name: row.customer_name.clone(),
            email: row.customer_email.clone(),
            phone: row.customer_phone.clone(),
        }),
        status: status(row.status()).into(),
        head_seq: row.head_seq,
        create_time: Some(timestamp(row.created_at)),
        last_activity_time: Some(timestamp(row.last_activity_at)),
        last_message: row.last_message().as_ref().map(message),
        provider_read_seq: row.provider_read_seq,
        customer_read_seq: row.customer_read_seq,
        unread_count: viewer.map_or(0, |role| row.unread(role)),
        origin: row.origin.clone(),
    }
}
