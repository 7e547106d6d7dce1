//! The SQLite thread and the [`Store`] handle to it: every query runs there, never on an
//! async worker. It opens the database (directory, writer lock, pragmas, migrations),
//! reopens it after an I/O error, and runs queued calls together in group transactions.

use std::{
    collections::VecDeque,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};
use tokio::sync::{mpsc, oneshot};

use super::{
    group::{self, is_broken},
    turns::InFlight,
};
use crate::{
    error::{Error, StoreResultExt},
    metrics,
};

/// Calls waiting for the SQLite thread; beyond this, callers wait (backpressure).
const QUEUE: usize = 1024;
/// Prepared statements kept: every statement the store runs, with room to spare.
const STATEMENT_CACHE: usize = 64;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!(
            "../../../migrations/token/0001_tokens_sessions_outbox.sql"
        )),
        M::up(include_str!(
            "../../../migrations/token/0002_consistency.sql"
        )),
        M::up(include_str!("../../../migrations/token/0003_privacy.sql")),
        M::up(include_str!(
            "../../../migrations/token/0004_redeem_requests.sql"
        )),
    ])
}

enum Job {
    /// Runs in the next group transaction, inside its own savepoint.
    Grouped(Box<dyn group::Work>),
    /// Needs the connection to itself, between transactions.
    Alone(Box<dyn FnOnce(&mut Db) + Send>),
}

/// A handle to the SQLite thread. Cheap to clone; the thread ends when the last handle
/// is dropped.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Job>,
    pub(super) in_flight: InFlight,
    /// Erasures whose conversation-service part is being made right now.
    pub(super) erasing: InFlight<crate::domain::RequestId>,
    commits: Arc<AtomicU64>,
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

impl Db {
    /// The SQLite thread: takes what is queued (up to a group's worth) and runs it, the
    /// grouped calls in one transaction each time.
    fn serve(mut self, mut rx: mpsc::Receiver<Job>, commits: &AtomicU64) {
        let _ = self.conn();
        let mut pending: VecDeque<Job> = VecDeque::new();
        loop {
            if pending.is_empty() {
                match rx.blocking_recv() {
                    Some(job) => pending.push_back(job),
                    None => return,
                }
            }
            while pending.len() < group::MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => pending.push_back(job),
                    Err(_) => break,
                }
            }
            match pending.pop_front() {
                Some(Job::Alone(job)) => self.run_alone(job),
                Some(Job::Grouped(first)) => {
                    let mut works = vec![first];
                    while works.len() < group::MAX_GROUP
                        && let Some(Job::Grouped(_)) = pending.front()
                        && let Some(Job::Grouped(work)) = pending.pop_front()
                    {
                        works.push(work);
                    }
                    self.run_group(works, &mut pending, commits);
                }
                None => {}
            }
        }
    }

    fn run_alone(&mut self, job: Box<dyn FnOnce(&mut Db) + Send>) {
        // A panicking call must not take the only database thread with it.
        let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| job(self))).is_err();
        if panicked {
            tracing::error!("a database call panicked; reopening the connection");
            self.conn = None;
        }
    }

    fn run_group(
        &mut self,
        works: Vec<Box<dyn group::Work>>,
        pending: &mut VecDeque<Job>,
        commits: &AtomicU64,
    ) {
        let conn = match self.conn() {
            Ok(conn) => conn,
            Err(e) => {
                let message = match e {
                    Error::StoreUnavailable(message) => message,
                    other => other.to_string(),
                };
                for work in works {
                    work.refuse(Error::StoreUnavailable(message.clone()));
                }
                return;
            }
        };
        let ended = group::run(conn, works, commits);
        if ended.broken {
            self.conn = None;
        }
        for work in ended.leftover.into_iter().rev() {
            pending.push_front(Job::Grouped(work));
        }
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
    // secure_delete: deleted rows are overwritten with zeros, so an erased customer's
    // details do not linger in free pages (the WAL is truncated after an erasure).
    // cache_size: 64 MiB instead of SQLite's 2 MiB, so the upper levels of the session
    // and link B-trees stay in this connection's cache once the file holds millions of
    // sessions; each redemption inserts into indexes keyed by random values.
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON; \
         PRAGMA cache_size = -65536;",
    )
    .context("setting pragmas")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    migrations().to_latest(&mut conn)?;
    Ok(conn)
}

impl Store {
    /// Starts the SQLite thread and opens the database (directory, lock, migrations)
    /// before returning. A database that cannot be opened yet does not stop the start:
    /// it is logged, and retried on use and by the health probe.
    pub async fn open(path: PathBuf, busy_timeout: Duration) -> Result<Self, Error> {
        let store = Self::start(path, busy_timeout)?;
        if let Err(e) = store.probe().await {
            tracing::warn!(error = %e, "database not usable yet; will retry");
        }
        Ok(store)
    }

    /// Creates or migrates the database, and says whether that worked.
    pub async fn migrate(path: PathBuf, busy_timeout: Duration) -> Result<(), Error> {
        Self::start(path, busy_timeout)?.probe().await.map(drop)
    }

