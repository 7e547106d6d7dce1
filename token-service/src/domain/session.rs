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
    pub fn parse(
        name: Option<&str>,
        email: Option<&str>,
        phone: Option<&str>,
    ) -> Result<Self, Error> {
        let name = name
            .map(|n| {
                if n.chars().count() > 200 || n.chars().any(char::is_control) {
                    Err(Error::invalid(
                        "name",
                        "must be at most 200 characters without control characters",
                    ))
                } else {
                    Ok(n.to_owned())
                }
            })
            .transpose()?;
        let email = email
            .map(|e| {
                let ok = e.is_empty()
                    || (e.len() <= 254
                        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
                        && e.split_once('@').is_some_and(|(l, d)| {
                            !l.is_empty() && !d.is_empty() && !d.contains('@')
                        }));
                if ok {
                    Ok(e.to_owned())
                } else {
                    Err(Error::invalid(
                        "email",
                        "must be an address like name@example.com",
                    ))
                }
            })
            .transpose()?;
        let phone = phone
            .map(|p| {
                let digits = p.chars().filter(char::is_ascii_digit).count();
                let ok = p.is_empty()
                    || (p.len() <= 32
                        && digits >= 3
                        && p.chars()
                            .all(|c| c.is_ascii_digit() || " +-().".contains(c)));
                if ok {
                    Ok(p.to_owned())
                } else {
                    Err(Error::invalid(
                        "phone",
                        "must be at most 32 characters of digits, spaces and + - ( ) .",
                    ))
                }
            })
            .transpose()?;
        Ok(Self { name, email, phone })
    }
}
