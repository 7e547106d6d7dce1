//! Typed configuration: every knob is a flag with an environment variable and a default
//! that works on a developer machine.

use std::{net::SocketAddr, time::Duration};

pub use chat_common::duration::parse_duration;
use chat_common::{shutdown::DrainArgs, telemetry::TelemetryArgs};
use clap::{Parser, Subcommand};

/// conversation-service: conversations, messages and read state in PostgreSQL, with
/// real-time streams across replicas.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Without a subcommand: serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address the gRPC server listens on.
    #[arg(
        long,
        env = "LISTEN_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen: SocketAddr,

    /// PostgreSQL connection URL. The database must exist; migrations are applied at start.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chat",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,

    /// Apply migrations at start. With `false` the schema must come from
    /// `conversation-service migrate` (e.g. a Job with a DDL-capable user, so serving
    /// needs DML rights only); until it does, the service reports NOT_SERVING.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    /// Maximum connections in the PostgreSQL pool (the LISTEN connection is extra).
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// How long a request waits for a pooled connection before UNAVAILABLE.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub db_acquire_timeout: Duration,

    /// Deadline of every unary RPC (a client's shorter grpc-timeout wins).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Concurrent HTTP/2 streams (calls, open streams included) per client connection.
    #[arg(long, env = "MAX_CONCURRENT_STREAMS", default_value_t = 2048)]
    pub max_concurrent_streams: u32,

    /// Largest request message accepted, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Open streams (StreamConversation + StreamInbox) allowed per process; above it new
    /// streams get RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: usize,

    /// Events queued per stream before it is marked lagging and catches up from the table.
    #[arg(long, env = "STREAM_QUEUE", default_value_t = 64)]
    pub stream_queue: usize,

    /// Interval of heartbeats on idle streams.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// How far the LISTEN connection may fall behind before it is reconnected. Every 2 s
    /// it NOTIFYs a channel of its own and times the notice's arrival, which queues behind
    /// every notice sent before it. A listener further behind than this is dropped: the
    /// backlog it leaves is trimmed from PostgreSQL's notification queue (which a slow
    /// listener keeps from being trimmed for the whole cluster), and its streams catch up
    /// from the table.
    #[arg(long, env = "LISTENER_LAG_LIMIT", default_value = "30s", value_parser = parse_duration)]
    pub listener_lag_limit: Duration,

    /// Most messages written in one SendMessage transaction (concurrent sends share one
    /// transaction and one NOTIFY).
    #[arg(long, env = "SEND_BATCH_MAX", default_value_t = 256)]
    pub send_batch_max: usize,

    /// Transactions of concurrent sends in flight at once.
    #[arg(long, env = "SEND_WRITERS", default_value_t = 2)]
    pub send_writers: usize,

    /// Messages of conversations closed for longer than this are deleted (reading from
    /// before them is FAILED_PRECONDITION `MESSAGES_EXPIRED`); `0` keeps them for ever.
    #[arg(long, env = "CLOSED_MESSAGE_RETENTION", default_value = "365d", value_parser = parse_duration)]
    pub closed_message_retention: Duration,

    /// How long after sending a message its sender may edit it; `0`: no limit.
    #[arg(long, env = "EDIT_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub edit_window: Duration,

    /// URI prefixes attachments must start with (comma-separated, each `https://...`),
    /// e.g. the BFF's object-storage bucket. Empty: messages with attachments are refused.
    #[arg(
        long,
        env = "ATTACHMENT_URI_PREFIXES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub attachment_uri_prefixes: Vec<String>,

    /// Content types attachments may have (comma-separated; `image/*` allows every image
    /// type).
    #[arg(
        long,
        env = "ATTACHMENT_CONTENT_TYPES",
        value_delimiter = ',',
        default_value = "image/png,image/jpeg,image/gif,image/webp,image/heic,application/pdf,text/plain"
    )]
    pub attachment_content_types: Vec<String>,

    /// Largest attachment, in bytes (the reference says how big the stored file is).
    #[arg(long, env = "ATTACHMENT_MAX_BYTES", default_value_t = 25 * 1024 * 1024)]
    pub attachment_max_bytes: i64,

    /// How often the retention sweeper runs.
    #[arg(long, env = "RETENTION_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// Messages the sweeper deletes per transaction.
    #[arg(long, env = "RETENTION_BATCH", default_value_t = 1000)]
    pub retention_batch: i64,

    /// On SIGTERM/SIGINT: how long in-flight unary calls may finish. Open streams end at
    /// once with UNAVAILABLE, so their clients resume on another replica.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Key (at least 16 bytes) that seals page tokens (HMAC-SHA256). Unset: a random key
    /// per process, so page tokens do not survive a restart or work on another replica;
    /// give every replica the same key.
    #[arg(long, env = "PAGE_TOKEN_KEY", hide_env_values = true)]
    pub page_token_key: Option<String>,

    /// How long the event feed (EventService) keeps events; older ones are pruned in
    /// batches and a cursor before them is FAILED_PRECONDITION `CURSOR_EXPIRED`.
    #[arg(long, env = "EVENT_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub event_retention: Duration,

    /// How long a participant's messages stay unread, with no open stream of theirs on
    /// any replica, before the event feed carries an UNREAD_REMINDER (once per unread
    /// streak).
    #[arg(long, env = "UNREAD_REMINDER_DELAY", default_value = "2m", value_parser = parse_duration)]
    pub unread_reminder_delay: Duration,

    /// Connection settings shared with token-service.
    #[command(flatten)]
    pub connections: chat_common::server::Connections,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    #[command(flatten)]
    pub security: chat_common::security::SecurityArgs,

    #[command(flatten)]
    pub drain: DrainArgs,
}

impl Config {
    /// What SendMessage accepts as attachments. Blank entries (an empty variable) are
    /// dropped, so `ATTACHMENT_URI_PREFIXES=""` refuses attachments.
    pub fn attachment_rules(&self) -> crate::domain::AttachmentRules {
        let list = |items: &[String], lower: bool| -> Vec<String> {
            items
                .iter()
                .map(|item| item.trim())
                .filter(|item| !item.is_empty())
                .map(|item| {
                    if lower {
                        item.to_ascii_lowercase()
                    } else {
                        item.to_owned()
                    }
                })
                .collect()
        };
        crate::domain::AttachmentRules {
            uri_prefixes: list(&self.attachment_uri_prefixes, false),
            content_types: list(&self.attachment_content_types, true),
            max_bytes: self.attachment_max_bytes,
        }
    }
}

/// What the binary does instead of serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Apply the database migrations and exit.
    Migrate,
    /// Exit 0 if the service at --listen is ready: its readiness health check (its API's
    /// service name) answers SERVING.
    Healthcheck,
}
