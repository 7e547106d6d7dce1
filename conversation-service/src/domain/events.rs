//! The event feed's values: a position (what a cursor holds), the kinds a reader may
//! filter on, a consumer's name. Each is parsed once here; anything a caller sends that
//! is not one of them is INVALID_ARGUMENT naming the field.

use crate::error::{Error, Result};

/// What a feed event records. Stored as `feed_events.kind`; an unknown value is refused
/// when read, never taken for another kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[repr(i16)]
pub enum FeedKind {
    ConversationCreated = 1,
    CustomerUpdated = 2,
    StatusChanged = 3,
    MessageSent = 4,
    ReadPositionMoved = 5,
    PresenceChanged = 6,
    UnreadReminder = 7,
}

impl FeedKind {
    /// The kind a wire value names (`chat.v1.EventKind`); 0 and unknown values are refused.
    pub fn from_wire(field: &'static str, value: i32) -> Result<Self> {
        Ok(match value {
            1 => Self::ConversationCreated,
            2 => Self::CustomerUpdated,
            3 => Self::StatusChanged,
            4 => Self::MessageSent,
            5 => Self::ReadPositionMoved,
            6 => Self::PresenceChanged,
            7 => Self::UnreadReminder,
            _ => {
                return Err(Error::invalid(
                    field,
                    format!("{value} is not an event kind"),
                ));
            }
        })
    }
}

/// A place in the feed: the position of the last event delivered (0: before the first).
/// On the wire a cursor is its decimal digits; callers treat it as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedPosition(pub i64);

impl FeedPosition {
    /// Digits only (no sign, no spaces), within i64. Whether it exists yet is the
    /// store's to check (a position beyond the newest is forged).
    pub fn parse(field: &'static str, text: &str) -> Result<Self> {
        let bad = || Error::invalid(field, "is not an event cursor");
        if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        text.parse().map(Self).map_err(|_| bad())
    }

    pub fn cursor(self) -> String {
        self.0.to_string()
    }
}

/// A durable consumer's name: 1 to 128 of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerName(String);

impl ConsumerName {
    pub fn parse(field: &'static str, text: &str) -> Result<Self> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
        if text.is_empty() || text.len() > 128 || !text.bytes().all(allowed) {
            return Err(Error::invalid(
                field,
                "must be 1 to 128 of A-Z a-z 0-9 . _ -",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a reader of the feed wants: only these kinds, only these providers (empty: all).
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    pub kinds: Vec<FeedKind>,
    pub provider_ids: Vec<String>,
}

impl FeedFilter {
    /// At most this many of each, so a filter stays one small index condition.
    const MAX: usize = 100;

    pub fn parse(kinds: &[i32], provider_ids: &[String]) -> Result<Self> {
        if kinds.len() > Self::MAX {
            return Err(Error::invalid("kinds", "at most 100"));
        }
        if provider_ids.len() > Self::MAX {
            return Err(Error::invalid("provider_ids", "at most 100"));
        }
        let kinds = kinds
            .iter()
            .map(|k| FeedKind::from_wire("kinds", *k))
            .collect::<Result<_>>()?;
        let provider_ids = provider_ids
            .iter()
            .map(|p| super::parse_external_id("provider_ids", p))
            .collect::<Result<_>>()?;
        Ok(Self {
            kinds,
            provider_ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_digits_only() {
        assert_eq!(FeedPosition::parse("a", "0").ok(), Some(FeedPosition(0)));
        assert_eq!(FeedPosition::parse("a", "42").ok(), Some(FeedPosition(42)));
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1e3",
            "x",
            "99999999999999999999",
        ] {
            assert!(FeedPosition::parse("a", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_and_names_refuse_what_they_do_not_know() {
        assert!(FeedKind::from_wire("k", 0).is_err());
        assert!(FeedKind::from_wire("k", 8).is_err());
        assert!(ConsumerName::parse("c", "").is_err());
        assert!(ConsumerName::parse("c", "a b").is_err());
        assert!(ConsumerName::parse("c", &"a".repeat(129)).is_err());
        assert!(ConsumerName::parse("c", "crm.mirror-1_a").is_ok());
    }
}
