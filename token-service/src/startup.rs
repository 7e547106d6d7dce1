//! The application: bind, open the database, wire the services and their limits, serve
//! until SIGTERM / SIGINT or a programmatic shutdown. Health: `""` is liveness,
//! `chat.v1.TokenService` readiness (see `chat_common::health`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use chat_common::{
    health::Probes, metrics::MetricsListener, rpc::ServerLayer, seal::SealKey, security::Security,
    server::OversizeLayer,
};
use chat_proto::v1::{
    token_admin_service_server::TokenAdminServiceServer, token_service_server::TokenServiceServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::{
    config::Config,
    conversations::Conversations,
    error::Error,
    grpc::{TokenAdminGrpc, TokenGrpc},
    limiter::{CallerIdentity, FailureLimiter},
    outbox::{Outbox, OutboxSettings},
    store::Store,
};

/// The health name under which token-service reports its view of conversation-service.
pub const CONVERSATION_DEPENDENCY: &str = "chat.v1.ConversationService";
/// The health name of token-service's readiness.
pub const TOKEN_SERVICE: &str = "chat.v1.TokenService";
const ADMIN_SERVICE: &str = "chat.v1.TokenAdminService";
/// Largest reply: a full ListTokens page (200 links with 200-character labels) fits.
const MAX_REPLY_BYTES: usize = 1024 * 1024;

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics: Option<MetricsListener>,
    config: Config,
    store: Store,
    outbox: Outbox,
    conversations: Conversations,
    security: Security,
    shutdown: CancellationToken,
}

impl Application {
    /// Binds the listener (port 0 picks one) and starts the database thread. Neither an
    /// unreachable conversation-service nor a database that cannot be opened yet stops
    /// the start: both are retried and reported by health.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let security =
            Security::load(&config.security).map_err(|e| Error::Internal(e.to_string()))?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::Internal(format!("binding {}: {e}", config.listen)))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::Internal(format!("reading the bound address: {e}")))?;
        let metrics = match config.telemetry.metrics_addr {
            Some(addr) => Some(MetricsListener::bind(addr).await.map_err(|e| {
                Error::Internal(format!("binding the metrics address {addr}: {e}"))
            })?),
            None => None,
        };
        crate::metrics::describe();
        let store = Store::start(config.database.clone(), config.sqlite_busy_timeout)?;
        // The first open (directory, lock, migrations) happens before serving; a failure
        // is retried on use and by the health probe.
        if let Err(e) = store.probe().await {
            tracing::warn!(error = %e, "database not usable yet; will retry");
        }
        let conversations = Conversations::new(
            &config.conversation_service,
            config.max_message_bytes,
            &config.client,
        )?;
        let outbox = Outbox::new(
            store.clone(),
            conversations.clone(),
            OutboxSettings {
                call_timeout: config.call_timeout.max(Duration::from_millis(1)),
                inline_wait: config.inline_wait,
                retry: config.outbox_retry.max(Duration::from_millis(1)),
                retry_max: config.outbox_retry_max.max(config.outbox_retry),
                poll: config.outbox_poll.max(Duration::from_millis(10)),
                batch: config.outbox_batch.max(1),
            },
        );
        Ok(Self {
            listener,
            local_addr,
            metrics,
            config,
            store,
            outbox,
            conversations,
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

    /// The database handle the service uses (tests reach under the API with it).
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Cancelling it stops the service gracefully (tests; signals do the same).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn run_until_stopped(self) -> Result<(), Error> {
        let Self {
            listener,
            local_addr,
            metrics,
            config,
            store,
            outbox,
            conversations,
            security,
            shutdown,
        } = self;

        let (health, health_service) = tonic_health::server::health_reporter();
        // Readiness NOT_SERVING until the first probe has seen the database.
        let probes = Probes::new(health, &[TOKEN_SERVICE]).await;
        probes
            .reporter()
            .set_service_status(CONVERSATION_DEPENDENCY, ServingStatus::Unknown)
            .await;

        let (reflection_v1, reflection_v1alpha) = chat_common::reflection::services(
            chat_proto::FILE_DESCRIPTOR_SET,
            &[TOKEN_SERVICE, ADMIN_SERVICE],
        )
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;

        let limiter = Arc::new(FailureLimiter::new(
            config.failed_redemptions_limit,
            config.failed_redemptions_window,
        ));
        let (page_key, configured) =
            SealKey::configured_or_random(config.page_token_key.as_deref())
                .map_err(|e| Error::Internal(format!("PAGE_TOKEN_KEY: {e}")))?;
        if !configured {
            tracing::warn!(
                "PAGE_TOKEN_KEY unset: page tokens work only until this process restarts"
            );
        }
        let tokens = TokenServiceServer::new(TokenGrpc::new(
            store.clone(),
            outbox.clone(),
            limiter,
            CallerIdentity {
                key_header: config.caller_key_header.to_ascii_lowercase(),
                address_header: config.caller_address_header.to_ascii_lowercase(),
                trusted_hops: config.trusted_proxy_hops,
            },
            page_key,
        ))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(MAX_REPLY_BYTES);

        let reload = config.security.tls_reload_interval;
        tokio::spawn(conversations.watch(reload, shutdown.clone()));
        let backup_dir = config.backup_dir.clone().unwrap_or_else(|| {
            config
                .database
                .parent()
                .unwrap_or_else(|| std::path::Path::new("."))
                .join("backups")
        });
        let admin = TokenAdminServiceServer::new(TokenAdminGrpc::new(
            store.clone(),
            outbox.clone(),
            backup_dir,
        ))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(MAX_REPLY_BYTES);

        let worker = tokio::spawn(outbox.clone().run(shutdown.clone()));
        if let Some(metrics) = metrics {
            let store = store.clone();
            let sample = move || crate::metrics::sample(&store);
            tokio::spawn(metrics.serve(sample, probes.clone(), shutdown.clone()));
        }
        let prober = tokio::spawn(probe_health(
            store,
            conversations,
            outbox,
            probes.clone(),
            config.health_interval.max(Duration::from_millis(10)),
            config.call_timeout.max(Duration::from_millis(1)),
            shutdown.clone(),
        ));

        let incoming = config.connections.handshake_deadline(security.incoming(
            listener,
            config.connections.keepalive.max(Duration::from_secs(1)),
            shutdown.clone(),
        ));
        tracing::info!(%local_addr, database = %config.database.display(),
            conversation_service = %config.conversation_service, "token-service listening");

        let signals = tokio::spawn(chat_common::shutdown::drain_on_signal(
            shutdown.clone(),
            probes,
            config.drain.drain_delay,
        ));
        let served = config
            .connections
            .server()
            .timeout(config.request_timeout)
            .layer(ServerLayer::new(
                chat_proto::FILE_DESCRIPTOR_SET,
                Some(config.request_timeout),
            ))
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                config.max_concurrent_requests.max(1),
            ))
            .layer(OversizeLayer::new(crate::error::DOMAIN))
            .layer(security.layer())
            .max_concurrent_streams(config.max_concurrent_streams)
            .http2_max_header_list_size(16 * 1024)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(tokens)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
        let _ = signals.await;
        let _ = worker.await;
        let _ = prober.await;
        tracing::info!("token-service stopped");
        served.map_err(|e| Error::Internal(format!("serving: {e}")))
    }
}

