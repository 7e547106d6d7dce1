//! A customer's session, opened by redeeming a link.

use chat_proto::rules;

use super::{CustomerId, ProviderId, SessionId, Timestamp, TokenId};
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub session_id: SessionId,
    pub token_id: TokenId,
    pub provider_id: ProviderId,
    pub customer_id: Option<CustomerId>,
    /// `None` while conversation-service has not created it yet (PENDING).
    pub conversation_id: Option<String>,
    pub create_time: Timestamp,
    pub end_time: Option<Timestamp>,
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
