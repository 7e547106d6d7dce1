//! Group commit on the SQLite thread. Under `synchronous=FULL` every COMMIT is an fsync,
//! so one transaction per call caps the whole service at the disk's fsync rate. Instead
//! the calls waiting in the queue run together in one `BEGIN IMMEDIATE` transaction, each
//! inside its own SAVEPOINT: a call that fails is undone alone, and every caller hears its
//! result only after the COMMIT (or hears that the COMMIT failed).
//!
//! The calls decide (their own queries and checks); this module only carries out what
//! each decided: [`Ran`] is a call's verdict, [`step`] what the transaction does with it.

use std::{
    panic::AssertUnwindSafe,
    sync::atomic::{AtomicU64, Ordering},
};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::{
    error::{Error, StoreResultExt},
    metrics,
};

/// Most calls in one transaction; more wait for the next one.
pub(super) const MAX_GROUP: usize = 256;

/// Tells a kept call's caller how the group's COMMIT went.
pub(super) type Settle = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// A call's verdict after running inside its savepoint.
pub(super) enum Ran {
    /// Keep its writes; tell the caller once the group's COMMIT has an outcome.
    Kept(Settle),
    /// Undo its writes; the caller can hear its error at once (nothing was written).
    Failed {
        /// The connection is unusable (I/O error, corruption): the group stops here.
        broken: bool,
        answer: Box<dyn FnOnce() + Send>,
    },
}

/// A queued call: run it in the open transaction, or refuse it unrun.
pub(super) trait Work: Send {
    fn run(self: Box<Self>, conn: &Connection) -> Ran;
    fn refuse(self: Box<Self>, error: Error);
}

/// A closure over the connection and the channel its caller waits on.
pub(super) struct Call<F, T> {
    pub(super) f: F,
    pub(super) done: oneshot::Sender<Result<T, Error>>,
}

impl<F, T> Work for Call<F, T>
where
    F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Ran {
        let Self { f, done } = *self;
        let started = std::time::Instant::now();
        let outcome = f(conn);
        metrics::sqlite_call(started.elapsed());
        match outcome {
            Ok(value) => Ran::Kept(Box::new(move |committed: Result<(), Error>| {
                let _ = done.send(committed.map(|()| value));
            })),
            Err(error) => Ran::Failed {
                broken: matches!(&error, Error::Store { source, .. } if is_broken(source)),
                answer: Box::new(move || {
                    let _ = done.send(Err(error));
                }),
            },
        }
    }

    fn refuse(self: Box<Self>, error: Error) {
        let _ = self.done.send(Err(error));
    }
}

/// What the transaction does after one call.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// RELEASE the savepoint: the call's writes join the group.
    Keep,
    /// ROLLBACK TO the savepoint: only this call's writes are undone.
    Undo,
    /// Roll the whole transaction back and reopen the connection; calls not yet run wait
    /// for the next group.
    Abandon,
}

pub(super) fn step(ran: &Ran) -> Step {
    match ran {
        Ran::Kept(_) => Step::Keep,
        Ran::Failed { broken: false, .. } => Step::Undo,
        Ran::Failed { broken: true, .. } => Step::Abandon,
    }
}

/// How a group ended.
pub(super) struct Ended {
    /// The connection must be closed and opened again.
    pub(super) broken: bool,
    /// Calls not run (the group was abandoned); they go first into the next group.
    pub(super) leftover: Vec<Box<dyn Work>>,
}

fn unavailable(what: &str, error: &Error) -> Error {
    Error::StoreUnavailable(format!("{what}: {error}"))
}

fn exec(conn: &Connection, sql: &'static str) -> Result<(), Error> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(|_| ())
        .context("group commit")
}

fn is_broken_error(error: &Error) -> bool {
    matches!(error, Error::Store { source, .. } if is_broken(source))
}

/// Errors after which the connection is reopened rather than reused.
pub(super) fn is_broken(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(C::SystemIoFailure | C::CannotOpen | C::NotADatabase | C::DatabaseCorrupt)
    )
}

