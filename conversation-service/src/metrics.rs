//! conversation-service's own metrics, named once here and called from one line where
//! each thing happens. Per-RPC metrics come from `chat_common::rpc`; without
//! `METRICS_ADDR` all of these are no-ops.

use std::time::Duration;

use sqlx::PgPool;

/// Gives every metric below its `# HELP` line and puts each counter at 0 before its first
/// event, so alerts on their rates have a series from the start. Called once the
/// recorder is installed.
pub fn describe() {
    use chat_common::metrics::{counter, gauge, histogram};
    counter(
        "chat_retention_messages_deleted_total",
        "Messages of long-closed conversations deleted by retention.",
        &[],
    );
    gauge(
        "chat_streams_open",
        "Streams open on this replica, by kind.",
    );
    counter(
        "chat_stream_lagged_total",
        "Streams whose wake-up queue overflowed; each catches up from the table.",
        &[],
    );
    counter(
        "chat_stream_resyncs_total",
        "Streams told to catch up from the table, by cause.",
        &[&[("cause", "lagged")], &[("cause", "listener")]],
    );
    counter(
        "chat_stream_message_reads_total",
        "Reads of messages by streams: shared by a conversation's streams, or a stream's own.",
        &[&[("source", "shared")], &[("source", "own")]],
    );
    counter(
        "chat_listener_reconnects_total",
        "Times the LISTEN connection was re-established after it was lost.",
        &[],
    );
    gauge(
        "chat_listener_lag_seconds",
        "How late the listener's last probe notice arrived.",
    );
    gauge(
        "chat_notify_queue_usage",
        "Fraction of PostgreSQL's notification queue in use (shared by the cluster).",
    );
    histogram(
        "chat_send_batch_size",
        "Messages written by one SendMessage transaction.",
    );
    histogram(
        "chat_send_write_seconds",
        "Time to write one SendMessage batch.",
    );
    counter(
        "chat_send_replanned_total",
        "SendMessage batches that found a row changed when written and were planned again \
         under the row locks.",
        &[],
    );
    gauge(
        "chat_db_pool_connections",
        "Connections of the query pool, by state.",
    );
    gauge(
        "chat_db_pool_max_connections",
        "Maximum connections of the query pool.",
    );
    gauge(
        "chat_db_writer_pool_connections",
        "Connections of the SendMessage and CreateConversation writer pools, by state.",
    );
    gauge(
        "chat_db_writer_pool_max_connections",
        "Maximum connections of a writer pool.",
    );
}

/// Read at each scrape: open streams by kind.
#[allow(clippy::cast_precision_loss)]
pub fn sample_streams(conversation: usize, inbox: usize) {
    metrics::gauge!("chat_streams_open", "kind" => "conversation").set(conversation as f64);
    metrics::gauge!("chat_streams_open", "kind" => "inbox").set(inbox as f64);
}

/// A stream's wake-up queue overflowed: it is lagging and will catch up from the table.
pub fn stream_lagged() {
    metrics::counter!("chat_stream_lagged_total").increment(1);
}

/// Streams told to catch up from the table; `cause` is `lagged` or `listener` (the
/// LISTEN connection came back).
pub fn streams_resynced(cause: &'static str, streams: u64) {
    metrics::counter!("chat_stream_resyncs_total", "cause" => cause).increment(streams);
}

/// A stream task read messages from the table: `shared` for a read made once for all
/// the streams of a conversation in this process, `own` for a stream's own catch-up.
pub fn stream_message_read(shared: bool) {
    let source = if shared { "shared" } else { "own" };
    metrics::counter!("chat_stream_message_reads_total", "source" => source).increment(1);
}

/// The LISTEN connection was re-established after it was lost.
pub fn listener_reconnected() {
    metrics::counter!("chat_listener_reconnects_total").increment(1);
}

/// The listener's probe arrived `lag` after it was sent: how far behind the notices it
/// reads are.
pub fn listener_lag(lag: Duration) {
    metrics::gauge!("chat_listener_lag_seconds").set(lag.as_secs_f64());
}

/// The fraction of PostgreSQL's notification queue in use (shared by the whole cluster;
/// NOTIFY, and so every send, fails when it is full), read with each listener check.
pub fn notify_queue_usage(fraction: f64) {
    metrics::gauge!("chat_notify_queue_usage").set(fraction);
}

/// One SendMessage batch written: its size and how long writing it took.
pub fn send_batch(messages: usize, took: Duration) {
    #[allow(clippy::cast_precision_loss)]
    metrics::histogram!("chat_send_batch_size").record(messages as f64);
    metrics::histogram!("chat_send_write_seconds").record(took.as_secs_f64());
}

/// A SendMessage batch planned on rows read without a lock found one changed (or a key
/// taken) when written: it wrote nothing and is planned again under the row locks.
pub fn send_replanned() {
    metrics::counter!("chat_send_replanned_total").increment(1);
}

/// Read at each scrape: the query pool's connections in use and idle.
pub fn sample_pool(pool: &PgPool) {
    let (in_use, idle, max) = connections(pool, 0);
    metrics::gauge!("chat_db_pool_connections", "state" => "in_use").set(in_use);
    metrics::gauge!("chat_db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("chat_db_pool_max_connections").set(max);
}

/// Read at each scrape: a writer pool's connections (`send`: SendMessage's, `create`:
/// CreateConversation's). `kept`: out of the pool, idle between batches, held by the
/// writers (`store/kept.rs`); `in_use` does not count them.
pub fn sample_writer_pool(name: &'static str, pool: &PgPool, kept: usize) {
    let (in_use, idle, max) = connections(pool, kept);
    let gauge = |state: &'static str, value: f64| {
        metrics::gauge!("chat_db_writer_pool_connections", "pool" => name, "state" => state)
            .set(value);
    };
    gauge("in_use", in_use);
    gauge("idle", idle);
    #[allow(clippy::cast_precision_loss)]
    gauge("kept", kept as f64);
    metrics::gauge!("chat_db_writer_pool_max_connections", "pool" => name).set(max);
}

/// In use (out of the pool and not `kept`), idle in the pool, and the pool's maximum.
fn connections(pool: &PgPool, kept: usize) -> (f64, f64, f64) {
    let idle = pool.num_idle();
    let out = usize::try_from(pool.size())
        .unwrap_or(usize::MAX)
        .saturating_sub(idle);
    #[allow(clippy::cast_precision_loss)]
    (
        out.saturating_sub(kept) as f64,
        idle as f64,
        f64::from(pool.options().get_max_connections()),
    )
}

/// Messages retention deleted.
pub fn retention_deleted(messages: u64) {
    metrics::counter!("chat_retention_messages_deleted_total").increment(messages);
}
