//! The Application: binds first (port 0 in tests), wires store, realtime and gRPC
//! services, serves until SIGTERM/SIGINT or a programmatic shutdown, then stops streams
//! within a hard deadline. Health: `""` is liveness, `chat.v1.ConversationService`
//! readiness (see `chat_common::health`).

use std::{
    net::SocketAddr,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use chat_common::{
    health::Probes, metrics::MetricsListener, rpc::ServerLayer, seal::SealKey, security::Security,
    server::OversizeLayer,
};
use chat_proto::v1::conversation_service_server::ConversationServiceServer;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, service::interceptor::InterceptedService};

use crate::{
    config::Config,
    domain::PageTokens,
    grpc::ConversationApi,
    realtime::{Hub, run_listener, streams::StreamContext},
    store::{self, SendQueue, Store},
};

pub const SERVICE_NAME: &str = "chat.v1.ConversationService";
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/conversation");

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics: Option<MetricsListener>,
    config: Config,
    options: PgConnectOptions,
    pool: PgPool,
    hub: Arc<Hub>,
    migrated: Arc<AtomicBool>,
    security: Security,
    shutdown: CancellationToken,
}

impl Application {
    /// Binds the listen address and prepares the pool. Migrations are tried once here;
    /// when PostgreSQL is not reachable yet the service still starts, reports
    /// NOT_SERVING, and keeps retrying in the background.
    ///
    /// # Errors
    /// When the address cannot be bound or the database URL cannot be parsed.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let security = Security::load(&config.security)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let metrics = match config.telemetry.metrics_addr {
            Some(addr) => Some(
                MetricsListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics address {addr}"))?,
            ),
            None => None,
        };
        let options = connect_options(&config)?;
        let pool = lazy_pool(&config, config.db_pool_size.max(1), options.clone());
        let migrated = Arc::new(AtomicBool::new(false));
        match prepare_schema(&pool, config.migrate_on_start).await {
            Ok(()) => migrated.store(true, Ordering::Release),
            Err(error) => tracing::warn!(%error, "database not ready; will keep retrying"),
        }
        let hub = Hub::new(config.max_streams, config.stream_queue);
        tracing::info!(%local_addr, "bound");
        Ok(Self {
            listener,
            local_addr,
            metrics,
            config,
            options,
            pool,
            hub,
            migrated,
            security,
            shutdown: CancellationToken::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `GET /metrics` is served, when `METRICS_ADDR` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.local_addr().ok())
    }

    /// Cancelling it stops the service as SIGTERM would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The fan-out hub (its `open_streams()` is the number of open streams).
    pub fn hub(&self) -> Arc<Hub> {
        Arc::clone(&self.hub)
    }

    /// Serves until SIGTERM/SIGINT or the shutdown token. Streams are told to resume
    /// elsewhere at once; unary calls get `shutdown_grace` to finish.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            local_addr,
            metrics,
            config,
            options,
            pool,
            hub,
            migrated,
            security,
            shutdown,
        } = self;
        // SendMessage's writers have connections of their own: one each, and as many again
        // for a busy batch's conversations written one by one (one locked elsewhere may
        // hold a connection for LOCK_TIMEOUT).
        let writer_connections = config.send_writers.max(1).saturating_mul(2);
        let writer = writer_pool(
            lazy_pool_options(
                &config,
                u32::try_from(writer_connections).unwrap_or(u32::MAX),
            ),
            store::send_options(&options),
        );
        let creates = lazy_pool(
            &config,
            store::CREATE_CONNECTIONS,
            store::create_options(&options),
        );
        let store = Store::new(
            pool.clone(),
            writer.clone(),
            config.send_writers,
            creates.clone(),
        );
        let writers = store.clone();
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let probes = Probes::new(reporter, &[SERVICE_NAME]).await;

        let background = CancellationToken::new();
        let listener_task = tokio::spawn(run_listener(
            options,
            Arc::clone(&hub),
            config.listener_lag_limit,
            background.clone(),
        ));
        tokio::spawn(watch_health(
            pool.clone(),
            Arc::clone(&hub),
            Arc::clone(&migrated),
            config.migrate_on_start,
            probes.clone(),
            background.clone(),
        ));
        tokio::spawn(chat_common::shutdown::drain_on_signal(
            shutdown.clone(),
            probes.clone(),
            config.drain.drain_delay,
        ));
        if let Some(metrics) = metrics {
            let (pool, hub) = (pool.clone(), Arc::clone(&hub));
            let (store, writer, creates) = (store.clone(), writer.clone(), creates.clone());
            let sample = move || {
                crate::metrics::sample_pool(&pool);
                crate::metrics::sample_writer_pool("send", &writer, store.kept_writers());
                crate::metrics::sample_writer_pool("create", &creates, 0);
                let (conversation, inbox) = hub.open_by_kind();
                crate::metrics::sample_streams(conversation, inbox);
            };
            tokio::spawn(metrics.serve(sample, probes, background.clone()));
        }

        let sender = SendQueue::start(store.clone(), config.send_writers, config.send_batch_max)
            .context("starting the SendMessage writers")?;
        let streams = StreamContext {
            store: store.clone(),
            hub: Arc::clone(&hub),
            heartbeat: config.heartbeat_interval,
            shutdown: shutdown.clone(),
            catch_up: Arc::new(tokio::sync::Semaphore::new(catch_up_slots(
                config.db_pool_size,
            ))),
        };
        let pages = PageTokens::new(page_token_key(config.page_token_key.as_deref())?);
        let api = ConversationServiceServer::new(ConversationApi::new(
            store, sender, hub, streams, pages,
        ))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes.max(1024 * 1024));
        let ready = Arc::clone(&migrated);
        let api = InterceptedService::new(api, move |request: Request<()>| {
            if ready.load(Ordering::Acquire) {
                Ok(request)
            } else {
                Err(Status::unavailable(
                    "starting: the database is not ready yet",
                ))
            }
        });
        let (reflection_v1, reflection_v1alpha) =
            chat_common::reflection::services(chat_proto::FILE_DESCRIPTOR_SET, &[SERVICE_NAME])?;

        let serve = config
            .connections
            .server()
            .timeout(config.request_timeout)
            .layer(ServerLayer::new(
                chat_proto::FILE_DESCRIPTOR_SET,
                Some(config.request_timeout),
            ))
            // Inside the RPC layer, so its logs and metrics see RESOURCE_EXHAUSTED.
            .layer(OversizeLayer::new(chat_common::error::DOMAIN))
            .max_concurrent_streams(config.max_concurrent_streams)
            .layer(security.layer())
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api)
            // Our own listener (bound in build) sets TCP_NODELAY itself (see chat_common::tls).
            .serve_with_incoming_shutdown(
                config.connections.handshake_deadline(security.incoming(
                    listener,
                    config.connections.keepalive,
                    shutdown.clone(),
                )),
                shutdown.clone().cancelled_owned(),
            );
        tracing::info!(%local_addr, "serving");
        tokio::pin!(serve);
        let served = tokio::select! {
            served = &mut serve => served,
            () = shutdown.cancelled() => {
                tracing::info!(grace = ?config.shutdown_grace, "shutting down");
                match tokio::time::timeout(config.shutdown_grace, &mut serve).await {
                    Ok(served) => served,
                    Err(_) => {
                        tracing::warn!("grace period over; closing remaining connections");
                        Ok(())
                    }
                }
            }
        };
        background.cancel();
        let _ = listener_task.await;
        pool.close().await;
        writers.release_writers();
        writer.close().await;
        creates.close().await;
        tracing::info!("stopped");
        served.context("gRPC server failed")
    }
}

