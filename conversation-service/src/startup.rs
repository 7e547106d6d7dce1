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
    health::Probes, metrics::MetricsListener, seal::SealKey, security::Security,
    server::OversizeLayer,
};
use chat_proto::v1::{
    audit_service_server::AuditServiceServer,
    conversation_privacy_service_server::ConversationPrivacyServiceServer,
    conversation_service_server::ConversationServiceServer,
    event_service_server::EventServiceServer,
};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, service::Interceptor, service::interceptor::InterceptedService};

use crate::{
    config::Config,
    domain::{AttachmentRules, EditWindow, FeedPosition, PageTokens},
    grpc::{AuditApi, ConversationApi, EventApi, MessageRules, PrivacyApi},
    realtime::{
        Hub,
        events::{FeedContext, run_reminders, run_sequencer},
        presence::run_presence,
        run_listener,
        streams::StreamContext,
    },
    store::{PoolSettings, SendQueue, Store},
};

pub const SERVICE_NAME: &str = "chat.v1.ConversationService";
pub const EVENT_SERVICE_NAME: &str = "chat.v1.EventService";
const PRIVACY_SERVICE: &str = "chat.v1.ConversationPrivacyService";
const AUDIT_SERVICE: &str = "chat.v1.AuditService";
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/conversation");

/// The gRPC service as served: refused with UNAVAILABLE until the schema is ready.
type Api = InterceptedService<ConversationServiceServer<ConversationApi>, Ready>;
type Events = InterceptedService<EventServiceServer<EventApi>, Ready>;
/// ConversationPrivacyService and AuditService, refused the same way until then.
type PrivacyServices = (
    InterceptedService<ConversationPrivacyServiceServer<PrivacyApi>, Ready>,
    InterceptedService<AuditServiceServer<AuditApi>, Ready>,
);

/// Everything [`Application::build`] wired, waiting to be served.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics: Option<MetricsListener>,
    config: Config,
    /// For the LISTEN connection, which is not pooled.
    options: PgConnectOptions,
    store: Store,
    hub: Arc<Hub>,
    api: Api,
    events: Events,
    privacy: PrivacyServices,
    /// The sequencer reports the feed's newest position here; feed streams watch it.
    feed_head: tokio::sync::watch::Sender<FeedPosition>,
    migrated: Arc<AtomicBool>,
    security: Security,
    shutdown: CancellationToken,
}

impl Application {
    /// Binds the listen address and wires the store, the hub and the gRPC service.
    /// Migrations are tried once here; when PostgreSQL is not reachable yet the service
    /// still starts, reports NOT_SERVING, and keeps retrying in the background.
    ///
    /// # Errors
    /// When an address cannot be bound, the database URL cannot be parsed or the
    /// SendMessage writers cannot be started.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let mut security = Security::load(&config.security)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let metrics = bind_metrics(&config).await?;
        crate::metrics::describe();
        let options = connect_options(&config)?;
        let store = Store::connect(&PoolSettings {
            options: options.clone(),
            size: config.db_pool_size,
            acquire_timeout: config.db_acquire_timeout,
            send_writers: config.send_writers,
        });
        security.on_policy_reload(audit_policy_reloads(&store));
        let migrated = Arc::new(AtomicBool::new(false));
        match prepare_schema(store.pool(), config.migrate_on_start).await {
            Ok(()) => migrated.store(true, Ordering::Release),
            Err(error) => tracing::warn!(%error, "database not ready; will keep retrying"),
        }
        let hub = Hub::new(config.max_streams, config.stream_queue);
        let shutdown = CancellationToken::new();
        let (feed_head, head) = tokio::sync::watch::channel(FeedPosition::end_of(0));
        let events = InterceptedService::new(
            EventServiceServer::new(EventApi::new(FeedContext {
                store: store.clone(),
                head,
                heartbeat: config.heartbeat_interval,
                shutdown: shutdown.clone(),
            })),
            Ready(Arc::clone(&migrated)),
        );
        // One key for every service's page tokens (a random one warns once).
        let pages = PageTokens::new(page_token_key(config.page_token_key.as_deref())?);
        let api = api(&config, &store, &hub, &migrated, &shutdown, pages.clone())?;
        let privacy = privacy_services(&config, &store, &migrated, pages);
        tracing::info!(%local_addr, "bound");
        Ok(Self {
            listener,
            local_addr,
            metrics,
            config,
            options,
            store,
            hub,
            api,
            events,
            feed_head,
            privacy,
            migrated,
            security,
            shutdown,
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
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let probes = Probes::new(reporter, &[SERVICE_NAME]).await;
        let background = CancellationToken::new();
        let listener_task = self.start_background(&probes, &background);
        let (reflection_v1, reflection_v1alpha) = chat_common::reflection::services(
            chat_proto::FILE_DESCRIPTOR_SET,
            &[
                SERVICE_NAME,
                PRIVACY_SERVICE,
                AUDIT_SERVICE,
                EVENT_SERVICE_NAME,
            ],
        )?;
        let Self {
            listener,
            local_addr,
            config,
            store,
            api,
            events,
            privacy: (privacy, audit),
            security,
            shutdown,
            ..
        } = self;
        let serve = config
            .connections
            .rpc_server(config.request_timeout, chat_proto::FILE_DESCRIPTOR_SET)
            // Inside the RPC layer, so its logs and metrics see RESOURCE_EXHAUSTED.
            .layer(OversizeLayer)
            .max_concurrent_streams(config.max_concurrent_streams)
            .layer(security.layer())
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api)
            .add_service(events)
            .add_service(privacy)
            .add_service(audit)
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
        let served = within_grace(serve, &shutdown, config.shutdown_grace).await;
        background.cancel();
        let _ = listener_task.await;
        store.close().await;
        tracing::info!("stopped");
        served.context("gRPC server failed")
    }

