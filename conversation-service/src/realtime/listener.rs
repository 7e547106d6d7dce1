//! The process's one LISTEN connection, on a connection of its own (never one of the
//! pool's, which unary calls need). It reconnects with backoff when the connection dies,
//! and only once it listens again tells every stream to catch up from the table
//! (sqlx's PgListener drops what was sent while it was disconnected). A connection can
//! also die silently (a peer gone without a FIN, a frozen network path): a query on it
//! every few seconds finds that out, and health says NOT_SERVING until it listens again.

use std::{sync::Arc, time::Duration};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::time::{MissedTickBehavior, interval_at, timeout};
use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::store::{CHANNEL, Notice};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the LISTEN connection is checked, and how long a check or a connect may
/// take before the connection is given up: a dead listener is found within ~4 s.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run_listener(options: PgConnectOptions, hub: Arc<Hub>, shutdown: CancellationToken) {
    let options = options.application_name("conversation-service listener");
    listen(&options, &hub, &shutdown).await;
    hub.set_listening(false);
}

async fn listen(options: &PgConnectOptions, hub: &Hub, shutdown: &CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    let mut connected_before = false;
    loop {
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = timeout(CONNECT_TIMEOUT, connect(options)) => connected
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
                loop {
                    let received = tokio::select! {
                        () = shutdown.cancelled() => return,
                        received = listener.try_recv() => received,
                        _ = check.tick() => {
                            let alive = timeout(
                                CHECK_TIMEOUT,
                                sqlx::query("SELECT 1").execute(&mut listener),
                            )
                            .await;
                            if matches!(alive, Ok(Ok(_))) {
                                continue;
                            }
                            tracing::warn!("listener connection unresponsive; reconnecting");
                            break;
                        }
                    };
                    match received {
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
async fn connect(options: &PgConnectOptions) -> Result<PgListener, sqlx::Error> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&own).await?;
    // On a lost connection, return at once: this module reconnects, then resyncs.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
