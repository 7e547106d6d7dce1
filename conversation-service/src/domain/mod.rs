//! Values that can only hold valid data. Every request field is parsed into one of these
//! before anything touches the database, so validation is written and tested once.

mod filter;
mod page;
mod search;

use chat_proto::{rules, v1};
use uuid::Uuid;

use crate::error::{Error, Result};

pub use filter::{ConversationFilter, CustomerQuery};
pub use page::{PageKey, PageSize, PageTokens};
pub use search::{
    HIGHLIGHT_START, HIGHLIGHT_STOP, SNIPPET_CHARS, SearchQuery, SnippetPart, snippet_parts,
};

/// A conversation's id (a UUID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
#[sqlx(transparent)]
pub struct ConversationId(pub Uuid);

impl ConversationId {
    pub fn parse(field: &'static str, text: &str) -> Result<Self> {
        parse_uuid(field, text).map(Self)
    }
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn parse_uuid(field: &'static str, text: &str) -> Result<Uuid> {
    if text.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Uuid::try_parse(text).map_err(|_| Error::invalid(field, "must be a UUID"))
}

/// An AIP-155 idempotency key; absent when the caller sent none.
pub fn parse_request_id(field: &'static str, text: &str) -> Result<Option<Uuid>> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse_uuid(field, text).map(Some)
    }
}

const MAX_ID_LEN: usize = chat_proto::rules::MAX_ID_LEN;

/// A provider's or customer's id (see [`chat_proto::rules::external_id`]).
pub fn parse_external_id(field: &'static str, text: &str) -> Result<String> {
    rules::external_id(text).map_err(|d| Error::invalid(field, d))
}

/// Which side of a conversation. Stored (and carried in notices) as a SMALLINT; a value
/// that is neither is refused when read, never taken for one of them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type, serde::Serialize, serde::Deserialize,
)]
#[repr(i16)]
#[serde(try_from = "i16", into = "i16")]
pub enum Role {
    Provider = 1,
    Customer = 2,
}

/// A stored SMALLINT's enum: `TryFrom<i16>` refusing any other value, and back.
macro_rules! smallint_enum {
    ($name:ident, $what:literal, $($variant:ident),+) => {
        impl TryFrom<i16> for $name {
            type Error = String;

            fn try_from(value: i16) -> std::result::Result<Self, String> {
                $(if value == Self::$variant as i16 {
                    return Ok(Self::$variant);
                })+
                Err(format!("unknown {} {value}", $what))
            }
        }

        impl From<$name> for i16 {
            fn from(value: $name) -> Self {
                value as i16
            }
        }
    };
}

smallint_enum!(Role, "role", Provider, Customer);

/// A provider's id: valid by construction (see [`chat_proto::rules::external_id`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProviderId(String);

/// A linked customer's id: valid by construction, never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomerId(String);

