//! What the privacy and audit services deal in: erasures of a customer, the items of an
//! export, and audit records.

use super::{ConversationId, CustomerId, ProviderId, RequestId, SessionId, Timestamp, TokenId};

/// An erasure of one customer: what token-service erased at once, and, once
/// conversation-service has done its part, what that erased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub request_id: RequestId,
    pub customer_id: CustomerId,
    pub sessions_erased: i64,
    pub calls_erased: i64,
    pub conversations_erased: i64,
    pub messages_erased: i64,
    pub create_time: Timestamp,
    /// `None` while conversation-service's part is queued.
    pub complete_time: Option<Timestamp>,
}

/// conversation-service's part of an erasure, handed out to be made now with the turns of
/// the sessions it scrubbed (so no call of theirs is in flight meanwhile).
#[derive(Debug)]
pub struct ErasureCall {
    pub request_id: RequestId,
    pub customer_id: CustomerId,
    /// Conversations opened by the customer's sessions (an anonymous visitor's conversation
    /// is not linked to the customer id).
    pub conversation_ids: Vec<ConversationId>,
    pub attempts: u32,
}

/// What conversation-service erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConversationsErased {
    pub conversations: i64,
    pub messages: i64,
}

/// A session of a customer, as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedSession {
    pub session_id: SessionId,
    pub provider_id: ProviderId,
    pub token_id: TokenId,
    pub conversation_id: Option<ConversationId>,
    pub create_time: Timestamp,
    pub end_time: Option<Timestamp>,
}

/// Contact details held in a queued (or refused) call, as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedContact {
    pub session_id: SessionId,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub create_time: Timestamp,
}

/// token-service's part of an export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerExport {
    pub sessions: Vec<ExportedSession>,
    pub contacts: Vec<ExportedContact>,
}

impl CustomerExport {
    /// Conversations of the customer's sessions, for conversation-service's part.
    pub fn conversation_ids(&self) -> Vec<ConversationId> {
        let mut ids: Vec<ConversationId> = self
            .sessions
            .iter()
            .filter_map(|s| s.conversation_id.clone())
            .collect();
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        ids.dedup();
        ids
    }
}

/// Who made an administrative call, what it named and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub caller: String,
    pub method: String,
    pub target: String,
    /// A gRPC code name; `OK` on success.
    pub result: String,
    /// The `ErrorInfo` reason of a failure; empty on success.
    pub reason: String,
}

/// An audit record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub record_id: i64,
    pub time: Timestamp,
    pub entry: AuditEntry,
}