    /// Starts what runs beside the server until `background` is cancelled: the LISTEN
    /// connection (whose task is returned), health, the signal handler, settling the inbox
    /// order and metrics.
    fn start_background(
        &mut self,
        probes: &Probes,
        background: &CancellationToken,
    ) -> JoinHandle<()> {
        let config = &self.config;
        let listener_task = tokio::spawn(run_listener(
            self.options.clone(),
            Arc::clone(&self.hub),
            config.listener_lag_limit,
            background.clone(),
        ));
        tokio::spawn(run_sequencer(
            self.store.clone(),
            Arc::clone(&self.hub),
            self.feed_head.clone(),
            config.event_retention,
            background.clone(),
        ));
        tokio::spawn(run_reminders(
            self.store.clone(),
            config.unread_reminder_delay,
            background.clone(),
        ));
        tokio::spawn(run_presence(
            self.store.clone(),
            Arc::clone(self.hub.presence()),
            background.clone(),
        ));
        tokio::spawn(watch_health(
            self.store.pool().clone(),
            Arc::clone(&self.hub),
            Arc::clone(&self.migrated),
            config.migrate_on_start,
            probes.clone(),
            background.clone(),
        ));
        tokio::spawn(chat_common::shutdown::drain_on_signal(
            self.shutdown.clone(),
            probes.clone(),
            config.drain.drain_delay,
        ));
        tokio::spawn(crate::store::settle_inbox_order_until(
            self.store.clone(),
            background.clone(),
        ));
        if !config.closed_message_retention.is_zero() {
            tokio::spawn(sweep_closed_messages(
                self.store.clone(),
                config.closed_message_retention,
                config.retention_interval.max(Duration::from_secs(1)),
                config.retention_batch.max(1),
                background.clone(),
            ));
        }
        if let Some(metrics) = self.metrics.take() {
            let (store, hub) = (self.store.clone(), Arc::clone(&self.hub));
            let sample = move || {
                store.sample_metrics();
                let (conversation, inbox) = hub.open_by_kind();
                crate::metrics::sample_streams(conversation, inbox);
            };
            tokio::spawn(metrics.serve(sample, probes.clone(), background.clone()));
        }
        listener_task
    }
}

