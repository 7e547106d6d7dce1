//! ListConversations' filters, parsed once; a page token is bound to all of them.

use chat_proto::v1;
use chrono::{DateTime, Utc};

use super::Status;
use crate::error::{Error, Result};

/// Shortest and longest customer query, in characters: the index holds windows of 3.
const QUERY_CHARS: (usize, usize) = (3, 100);

/// Which of an owner's conversations a list shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationFilter {
    pub status: Option<Status>,
    pub unread_only: bool,
    pub customer_query: Option<CustomerQuery>,
    pub active_after: Option<DateTime<Utc>>,
}

impl ConversationFilter {
    pub fn parse(request: &v1::ListConversationsRequest) -> Result<Self> {
        let active_after = match &request.active_after {
            None => None,
            Some(t) => Some(
                u32::try_from(t.nanos)
                    .ok()
                    .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
                    .ok_or_else(|| Error::invalid("active_after", "is not a valid time"))?,
            ),
        };
        Ok(Self {
            status: Status::parse_filter("status", request.status)?,
            unread_only: request.unread_only,
            customer_query: CustomerQuery::parse("customer_query", &request.customer_query)?,
            active_after,
        })
    }

    /// What a page token is bound to besides its owner: every filter.
    pub fn scope(&self) -> String {
        format!(
            "{:?}/{}/{:?}/{:?}",
            self.status,
            self.unread_only,
            self.customer_query.as_ref().map(|q| &q.0),
            self.active_after.map(|t| t.timestamp_micros()),
        )
    }
}

/// Text to find in a customer's name, email or phone, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerQuery(String);

impl CustomerQuery {
    /// Empty means no filter.
    pub fn parse(field: &'static str, text: &str) -> Result<Option<Self>> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let chars = text.chars().count();
        let (min, max) = QUERY_CHARS;
        if chars < min || chars > max {
            return Err(Error::invalid(
                field,
                format!("must be {min} to {max} characters"),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(Error::invalid(field, "must not contain control characters"));
        }
        Ok(Some(Self(text.to_owned())))
    }

    /// The text as given, trimmed.
    pub fn text(&self) -> &str {
        &self.0
    }

    /// An `ILIKE` pattern matching the text anywhere, its wildcards escaped.
    pub fn pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.0.len() + 2);
        pattern.push('%');
        for c in self.0.chars() {
            if matches!(c, '%' | '_' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        pattern
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_queries() {
        assert_eq!(CustomerQuery::parse("q", "  ").ok(), Some(None));
        assert!(CustomerQuery::parse("q", "ab").is_err());
        assert!(CustomerQuery::parse("q", &"x".repeat(101)).is_err());
        assert!(CustomerQuery::parse("q", "a\u{0}b").is_err());
        let q = CustomerQuery::parse("q", " 50%_off\\ ").ok().flatten();
        assert_eq!(q.map(|q| q.pattern()), Some("%50\\%\\_off\\\\%".to_owned()));
    }
}