/// A pool that connects on first use (the service starts while PostgreSQL is down).
fn lazy_pool(config: &Config, max_connections: u32, options: PgConnectOptions) -> PgPool {
    lazy_pool_options(config, max_connections).connect_lazy_with(options)
}

fn lazy_pool_options(config: &Config, max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(config.db_acquire_timeout)
}

/// SendMessage's writers keep their connections between batches (`store/kept.rs`) and
/// take one from this pool only when none is kept: one used within
/// [`store::WRITER_PING_AFTER`] is handed out without a ping, as a kept one is.
fn writer_pool(pool: PgPoolOptions, options: PgConnectOptions) -> PgPool {
    pool.test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= store::WRITER_PING_AFTER {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options)
}

/// Catch-up reads in flight at once: a quarter of the pool, so unary calls keep the rest.
fn catch_up_slots(pool_size: u32) -> usize {
    usize::try_from(pool_size / 4).unwrap_or(1).max(1)
}

/// The configured page token key, else a random one (tokens then stay on this process).
fn page_token_key(configured: Option<&str>) -> anyhow::Result<SealKey> {
    let (key, configured) = SealKey::configured_or_random(configured)
        .map_err(|e| anyhow::anyhow!("PAGE_TOKEN_KEY: {e}"))?;
    if !configured {
        tracing::warn!(
            "PAGE_TOKEN_KEY unset: page tokens work only on this process until it restarts"
        );
    }
    Ok(key)
}

fn connect_options(config: &Config) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(&config.database_url)
        .context("DATABASE_URL is not a PostgreSQL URL")?
        .application_name("conversation-service"))
}

/// The `migrate` subcommand: applies the migrations and returns.
///
/// # Errors
/// When PostgreSQL cannot be reached or a migration fails.
pub async fn migrate_database(config: &Config) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(config.db_acquire_timeout)
        .connect_with(connect_options(config)?)
        .await
        .context("connecting to PostgreSQL")?;
    migrate(&pool).await?;
    pool.close().await;
    tracing::info!("migrations applied");
    Ok(())
}

async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    // sqlx holds an advisory lock while migrating, so replicas starting together are safe.
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// Migrates, or (`migrate_on_start` off) only checks that `migrate` has been run.
async fn prepare_schema(pool: &PgPool, migrate_on_start: bool) -> anyhow::Result<()> {
    if migrate_on_start {
        return migrate(pool).await;
    }
    let needed = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .context("reading _sqlx_migrations (run `conversation-service migrate`)")?;
    anyhow::ensure!(
        applied.unwrap_or(0) >= needed,
        "schema version {applied:?}, this build needs {needed}: run `conversation-service migrate`"
    );
    Ok(())
}

/// Keeps health in step with PostgreSQL (and the LISTEN connection), and finishes
/// migrations that could not run at start.
async fn watch_health(
    pool: PgPool,
    hub: Arc<Hub>,
    migrated: Arc<AtomicBool>,
    migrate_on_start: bool,
    probes: Probes,
    stop: CancellationToken,
) {
    let mut last: Option<bool> = None;
    loop {
        if !migrated.load(Ordering::Acquire) {
            match prepare_schema(&pool, migrate_on_start).await {
                Ok(()) => {
                    migrated.store(true, Ordering::Release);
                    tracing::info!("database ready");
                }
                Err(error) => tracing::warn!(%error, "database still not ready"),
            }
        }
        let reachable = tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(&pool),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        let serving = reachable && migrated.load(Ordering::Acquire) && hub.is_listening();
        if last != Some(serving) {
            probes.set_ready(serving).await;
            if serving {
                tracing::info!("serving: database reachable");
            } else {
                tracing::warn!(reachable, "not serving: database unreachable or not ready");
            }
            last = Some(serving);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
    }
}
