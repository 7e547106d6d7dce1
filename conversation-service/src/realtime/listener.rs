//! The process's one LISTEN connection, on a connection of its own (never one of the
//! pool's, which unary calls need). It reconnects with backoff when the connection dies,
//! and only once it listens again tells every stream to catch up from the table
//! (sqlx's PgListener drops what was sent while it was disconnected).

use std::{sync::Arc, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;

use super::{Hub, Notice};
use crate::store::CHANNEL;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub async fn run_listener(options: PgConnectOptions, hub: Arc<Hub>, shutdown: CancellationToken) {
    // A pool of one, only so PgListener can open (and reopen) its own connection.
    let own = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.application_name("conversation-service listener"));
    listen(&own, &hub, &shutdown).await;
    hub.set_listening(false);
    own.close().await;
}

async fn listen(own: &PgPool, hub: &Hub, shutdown: &CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = connect(own) => connected,
        };
        match connected {
            Ok(mut listener) => {
                backoff = BACKOFF_MIN;
                hub.set_listening(true);
                tracing::info!(channel = CHANNEL, "listening");
                hub.resync_all();
                loop {
                    let received = tokio::select! {
                        () = shutdown.cancelled() => return,
                        received = listener.try_recv() => received,
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

async fn connect(own: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(own).await?;
    // On a lost connection, return at once: this module reconnects, then resyncs.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
