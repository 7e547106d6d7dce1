//! The process's one LISTEN connection. It reconnects with backoff when the connection
//! dies, and only once it listens again tells every stream to catch up from the table
//! (sqlx's PgListener drops what was sent while it was disconnected).

use std::{sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;

use super::{Hub, Notice};
use crate::store::CHANNEL;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub async fn run_listener(pool: PgPool, hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    let mut connected_before = false;
    loop {
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = connect(&pool) => connected,
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
                        Err(_) if pool.is_closed() => return,
                        Err(error) => {
                            tracing::warn!(%error, "listener failed; reconnecting");
                            break;
                        }
                    }
                }
                hub.set_listening(false);
            }
            Err(_) if pool.is_closed() => return,
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

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
