//! The audit trail: administrative calls and what the service did by itself, newest
//! first. Kept for the audit retention (a year by default), then swept.

use rusqlite::params;

use super::{
    sql::{rows, time_at},
    thread::Store,
};
use crate::{
    domain::{AuditEntry, AuditRecord, Timestamp, to_micros},
    error::{Error, StoreResultExt},
};

impl Store {
    /// Appends a record.
    pub async fn audit(&self, entry: AuditEntry, now: Timestamp) -> Result<(), Error> {
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO audit_records (caller, method, target, time, result, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    entry.caller,
                    entry.method,
                    entry.target,
                    to_micros(now),
                    entry.result,
                    entry.reason
                ],
            )
            .context("writing an audit record")?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` records older than the record `before` (all when `None`), newest
    /// first.
    pub async fn audit_records(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, Error> {
        self.call(move |conn| {
            rows(
                conn,
                "SELECT record_id, caller, method, target, time, result, reason
                 FROM audit_records WHERE record_id < ?1
                 ORDER BY record_id DESC LIMIT ?2",
                params![before.unwrap_or(i64::MAX), i64::from(limit)],
                |row| {
                    Ok(AuditRecord {
                        record_id: row.get("record_id")?,
                        time: time_at(row, "time")?,
                        entry: AuditEntry {
                            caller: row.get("caller")?,
                            method: row.get("method")?,
                            target: row.get("target")?,
                            result: row.get("result")?,
                            reason: row.get("reason")?,
                        },
                    })
                },
                "listing audit records",
            )
        })
        .await
    }
}
