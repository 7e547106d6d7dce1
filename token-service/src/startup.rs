//! The application: [`Application::build`] binds, opens the database and wires the
//! services and their limits; [`Application::run`] serves until SIGTERM / SIGINT or a
//! programmatic shutdown. Health: `""` is liveness,
//! `chat.v1.TokenService` readiness (see `chat_common::health`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use chat_common::{
    health::Probes, metrics::MetricsListener, seal::SealKey, security::Security,
    server::OversizeLayer,
};
use chat_proto::v1::{
    audit_service_server::AuditServiceServer, privacy_service_server::PrivacyServiceServer,
    token_admin_service_server::TokenAdminServiceServer, token_service_server::TokenServiceServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::{
    config::Config,
    conversations::{self, Conversations},
    error::Error,
    grpc::{AuditGrpc, Auditor, PrivacyGrpc, TokenAdminGrpc, TokenGrpc},
    limiter::{CallerIdentity, FailureLimiter},
    outbox::{Outbox, OutboxSettings},
    privacy::Erasures,
    retention::RetentionSettings,
    sessions::Sessions,
    store::Store,
};

/// The health name of token-service's readiness.
pub const TOKEN_SERVICE: &str = "chat.v1.TokenService";
const ADMIN_SERVICE: &str = "chat.v1.TokenAdminService";
const PRIVACY_SERVICE: &str = "chat.v1.PrivacyService";
const AUDIT_SERVICE: &str = "chat.v1.AuditService";
/// The retention sweeper never runs more often than this.
const MIN_RETENTION_INTERVAL: Duration = Duration::from_secs(1);
/// Largest reply: a full ListTokens page (200 links with 200-character labels) fits.
const MAX_REPLY_BYTES: usize = 1024 * 1024;
/// Largest request header block.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Floors under configured timings: below them a loop would spin or a call could never
/// finish.
const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(1);
const MIN_OUTBOX_RETRY: Duration = Duration::from_millis(1);
const MIN_OUTBOX_POLL: Duration = Duration::from_millis(10);
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(10);
const MIN_KEEPALIVE: Duration = Duration::from_secs(1);

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics: Option<MetricsListener>,
    config: Config,
    store: Store,
    outbox: Outbox,
    erasures: Erasures,
    conversations: Conversations,
    security: Security,
    probes: Probes,
    /// Health, reflection, TokenService and TokenAdminService.
    routes: Routes,
    shutdown: CancellationToken,
}

impl Application {
    /// Wires everything: binds the listener (port 0 picks one), opens the database and
    /// builds the services. Neither an unreachable conversation-service nor a database
    /// that cannot be opened yet stops the start: both are retried and reported by
    /// health.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let mut security =
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
        let store = Store::open(config.database.clone(), config.sqlite_busy_timeout).await?;
        let conversations = Conversations::new(
            &config.conversation_service,
            config.max_message_bytes,
            &config.client,
        )?;
        let outbox = Outbox::new(
            store.clone(),
            conversations.clone(),
            outbox_settings(&config),
        );
        security.on_policy_reload(Auditor::new(store.clone()).policy_reload_hook());
        let erasures = Erasures::new(&outbox);
        let (probes, routes) =
            services(&config, &store, &outbox, &erasures, &conversations).await?;
        Ok(Self {
            listener,
            local_addr,
            metrics,
            config,
            store,
            outbox,
            erasures,
            conversations,
            security,
            probes,
            routes,
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

    /// Serves until SIGTERM / SIGINT or the shutdown token, with the background tasks
    /// (outbox worker, health probe, credential reload, metrics) beside it; returns once
    /// they have stopped too.
    pub async fn run(self) -> Result<(), Error> {
        let Self {
            listener,
            local_addr,
            metrics,
            config,
            store,
            outbox,
            erasures,
            conversations,
            security,
            probes,
            routes,
            shutdown,
        } = self;
        let reload = config.security.tls_reload_interval;
        tokio::spawn(conversations.watch(reload, shutdown.clone()));
        let worker = tokio::spawn(outbox.clone().run(shutdown.clone()));
        let eraser = tokio::spawn(erasures.run(shutdown.clone()));
        let sweeper = tokio::spawn(crate::retention::run(
            store.clone(),
            retention_settings(&config),
            shutdown.clone(),
        ));
        if let Some(metrics) = metrics {
            let store = store.clone();
            let sample = move || crate::metrics::sqlite_queue(store.queue_len());
            tokio::spawn(metrics.serve(sample, probes.clone(), shutdown.clone()));
        }
        let prober = tokio::spawn(
            HealthProbe {
                store,
                conversations,
                outbox,
                probes: probes.clone(),
                interval: config.health_interval.max(MIN_HEALTH_INTERVAL),
                timeout: config.call_timeout.max(MIN_CALL_TIMEOUT),
            }
            .run(shutdown.clone()),
        );
        tracing::info!(%local_addr, database = %config.database.display(),
            conversation_service = %config.conversation_service, "token-service listening");
        let signals = tokio::spawn(chat_common::shutdown::drain_on_signal(
            shutdown.clone(),
            probes,
            config.drain.drain_delay,
        ));
        let served = serve(&config, &security, listener, routes, &shutdown).await;
        shutdown.cancel();
        let _ = signals.await;
        let _ = worker.await;
        let _ = eraser.await;
        let _ = sweeper.await;
        let _ = prober.await;
        tracing::info!("token-service stopped");
        served.map_err(|e| Error::Internal(format!("serving: {e}")))
    }
}

/// Serves `routes` on `listener` behind the shared layers (deadline, per-RPC span and
/// metrics, concurrency limit, message size, authentication) until `shutdown`.
async fn serve(
    config: &Config,
    security: &Security,
    listener: TcpListener,
    routes: Routes,
    shutdown: &CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = config.connections.handshake_deadline(security.incoming(
        listener,
        config.connections.keepalive.max(MIN_KEEPALIVE),
        shutdown.clone(),
    ));
    config
        .connections
        .rpc_server(config.request_timeout, chat_proto::FILE_DESCRIPTOR_SET)
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.max_concurrent_requests.max(1),
        ))
        .layer(OversizeLayer)
        .layer(security.layer())
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
        .await
}

