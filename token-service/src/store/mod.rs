//! SQLite, owned by one dedicated thread: every query runs there, never on an async
//! worker. That thread is the only writer; write transactions still open with
//! `BEGIN IMMEDIATE` so an outside reader (a backup) cannot turn them into SQLITE_BUSY.
//!
//! One process at a time: an exclusive lock on `<database>.lock` (released by the kernel
//! when the process dies, even by SIGKILL) keeps a second token-service off the file.
//!
//! If the database cannot be opened (a missing volume, a full disk, the lock held by
//! another process), calls fail with UNAVAILABLE and the next call or health probe tries
//! again.

mod admin;
mod outbox;
mod sessions;
mod stats;
mod tokens;

use std::{
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OptionalExtension, Row};
use rusqlite_migration::{M, Migrations};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

pub use outbox::{Done, OutboxCall, OutboxJob};
pub use sessions::{Identified, Redeemed, Redemption};
pub use stats::OutboxStats;

use crate::error::{Error, StoreResultExt};

/// Calls waiting for the SQLite thread; beyond this, callers wait (backpressure).
const QUEUE: usize = 1024;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!(
            "../../../migrations/token/0001_tokens_sessions_outbox.sql"
        )),
        M::up(include_str!(
            "../../../migrations/token/0002_consistency.sql"
        )),
    ])
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// A handle to the SQLite thread. Cheap to clone; the thread ends when the last handle
/// is dropped.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Job>,
    in_flight: outbox::InFlight,
}

struct Db {
    path: PathBuf,
    busy_timeout: Duration,
    conn: Option<Connection>,
    /// The writer lock, held for as long as the thread lives.
    lock: Option<std::fs::File>,
}

impl Db {
    fn conn(&mut self) -> Result<&mut Connection, Error> {
        if self.conn.is_none() {
            if self.lock.is_none() {
                self.lock = Some(lock(&self.path)?);
            }
            match open(&self.path, self.busy_timeout) {
                Ok(conn) => {
                    tracing::info!(path = %self.path.display(), "database open");
                    self.conn = Some(conn);
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot open the database; will retry");
                    return Err(e);
                }
            }
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::StoreUnavailable("database not open".into()))
    }
}

fn create_parent(path: &Path) -> Result<(), Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::StoreUnavailable(format!("creating directory {}: {e}", dir.display()))
        })?;
    }
    Ok(())
}

/// Takes the exclusive writer lock beside the database file.
fn lock(path: &Path) -> Result<std::fs::File, Error> {
    create_parent(path)?;
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::StoreUnavailable(format!("opening {}: {e}", lock_path.display())))?;
    file.try_lock().map_err(|e| {
        Error::StoreUnavailable(format!(
            "{} is held by another process (one token-service per database): {e}",
            lock_path.display()
        ))
    })?;
    Ok(file)
}

/// Opens (creating it and its directory if needed), sets the pragmas and migrates.
fn open(path: &Path, busy_timeout: Duration) -> Result<Connection, Error> {
    create_parent(path)?;
    let mut conn = Connection::open(path).context("opening the database")?;
    conn.busy_timeout(busy_timeout)
        .context("setting busy_timeout")?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .context("enabling WAL")?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::StoreUnavailable(format!(
            "journal_mode is {mode}, WAL refused"
        )));
    }
    // FULL: under NORMAL a committed redemption can vanish on power loss, making a
    // single-use link usable twice.
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .context("setting pragmas")?;
    migrations().to_latest(&mut conn)?;
    Ok(conn)
}

impl Store {
    /// Starts the SQLite thread and tries a first open; a failure is logged and retried
    /// on use rather than stopping the service.
    pub fn start(path: PathBuf, busy_timeout: Duration) -> Result<Self, Error> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || {
                let mut db = Db {
                    path,
                    busy_timeout,
                    conn: None,
                    lock: None,
                };
                let _ = db.conn();
                while let Some(job) = rx.blocking_recv() {
                    // A panicking query must not take the only database thread with it.
                    if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut db))).is_err() {
                        tracing::error!("a database call panicked; reopening the connection");
                        db.conn = None;
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("spawning the SQLite thread: {e}")))?;
        Ok(Self {
            tx,
            in_flight: outbox::InFlight::default(),
        })
    }

    /// Runs `f` on the SQLite thread with the open connection.
    pub async fn call<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |db: &mut Db| {
            let started = std::time::Instant::now();
            let outcome = db.conn().and_then(f);
            crate::metrics::sqlite_call(started.elapsed());
            if let Err(Error::Store { source, .. }) = &outcome
                && is_broken(source)
            {
                db.conn = None;
            }
            let _ = done.send(outcome);
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| Error::StoreUnavailable("the SQLite thread has stopped".into()))?;
        result
            .await
            .map_err(|_| Error::StoreUnavailable("the SQLite thread dropped a call".into()))?
    }

    /// Closes the connection and opens it again, as the SQLite thread does after an I/O
    /// error; calls in flight to conversation-service are not affected. Tests use it to
    /// exercise that path on demand.
    pub async fn reopen(&self) -> Result<(), Error> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |db: &mut Db| {
            db.conn = None;
            let _ = done.send(db.conn().map(|_| ()));
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| Error::StoreUnavailable("the SQLite thread has stopped".into()))?;
        result
            .await
            .map_err(|_| Error::StoreUnavailable("the SQLite thread dropped a call".into()))?
    }

    /// Health probe: the database answers a read and can take the write lock. Returns
    /// the number of calls waiting in the outbox.
    pub async fn probe(&self) -> Result<i64, Error> {
        self.call(|conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .context("probing the write lock")?;
            let depth = tx
                .query_row(
                    "SELECT count(*) FROM outbox WHERE failed_time IS NULL",
                    [],
                    |r| r.get(0),
                )
                .context("counting the outbox")?;
            tx.rollback().context("probing the write lock")?;
            Ok(depth)
        })
        .await
    }
}

/// Errors after which the connection is reopened rather than reused.
fn is_broken(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(C::SystemIoFailure | C::CannotOpen | C::NotADatabase | C::DatabaseCorrupt)
    )
}

/// Reads a UUID column stored as text.
fn uuid_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    let text: String = row.get(idx)?;
    Uuid::try_parse(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// `query_row` that returns `None` for no row.
fn optional<T>(result: rusqlite::Result<T>) -> rusqlite::Result<Option<T>> {
    result.optional()
}
