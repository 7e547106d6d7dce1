//! A customer's session, opened by redeeming a link.

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
    let text = text.trim();
    if text.chars().count() > 200 || text.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            "must be at most 200 characters without control characters",
        ));
    }
    Ok(text.to_owned())
}

fn parse_email(text: &str) -> Result<String, Error> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(String::new());
    }
    let bad = || Error::invalid("email", "must be an email address like name@example.com");
    if text.len() > 254 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = text.rsplit_once('@').ok_or_else(bad)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    if local.is_empty() || local.len() > 64 || local.contains('@') || !domain_ok {
        return Err(bad());
    }
    Ok(text.to_owned())
}

/// `+` and 7 to 15 digits, or 7 to 15 digits; spaces, dashes, dots and parentheses are
/// allowed and dropped.
fn parse_phone(text: &str) -> Result<String, Error> {
    let cleaned: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    if cleaned.is_empty() {
        return Ok(cleaned);
    }
    let digits = cleaned.strip_prefix('+').unwrap_or(&cleaned);
    if !(7..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid(
            "phone",
            "must be a phone number of 7 to 15 digits, optionally starting with +",
        ));
    }
    Ok(cleaned)
}
