//! Retention: what is old enough goes, a bounded batch per call. Each batch is one
//! grouped call on the SQLite thread, so it shares a transaction with whatever else is
//! queued and never holds the writer for longer than a few milliseconds.

use rusqlite::params;

use super::thread::Store;
use crate::{
    domain::{Timestamp, to_micros},
    error::{Error, StoreResultExt},
};

/// What retention removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retained {
    /// Sessions ended before the cutoff with no call left in the outbox.
    EndedSessions,
    /// Name, email and phone of calls given up before the cutoff (the call stays, for
    /// operators).
    FailedCallContacts,
    /// Links expired or revoked before the cutoff that no session names any more.
    Links,
    /// Audit records, and finished erasures, older than the cutoff.
    AuditRecords,
    /// RedeemToken's request ids of redemptions made before the cutoff.
    RedeemRequests,
}

impl Retained {
    pub const ALL: [Self; 5] = [
        Self::EndedSessions,
        Self::FailedCallContacts,
        Self::Links,
        Self::AuditRecords,
        Self::RedeemRequests,
    ];

    /// The label of its metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::EndedSessions => "ended_sessions",
            Self::FailedCallContacts => "failed_call_contacts",
            Self::Links => "links",
            Self::AuditRecords => "audit_records",
            Self::RedeemRequests => "redeem_requests",
        }
    }

    /// One batch: `?1` the cutoff (Unix microseconds), `?2` the batch size.
    fn statements(self) -> &'static [&'static str] {
        match self {
            Self::EndedSessions => &["DELETE FROM chat_sessions WHERE session_id IN (
                 SELECT session_id FROM chat_sessions s
                 WHERE end_time < ?1
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.session_id = s.session_id)
                 LIMIT ?2)"],
            Self::FailedCallContacts => {
                &["UPDATE outbox SET name = NULL, email = NULL, phone = NULL
                 WHERE job_id IN (
                 SELECT job_id FROM outbox
                 WHERE failed_time < ?1
                   AND (name IS NOT NULL OR email IS NOT NULL OR phone IS NOT NULL)
                 LIMIT ?2)"]
            }
            Self::Links => &["DELETE FROM chat_tokens WHERE token_id IN (
                 SELECT token_id FROM chat_tokens t
                 WHERE (expire_time < ?1 OR revoke_time < ?1)
                   AND NOT EXISTS (SELECT 1 FROM chat_sessions s WHERE s.token_id = t.token_id)
                 LIMIT ?2)"],
            Self::AuditRecords => &[
                "DELETE FROM audit_records WHERE record_id IN (
                 SELECT record_id FROM audit_records WHERE time < ?1 LIMIT ?2)",
                "DELETE FROM erasures WHERE request_id IN (
                 SELECT request_id FROM erasures WHERE complete_time < ?1 LIMIT ?2)",
            ],
            Self::RedeemRequests => &["DELETE FROM redeem_requests WHERE request_id IN (
                 SELECT request_id FROM redeem_requests WHERE create_time < ?1 LIMIT ?2)"],
        }
    }
}

impl Store {
    /// Removes up to `batch` rows of `what` per statement older than `cutoff`; returns how
    /// many went.
    pub async fn sweep(
        &self,
        what: Retained,
        cutoff: Timestamp,
        batch: u32,
    ) -> Result<usize, Error> {
        self.call(move |conn| {
            let mut removed = 0;
            for sql in what.statements() {
                removed += conn
                    .prepare_cached(sql)
                    .and_then(|mut stmt| stmt.execute(params![to_micros(cutoff), i64::from(batch)]))
                    .context("sweeping old rows")?;
            }
            Ok(removed)
        })
        .await
    }
}
