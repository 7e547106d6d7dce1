//! Typed configuration: every flag has an environment variable and a default that works
//! on a developer machine (`token-service --help` lists them).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "token-service",
    version,
    about = "Chat links and customer sessions (SQLite), redeemed into exactly one conversation"
)]
pub struct Config {
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,

    /// SQLite database file; its parent directory is created if missing.
    #[arg(long, env = "TOKEN_DB_PATH", default_value = "./data/token.db")]
    pub database: PathBuf,

    /// conversation-service gRPC endpoint.
    #[arg(
        long,
        env = "CONVERSATION_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub conversation_service: String,

    /// Log format: `text` or `json` (filter with RUST_LOG).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// How long RedeemToken / IdentifySession wait for conversation-service (with
    /// retries) before answering with the call left queued in the outbox.
    #[arg(long, env = "INLINE_WAIT_MS", default_value_t = 2_000)]
    pub inline_wait_ms: u64,

    /// Deadline of one call to conversation-service.
    #[arg(long, env = "CALL_TIMEOUT_MS", default_value_t = 1_000)]
    pub call_timeout_ms: u64,

    /// First retry delay of a queued call; doubles per attempt up to --outbox-retry-max-ms.
    #[arg(long, env = "OUTBOX_RETRY_MS", default_value_t = 500)]
    pub outbox_retry_ms: u64,

    /// Longest delay between two attempts of a queued call.
    #[arg(long, env = "OUTBOX_RETRY_MAX_MS", default_value_t = 30_000)]
    pub outbox_retry_max_ms: u64,

    /// How often the outbox worker looks for due calls when nothing wakes it.
    #[arg(long, env = "OUTBOX_POLL_MS", default_value_t = 1_000)]
    pub outbox_poll_ms: u64,

    /// Calls the outbox worker makes at once.
    #[arg(long, env = "OUTBOX_BATCH", default_value_t = 16)]
    pub outbox_batch: u32,

    /// How long a claimed outbox call is reserved for its caller before another may retry it.
    #[arg(long, env = "OUTBOX_LEASE_MS", default_value_t = 10_000)]
    pub outbox_lease_ms: u64,

    /// Failed redemptions / checks (unknown link, wrong provider, malformed secret) one
    /// caller may make per window before RESOURCE_EXHAUSTED.
    #[arg(long, env = "FAILED_REDEMPTIONS_LIMIT", default_value_t = 10)]
    pub failed_redemptions_limit: u32,

    /// Window of --failed-redemptions-limit, in seconds.
    #[arg(long, env = "FAILED_REDEMPTIONS_WINDOW_SECS", default_value_t = 60)]
    pub failed_redemptions_window_secs: u64,

    /// Metadata key naming the end user's address, set by the BFF in front of this
    /// service (first comma-separated value). Without it the peer address is used.
    #[arg(long, env = "CALLER_ADDRESS_HEADER", default_value = "x-forwarded-for")]
    pub caller_address_header: String,

    /// Handler deadline of every RPC.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// RPCs handled at once across all connections (beyond: queued).
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,

    /// HTTP/2 streams per connection.
    #[arg(long, env = "MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// Largest request or response message, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// HTTP/2 keepalive ping interval, in seconds.
    #[arg(long, env = "KEEPALIVE_SECS", default_value_t = 30)]
    pub keepalive_secs: u64,

    /// SQLite busy timeout, in milliseconds.
    #[arg(long, env = "SQLITE_BUSY_TIMEOUT_MS", default_value_t = 5_000)]
    pub sqlite_busy_timeout_ms: u64,

    /// How often health probes SQLite and conversation-service.
    #[arg(long, env = "HEALTH_INTERVAL_MS", default_value_t = 2_000)]
    pub health_interval_ms: u64,
}

impl Config {
    pub fn inline_wait(&self) -> Duration {
        Duration::from_millis(self.inline_wait_ms)
    }
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }
    pub fn outbox_retry(&self) -> Duration {
        Duration::from_millis(self.outbox_retry_ms.max(1))
    }
    pub fn outbox_retry_max(&self) -> Duration {
        Duration::from_millis(self.outbox_retry_max_ms.max(self.outbox_retry_ms).max(1))
    }
    pub fn outbox_poll(&self) -> Duration {
        Duration::from_millis(self.outbox_poll_ms.max(10))
    }
    pub fn outbox_lease(&self) -> Duration {
        Duration::from_millis(self.outbox_lease_ms.max(1))
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms.max(10))
    }
}