macro_rules! external_id {
    ($name:ident) => {
        impl $name {
            pub fn parse(field: &'static str, text: &str) -> Result<Self> {
                parse_external_id(field, text).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
external_id!(ProviderId);
external_id!(CustomerId);

/// The customer side of a conversation: the anonymous visitor of a chat link (before a
/// customer is linked; bound to the session that opened the conversation), or the linked
/// customer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CustomerRef {
    Anonymous,
    Linked(CustomerId),
}

/// Someone acting on a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Participant {
    Provider(ProviderId),
    Customer(CustomerRef),
}

impl Participant {
    /// Parses an acting participant (sender, reader, viewer). Its `session_id` is checked
    /// whoever presents it, like every other text field, though only the anonymous
    /// customer's is used (see [`parse_acting`]).
    pub fn parse(field: &'static str, proto: Option<&v1::Participant>) -> Result<Self> {
        let proto = proto.ok_or_else(|| Error::invalid(field, "is required"))?;
        parse_session_id(session_field(field), &proto.session_id)?;
        match v1::Role::try_from(proto.role) {
            Ok(v1::Role::Provider) => Ok(Self::Provider(ProviderId::parse(field, &proto.id)?)),
            Ok(v1::Role::Customer) if proto.id.is_empty() => {
                Ok(Self::Customer(CustomerRef::Anonymous))
            }
            Ok(v1::Role::Customer) => Ok(Self::Customer(CustomerRef::Linked(CustomerId::parse(
                field, &proto.id,
            )?))),
            _ => Err(Error::invalid(field, "role must be PROVIDER or CUSTOMER")),
        }
    }

    /// Parses whose inbox or list it is: a provider, or a linked customer (an id is
    /// required either way).
    pub fn parse_owner(field: &'static str, proto: Option<&v1::Participant>) -> Result<Self> {
        let participant = Self::parse(field, proto)?;
        if participant.is_anonymous() {
            return Err(Error::invalid(field, "id is required"));
        }
        Ok(participant)
    }

    /// A participant as stored (`sender_role`, `sender_id`), or as a NOTIFY names it:
    /// written by this service from a parsed participant, so taken as it is.
    pub fn stored(role: Role, id: String) -> Self {
        match role {
            Role::Provider => Self::Provider(ProviderId(id)),
            Role::Customer if id.is_empty() => Self::Customer(CustomerRef::Anonymous),
            Role::Customer => Self::Customer(CustomerRef::Linked(CustomerId(id))),
        }
    }

    pub fn role(&self) -> Role {
        match self {
            Self::Provider(_) => Role::Provider,
            Self::Customer(_) => Role::Customer,
        }
    }

    /// The id as the wire and the tables hold it: empty for the anonymous customer.
    pub fn id(&self) -> &str {
        match self {
            Self::Provider(id) => id.as_str(),
            Self::Customer(CustomerRef::Linked(id)) => id.as_str(),
            Self::Customer(CustomerRef::Anonymous) => "",
        }
    }

    /// The customer of a conversation with no customer linked yet.
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Self::Customer(CustomerRef::Anonymous))
    }

    /// Whether this participant may act on a conversation of `provider_id` whose linked
    /// customer is `customer_id` (the anonymous visitor only while none is linked).
    pub fn belongs_to(&self, provider_id: &str, customer_id: Option<&str>) -> bool {
        match (self, customer_id) {
            (Self::Provider(id), _) => id.as_str() == provider_id,
            (Self::Customer(CustomerRef::Anonymous), linked) => linked.is_none(),
            (Self::Customer(CustomerRef::Linked(id)), linked) => linked == Some(id.as_str()),
        }
    }
}

/// A token-service session id (a UUID): who opened a conversation for an anonymous
/// visitor, and what that visitor presents later. Empty means none.
pub fn parse_session_id(field: &'static str, text: &str) -> Result<Option<Uuid>> {
    parse_request_id(field, text)
}