/// The outbox's timings from the configuration, each kept above a floor at which it
/// would spin.
fn outbox_settings(config: &Config) -> OutboxSettings {
    OutboxSettings {
        call_timeout: config.call_timeout.max(MIN_CALL_TIMEOUT),
        inline_wait: config.inline_wait,
        retry: config.outbox_retry.max(MIN_OUTBOX_RETRY),
        retry_max: config.outbox_retry_max.max(config.outbox_retry),
        poll: config.outbox_poll.max(MIN_OUTBOX_POLL),
        batch: config.outbox_batch.max(1),
    }
}

/// The retention settings: a zero keeps that kind of data for ever.
fn retention_settings(config: &Config) -> RetentionSettings {
    let keep = |d: Duration| (!d.is_zero()).then_some(d);
    let r = &config.retention;
    RetentionSettings {
        ended_sessions: keep(r.session_retention),
        failed_call_contacts: keep(r.failed_call_contact_retention),
        links: keep(r.link_retention),
        audit_records: keep(r.audit_retention),
        redeem_requests: keep(r.redeem_retry_window),
        interval: r.retention_interval.max(MIN_RETENTION_INTERVAL),
        batch: r.retention_batch.max(1),
    }
}

/// Health (readiness NOT_SERVING until the first probe has seen the database, and
/// conversation-service UNKNOWN until it has been asked), reflection, and token-service's
/// four services.
async fn services(
    config: &Config,
    store: &Store,
    outbox: &Outbox,
    erasures: &Erasures,
    conversations: &Conversations,
) -> Result<(Probes, Routes), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let probes = Probes::new(health, &[TOKEN_SERVICE]).await;
    probes
        .reporter()
        .set_service_status(conversations::READINESS, ServingStatus::Unknown)
        .await;
    let (reflection_v1, reflection_v1alpha) = chat_common::reflection::services(
        chat_proto::FILE_DESCRIPTOR_SET,
        &[TOKEN_SERVICE, ADMIN_SERVICE, PRIVACY_SERVICE, AUDIT_SERVICE],
    )
    .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let routes = Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(token_service(config, store, outbox)?)
        .add_service(admin_service(config, store, outbox))
        .add_service(
            PrivacyServiceServer::new(PrivacyGrpc::new(
                store.clone(),
                erasures.clone(),
                conversations.clone(),
            ))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(MAX_REPLY_BYTES),
        )
        .add_service(
            AuditServiceServer::new(AuditGrpc::new(store.clone()))
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(MAX_REPLY_BYTES),
        );
    Ok((probes, routes))
}