    /// Starts the SQLite thread, which tries a first open of its own.
    fn start(path: PathBuf, busy_timeout: Duration) -> Result<Self, Error> {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let commits = Arc::new(AtomicU64::new(0));
        let db = Db {
            path,
            busy_timeout,
            conn: None,
            lock: None,
        };
        let counter = Arc::clone(&commits);
        std::thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || db.serve(rx, &counter))
            .map_err(|e| Error::Internal(format!("spawning the SQLite thread: {e}")))?;
        Ok(Self {
            tx,
            in_flight: InFlight::default(),
            erasing: InFlight::default(),
            commits,
        })
    }

    /// Calls waiting for the SQLite thread right now.
    pub fn queue_len(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Write transactions committed so far (each may carry many calls).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `f` on the SQLite thread, in a savepoint of the next group transaction; the
    /// result comes back once that transaction has committed. An error from `f` undoes
    /// what `f` wrote, and only that.
    pub async fn call<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        self.send(Job::Grouped(Box::new(group::Call { f, done })))
            .await?;
        result
            .await
            .map_err(|_| Error::StoreUnavailable("the SQLite thread dropped a call".into()))?
    }

    /// Runs `f` on the SQLite thread between two group transactions, with no transaction
    /// open: for what must not see another call's uncommitted writes (a backup).
    pub(super) async fn call_alone<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        self.send(Job::Alone(Box::new(move |db: &mut Db| {
            let started = std::time::Instant::now();
            let outcome = db.conn().and_then(|conn| f(conn));
            metrics::sqlite_call(started.elapsed());
            if let Err(Error::Store { source, .. }) = &outcome
                && is_broken(source)
            {
                db.conn = None;
            }
            let _ = done.send(outcome);
        })))
        .await?;
        result
            .await
            .map_err(|_| Error::StoreUnavailable("the SQLite thread dropped a call".into()))?
    }

    async fn send(&self, job: Job) -> Result<(), Error> {
        self.tx
            .send(job)
            .await
            .map_err(|_| Error::StoreUnavailable("the SQLite thread has stopped".into()))
    }

    /// Closes the connection and opens it again, as the SQLite thread does after an I/O
    /// error; calls in flight to conversation-service are not affected. Tests use it to
    /// exercise that path on demand.
    pub async fn reopen(&self) -> Result<(), Error> {
        let (done, result) = oneshot::channel();
        self.send(Job::Alone(Box::new(move |db: &mut Db| {
            db.conn = None;
            let _ = done.send(db.conn().map(|_| ()));
        })))
        .await?;
        result
            .await
            .map_err(|_| Error::StoreUnavailable("the SQLite thread dropped a call".into()))?
    }

    /// Health probe: the database takes the write lock (every call runs in a
    /// `BEGIN IMMEDIATE` transaction) and answers a read. Returns the number of calls
    /// waiting in the outbox.
    pub async fn probe(&self) -> Result<i64, Error> {
        self.call(|conn| {
            conn.query_row(
                "SELECT count(*) AS queued FROM outbox WHERE failed_time IS NULL",
                [],
                |r| r.get("queued"),
            )
            .context("counting the outbox")
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_queued_together_share_one_transaction() {
        let dir = std::env::temp_dir().join(format!("group-test-{}", uuid::Uuid::new_v4()));
        let store = Store::start(dir.join("token.db"), std::time::Duration::from_secs(5)).unwrap();
        // Hold the thread so the next calls queue up behind it.
        let (release, held) = std::sync::mpsc::channel::<()>();
        store
            .send(Job::Alone(Box::new(move |_| {
                let _ = held.recv();
            })))
            .await
            .unwrap();
        let calls: Vec<_> = (0..100)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .call(move |conn| {
                            conn.execute(
                                "INSERT INTO chat_tokens (token_id, provider_id, secret_hash, label,
                                                          create_time, expire_time, max_uses)
                                 VALUES (?1, 'p', randomblob(32), '', 0, 0, 0)",
                                [format!("t{i}")],
                            )
                            .context("test insert")
                        })
                        .await
                })
            })
            .collect();
        let before = store.commits();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        release.send(()).unwrap();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), 1);
        }
        assert_eq!(store.commits() - before, 1, "100 queued calls, one COMMIT");
        let count = store
            .call(|conn| {
                conn.query_row("SELECT count(*) FROM chat_tokens", [], |r| {
                    r.get::<_, i64>(0)
                })
                .context("test count")
            })
            .await
            .unwrap();
        assert_eq!(count, 100);
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn upgrading_to_redeem_requests_keeps_the_last_weeks_request_ids() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrations().to_version(&mut conn, 3).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (recent, old) = (
            i64::try_from(now - 6 * 86400).unwrap() * 1_000_000,
            i64::try_from(now - 8 * 86400).unwrap() * 1_000_000,
        );
        conn.execute_batch(&format!(
            "INSERT INTO chat_tokens (token_id, provider_id, secret_hash, label, create_time,
                                      expire_time, max_uses)
             VALUES ('t', 'p', zeroblob(32), 'l', 0, 0, 0);
             INSERT INTO chat_sessions (session_id, token_id, provider_id, request_id,
                                        secret_hash, create_time)
             VALUES ('s-recent', 't', 'p', 'r-recent', randomblob(32), {recent}),
                    ('s-old', 't', 'p', 'r-old', randomblob(32), {old});"
        ))
        .unwrap();
        migrations().to_latest(&mut conn).unwrap();
        let kept: Vec<(String, String)> = conn
            .prepare("SELECT request_id, session_id FROM redeem_requests")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kept, [("r-recent".to_owned(), "s-recent".to_owned())]);
    }
}