/// Runs `works` in one transaction on `conn` and answers every caller.
pub(super) fn run(conn: &Connection, works: Vec<Box<dyn Work>>, commits: &AtomicU64) -> Ended {
    let (calls, started) = (works.len(), std::time::Instant::now());
    if let Err(error) = exec(conn, "BEGIN IMMEDIATE") {
        let broken = is_broken_error(&error);
        for work in works {
            work.refuse(unavailable("starting a transaction", &error));
        }
        return Ended {
            broken,
            leftover: Vec::new(),
        };
    }
    let mut kept: Vec<Settle> = Vec::with_capacity(works.len());
    let mut works = works.into_iter();
    let mut abandoned = false;
    for work in works.by_ref() {
        if let Err(error) = exec(conn, "SAVEPOINT call") {
            work.refuse(unavailable("opening a savepoint", &error));
            abandoned = true;
            break;
        }
        // A panicking call must not take the only database thread with it; its caller
        // hears that its channel was dropped.
        let Ok(ran) = std::panic::catch_unwind(AssertUnwindSafe(|| work.run(conn))) else {
            tracing::error!("a database call panicked; reopening the connection");
            abandoned = true;
            break;
        };
        let undone = match step(&ran) {
            Step::Keep => exec(conn, "RELEASE call"),
            Step::Undo => exec(conn, "ROLLBACK TO call").and_then(|()| exec(conn, "RELEASE call")),
            Step::Abandon => {
                abandoned = true;
                Ok(())
            }
        };
        match ran {
            Ran::Kept(answer) => kept.push(answer),
            Ran::Failed { answer, .. } => answer(),
        }
        if abandoned || undone.is_err() {
            abandoned = true;
            break;
        }
    }
    if abandoned {
        return abandon(conn, kept, works.collect());
    }
    commit(conn, kept, commits, calls, started)
}

/// Rolls the group back: the kept calls hear that it failed, the calls not run yet wait
/// for the next group on a reopened connection.
fn abandon(conn: &Connection, kept: Vec<Settle>, leftover: Vec<Box<dyn Work>>) -> Ended {
    let _ = exec(conn, "ROLLBACK");
    for answer in kept {
        answer(Err(Error::StoreUnavailable(
            "the database failed during the transaction; retry".into(),
        )));
    }
    Ended {
        broken: true,
        leftover,
    }
}

