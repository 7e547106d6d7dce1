//! Probes that fit Kubernetes, on `grpc.health.v1.Health`:
//!
//! - **liveness** is the empty service name `""`: SERVING for as long as the process
//!   serves gRPC, also while its database is down (a restart would not bring the database
//!   back, it would only restart every pod at once);
//! - **readiness** is the API's own service name (`chat.v1.ConversationService`,
//!   `chat.v1.TokenService`): SERVING only while the database answers, and NOT_SERVING
//!   from the moment a SIGTERM arrives, so load balancers stop sending before draining.
//!
//! The same two answers are served as plain HTTP (`/livez`, `/readyz`) on `METRICS_ADDR`,
//! for probes that cannot speak TLS (kubelet's gRPC probe) once `TLS_CERT` is set.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::sync::Mutex;
use tonic_health::{ServingStatus, server::HealthReporter};

/// The health name of the liveness probe.
pub const LIVENESS: &str = "";

#[derive(Clone)]
pub struct Probes {
    reporter: HealthReporter,
    readiness: Arc<[&'static str]>,
    /// (the database is usable, draining has begun). Held across the updates so a
    /// health check that lands during a drain cannot turn readiness back on.
    state: Arc<Mutex<(bool, bool)>>,
    /// What readiness says now, for readers that cannot wait on the lock.
    ready_now: Arc<AtomicBool>,
}

impl Probes {
    /// Liveness SERVING, readiness (`readiness` names) NOT_SERVING until
    /// [`Probes::set_ready`] says otherwise.
    pub async fn new(reporter: HealthReporter, readiness: &[&'static str]) -> Self {
        reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        for name in readiness {
            reporter
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        Self {
            reporter,
            readiness: readiness.into(),
            state: Arc::new(Mutex::new((false, false))),
            ready_now: Arc::new(AtomicBool::new(false)),
        }
    }

    /// For statuses under other names (a dependency's, as token-service reports).
    pub fn reporter(&self) -> &HealthReporter {
        &self.reporter
    }

    /// Readiness follows the database, unless draining has begun.
    pub async fn set_ready(&self, ready: bool) {
        let mut state = self.state.lock().await;
        state.0 = ready;
        self.publish(*state).await;
    }

    /// Readiness NOT_SERVING for good: this process is going away.
    pub async fn drain(&self) {
        let mut state = self.state.lock().await;
        state.1 = true;
        self.publish(*state).await;
    }

    /// Whether readiness is SERVING now.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.ready_now.load(Ordering::Acquire)
    }

    async fn publish(&self, (ready, draining): (bool, bool)) {
        self.ready_now.store(ready && !draining, Ordering::Release);
        let status = if ready && !draining {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in self.readiness.iter() {
            self.reporter.set_service_status(*name, status).await;
        }
    }
}
