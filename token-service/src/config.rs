//! Typed configuration: every flag has an environment variable and a default that works
//! on a developer machine (`token-service --help` lists them). Durations are written as
//! in conversation-service: `250ms`, `15s`, `1m30s`, `1h`, or a bare number of seconds.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub use chat_common::duration::parse_duration;
use chat_common::{shutdown::DrainArgs, telemetry::TelemetryArgs};
use clap::{Parser, Subcommand};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "token-service",
    version,
    about = "Chat links and customer sessions (SQLite), redeemed into exactly one conversation"
)]
pub struct Config {
    /// Without a subcommand: serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// gRPC listen address (port 0 picks a free port).
    #[arg(
        long,
        env = "LISTEN_ADDR",
        default_value = "127.0.0.1:50052",
        global = true
    )]
    pub listen: SocketAddr,

    /// SQLite database file; its parent directory is created if missing. One
    /// token-service per file (enforced by `<file>.lock`).
    #[arg(
        long,
        env = "TOKEN_DB_PATH",
        default_value = "./data/token.db",
        global = true
    )]
    pub database: PathBuf,

    /// Directory of BackupDatabase's copies (TokenAdminService); default: `backups/` beside
    /// the database file.
    #[arg(long, env = "BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,

    /// conversation-service gRPC endpoint; several replicas separated by commas are
    /// balanced per call (a replica that is down fails calls the outbox retries).
    #[arg(
        long,
        env = "CONVERSATION_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub conversation_service: String,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    #[command(flatten)]
    pub drain: DrainArgs,

    /// How long RedeemToken / IdentifySession keep trying conversation-service before
    /// answering with the call left queued in the outbox (PENDING).
    #[arg(long, env = "INLINE_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub inline_wait: Duration,

    /// Deadline of one call to conversation-service.
    #[arg(long, env = "CALL_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub call_timeout: Duration,

    /// First retry delay of a queued call; doubles per attempt up to --outbox-retry-max.
    #[arg(long, env = "OUTBOX_RETRY", default_value = "500ms", value_parser = parse_duration)]
    pub outbox_retry: Duration,

    /// Longest delay between two attempts of a queued call.
    #[arg(long, env = "OUTBOX_RETRY_MAX", default_value = "30s", value_parser = parse_duration)]
    pub outbox_retry_max: Duration,

    /// How often the outbox worker looks for due calls when nothing wakes it.
    #[arg(long, env = "OUTBOX_POLL", default_value = "1s", value_parser = parse_duration)]
    pub outbox_poll: Duration,

    /// Calls the outbox worker makes at once.
    #[arg(long, env = "OUTBOX_BATCH", default_value_t = 16)]
    pub outbox_batch: u32,

    /// Failed redemptions / checks (unknown link, wrong provider, malformed secret) one
    /// caller may make per window before RESOURCE_EXHAUSTED; 0 disables the limit.
    #[arg(long, env = "FAILED_REDEMPTIONS_LIMIT", default_value_t = 10)]
    pub failed_redemptions_limit: u32,

    /// Window of --failed-redemptions-limit.
    #[arg(long, env = "FAILED_REDEMPTIONS_WINDOW", default_value = "1m", value_parser = parse_duration)]
    pub failed_redemptions_window: Duration,

    /// Metadata key whose value the BFF sets to name the end user for the failed-guess
    /// limit (an account or device id gives each end user its own budget; the end
    /// user's address works too). The BFF must always set it, replacing any value the
    /// end user sent. Empty, or absent from a request: the address below is used.
    #[arg(long, env = "CALLER_KEY_HEADER", default_value = "")]
    pub caller_key_header: String,

    /// Metadata key of the forwarded-for chain the trusted proxies append to.
    #[arg(long, env = "CALLER_ADDRESS_HEADER", default_value = "x-forwarded-for")]
    pub caller_address_header: String,

    /// Proxies (BFFs, load balancers) in front of this service that each append the
    /// address they were called from to --caller-address-header: the caller is the entry
    /// this many from the right. 0: the chain is ignored and the peer address is the
    /// caller (anything to its left was written by the client and proves nothing).
    #[arg(long, env = "TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: usize,

    /// Key (at least 16 bytes) that seals ListTokens page tokens (HMAC-SHA256). Unset: a
    /// random key per process, so page tokens do not survive a restart.
    #[arg(long, env = "PAGE_TOKEN_KEY", hide_env_values = true)]
    pub page_token_key: Option<String>,

    /// Deadline of every RPC (a client's shorter grpc-timeout wins).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// RPCs handled at once across all connections; beyond, they wait their turn.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,

    /// Concurrent HTTP/2 streams per client connection.
    #[arg(long, env = "MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// Largest request message accepted, in bytes (replies are capped at 1 MiB).
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Connection settings shared with conversation-service.
    #[command(flatten)]
    pub connections: chat_common::server::Connections,

    /// SQLite busy timeout (only an outside process, e.g. a backup, can hold the lock).
    #[arg(long, env = "SQLITE_BUSY_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub sqlite_busy_timeout: Duration,

    #[command(flatten)]
    pub retention: RetentionArgs,

    /// How often health probes SQLite and conversation-service.
    #[arg(long, env = "HEALTH_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub health_interval: Duration,

    #[command(flatten)]
    pub client: ClientSecurity,

    #[command(flatten)]
    pub security: chat_common::security::SecurityArgs,
}

