//! What operators do to the database: look at, retry and drop calls that conversation-service
//! refused for good, and write online backups. Like everything else here it runs on the
//! SQLite thread, so a backup is a consistent snapshot between two transactions.

use std::{path::PathBuf, time::Duration};

use rusqlite::{Connection, Row, backup::Backup, params};

use super::{
    sql::{rows, time_at},
    thread::Store,
};
use crate::{
    domain::{BackupName, CallId, FailedCall, FailedCallCursor, Timestamp, to_micros},
    error::{Error, StoreResultExt},
};

/// Database pages a backup copies per step; steps follow each other without a pause, since
/// no write can come in between on this thread.
const BACKUP_PAGES_PER_STEP: std::ffi::c_int = 256;

fn failed_call(row: &Row<'_>) -> rusqlite::Result<FailedCall> {
    Ok(FailedCall {
        call_id: row.get("job_id")?,
        session_id: row.get("session_id")?,
        kind: row.get("kind")?,
        attempts: row.get("attempts")?,
        // Both are NULL for a call given up before they were recorded.
        last_error: row
            .get::<_, Option<String>>("last_error")?
            .unwrap_or_default(),
        fail_time: time_at(row, "failed_time")?,
        create_time: time_at(row, "create_time")?,
        error_reason: row
            .get::<_, Option<String>>("error_reason")?
            .unwrap_or_default(),
    })
}

impl Store {
    /// Up to `limit` failed calls after `after`, oldest first.
    pub async fn failed_calls(
        &self,
        after: Option<FailedCallCursor>,
        limit: u32,
    ) -> Result<Vec<FailedCall>, Error> {
        self.call(move |conn| {
            // Call ids start at 1: no cursor reads from the first.
            let after = after.map_or(0, |c| c.0);
            rows(
                conn,
                "SELECT job_id, session_id, kind, attempts, last_error, failed_time, create_time,
                        error_reason
                 FROM outbox WHERE failed_time IS NOT NULL AND job_id > ?1
                 ORDER BY job_id LIMIT ?2",
                params![after, i64::from(limit)],
                failed_call,
                "listing failed calls",
            )
        })
        .await
    }

    /// Queues a failed call again, due at `now`, with a fresh attempt count.
    pub async fn retry_failed_call(&self, call_id: CallId, now: Timestamp) -> Result<(), Error> {
        self.call(move |conn| {
            let changed = conn
                .execute(
                    "UPDATE outbox SET failed_time = NULL, attempts = 0, next_attempt_time = ?2
                     WHERE job_id = ?1 AND failed_time IS NOT NULL",
                    params![call_id, to_micros(now)],
                )
                .context("retrying a failed call")?;
            if changed == 0 {
                return Err(Error::FailedCallNotFound);
            }
            Ok(())
        })
        .await
    }

    /// Deletes a failed call.
    pub async fn drop_failed_call(&self, call_id: CallId) -> Result<(), Error> {
        self.call(move |conn| {
            let changed = conn
                .execute(
                    "DELETE FROM outbox WHERE job_id = ?1 AND failed_time IS NOT NULL",
                    [call_id],
                )
                .context("dropping a failed call")?;
            if changed == 0 {
                return Err(Error::FailedCallNotFound);
            }
            Ok(())
        })
        .await
    }

    /// Copies the database to `dir/name` with SQLite's online backup API, through a
    /// `.partial` file renamed at the end, so a file with that name is always complete.
    /// On this thread no write can interleave, so the copy finishes in one pass.
    /// Returns the path and size.
    pub async fn backup(&self, dir: PathBuf, name: BackupName) -> Result<(PathBuf, u64), Error> {
        // Between group transactions: inside one, the copy would hold the group's
        // uncommitted writes.
        self.call_alone(move |conn| {
            let unavailable = |what: &str, e: std::io::Error| {
                Error::StoreUnavailable(format!("backup: {what} {}: {e}", dir.display()))
            };
            std::fs::create_dir_all(&dir).map_err(|e| unavailable("creating", e))?;
            let path = dir.join(name.as_str());
            if path.exists() {
                return Err(Error::BackupExists);
            }
            let partial = dir.join(format!("{}.partial", name.as_str()));
            let _ = std::fs::remove_file(&partial);
            {
                let mut copy = Connection::open(&partial).context("creating a backup")?;
                Backup::new(conn, &mut copy)
                    .and_then(|b| b.run_to_completion(BACKUP_PAGES_PER_STEP, Duration::ZERO, None))
                    .context("writing a backup")?;
                // One self-contained file: no -wal/-shm beside it when it is opened.
                copy.pragma_update(None, "journal_mode", "DELETE")
                    .context("finishing a backup")?;
            }
            let size = std::fs::metadata(&partial)
                .map_err(|e| unavailable("reading the backup in", e))?
                .len();
            std::fs::rename(&partial, &path)
                .map_err(|e| unavailable("renaming the backup in", e))?;
            Ok((path, size))
        })
        .await
    }
}
