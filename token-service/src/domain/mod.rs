//! Values that can only hold what the contract allows. Each `parse` names the proto field
//! it reads so a refusal says which one was wrong.

mod admin;
mod page;
mod privacy;
mod secret;
mod session;
mod token;

use std::fmt;

use uuid::Uuid;

pub use admin::{BackupName, CallId, CallKind, FailedCall, FailedCallCursor};
pub use page::TokenCursor;
pub use privacy::{
    AuditEntry, AuditRecord, ConversationsErased, CustomerExport, Erasure, ErasureCall,
    ExportedContact, ExportedSession,
};
pub use secret::{SecretHash, SessionSecret, TokenSecret};
pub use session::{ContactDetails, CustomerLink, Session};
pub use token::{NewToken, Token, TokenState};

use crate::error::Error;

/// Checks an identifier chosen by the marketplace (provider or customer id) by the
/// contract's rule, the one conversation-service applies, so a queued call can never be
/// refused for it later.
fn parse_external_id(field: &'static str, value: &str) -> Result<String, Error> {
    chat_proto::rules::external_id(value).map_err(|d| Error::invalid(field, d))
}

/// An id held as text: whoever makes one checks it (`parse`, or the service that named
/// it); the store reads it back as it was written.
macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// An id read back from our own database (checked when it was written).
            pub(crate) fn from_stored(value: String) -> Self {
                Self(value)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_id!(
    /// The provider who owns a link, as it appears in `/u/{provider_id}/c/{secret}`.
    ProviderId
);
text_id!(
    /// A registered customer, as known to the BFF.
    CustomerId
);
text_id!(
    /// A conversation, as conversation-service names it: token-service never makes one,
    /// it keeps the id CreateConversation returned.
    ConversationId
);

impl ProviderId {
    pub fn parse(field: &'static str, value: &str) -> Result<Self, Error> {
        parse_external_id(field, value).map(Self)
    }
}

impl CustomerId {
    pub fn parse(field: &'static str, value: &str) -> Result<Self, Error> {
        parse_external_id(field, value).map(Self)
    }
    /// Empty means "not given".
    pub fn parse_optional(field: &'static str, value: &str) -> Result<Option<Self>, Error> {
        if value.is_empty() {
            Ok(None)
        } else {
            Self::parse(field, value).map(Some)
        }
    }
}

impl ConversationId {
    /// The id conversation-service returned for a CreateConversation.
    pub fn created(value: String) -> Self {
        Self(value)
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn parse(field: &'static str, value: &str) -> Result<Self, Error> {
                if value.is_empty() {
                    return Err(Error::invalid(field, "is required"));
                }
                Uuid::try_parse(value)
                    .map(Self)
                    .map_err(|_| Error::invalid(field, "must be a UUID"))
            }
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A chat link's public id (not its secret).
    TokenId
);
uuid_id!(
    /// A customer session's public id (not its secret).
    SessionId
);
uuid_id!(
    /// RedeemToken's idempotency key (AIP-155).
    RequestId
);

/// A link's label for its provider: at most 200 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label(String);

impl Label {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(value: &str) -> Result<Self, Error> {
        if value.chars().count() > Self::MAX_CHARS {
            return Err(Error::invalid("label", "must be at most 200 characters"));
        }
        if value.chars().any(char::is_control) {
            return Err(Error::invalid(
                "label",
                "must not contain control characters",
            ));
        }
        Ok(Self(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How many times a link may be redeemed; `None` is unlimited (0 on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxUses(Option<u32>);

impl MaxUses {
    pub fn parse(value: i32) -> Result<Self, Error> {
        match u32::try_from(value) {
            Ok(0) => Ok(Self(None)),
            Ok(n) => Ok(Self(Some(n))),
            Err(_) => Err(Error::invalid(
                "max_uses",
                "must not be negative (0 means unlimited)",
            )),
        }
    }
    pub fn limit(self) -> Option<u32> {
        self.0
    }
}

const NANOS_PER_SECOND: i32 = 1_000_000_000;
const NANOS_PER_MICRO: i32 = 1_000;
const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// How long a link stays valid: 1 second to 365 days, 7 days when unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(chrono::Duration);

impl Ttl {
    pub const DEFAULT_DAYS: i64 = 7;
    pub const MAX_DAYS: i64 = 365;

    pub fn parse(value: Option<&prost_types::Duration>) -> Result<Self, Error> {
        let Some(d) = value else {
            return Ok(Self(chrono::Duration::days(Self::DEFAULT_DAYS)));
        };
        if !(0..NANOS_PER_SECOND).contains(&d.nanos) || d.seconds < 1 {
            return Err(Error::invalid("ttl", "must be at least 1 second"));
        }
        let max_seconds = Self::MAX_DAYS * SECONDS_PER_DAY;
        if d.seconds > max_seconds || (d.seconds == max_seconds && d.nanos > 0) {
            return Err(Error::invalid("ttl", "must be at most 365 days"));
        }
        // Kept at the precision the database stores times in.
        let micros = d.seconds * MICROS_PER_SECOND + i64::from(d.nanos / NANOS_PER_MICRO);
        Ok(Self(chrono::Duration::microseconds(micros)))
    }
    pub fn as_duration(self) -> chrono::Duration {
        self.0
    }
}

/// AIP-158 page size: 0 means the default, negative is refused, above the maximum is lowered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    pub const DEFAULT: u32 = 50;
    pub const MAX: u32 = 200;

    pub fn parse(value: i32) -> Result<Self, Error> {
        match u32::try_from(value) {
            Ok(0) => Ok(Self(Self::DEFAULT)),
            Ok(n) => Ok(Self(n.min(Self::MAX))),
            Err(_) => Err(Error::invalid("page_size", "must not be negative")),
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Times are kept as Unix microseconds in SQLite.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Now, at the precision the database keeps (microseconds), so a value returned at once
/// equals the same value read back later.
pub fn now() -> Timestamp {
    from_micros(to_micros(chrono::Utc::now()))
}

pub fn to_micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(micros: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_follows_aip_158() {
        assert_eq!(PageSize::parse(0).unwrap().get(), PageSize::DEFAULT);
        assert_eq!(PageSize::parse(7).unwrap().get(), 7);
        assert_eq!(PageSize::parse(10_000).unwrap().get(), PageSize::MAX);
        assert!(PageSize::parse(-1).is_err());
    }

    #[test]
    fn ttl_is_bounded() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(
            Ttl::parse(None).unwrap().as_duration(),
            chrono::Duration::days(7)
        );
        assert!(Ttl::parse(Some(&d(1, 0))).is_ok());
        assert!(Ttl::parse(Some(&d(0, 500))).is_err());
        assert!(Ttl::parse(Some(&d(5, -1))).is_err());
        assert!(Ttl::parse(Some(&d(365 * 86_400, 0))).is_ok());
        assert!(Ttl::parse(Some(&d(365 * 86_400, 1))).is_err());
    }

    #[test]
    fn external_ids_use_the_shared_alphabet() {
        for ok in ["p", "prov-1", "a.b:c@d_e", &"x".repeat(128)] {
            assert!(ProviderId::parse("provider_id", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(ProviderId::parse("provider_id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn page_tokens_are_bound_to_their_provider_and_key() {
        let key = chat_common::seal::SealKey::random().unwrap();
        let p = ProviderId::parse("provider_id", "p").unwrap();
        let q = ProviderId::parse("provider_id", "q").unwrap();
        let cursor = TokenCursor {
            create_time: now(),
            token_id: TokenId::new(),
        };
        let text = cursor.encode(&key, &p);
        assert_eq!(TokenCursor::decode(&key, &text, &p).unwrap(), Some(cursor));
        assert!(TokenCursor::decode(&key, &text, &q).is_err());
        assert!(TokenCursor::decode(&key, &text[1..], &p).is_err());
        assert!(TokenCursor::decode(&key, "", &p).unwrap().is_none());
        let other = chat_common::seal::SealKey::random().unwrap();
        assert!(TokenCursor::decode(&other, &text, &p).is_err());
        // A sealed position before 1970 is refused even with the right key.
        let old = TokenCursor {
            create_time: chrono::DateTime::from_timestamp_micros(-1).unwrap(),
            token_id: TokenId::new(),
        };
        assert!(TokenCursor::decode(&key, &old.encode(&key, &p), &p).is_err());
    }

    #[test]
    fn contact_details_match_conversation_service() {
        let c = ContactDetails::parse(
            Some(" Ada "),
            Some("ada@example.com"),
            Some("+44 (20) 7946-0000"),
        )
        .unwrap();
        assert_eq!(c.name.as_deref(), Some("Ada"));
        assert_eq!(c.phone.as_deref(), Some("+442079460000"));
        assert!(ContactDetails::parse(None, Some("ada@localhost"), None).is_err());
        assert!(ContactDetails::parse(None, None, Some("12345")).is_err());
        let cleared = ContactDetails::parse(Some(""), Some(""), Some("")).unwrap();
        assert_eq!(cleared.email.as_deref(), Some(""));
        assert_eq!(
            ContactDetails::parse(None, None, None).unwrap(),
            ContactDetails::default()
        );
    }
}
