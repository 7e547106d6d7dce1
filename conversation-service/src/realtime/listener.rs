//! The process's one LISTEN connection, on a connection of its own (never one of the
//! pool's, which unary calls need). It reconnects with backoff when the connection dies,
//! and only once it listens again tells every stream to catch up from the table
//! (sqlx's PgListener drops what was sent while it was disconnected). A connection can
//! also die silently (a peer gone without a FIN, a frozen network path): a query on it
//! every few seconds finds that out, and health says NOT_SERVING until it listens again.
//! A listener can also be alive but behind (its process busy): that query also NOTIFYs a
//! channel only this process listens on, and the notice, queued behind every notice sent
//! before it, says how far behind the listener is; past the lag limit it is reconnected.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPoolOptions};
use tokio::time::{MissedTickBehavior, interval_at, timeout};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hub::Hub;
use crate::store::{CHANNEL, Notice};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the LISTEN connection is checked, and how long a check or a connect may
/// take before the connection is given up: a dead listener is found within ~4 s.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Listens until `shutdown`; a listener whose probe arrives more than `lag_limit` late
/// is reconnected.
pub async fn run_listener(
    options: PgConnectOptions,
    hub: Arc<Hub>,
    lag_limit: Duration,
    shutdown: CancellationToken,
) {
    let options = options.application_name("conversation-service listener");
    let probe = Probe {
        channel: format!("chat_probe_{}", Uuid::new_v4().simple()),
        lag_limit,
    };
    listen(&options, &hub, &probe, &shutdown).await;
    hub.set_listening(false);
}

/// This process's own channel, and how late a notice on it may arrive.
struct Probe {
    channel: String,
    lag_limit: Duration,
}

impl Probe {
    /// Checks the connection and reads the notification queue's usage; sends a probe
    /// unless one is on its way (`sent`), and then notes when.
    async fn check(&self, listener: &mut PgListener, sent: &mut Option<Instant>) -> bool {
        let query = if sent.is_some() {
            sqlx::query_scalar("SELECT pg_notification_queue_usage()")
        } else {
            sqlx::query_scalar(
                "SELECT pg_notification_queue_usage() FROM (SELECT pg_notify($1, '')) probe",
            )
            .bind(&self.channel)
        };
        let started = Instant::now();
        match timeout(CHECK_TIMEOUT, query.fetch_one(&mut *listener)).await {
            Ok(Ok(usage)) => {
                crate::metrics::notify_queue_usage(usage);
                sent.get_or_insert(started);
                true
            }
            _ => false,
        }
    }

    /// Whether a probe this late (arrived, or still on its way) puts the listener past
    /// the limit; says so when it does.
    fn behind(&self, lag: Duration) -> bool {
        let behind = lag > self.lag_limit;
        if behind {
            tracing::warn!(?lag, limit = ?self.lag_limit, "listener behind; reconnecting");
        }
        behind
    }

    fn is_probe(&self, notification: &PgNotification) -> bool {
        notification.channel() == self.channel
    }
}

async fn listen(
    options: &PgConnectOptions,
    hub: &Hub,
    probe: &Probe,
    shutdown: &CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut connected_before = false;
    loop {
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = timeout(CONNECT_TIMEOUT, connect(options, &probe.channel)) => connected
                .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut)),
        };
        match connected {
            Ok(mut listener) => {
                backoff = BACKOFF_MIN;
                hub.set_listening(true);
                if std::mem::replace(&mut connected_before, true) {
                    crate::metrics::listener_reconnected();
                }
                tracing::info!(channel = CHANNEL, "listening");
                hub.resync_all();
                let mut check =
                    interval_at(tokio::time::Instant::now() + CHECK_INTERVAL, CHECK_INTERVAL);
                check.set_missed_tick_behavior(MissedTickBehavior::Delay);
                // When the probe on its way was sent.
                let mut sent: Option<Instant> = None;
                loop {
                    let received = tokio::select! {
                        () = shutdown.cancelled() => return,
                        received = listener.try_recv() => received,
                        _ = check.tick() => {
                            if sent.is_some_and(|sent| probe.behind(sent.elapsed())) {
                                break;
                            }
                            if probe.check(&mut listener, &mut sent).await {
                                continue;
                            }
                            tracing::warn!("listener connection unresponsive; reconnecting");
                            break;
                        }
                    };
                    match received {
                        Ok(Some(notification)) if probe.is_probe(&notification) => {
                            let lag = sent.take().map(|sent| sent.elapsed()).unwrap_or_default();
                            crate::metrics::listener_lag(lag);
                            if probe.behind(lag) {
                                break;
                            }
                        }
                        Ok(Some(notification)) => match Notice::decode(notification.payload()) {
                            Some(notice) => hub.dispatch(notice),
                            None => tracing::warn!("ignored a notification it cannot read"),
                        },
                        Ok(None) => {
                            tracing::warn!("listener connection lost; reconnecting");
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "listener failed; reconnecting");
                            break;
                        }
                    }
                }
                hub.set_listening(false);
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "cannot LISTEN");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A new connection each time (its own pool of one, dropped with the listener), so a
/// connection given up as dead is never waited for.
async fn connect(options: &PgConnectOptions, probe: &str) -> Result<PgListener, sqlx::Error> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&own).await?;
    // On a lost connection, return at once: this module reconnects, then resyncs.
    listener.eager_reconnect(false);
    listener.listen_all([CHANNEL, probe]).await?;
    Ok(listener)
}
