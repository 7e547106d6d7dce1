//! A customer's session, opened by redeeming a link.

use chat_proto::rules;

use super::{ConversationId, CustomerId, ProviderId, SessionId, Timestamp, TokenId};
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub session_id: SessionId,
    pub token_id: TokenId,
    pub provider_id: ProviderId,
    pub customer_id: Option<CustomerId>,
    /// `None` while conversation-service has not created it yet (PENDING).
    pub conversation_id: Option<ConversationId>,
    pub create_time: Timestamp,
    pub end_time: Option<Timestamp>,
    /// Whether conversation-service has the customer on the conversation.
    pub link: CustomerLink,
}

/// Whether the session's customer is linked to its conversation in conversation-service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerLink {
    /// No customer on the session.
    None,
    /// A call that links (or updates) the customer is queued.
    Pending,
    Linked,
    /// conversation-service refused the queued call for good, for this reason.
    Failed {
        reason: String,
    },
}

impl CustomerLink {
    /// From what the store holds: the session's customer, whether calls are still queued
    /// for it, and the reason of the last refused UpdateCustomer (cleared by a success).
    pub fn from_stored(has_customer: bool, queued: bool, refused: Option<String>) -> Self {
        match (has_customer, queued, refused) {
            (false, _, _) => Self::None,
            (true, true, _) => Self::Pending,
            (true, false, Some(reason)) => Self::Failed { reason },
            (true, false, None) => Self::Linked,
        }
    }
}

impl Session {
    pub fn ensure_open(&self) -> Result<(), Error> {
        if self.end_time.is_some() {
            Err(Error::SessionEnded)
        } else {
            Ok(())
        }
    }
}

/// Contact details given at IdentifySession; `None` leaves a field unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactDetails {
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
}

impl ContactDetails {
    /// Validates by the rules conversation-service applies to UpdateCustomer, so the
    /// queued call cannot be refused for its content later. An empty value clears a field.
    pub fn parse(
        name: Option<&str>,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Result<Self, Error> {
        Ok(Self {
            name: name.map(parse_name).transpose()?,
            email: email.map(parse_email).transpose()?,
            phone: phone.map(parse_phone).transpose()?,
        })
    }
}

fn parse_name(text: &str) -> Result<String, Error> {
    rules::name(text).map_err(|d| Error::invalid("name", d))
}

fn parse_email(text: &str) -> Result<String, Error> {
    rules::email(text).map_err(|d| Error::invalid("email", d))
}

fn parse_phone(text: &str) -> Result<String, Error> {
    rules::phone(text).map_err(|d| Error::invalid("phone", d))
}