/// Deletes the messages of conversations closed for longer than `keep`, every
/// `interval`, batch after batch until none is due, until `stop`.
async fn sweep_closed_messages(
    store: Store,
    keep: Duration,
    interval: Duration,
    batch: i64,
    stop: CancellationToken,
) {
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    loop {
        let cutoff = chrono::Utc::now()
            .checked_sub_signed(keep)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        loop {
            match store.sweep_closed_messages(cutoff, batch).await {
                Ok(0) => break,
                Ok(deleted) => crate::metrics::retention_deleted(deleted),
                Err(error) => {
                    tracing::warn!(%error, "retention sweep failed; retrying at the next interval");
                    break;
                }
            }
            if stop.is_cancelled() {
                return;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Waits for `serve` to end; once `shutdown` is cancelled, for at most `grace` more.
async fn within_grace<F, E>(
    serve: F,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Result<(), E>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    tokio::pin!(serve);
    tokio::select! {
        served = &mut serve => served,
        () = shutdown.cancelled() => {
            tracing::info!(?grace, "shutting down");
            match tokio::time::timeout(grace, &mut serve).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::warn!("grace period over; closing remaining connections");
                    Ok(())
                }
            }
        }
    }
}

async fn bind_metrics(config: &Config) -> anyhow::Result<Option<MetricsListener>> {
    let Some(addr) = config.telemetry.metrics_addr else {
        return Ok(None);
    };
    let listener = MetricsListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    Ok(Some(listener))
}

/// The gRPC service with its SendMessage writers, stream context and page tokens.
fn api(
    config: &Config,
    store: &Store,
    hub: &Arc<Hub>,
    migrated: &Arc<AtomicBool>,
    shutdown: &CancellationToken,
    pages: PageTokens,
) -> anyhow::Result<Api> {
    let sender = SendQueue::start(store.clone(), config.send_writers, config.send_batch_max)
        .context("starting the SendMessage writers")?;
    let streams = StreamContext {
        store: store.clone(),
        hub: Arc::clone(hub),
        heartbeat: config.heartbeat_interval,
        shutdown: shutdown.clone(),
        catch_up: Arc::new(tokio::sync::Semaphore::new(catch_up_slots(
            config.db_pool_size,
        ))),
    };
    let rules = MessageRules {
        attachments: attachment_rules(config)?,
        edit_window: EditWindow::new(config.edit_window),
    };
    let api = ConversationApi::new(
        store.clone(),
        sender,
        Arc::clone(hub),
        streams,
        pages,
        rules,
    );
    let server = ConversationServiceServer::new(api)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes.max(1024 * 1024));
    Ok(InterceptedService::new(server, Ready(Arc::clone(migrated))))
}

/// The configured attachment rules. A URI prefix must name an https origin and a path
/// (`https://host/`): without the slash, `https://files.example` would also admit
/// `https://files.example.evil.test/`.
fn attachment_rules(config: &Config) -> anyhow::Result<AttachmentRules> {
    let rules = config.attachment_rules();
    for prefix in &rules.uri_prefixes {
        let host_and_path = prefix.strip_prefix("https://").unwrap_or_default();
        let host = host_and_path.split('/').next().unwrap_or_default();
        if host.is_empty() || !host_and_path.contains('/') {
            anyhow::bail!("ATTACHMENT_URI_PREFIXES: `{prefix}` must start with https://<host>/");
        }
    }
    Ok(rules)
}

/// Records each reload of the callers file in the audit trail: OK, or
/// FAILED_PRECONDITION `CALLERS_FILE_INVALID` when it did not load (the old one stays).
fn audit_policy_reloads(store: &Store) -> chat_common::security::PolicyReloadHook {
    let store = store.clone();
    Arc::new(move |path, error| {
        let (result, reason) = match error {
            None => ("OK", ""),
            Some(_) => ("FAILED_PRECONDITION", "CALLERS_FILE_INVALID"),
        };
        let (store, target) = (store.clone(), path.display().to_string());
        // Called from the file watcher; the write must not hold it up.
        tokio::spawn(async move {
            let recorded = store
                .audit(
                    "conversation-service",
                    "callers-file-reload",
                    &target,
                    result,
                    reason,
                )
                .await;
            if let Err(error) = recorded {
                tracing::error!(%error, "could not record a callers-file reload");
            }
        });
    })
}

/// ConversationPrivacyService (token-service's erasures and exports) and AuditService.
fn privacy_services(
    config: &Config,
    store: &Store,
    migrated: &Arc<AtomicBool>,
    pages: PageTokens,
) -> PrivacyServices {
    let privacy = ConversationPrivacyServiceServer::new(PrivacyApi::new(store.clone()))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes.max(1024 * 1024));
    let audit = AuditServiceServer::new(AuditApi::new(store.clone(), pages))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes.max(1024 * 1024));
    let ready = Ready(Arc::clone(migrated));
    (
        InterceptedService::new(privacy, ready.clone()),
        InterceptedService::new(audit, ready),
    )
}

/// Refuses calls with UNAVAILABLE until the schema is ready.
#[derive(Clone)]
struct Ready(Arc<AtomicBool>);

impl Interceptor for Ready {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.0.load(Ordering::Acquire) {
            Ok(request)
        } else {
            Err(Status::unavailable(
                "starting: the database is not ready yet",
            ))
        }
    }
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