/// Commits the group and tells every kept call how that went.
fn commit(
    conn: &Connection,
    kept: Vec<Settle>,
    commits: &AtomicU64,
    calls: usize,
    started: std::time::Instant,
) -> Ended {
    let committing = std::time::Instant::now();
    match exec(conn, "COMMIT") {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            metrics::sqlite_group(calls, started.elapsed(), committing.elapsed());
            for answer in kept {
                answer(Ok(()));
            }
            Ended {
                broken: false,
                leftover: Vec::new(),
            }
        }
        Err(error) => {
            let _ = exec(conn, "ROLLBACK");
            for answer in kept {
                answer(Err(unavailable("committing", &error)));
            }
            Ended {
                broken: is_broken_error(&error),
                leftover: Vec::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Savepoints, deferred constraints and COMMIT behave in memory as in a file.
    fn temp_conn() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE t (v INTEGER NOT NULL,
                             parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
        conn
    }

    type Answer = oneshot::Receiver<Result<i64, Error>>;

    fn call<F>(f: F) -> (Box<dyn Work>, Answer)
    where
        F: FnOnce(&Connection) -> Result<i64, Error> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        (Box::new(Call { f, done }), answer)
    }

    fn insert(v: i64) -> impl FnOnce(&Connection) -> Result<i64, Error> + Send + 'static {
        move |conn| {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [v])
                .context("test insert")?;
            Ok(v)
        }
    }

    fn values(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn.prepare("SELECT v FROM t ORDER BY v").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_failing_call_is_undone_alone_and_the_group_commits_once() {
        let conn = temp_conn();
        let commits = AtomicU64::new(0);
        let (a, mut a_answer) = call(insert(1));
        let (b, mut b_answer) = call(|conn| {
            insert(2)(conn)?;
            Err(Error::TokenExhausted)
        });
        let (c, mut c_answer) = call(insert(3));
        let ended = run(&conn, vec![a, b, c], &commits);
        assert!(!ended.broken);
        assert!(ended.leftover.is_empty());
        assert_eq!(commits.load(Ordering::Relaxed), 1);
        assert_eq!(values(&conn), [1, 3]);
        assert_eq!(a_answer.try_recv().unwrap().unwrap(), 1);
        assert!(matches!(
            b_answer.try_recv().unwrap(),
            Err(Error::TokenExhausted)
        ));
        assert_eq!(c_answer.try_recv().unwrap().unwrap(), 3);
    }

    #[test]
    fn a_later_call_sees_what_an_earlier_one_wrote() {
        let conn = temp_conn();
        let commits = AtomicU64::new(0);
        let (a, _a) = call(insert(1));
        let (b, mut b_answer) = call(|conn| {
            conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .context("test count")
        });
        run(&conn, vec![a, b], &commits);
        assert_eq!(b_answer.try_recv().unwrap().unwrap(), 1);
    }

    #[test]
    fn a_failed_commit_fails_every_kept_call_and_writes_nothing() {
        let conn = temp_conn();
        let commits = AtomicU64::new(0);
        let (a, mut a_answer) = call(insert(1));
        // A deferred foreign key is checked only at COMMIT, which then fails.
        let (b, mut b_answer) = call(|conn| {
            conn.execute("INSERT INTO t (v, parent) VALUES (2, 99)", [])
                .context("test insert")?;
            Ok(2)
        });
        let ended = run(&conn, vec![a, b], &commits);
        assert!(!ended.broken);
        assert_eq!(commits.load(Ordering::Relaxed), 0);
        assert!(values(&conn).is_empty());
        assert!(matches!(
            a_answer.try_recv().unwrap(),
            Err(Error::StoreUnavailable(_))
        ));
        assert!(matches!(
            b_answer.try_recv().unwrap(),
            Err(Error::StoreUnavailable(_))
        ));
        // The connection is usable again.
        let (c, mut c_answer) = call(insert(3));
        run(&conn, vec![c], &commits);
        assert_eq!(c_answer.try_recv().unwrap().unwrap(), 3);
    }

    #[test]
    fn a_broken_connection_abandons_the_group_and_leaves_the_rest_for_the_next() {
        let conn = temp_conn();
        let commits = AtomicU64::new(0);
        let (a, mut a_answer) = call(insert(1));
        let (b, mut b_answer) = call(|_| {
            Err(Error::Store {
                context: "test",
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                    None,
                ),
            })
        });
        let (c, mut c_answer) = call(insert(3));
        let ended = run(&conn, vec![a, b, c], &commits);
        assert!(ended.broken);
        assert_eq!(ended.leftover.len(), 1, "the call after the failure waits");
        assert!(values(&conn).is_empty(), "nothing of the group is kept");
        assert!(matches!(
            a_answer.try_recv().unwrap(),
            Err(Error::StoreUnavailable(_))
        ));
        assert!(matches!(
            b_answer.try_recv().unwrap(),
            Err(Error::Store { .. })
        ));
        assert!(c_answer.try_recv().is_err(), "not answered yet");
        run(&conn, ended.leftover, &commits);
        assert_eq!(c_answer.try_recv().unwrap().unwrap(), 3);
        assert_eq!(values(&conn), [3]);
    }

    #[test]
    fn step_follows_the_verdict() {
        assert_eq!(step(&Ran::Kept(Box::new(|_| {}))), Step::Keep);
        let failed = |broken| Ran::Failed {
            broken,
            answer: Box::new(|| {}),
        };
        assert_eq!(step(&failed(false)), Step::Undo);
        assert_eq!(step(&failed(true)), Step::Abandon);
    }
}
