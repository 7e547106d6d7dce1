//! Store rows and domain values to wire messages: the only place that builds them.

use std::sync::Arc;

use chat_proto::v1::{
    self, stream_conversation_response::Event as ConversationWire,
    stream_inbox_response::Event as InboxWire,
};
use chrono::{DateTime, Utc};

use crate::{
    domain::{Attachment, Participant, Role, Status, snippet_parts},
    realtime::streams::{
        ConversationDelivery, ConversationEvent, InboxDelivery, InboxEvent, Viewed,
    },
    store::{ChangeKind, ChangeRow, ConversationRow, Erasure, InboxItem, MessageRow, SearchRow},
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
    sender(participant.role(), participant.id().to_owned())
}

fn sender(side: Role, id: String) -> v1::Participant {
    v1::Participant {
        role: role(side).into(),
        id,
        // Never echoed: a session id is what the anonymous visitor proves itself with.
        session_id: String::new(),
    }
}

pub fn message(row: &MessageRow) -> v1::Message {
    v1::Message {
        conversation_id: row.conversation_id.to_string(),
        seq: row.seq,
        message_id: row.id.to_string(),
        sender: Some(sender(row.sender_role, row.sender_id.clone())),
        create_time: Some(timestamp(row.created_at)),
        body: row.body.clone(),
        client_message_id: row.client_message_id.clone().unwrap_or_default(),
        edit_time: row.edited_at.map(timestamp),
        edit_count: row.edit_count,
        deleted: row.deleted,
        attachments: row.attachments().iter().map(attachment).collect(),
    }
}

/// A search hit: the message and its excerpt, cut to `SNIPPET_CHARS`.
pub fn search_hit(row: &SearchRow) -> v1::SearchHit {
    v1::SearchHit {
        message: Some(message(&row.message)),
        snippet: snippet_parts(&row.headline)
            .into_iter()
            .map(|p| v1::SnippetPart {
                text: p.text,
                highlighted: p.highlighted,
            })
            .collect(),
    }
}

/// [`message`] for a row no longer needed: its strings move instead of being copied.
pub fn into_message(row: MessageRow) -> v1::Message {
    let attachments = row.attachments().iter().map(attachment).collect();
    v1::Message {
        conversation_id: row.conversation_id.to_string(),
        seq: row.seq,
        message_id: row.id.to_string(),
        sender: Some(sender(row.sender_role, row.sender_id)),
        create_time: Some(timestamp(row.created_at)),
        body: row.body,
        client_message_id: row.client_message_id.unwrap_or_default(),
        edit_time: row.edited_at.map(timestamp),
        edit_count: row.edit_count,
        deleted: row.deleted,
        attachments,
    }
}

pub fn attachment(stored: &Attachment) -> v1::Attachment {
    v1::Attachment {
        uri: stored.uri.clone(),
        content_type: stored.content_type.clone(),
        size_bytes: stored.size_bytes,
        sha256: stored.sha256.clone(),
        file_name: stored.file_name.clone(),
        width: stored.width,
        height: stored.height,
    }
}

