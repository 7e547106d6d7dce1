//! token-service's own metrics, named once here and called from one line where each
//! thing happens. Per-RPC metrics (server and client side) come from `chat_common::rpc`;
//! without `METRICS_ADDR` all of these are no-ops.

use std::time::Duration;

/// Gives every metric below its `# HELP` line and puts each counter at 0 before its first
/// event, so alerts on their rates have a series from the start. Called once the
/// recorder is installed.
pub fn describe() {
    use chat_common::metrics::{counter, gauge, histogram};
    gauge(
        "token_outbox_depth",
        "Calls to conversation-service waiting in the outbox.",
    );
    gauge(
        "token_outbox_oldest_pending_age_seconds",
        "Age of the oldest call waiting in the outbox.",
    );
    gauge(
        "token_outbox_failed_jobs",
        "Outbox calls that failed for good and wait for an operator.",
    );
    counter(
        "token_failed_guesses_total",
        "Failed guesses (unknown link, wrong provider, malformed secret) counted against their caller.",
        &[],
    );
    counter(
        "token_failed_guess_refusals_total",
        "Calls refused RESOURCE_EXHAUSTED for too many failed guesses.",
        &[],
    );
    histogram(
        "token_sqlite_call_seconds",
        "Time of one call's statements on the SQLite thread.",
    );
    histogram(
        "token_sqlite_group_calls",
        "Calls carried by one group commit.",
    );
    histogram(
        "token_sqlite_group_seconds",
        "Time of one group commit from BEGIN IMMEDIATE to the end of its COMMIT.",
    );
    histogram(
        "token_sqlite_commit_seconds",
        "Time of the COMMIT of one group alone.",
    );
    gauge(
        "token_sqlite_queue_length",
        "Calls waiting for the SQLite thread.",
    );
    gauge(
        "token_erasures_pending",
        "Erasures whose conversation-service part is still owed.",
    );
    counter(
        "token_retention_removed_total",
        "Rows (or contact details) the retention sweeper removed, by kind.",
        &[
            &[("kind", "ended_sessions")],
            &[("kind", "failed_call_contacts")],
            &[("kind", "links")],
            &[("kind", "audit_records")],
        ],
    );
}

/// Read on every health probe: calls waiting in the outbox, the age of the oldest in
/// seconds, and calls refused for good.
#[allow(clippy::cast_precision_loss)]
pub fn outbox(pending: i64, oldest_pending_seconds: f64, failed: i64) {
    metrics::gauge!("token_outbox_depth").set(pending as f64);
    metrics::gauge!("token_outbox_oldest_pending_age_seconds").set(oldest_pending_seconds);
    metrics::gauge!("token_outbox_failed_jobs").set(failed as f64);
}

/// Read on every health probe: erasures whose conversation-service part is still owed.
#[allow(clippy::cast_precision_loss)]
pub fn erasures_pending(pending: i64) {
    metrics::gauge!("token_erasures_pending").set(pending as f64);
}

/// A failed guess (unknown link, wrong provider, malformed secret) counted against its
/// caller.
pub fn failed_guess() {
    metrics::counter!("token_failed_guesses_total").increment(1);
}

/// A caller refused with RESOURCE_EXHAUSTED for too many failed guesses.
pub fn failed_guess_refused() {
    metrics::counter!("token_failed_guess_refusals_total").increment(1);
}

/// One call on the SQLite thread: its statements (the COMMIT is shared by its group).
pub fn sqlite_call(took: Duration) {
    metrics::histogram!("token_sqlite_call_seconds").record(took.as_secs_f64());
}

/// One group commit: how many calls it carried, how long the transaction took from
/// BEGIN to the end of COMMIT, and the COMMIT alone (its fsync).
#[allow(clippy::cast_precision_loss)]
pub fn sqlite_group(calls: usize, took: Duration, commit: Duration) {
    metrics::histogram!("token_sqlite_group_calls").record(calls as f64);
    metrics::histogram!("token_sqlite_group_seconds").record(took.as_secs_f64());
    metrics::histogram!("token_sqlite_commit_seconds").record(commit.as_secs_f64());
}

/// Read at each scrape: calls waiting for the SQLite thread.
#[allow(clippy::cast_precision_loss)]
pub fn sqlite_queue(length: usize) {
    metrics::gauge!("token_sqlite_queue_length").set(length as f64);
}

/// Rows (or contact details) the retention sweeper removed, by what they were.
pub fn retention_removed(what: &'static str, rows: usize) {
    metrics::counter!("token_retention_removed_total", "kind" => what).increment(rows as u64);
}