/// The BadRequest field of a participant's session id: `sender.session_id` for `sender`.
fn session_field(participant: &'static str) -> &'static str {
    match participant {
        "sender" => "sender.session_id",
        "viewer" => "viewer.session_id",
        "reader" => "reader.session_id",
        "actor" => "actor.session_id",
        _ => "participant.session_id",
    }
}

/// Parses an acting participant with the session it presents (kept only for the
/// anonymous customer, the only one that needs it).
pub fn parse_acting(
    field: &'static str,
    proto: Option<&v1::Participant>,
) -> Result<(Participant, Option<Uuid>)> {
    let participant = Participant::parse(field, proto)?;
    let session = if participant.is_anonymous() {
        parse_session_id(
            session_field(field),
            proto.map_or("", |p| p.session_id.as_str()),
        )?
    } else {
        None
    };
    Ok((participant, session))
}

/// The anonymous customer is bound to the session that created its conversation: it must
/// present exactly that session, so a conversation id alone grants nothing. Others pass.
pub fn check_session(
    participant: &Participant,
    presented: Option<Uuid>,
    recorded: Option<Uuid>,
) -> Result<()> {
    if !participant.is_anonymous() {
        return Ok(());
    }
    match (presented, recorded) {
        (Some(presented), Some(recorded)) if presented == recorded => Ok(()),
        (presented, _) => Err(Error::SessionMismatch {
            presented: presented.is_some(),
        }),
    }
}

/// Active or closed. Stored (and carried in notices) as a SMALLINT; a value that is
/// neither is refused when read, never taken for one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, serde::Serialize, serde::Deserialize)]
#[repr(i16)]
#[serde(try_from = "i16", into = "i16")]
pub enum Status {
    Active = 1,
    Closed = 2,
}

/// [`Status::Active`] as SQL text, for the tuned batch statements whose text stays as it
/// was measured (`concat!` needs a literal; a test holds it to the enum).
macro_rules! active_status_sql {
    () => {
        "1"
    };
}
pub(crate) use active_status_sql;

smallint_enum!(Status, "conversation status", Active, Closed);

impl Status {
    pub fn parse(field: &'static str, value: i32) -> Result<Self> {
        match v1::ConversationStatus::try_from(value) {
            Ok(v1::ConversationStatus::Active) => Ok(Self::Active),
            Ok(v1::ConversationStatus::Closed) => Ok(Self::Closed),
            _ => Err(Error::invalid(field, "must be ACTIVE or CLOSED")),
        }
    }

    /// A list filter: UNSPECIFIED means every status.
    pub fn parse_filter(field: &'static str, value: i32) -> Result<Option<Self>> {
        if value == 0 {
            Ok(None)
        } else {
            Self::parse(field, value).map(Some)
        }
    }
}

/// A display name (see [`chat_proto::rules::name`]).
pub fn parse_name(field: &'static str, text: &str) -> Result<String> {
    rules::name(text).map_err(|d| Error::invalid(field, d))
}

/// An email address (see [`chat_proto::rules::email`]).
pub fn parse_email(field: &'static str, text: &str) -> Result<String> {
    rules::email(text).map_err(|d| Error::invalid(field, d))
}

/// A phone number (see [`chat_proto::rules::phone`]).
pub fn parse_phone(field: &'static str, text: &str) -> Result<String> {
    rules::phone(text).map_err(|d| Error::invalid(field, d))
}

/// The customer details of CreateConversation (all optional).
#[derive(Debug, Clone, Default)]
pub struct CustomerDetails {
    pub customer_id: Option<String>,
    pub name: String,
    pub email: String,
    pub phone: String,
}

impl CustomerDetails {
    pub fn parse(proto: Option<&v1::Customer>) -> Result<Self> {
        let Some(proto) = proto else {
            return Ok(Self::default());
        };
        Ok(Self {
            customer_id: if proto.customer_id.is_empty() {
                None
            } else {
                Some(parse_external_id(
                    "customer.customer_id",
                    &proto.customer_id,
                )?)
            },
            name: parse_name("customer.name", &proto.name)?,
            email: parse_email("customer.email", &proto.email)?,
            phone: parse_phone("customer.phone", &proto.phone)?,
        })
    }
}

/// A partial update of the customer side: `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct CustomerPatch {
    pub customer_id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
}

impl CustomerPatch {
    pub fn parse(request: &v1::UpdateCustomerRequest) -> Result<Self> {
        Ok(Self {
            customer_id: request
                .customer_id
                .as_deref()
                .map(|id| parse_external_id("customer_id", id))
                .transpose()?,
            name: request
                .name
                .as_deref()
                .map(|v| parse_name("name", v))
                .transpose()?,
            email: request
                .email
                .as_deref()
                .map(|v| parse_email("email", v))
                .transpose()?,
            phone: request
                .phone
                .as_deref()
                .map(|v| parse_phone("phone", v))
                .transpose()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.customer_id.is_none()
            && self.name.is_none()
            && self.email.is_none()
            && self.phone.is_none()
    }
}

/// A message body (see [`chat_proto::rules::body`]): newlines and tabs kept, NUL refused.
pub fn parse_body(field: &'static str, text: &str) -> Result<String> {
    rules::body(text).map_err(|d| Error::invalid(field, d))
}

/// A validated CreateConversation call.
#[derive(Debug, Clone)]
pub struct NewConversation {
    pub request_id: Option<Uuid>,
    pub provider_id: String,
    pub customer: CustomerDetails,
    pub reuse_active: bool,
    pub origin: String,
    pub session_id: Option<Uuid>,
}

/// A validated message to append.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conversation_id: ConversationId,
    pub sender: Participant,
    pub body: String,
    pub client_message_id: Option<String>,
}

/// A sender's idempotency key: at most 128 printable characters; empty means none.
pub fn parse_client_message_id(field: &'static str, text: &str) -> Result<Option<String>> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > MAX_ID_LEN || text.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            "must be at most 128 printable characters",
        ));
    }
    Ok(Some(text.to_owned()))
}

