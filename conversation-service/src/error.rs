//! The service's one error type, one variant per refusal. What a caller sees of each
//! (code, `ErrorInfo` reason, details) is said once here, in [`ServiceError`];
//! `chat_common::error::to_status` builds the status.

use chat_common::error::{Details, ServiceError, to_status};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: names the field, changes nothing.
    #[error("{field}: {description}")]
    InvalidArgument {
        field: &'static str,
        description: String,
    },
    /// Bad input in one attachment: names it and its field (`attachments[2].uri`).
    #[error("attachments[{index}].{field}: {description}")]
    InvalidAttachment {
        index: usize,
        field: &'static str,
        description: String,
    },
    /// The only thing a caller can name that may not exist.
    #[error("conversation not found")]
    ConversationNotFound,
    #[error("message not found in this conversation")]
    MessageNotFound,
    #[error("only the side that sent a message may edit it, and only it or the provider delete it")]
    NotMessageSender,
    #[error("the edit window of this message has passed")]
    EditWindowPassed,
    #[error("the message is deleted")]
    MessageDeleted,
    #[error("this request_id was already used for a different request")]
    RequestIdReused,
    #[error("the caller is not a participant of this conversation")]
    NotParticipant,
    /// An anonymous visitor's access ends once a customer is linked.
    #[error("a customer is linked to this conversation; act as that customer")]
    CustomerLinked,
    /// The anonymous customer presented no session, or not the one that opened the
    /// conversation.
    #[error("{}", session_mismatch(.presented))]
    SessionMismatch { presented: bool },
    #[error("the conversation is closed")]
    ConversationClosed,
    #[error("the conversation is linked to another customer")]
    CustomerAlreadyLinked,
    #[error("this client_message_id was already used by this sender for a different body")]
    ClientMessageIdReused,
    #[error("this replica serves at most {max} streams")]
    TooManyStreams { max: usize },
    /// A cursor or position beyond what exists.
    #[error("{field}: {message}")]
    CursorOutOfRange {
        field: &'static str,
        message: String,
    },
    /// An event cursor older than what the feed keeps: events after it were pruned.
    #[error("the events after this cursor were pruned; the oldest cursor held is {oldest}")]
    CursorExpired { oldest: String },
    /// A durable feed consumer that never acknowledged anything.
    #[error("no consumer of that name has acknowledged events")]
    ConsumerNotFound,
    /// Retention deleted messages that a cursor asks to read from: answered with the
    /// oldest seq still held, never with a silent gap.
    #[error("{field}: messages before seq {oldest_seq} were deleted by retention")]
    MessagesExpired {
        field: &'static str,
        oldest_seq: i64,
    },
    /// PostgreSQL cannot be reached (or the service is still starting).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: logged with context, answered without detail.
    #[error("{context}: {source}")]
    Internal {
        context: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            description: description.into(),
        }
    }

    /// Wraps a database error with what was being done. A database that cannot serve
    /// now is UNAVAILABLE (retry later); anything else is a bug and stays INTERNAL.
    pub fn db(context: &'static str, source: sqlx::Error) -> Self {
        if is_unreachable(&source) {
            tracing::warn!(error = %source, context, "database unavailable");
            return Self::Unavailable("the database is unavailable, retry later".into());
        }
        Self::Internal {
            context,
            source: Box::new(source),
        }
    }
}

fn session_mismatch(presented: &bool) -> &'static str {
    if *presented {
        "this session did not open the conversation"
    } else {
        "the anonymous customer must present the session that opened the conversation \
         (participant.session_id)"
    }
}

fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        // SQLSTATEs meaning "this database cannot serve you now", mostly raised while a
        // new connection is opened: 08 connection exception, 53 insufficient resources
        // (too many connections), 57P operator intervention (shutdown, starting up),
        // 3D000 no such database, 28 authorization, 55000 database not accepting
        // connections. Anything else is a bug and stays INTERNAL.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            ["08", "53", "57P", "28"]
                .iter()
                .any(|class| c.starts_with(class))
                || c == "3D000"
                || c == "55000"
        }),
        _ => false,
    }
}

impl ServiceError for Error {
    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } | Self::InvalidAttachment { .. } => Code::InvalidArgument,
            Self::ConversationNotFound | Self::MessageNotFound | Self::ConsumerNotFound => {
                Code::NotFound
            }
            Self::NotParticipant
            | Self::CustomerLinked
            | Self::SessionMismatch { .. }
            | Self::NotMessageSender => Code::PermissionDenied,
            Self::ConversationClosed
            | Self::CustomerAlreadyLinked
            | Self::ClientMessageIdReused
            | Self::EditWindowPassed
            | Self::MessageDeleted
            | Self::RequestIdReused
            | Self::CursorExpired { .. }
            | Self::MessagesExpired { .. } => Code::FailedPrecondition,
            Self::TooManyStreams { .. } => Code::ResourceExhausted,
            Self::CursorOutOfRange { .. } => Code::OutOfRange,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal { .. } => Code::Internal,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Self::InvalidArgument { .. } | Self::InvalidAttachment { .. } => "INVALID_ARGUMENT",
            Self::ConversationNotFound => "CONVERSATION_NOT_FOUND",
            Self::MessageNotFound => "MESSAGE_NOT_FOUND",
            Self::NotMessageSender => "NOT_MESSAGE_SENDER",
            Self::EditWindowPassed => "EDIT_WINDOW_PASSED",
            Self::MessageDeleted => "MESSAGE_DELETED",
            Self::RequestIdReused => "REQUEST_ID_REUSED",
            Self::NotParticipant => "NOT_A_PARTICIPANT",
            Self::CustomerLinked => "CUSTOMER_LINKED",
            Self::SessionMismatch { .. } => "SESSION_MISMATCH",
            Self::ConversationClosed => "CONVERSATION_CLOSED",
            Self::CustomerAlreadyLinked => "CUSTOMER_ALREADY_LINKED",
            Self::ClientMessageIdReused => "CLIENT_MESSAGE_ID_REUSED",
            Self::TooManyStreams { .. } => "TOO_MANY_STREAMS",
            Self::CursorOutOfRange { .. } => "CURSOR_OUT_OF_RANGE",
            Self::CursorExpired { .. } => "CURSOR_EXPIRED",
            Self::ConsumerNotFound => "CONSUMER_NOT_FOUND",
            Self::MessagesExpired { .. } => "MESSAGES_EXPIRED",
            Self::Unavailable(_) => "DATABASE_UNAVAILABLE",
            Self::Internal { .. } => "INTERNAL",
        }
    }

    fn details(&self) -> Details {
        match self {
            Self::InvalidArgument { field, description } => {
                Details::bad_field(field, description.clone())
            }
            Self::InvalidAttachment {
                index,
                field,
                description,
            } => Details::bad_field(
                &format!("attachments[{index}].{field}"),
                description.clone(),
            ),
            Self::CursorExpired { oldest } => {
                Details::none().with_metadata("oldest_cursor", oldest.clone())
            }
            Self::MessagesExpired { field, oldest_seq } => Details::none()
                .with_metadata("field", *field)
                .with_metadata("oldest_seq", oldest_seq.to_string()),
            _ => Details::none(),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        to_status(&error)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
