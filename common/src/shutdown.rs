//! Stopping in the order a load balancer needs: on SIGTERM readiness turns NOT_SERVING
//! at once, requests keep being served for `--drain-delay` while the balancers notice,
//! and only then does the server stop accepting and end its streams. SIGINT (Ctrl-C at a
//! terminal) and a second signal skip the delay.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{duration::parse_duration, health::Probes};

/// The shutdown flag both services take (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// On SIGTERM: how long readiness says NOT_SERVING while requests are still served,
    /// before draining starts (set it to the load balancer's probe period or more).
    #[arg(long, env = "DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
}

/// The next SIGTERM or SIGINT.
pub async fn signal() -> Signal {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => Signal::Interrupt,
        () = terminate => Signal::Terminate,
    }
}

/// Waits for a signal (or `stop` cancelled by someone else), turns readiness
/// NOT_SERVING, waits `delay` after a SIGTERM, then cancels `stop`.
pub async fn drain_on_signal(stop: CancellationToken, probes: Probes, delay: Duration) {
    let received = tokio::select! {
        received = signal() => received,
        () = stop.cancelled() => {
            probes.drain().await;
            return;
        }
    };
    probes.drain().await;
    if received == Signal::Terminate && !delay.is_zero() {
        tracing::info!(
            ?delay,
            "SIGTERM: readiness NOT_SERVING; draining after the delay"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = signal() => tracing::info!("second signal: draining now"),
            () = stop.cancelled() => {}
        }
    } else {
        tracing::info!(?received, "draining");
    }
    stop.cancel();
}