/// The `migrate` subcommand: opens the database, which creates or migrates it, and
/// returns once that is done.
///
/// # Errors
/// When the database cannot be opened or migrated, or another process holds it.
pub async fn migrate_database(config: &Config) -> Result<(), Error> {
    Store::start(config.database.clone(), config.sqlite_busy_timeout)?
        .probe()
        .await?;
    tracing::info!(database = %config.database.display(), "migrations applied");
    Ok(())
}

/// Keeps health current: the database (SERVING only while it answers and takes the
/// write lock) and conversation-service (reported under its own name; token-service
/// serves without it, queueing calls). When conversation-service comes back, queued
/// calls are retried at once.
async fn probe_health(
    store: Store,
    conversations: Conversations,
    outbox: Outbox,
    probes: Probes,
    interval: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut db_ok: Option<bool> = None;
    let mut conv_ok: Option<bool> = None;
    loop {
        let db = match store.probe().await {
            Ok(depth) => {
                if depth > 0 {
                    tracing::debug!(queued_calls = depth, "outbox");
                }
                if let Ok(stats) = store.outbox_stats().await {
                    crate::metrics::outbox(stats);
                }
                true
            }
            Err(e) => {
                if db_ok != Some(false) {
                    tracing::error!(error = %e, "database unusable: NOT_SERVING");
                }
                false
            }
        };
        if db_ok != Some(db) {
            if db {
                tracing::info!("database usable: SERVING");
            }
            probes.set_ready(db).await;
            db_ok = Some(db);
        }

        let conv = conversations.reachable(timeout).await;
        if conv_ok != Some(conv) {
            outbox.set_reachable(conv);
            if conv {
                tracing::info!("conversation-service reachable");
                probes
                    .reporter()
                    .set_service_status(CONVERSATION_DEPENDENCY, ServingStatus::Serving)
                    .await;
                if conv_ok.is_some() {
                    outbox.retry_all_now().await;
                }
            } else {
                tracing::warn!(
                    "conversation-service unreachable; redemptions queue their conversations"
                );
                probes
                    .reporter()
                    .set_service_status(CONVERSATION_DEPENDENCY, ServingStatus::NotServing)
                    .await;
            }
            conv_ok = Some(conv);
        }

        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