/// How token-service proves itself to conversation-service and checks it. An `https://`
/// URL needs the CA; a plaintext URL with TLS settings is refused at start.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientSecurity {
    /// PEM CA that signed conversation-service's certificate (required for https://).
    #[arg(long, env = "CONVERSATION_SERVICE_CA")]
    pub conversation_service_ca: Option<PathBuf>,

    /// PEM client certificate presented to conversation-service (mutual TLS).
    #[arg(
        long,
        env = "CONVERSATION_SERVICE_CLIENT_CERT",
        requires = "conversation_service_client_key"
    )]
    pub conversation_service_client_cert: Option<PathBuf>,

    /// PEM private key of that client certificate.
    #[arg(
        long,
        env = "CONVERSATION_SERVICE_CLIENT_KEY",
        requires = "conversation_service_client_cert"
    )]
    pub conversation_service_client_key: Option<PathBuf>,

    /// File holding a bearer token sent to conversation-service (`authorization: Bearer`),
    /// for meshes that terminate TLS.
    #[arg(long, env = "CONVERSATION_SERVICE_TOKEN_FILE")]
    pub conversation_service_token_file: Option<PathBuf>,
}

/// How long token-service keeps what it no longer needs; `0` keeps it for ever. The
/// sweeper removes it in bounded batches (see docs/design.md, Customer data).
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Ended sessions (EndSession, or erased) are deleted this long after they ended, once
    /// no call of theirs is left in the outbox.
    #[arg(long, env = "SESSION_RETENTION", default_value = "90d", value_parser = parse_duration)]
    pub session_retention: Duration,

    /// Name, email and phone in calls conversation-service refused for good are dropped
    /// this long after (the call stays listed for operators).
    #[arg(long, env = "FAILED_CALL_CONTACT_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub failed_call_contact_retention: Duration,

    /// Expired and revoked links are deleted this long after they stopped working, once
    /// no session names them.
    #[arg(long, env = "LINK_RETENTION", default_value = "90d", value_parser = parse_duration)]
    pub link_retention: Duration,

    /// Audit records (and the record of finished erasures) are kept this long.
    #[arg(long, env = "AUDIT_RETENTION", default_value = "365d", value_parser = parse_duration)]
    pub audit_retention: Duration,

    /// RedeemToken recognises a request_id this long: a retry within it gets the same
    /// session, after it the same id redeems anew. `0` keeps every id, and the index of ids
    /// then grows with every redemption ever made.
    #[arg(long, env = "REDEEM_RETRY_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub redeem_retry_window: Duration,

    /// How often the retention sweeper runs.
    #[arg(long, env = "RETENTION_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// Rows the sweeper removes per transaction.
    #[arg(long, env = "RETENTION_BATCH", default_value_t = 500)]
    pub retention_batch: u32,
}

/// What the binary does instead of serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Create or migrate the database, then exit (fails while a token-service holds it;
    /// serving migrates too).
    Migrate,
    /// Exit 0 if the service at --listen is ready: its readiness health check (its API's
    /// service name) answers SERVING.
    Healthcheck,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_without_any_flag() {
        let config = Config::try_parse_from(["token-service"]).unwrap();
        assert_eq!(config.listen.port(), 50052);
        assert_eq!(config.conversation_service, "http://127.0.0.1:50051");
        assert_eq!(config.inline_wait, Duration::from_secs(2));
    }
}