fn token_service(
    config: &Config,
    store: &Store,
    outbox: &Outbox,
) -> Result<TokenServiceServer<TokenGrpc>, Error> {
    let limiter = Arc::new(FailureLimiter::new(
        config.failed_redemptions_limit,
        config.failed_redemptions_window,
    ));
    let (page_key, configured) = SealKey::configured_or_random(config.page_token_key.as_deref())
        .map_err(|e| Error::Internal(format!("PAGE_TOKEN_KEY: {e}")))?;
    if !configured {
        tracing::warn!("PAGE_TOKEN_KEY unset: page tokens work only until this process restarts");
    }
    let identity = CallerIdentity {
        key_header: config.caller_key_header.to_ascii_lowercase(),
        address_header: config.caller_address_header.to_ascii_lowercase(),
        trusted_hops: config.trusted_proxy_hops,
    };
    let sessions = Sessions::new(store.clone(), outbox.clone());
    let grpc = TokenGrpc::new(store.clone(), sessions, limiter, identity, page_key);
    Ok(TokenServiceServer::new(grpc)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(MAX_REPLY_BYTES))
}

fn admin_service(
    config: &Config,
    store: &Store,
    outbox: &Outbox,
) -> TokenAdminServiceServer<TokenAdminGrpc> {
    let backup_dir = config.backup_dir.clone().unwrap_or_else(|| {
        config
            .database
            .parent()
            .unwrap_or_else(|| std::path::Path::new("."))
            .join("backups")
    });
    TokenAdminServiceServer::new(TokenAdminGrpc::new(
        store.clone(),
        outbox.clone(),
        backup_dir,
    ))
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(MAX_REPLY_BYTES)
}

/// The `migrate` subcommand: opens the database, which creates or migrates it, and
/// returns once that is done.
///
/// # Errors
/// When the database cannot be opened or migrated, or another process holds it.
pub async fn migrate_database(config: &Config) -> Result<(), Error> {
    Store::migrate(config.database.clone(), config.sqlite_busy_timeout).await?;
    tracing::info!(database = %config.database.display(), "migrations applied");
    Ok(())
}

/// Keeps health current: the database (SERVING only while it answers and takes the
/// write lock) and conversation-service (reported under its own name; token-service
/// serves without it, queueing calls). When conversation-service comes back, queued
/// calls are retried at once.
struct HealthProbe {
    store: Store,
    conversations: Conversations,
    outbox: Outbox,
    probes: Probes,
    interval: Duration,
    timeout: Duration,
}

impl HealthProbe {
    async fn run(self, shutdown: CancellationToken) {
        let (mut db_ok, mut conv_ok) = (None, None);
        loop {
            self.database(&mut db_ok).await;
            self.conversation_service(&mut conv_ok).await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// Probes the database; `last` is what it said last time (`None`: never asked).
    async fn database(&self, last: &mut Option<bool>) {
        let ok = match self.store.probe().await {
            Ok(depth) => {
                if depth > 0 {
                    tracing::debug!(queued_calls = depth, "outbox");
                }
                if let Ok(stats) = self.store.outbox_stats().await {
                    crate::metrics::outbox(
                        stats.pending,
                        stats.oldest_pending_seconds,
                        stats.failed,
                    );
                    crate::metrics::erasures_pending(stats.erasures_pending);
                }
                true
            }
            Err(e) => {
                if *last != Some(false) {
                    tracing::error!(error = %e, "database unusable: NOT_SERVING");
                }
                false
            }
        };
        if *last != Some(ok) {
            if ok {
                tracing::info!("database usable: SERVING");
            }
            self.probes.set_ready(ok).await;
            *last = Some(ok);
        }
    }

    /// Asks conversation-service whether it is ready; `last` as for the database.
    async fn conversation_service(&self, last: &mut Option<bool>) {
        let ok = self.conversations.reachable(self.timeout).await;
        if *last == Some(ok) {
            return;
        }
        self.outbox.set_reachable(ok);
        let status = if ok {
            tracing::info!("conversation-service reachable");
            ServingStatus::Serving
        } else {
            tracing::warn!(
                "conversation-service unreachable; redemptions queue their conversations"
            );
            ServingStatus::NotServing
        };
        self.probes
            .reporter()
            .set_service_status(conversations::READINESS, status)
            .await;
        if ok && last.is_some() {
            self.outbox.retry_all_now().await;
        }
        *last = Some(ok);
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn a_zero_retention_keeps_that_data_for_ever_and_the_retry_window_defaults_to_a_day() {
        let defaults = retention_settings(&Config::try_parse_from(["token-service"]).unwrap());
        assert_eq!(
            defaults.redeem_requests,
            Some(Duration::from_secs(24 * 3600))
        );
        let zero = retention_settings(
            &Config::try_parse_from([
                "token-service",
                "--redeem-retry-window",
                "0",
                "--session-retention",
                "0",
            ])
            .unwrap(),
        );
        assert_eq!(zero.redeem_requests, None);
        assert_eq!(zero.ended_sessions, None);
        assert_eq!(zero.links, defaults.links);
    }
}
