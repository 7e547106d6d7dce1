//! Prometheus metrics: one recorder per process (`metrics` + `metrics-exporter-prometheus`)
//! and the `GET /metrics` endpoint on `METRICS_ADDR`. Without that address no recorder
//! is installed and every `metrics::counter!` is a no-op.

use std::{net::SocketAddr, sync::OnceLock};

use axum::{Router, http::StatusCode, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Probes;

/// Buckets of every `*_seconds` histogram: 0.5 ms to 30 s.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of every `*_size` histogram (counts of items).
const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use.
fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZES));
            match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::error!(%error, "cannot install the metrics recorder");
                    None
                }
            }
        })
        .as_ref()
}

/// The metrics endpoint, bound before serving (port 0 picks one).
pub struct MetricsListener {
    listener: TcpListener,
}

impl MetricsListener {
    /// Binds `addr` and installs the recorder.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        handle();
        Ok(Self { listener })
    }

    /// The bound address.
    ///
    /// # Errors
    /// When the socket cannot say.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics` until `stop`. `sample` runs before each scrape, to set the
    /// gauges that are read rather than counted (pool sizes, queue lengths). Also serves
    /// the probes as plain HTTP: `GET /livez` (200 while the process serves) and
    /// `GET /readyz` (200 when ready, else 503).
    pub async fn serve<F>(self, sample: F, probes: Probes, stop: CancellationToken)
    where
        F: Fn() + Clone + Send + Sync + 'static,
    {
        let render = move || {
            let sample = sample.clone();
            async move {
                sample();
                handle().map_or_else(String::new, |handle| {
                    handle.run_upkeep();
                    handle.render()
                })
            }
        };
        let readyz = move || {
            let ready = probes.is_ready();
            async move {
                if ready {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
        };
        let app = Router::new()
            .route("/metrics", get(render))
            .route("/livez", get(|| async { "alive\n" }))
            .route("/readyz", get(readyz));
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "metrics endpoint failed");
        }
    }
}
