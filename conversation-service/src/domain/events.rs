//! The event feed's values: a position (what a cursor holds), the kinds a reader may
//! filter on, a consumer's name. Each is parsed once here; anything a caller sends that
//! is not one of them is INVALID_ARGUMENT naming the field.

use uuid::Uuid;

use crate::error::{Error, Result};

/// What a feed event records: its source table, or `conversation_events.kind`. An
/// unknown value is refused when read, never taken for another kind.
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
    CustomerErased = 8,
    MessageEdited = 9,
    MessageDeleted = 10,
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
            8 => Self::CustomerErased,
            9 => Self::MessageEdited,
            10 => Self::MessageDeleted,
            _ => {
                return Err(Error::invalid(
                    field,
                    format!("{value} is not an event kind"),
                ));
            }
        })
    }
}

/// Where an event sits inside its window: `(pos, part, conversation, key)`, the order the
/// window's events are delivered in (commit order per conversation, see store/events.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventKey {
    pub pos: i64,
    pub part: i16,
    /// The nil UUID for events of no conversation (presence).
    pub conversation: Uuid,
    pub key: i64,
}

impl EventKey {
    /// Before every event of a window.
    pub const START: Self = Self {
        pos: i64::MIN,
        part: i16::MIN,
        conversation: Uuid::nil(),
        key: i64::MIN,
    };
    /// After every event of a window.
    pub const END: Self = Self {
        pos: i64::MAX,
        part: i16::MAX,
        conversation: Uuid::max(),
        key: i64::MAX,
    };
}

/// A place in the feed: after the event `key` of window `window`, or after all of the
/// window (`key` is [`EventKey::END`]; window 0 is before the first). Positions are
/// ordered like the feed. On the wire a cursor is `W` (after all of window W) or
/// `W.pos.part.key.conversation`; callers treat it as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedPosition {
    pub window: i64,
    pub key: EventKey,
}

impl FeedPosition {
    /// After every event of `window`.
    pub fn end_of(window: i64) -> Self {
        Self {
            window,
            key: EventKey::END,
        }
    }

    pub fn is_end_of_window(&self) -> bool {
        self.key == EventKey::END
    }

    /// Digits and dots in the shapes [`cursor`](Self::cursor) writes, nothing else.
    /// Whether the window exists yet is the store's to check (a window beyond the newest
    /// is forged).
    pub fn parse(field: &'static str, text: &str) -> Result<Self> {
        let bad = || Error::invalid(field, "is not an event cursor");
        fn digits<T: std::str::FromStr>(text: &str) -> Option<T> {
            if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            text.parse().ok()
        }
        let parts: Vec<&str> = text.split('.').collect();
        match parts.as_slice() {
            [window] => digits(window).map(Self::end_of).ok_or_else(bad),
            [window, pos, part, key, conversation] => {
                let conversation = (conversation.len() == 32
                    && conversation.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| Uuid::try_parse(conversation).ok())
                .flatten();
                match (
                    digits(window),
                    digits(pos),
                    digits(part),
                    digits(key),
                    conversation,
                ) {
                    (Some(window), Some(pos), Some(part), Some(key), Some(conversation)) => {
                        Ok(Self {
                            window,
                            key: EventKey {
                                pos,
                                part,
                                conversation,
                                key,
                            },
                        })
                    }
                    _ => Err(bad()),
                }
            }
            _ => Err(bad()),
        }
    }

    pub fn cursor(self) -> String {
        if self.is_end_of_window() {
            return self.window.to_string();
        }
        let k = self.key;
        format!(
            "{}.{}.{}.{}.{}",
            self.window,
            k.pos,
            k.part,
            k.key,
            k.conversation.simple()
        )
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
    fn cursors_round_trip_and_refuse_anything_else() {
        let end = FeedPosition::end_of(42);
        assert_eq!(FeedPosition::parse("a", "42").ok(), Some(end));
        assert_eq!(end.cursor(), "42");
        let inside = FeedPosition {
            window: 7,
            key: EventKey {
                pos: 9,
                part: 1,
                conversation: Uuid::from_u128(0xabc),
                key: 3,
            },
        };
        assert_eq!(
            FeedPosition::parse("a", &inside.cursor()).ok(),
            Some(inside)
        );
        assert!(inside < end && FeedPosition::end_of(6) < inside);
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1e3",
            "x",
            "99999999999999999999",
            "1.2.3.4",
            "1.2.3.4.5",
            "1.-2.3.4.00000000000000000000000000000abc",
            "1.2.3.4.0000000000000000000000000000-abc",
            "1.2.3.4.00000000-0000-0000-0000-000000000abc",
        ] {
            assert!(FeedPosition::parse("a", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_and_names_refuse_what_they_do_not_know() {
        assert!(FeedKind::from_wire("k", 0).is_err());
        assert!(FeedKind::from_wire("k", 11).is_err());
        assert!(ConsumerName::parse("c", "").is_err());
        assert!(ConsumerName::parse("c", "a b").is_err());
        assert!(ConsumerName::parse("c", &"a".repeat(129)).is_err());
        assert!(ConsumerName::parse("c", "crm.mirror-1_a").is_ok());
    }
}