/// A message position: 0 or more.
pub fn parse_seq(field: &'static str, value: i64) -> Result<i64> {
    if value < 0 {
        return Err(Error::invalid(field, "must not be negative"));
    }
    Ok(value)
}

/// Free-form origin of a conversation: at most 200 printable characters.
pub fn parse_origin(field: &'static str, text: &str) -> Result<String> {
    if text.chars().count() > 200 || text.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            "must be at most 200 printable characters",
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert!(parse_body("b", "hi").is_ok());
        assert!(parse_body("b", "  \n").is_err());
        assert!(parse_body("b", &"é".repeat(4000)).is_ok());
        assert!(parse_body("b", &"é".repeat(4001)).is_err());
        assert!(parse_body("b", "hello\u{0}world").is_err());
        assert!(parse_body("b", "line\n\tindented").is_ok());
    }

    #[test]
    fn stored_roles_and_statuses_refuse_unknown_values() {
        assert_eq!(Role::try_from(1), Ok(Role::Provider));
        assert_eq!(Role::try_from(2), Ok(Role::Customer));
        assert!(Role::try_from(0).is_err());
        assert!(Role::try_from(3).is_err());
        assert_eq!(Status::try_from(1), Ok(Status::Active));
        assert_eq!(Status::try_from(2), Ok(Status::Closed));
        assert!(Status::try_from(0).is_err());
        assert!(Status::try_from(3).is_err());
        assert_eq!(active_status_sql!(), i16::from(Status::Active).to_string());
        assert!(serde_json::from_str::<Role>("7").is_err());
        assert_eq!(
            serde_json::to_string(&Role::Customer).ok().as_deref(),
            Some("2")
        );
    }

    #[test]
    fn the_anonymous_customer_needs_the_recorded_session() {
        let anon = Participant::Customer(CustomerRef::Anonymous);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(check_session(&anon, Some(a), Some(a)).is_ok());
        assert!(check_session(&anon, Some(b), Some(a)).is_err());
        assert!(check_session(&anon, None, Some(a)).is_err());
        assert!(check_session(&anon, Some(a), None).is_err());
        assert!(check_session(&anon, None, None).is_err());
        let linked = Participant::stored(Role::Customer, "c1".into());
        assert!(check_session(&linked, None, Some(a)).is_ok());
    }

    #[test]
    fn a_session_id_is_checked_whoever_presents_it_and_named_as_its_field() {
        let field_of = |error: Error| match error {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("not INVALID_ARGUMENT: {other:?}"),
        };
        let long = "x".repeat(60_000);
        for (role, id) in [
            (v1::Role::Provider, "p1"),
            (v1::Role::Customer, "c1"),
            (v1::Role::Customer, ""),
        ] {
            for bad in ["a\u{0}b", "'; DROP TABLE conversations; --", long.as_str()] {
                let proto = v1::Participant {
                    role: role.into(),
                    id: id.into(),
                    session_id: bad.into(),
                };
                let refused = parse_acting("sender", Some(&proto)).unwrap_err();
                assert_eq!(field_of(refused), "sender.session_id", "{role:?} {id}");
                if !id.is_empty() {
                    let refused = Participant::parse_owner("participant", Some(&proto));
                    assert_eq!(field_of(refused.unwrap_err()), "participant.session_id");
                }
            }
            let valid = v1::Participant {
                role: role.into(),
                id: id.into(),
                session_id: Uuid::new_v4().to_string(),
            };
            let (_, session) = parse_acting("viewer", Some(&valid)).unwrap();
            assert_eq!(
                session.is_some(),
                id.is_empty(),
                "kept for the anonymous only"
            );
        }
    }

    #[test]
    fn anonymous_customer_belongs_only_to_unlinked() {
        let anon = Participant::Customer(CustomerRef::Anonymous);
        assert!(anon.belongs_to("p", None));
        assert!(!anon.belongs_to("p", Some("c1")));
        let c1 = Participant::stored(Role::Customer, "c1".into());
        assert!(c1.belongs_to("p", Some("c1")));
        assert!(!c1.belongs_to("p", None));
    }
}