/// A message shared between streams is copied; one only this stream held moves.
fn shared_message(row: Arc<MessageRow>) -> v1::Message {
    Arc::try_unwrap(row).map_or_else(|row| message(&row), into_message)
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
        status: status(row.status).into(),
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

/// What a conversation stream task delivered, as its response.
pub fn conversation_response(delivery: ConversationDelivery) -> v1::StreamConversationResponse {
    let event = match delivery.event {
        ConversationEvent::Snapshot(seen) => ConversationWire::Snapshot(v1::ConversationSnapshot {
            conversation: Some(viewed(&seen)),
        }),
        ConversationEvent::Message(row) => ConversationWire::Message(shared_message(row)),
        ConversationEvent::ReadReceipt {
            conversation_id,
            reader,
            seq,
        } => ConversationWire::ReadReceipt(v1::ReadReceipt {
            conversation_id: conversation_id.to_string(),
            reader: Some(participant(&reader)),
            read_seq: seq,
        }),
        ConversationEvent::Typing {
            conversation_id,
            sender,
        } => ConversationWire::Typing(v1::Typing {
            conversation_id: conversation_id.to_string(),
            sender: Some(participant(&sender)),
        }),
        ConversationEvent::StatusChanged {
            conversation_id,
            status: now,
        } => ConversationWire::StatusChanged(status_changed(conversation_id, now)),
        ConversationEvent::CustomerUpdated(seen) => {
            ConversationWire::CustomerUpdated(v1::CustomerUpdated {
                conversation: Some(viewed(&seen)),
            })
        }
        ConversationEvent::PresenceChanged {
            participant: who,
            online,
        } => ConversationWire::PresenceChanged(v1::PresenceChanged {
            participant: Some(participant(&who)),
            online,
        }),
        ConversationEvent::CustomerErased(erasure) => {
            ConversationWire::CustomerErased(customer_erased(erasure))
        }
        ConversationEvent::Heartbeat(time) => ConversationWire::Heartbeat(heartbeat(time)),
        ConversationEvent::Changed(change) => match changed(change) {
            Changed::Edited(edited) => ConversationWire::MessageEdited(edited),
            Changed::Deleted(deleted) => ConversationWire::MessageDeleted(deleted),
        },
        ConversationEvent::ChangePosition(change_seq) => {
            ConversationWire::ChangePosition(v1::ChangePosition { change_seq })
        }
    };
    v1::StreamConversationResponse {
        event: Some(event),
        replayed: delivery.replayed,
    }
}

/// A change as both streams show it.
enum Changed {
    Edited(v1::MessageEdited),
    Deleted(v1::MessageDeleted),
}

fn changed(change: ChangeRow) -> Changed {
    let change_seq = change.change_seq;
    let message = Some(into_message(change.message));
    match change.kind {
        ChangeKind::Edited => Changed::Edited(v1::MessageEdited {
            message,
            change_seq,
        }),
        ChangeKind::Deleted => Changed::Deleted(v1::MessageDeleted {
            message,
            change_seq,
        }),
    }
}

/// What an inbox stream task delivered, as its response.
pub fn inbox_response(delivery: InboxDelivery) -> v1::StreamInboxResponse {
    let event = match delivery.event {
        InboxEvent::Item { item, viewer } => inbox_item(item, viewer),
        InboxEvent::PresenceChanged {
            participant: who,
            online,
        } => InboxWire::PresenceChanged(v1::PresenceChanged {
            participant: Some(participant(&who)),
            online,
        }),
        InboxEvent::Summary(summary) => InboxWire::UnreadSummaryChanged(v1::UnreadSummaryChanged {
            unread_messages: summary.unread_messages,
            unread_conversations: summary.unread_conversations,
        }),
        InboxEvent::Heartbeat(time) => InboxWire::Heartbeat(heartbeat(time)),
    };
    v1::StreamInboxResponse {
        event: Some(event),
        cursor: delivery.cursor,
        replayed: delivery.replayed,
    }
}

fn inbox_item(item: InboxItem, viewer: Role) -> InboxWire {
    match item {
        InboxItem::Created(row) => InboxWire::ConversationCreated(v1::ConversationCreated {
            conversation: Some(conversation(&row, Some(viewer))),
        }),
        InboxItem::CustomerUpdated(row) => InboxWire::CustomerUpdated(v1::CustomerUpdated {
            conversation: Some(conversation(&row, Some(viewer))),
        }),
        InboxItem::CustomerErased(erasure) => InboxWire::CustomerErased(customer_erased(erasure)),
        InboxItem::StatusChanged {
            conversation_id,
            status: now,
        } => InboxWire::StatusChanged(status_changed(conversation_id, now)),
        InboxItem::Message(row) => InboxWire::Message(message(&row)),
        InboxItem::Changed(change) => match changed(change) {
            Changed::Edited(edited) => InboxWire::MessageEdited(edited),
            Changed::Deleted(deleted) => InboxWire::MessageDeleted(deleted),
        },
    }
}

fn viewed(seen: &Viewed) -> v1::Conversation {
    conversation(&seen.conversation, Some(seen.viewer))
}

fn status_changed(conversation_id: uuid::Uuid, now: Status) -> v1::StatusChanged {
    v1::StatusChanged {
        conversation_id: conversation_id.to_string(),
        status: status(now).into(),
    }
}

/// An erasure carries ids, a seq and a time: never the details it removed.
pub fn customer_erased(erasure: Erasure) -> v1::CustomerErased {
    v1::CustomerErased {
        conversation_id: erasure.conversation_id.to_string(),
        customer_id: erasure.customer_id.unwrap_or_default(),
        erased_through_seq: erasure.through_seq,
        erase_time: Some(timestamp(erasure.at)),
    }
}

fn heartbeat(time: DateTime<Utc>) -> v1::Heartbeat {
    v1::Heartbeat {
        time: Some(timestamp(time)),
    }
}
