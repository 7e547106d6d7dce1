//! Probes that fit Kubernetes, on `grpc.health.v1.Health`:
//!
//! - **liveness** is the empty service name `""`: SERVING for as long as the process
//!   serves gRPC, also while its database is down (a restart would not bring the database
//!   back, it would only restart every pod at once);
//! - **readiness** is the API's own service name (`chat.v1.ConversationService`,
//!   `chat.v1.TokenService`): SERVING only while the database answers, and NOT_SERVING
//!   from the moment a SIGTERM arrives, so load balancers stop sending before draining.

use std::sync::Arc;

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

    async fn publish(&self, (ready, draining): (bool, bool)) {
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
