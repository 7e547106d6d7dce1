//! SendMessage's writers keep their connection between batches. A connection handed back
//! to an sqlx pool is pinged on the way in (a round trip per batch, on the writer thread
//! and in PostgreSQL); one kept here goes straight to the next batch. The kept ones still
//! count against the writer pool, which opened them and gets them back after
//! [`RETURN_AFTER`] (so its lifetime rules apply), after any failed batch, and at
//! shutdown ([`Kept::close`]).

use std::{
    ops::{Deref, DerefMut},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};

/// A connection idle this long is pinged before a batch uses it, whether it comes from
/// the pool (its `before_acquire`, in `startup.rs`) or from [`Kept`]. One used more
/// recently is trusted: the ping was an eighth of a batch's time. A connection that died
/// within this time fails its next batch with UNAVAILABLE.
pub const WRITER_PING_AFTER: Duration = Duration::from_secs(1);

/// A connection is handed back to the pool once it has been out of it this long.
pub const RETURN_AFTER: Duration = Duration::from_secs(60);

/// A writer's connection for one batch: [`Kept::take`] it, [`Kept::keep`] it after a
/// batch that succeeded, drop it after one that failed.
pub struct Writer {
    connection: PoolConnection<Postgres>,
    /// When it was taken out of the pool.
    out_since: Instant,
}

impl Deref for Writer {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.connection
    }
}

impl DerefMut for Writer {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.connection
    }
}

struct Idle {
    writer: Writer,
    since: Instant,
}

/// The writers' idle connections; `None` once closed.
pub struct Kept {
    pool: PgPool,
    idle: Mutex<Option<Vec<Idle>>>,
    /// Idle connections kept at most. Below the pool's size, so a caller waiting on the
    /// pool is always served by a connection that is handed back.
    at_most: usize,
}

impl Kept {
    pub fn new(pool: PgPool, at_most: usize) -> Self {
        let below_pool = usize::try_from(pool.options().get_max_connections().saturating_sub(1))
            .unwrap_or(usize::MAX);
        Self {
            pool,
            idle: Mutex::new(Some(Vec::new())),
            at_most: at_most.min(below_pool),
        }
    }

    /// The most recently kept connection that is alive, else one from the pool.
    pub async fn take(&self) -> sqlx::Result<Writer> {
        while let Some(Idle { mut writer, since }) = self.pop() {
            if since.elapsed() < WRITER_PING_AFTER {
                return Ok(writer);
            }
            match sqlx::Connection::ping(&mut *writer).await {
                Ok(()) => return Ok(writer),
                Err(error) => {
                    tracing::debug!(%error, "a kept writer connection is dead; dropping it");
                    writer.connection.close_on_drop();
                }
            }
        }
        let connection = self.pool.acquire().await?;
        Ok(Writer {
            connection,
            out_since: Instant::now(),
        })
    }

    /// Keeps a connection whose batch succeeded for the next one; it goes back to the
    /// pool instead when enough are kept, when it has been out long, or after close.
    pub fn keep(&self, writer: Writer) {
        if writer.out_since.elapsed() >= RETURN_AFTER {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(idle) = idle.as_mut()
            && idle.len() < self.at_most
        {
            idle.push(Idle {
                writer,
                since: Instant::now(),
            });
        }
    }

    /// Hands every kept connection back to the pool and keeps none from now on: the
    /// pool's `close` waits for them.
    pub fn close(&self) {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(idle);
    }

    /// Connections kept now (idle between batches).
    pub fn count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, Vec::len)
    }

    fn pop(&self) -> Option<Idle> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()?
            .pop()
    }
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::PgPoolOptions;

    use super::*;

    /// A pool of `size` on the local PostgreSQL; these tests create nothing in it.
    async fn pool(size: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(size)
            .connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .expect("PostgreSQL must run at 127.0.0.1:5432 (see README)")
    }

    async fn backend(writer: &mut Writer) -> i32 {
        let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
            .fetch_one(&mut **writer)
            .await
            .unwrap();
        pid
    }

    /// The pool's idle count, once connections handed back (a task sqlx spawns, which
    /// pings them first) have arrived.
    async fn idle_in(pool: &PgPool) -> usize {
        tokio::time::sleep(Duration::from_millis(100)).await;
        pool.num_idle()
    }

    #[tokio::test]
    async fn a_kept_connection_serves_the_next_batch_without_going_back_to_the_pool() {
        let pool = pool(4).await;
        let kept = Kept::new(pool.clone(), 2);
        let mut writer = kept.take().await.unwrap();
        let first = backend(&mut writer).await;
        kept.keep(writer);
        assert_eq!(idle_in(&pool).await, 0, "not handed back, so not pinged");
        let mut writer = kept.take().await.unwrap();
        assert_eq!(backend(&mut writer).await, first);
        assert_eq!(pool.size(), 1);
    }

    #[tokio::test]
    async fn past_at_most_and_after_close_connections_go_back_to_the_pool() {
        let pool = pool(4).await;
        let kept = Kept::new(pool.clone(), 2);
        let mut writers = Vec::new();
        for _ in 0..4 {
            writers.push(kept.take().await.unwrap());
        }
        let last = writers.pop().unwrap();
        for writer in writers {
            kept.keep(writer);
        }
        assert_eq!(idle_in(&pool).await, 1, "two kept, the third handed back");
        kept.close();
        assert_eq!(idle_in(&pool).await, 3, "close hands the kept ones back");
        kept.keep(last);
        assert_eq!(idle_in(&pool).await, 4, "none is kept after close");
        tokio::time::timeout(Duration::from_secs(5), pool.close())
            .await
            .expect("the pool closes: it has every connection back");
    }

    #[tokio::test]
    async fn at_most_stays_below_the_pool_size() {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy("postgres://postgres@127.0.0.1:5432/postgres")
            .unwrap();
        assert_eq!(Kept::new(pool, 8).at_most, 1);
    }
}
