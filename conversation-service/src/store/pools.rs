//! The store's three connection pools and how each is configured: queries, SendMessage's
//! writers and CreateConversation's writers. All connect on first use, so the service
//! starts (NOT_SERVING) while PostgreSQL is down.

use std::{sync::Arc, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{
    create_queue,
    handle::Store,
    kept::{self, WRITER_PING_AFTER},
    send::{BATCH_LOCK_TIMEOUT, STATEMENT_TIMEOUT},
};

/// What the deployment decides about the store's connections.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub options: PgConnectOptions,
    /// Connections for queries (reads, reads and updates of one conversation).
    pub size: u32,
    pub acquire_timeout: Duration,
    /// SendMessage's writer tasks.
    pub send_writers: usize,
}

impl Store {
    /// Builds the pools (they connect on first use) and starts CreateConversation's
    /// writer tasks, so it must run within Tokio.
    pub fn connect(settings: &PoolSettings) -> Self {
        let pools = Pools::new(settings);
        Self {
            creates: create_queue::CreateQueue::start(pools.create.clone()),
            writers: Arc::new(kept::Kept::new(pools.send.clone(), settings.send_writers)),
            known: Arc::default(),
            writer_pools: Arc::new((pools.send, pools.create)),
            pool: pools.query,
        }
    }
}

struct Pools {
    pub query: PgPool,
    pub send: PgPool,
    pub create: PgPool,
}

impl Pools {
    fn new(settings: &PoolSettings) -> Self {
        // SendMessage's writers: one connection each, and as many again for a busy
        // batch's conversations written one by one (one locked elsewhere may hold a
        // connection for LOCK_TIMEOUT).
        let send = settings.send_writers.max(1).saturating_mul(2);
        let send = u32::try_from(send).unwrap_or(u32::MAX);
        let options = no_jit(&settings.options);
        Self {
            query: lazy(settings, settings.size.max(1)).connect_lazy_with(query_options(&options)),
            send: writer_pool(lazy(settings, send), send_options(&options)),
            create: lazy(settings, CREATE_CONNECTIONS).connect_lazy_with(create_options(&options)),
        }
    }
}

fn lazy(settings: &PoolSettings, max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(settings.acquire_timeout)
}

/// SendMessage's writers keep their connections between batches (`kept.rs`) and take one
/// from this pool only when none is kept: one used within [`WRITER_PING_AFTER`] is handed
/// out without a ping, as a kept one is.
fn writer_pool(pool: PgPoolOptions, options: PgConnectOptions) -> PgPool {
    pool.test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= WRITER_PING_AFTER {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options)
}

/// Every pool's sessions: no JIT compilation. Each statement here reads or writes a few
/// rows through indexes, and compiling one takes longer than running it; but PostgreSQL
/// decides from the planner's cost, and an estimate far off (a one-row table never
/// analyzed is taken for thousands of rows) had the inbox settling compile for 200 ms on
/// every run.
fn no_jit(options: &PgConnectOptions) -> PgConnectOptions {
    options.clone().options([("jit", "off")])
}

/// The connection options of the query pool: no parallel plans. A request is one
/// backend's work, sized to stop early (the walks of ListConversations and
/// SearchMessages): a parallel plan starts two more processes that each read ahead in
/// their own part of the order, more work in all, and takes the cores other requests are
/// waiting for. PostgreSQL's parallel workers are also a small pool every session shares.
fn query_options(options: &PgConnectOptions) -> PgConnectOptions {
    options
        .clone()
        .options([("max_parallel_workers_per_gather", "0")])
}

/// The connection options of SendMessage's writers: the session starts with their lock
/// and statement timeouts set, so a batch spends no round trip on them.
fn send_options(options: &PgConnectOptions) -> PgConnectOptions {
    options.clone().options([
        ("lock_timeout", BATCH_LOCK_TIMEOUT),
        ("statement_timeout", STATEMENT_TIMEOUT),
    ])
}

/// The connection options of CreateConversation's writers: each statement is planned for
/// the arrays it is given. A batch runs each statement once, so planning costs little,
/// and a plan cached while `conversations` was nearly empty (a fresh deployment) would
/// otherwise keep scanning the whole table until autovacuum's first ANALYZE.
fn create_options(options: &PgConnectOptions) -> PgConnectOptions {
    options
        .clone()
        .options([("plan_cache_mode", "force_custom_plan")])
}

/// Connections CreateConversation's writers use, one per writer.
const CREATE_CONNECTIONS: u32 = create_queue::WRITERS as u32;
