//! conversation-service as an OS process, run from the built binary (`cargo build -p
//! conversation-service --bins`, which `cargo test --workspace` does; or the binary
//! `CONVERSATION_SERVICE_BIN` names), so a test can SIGKILL it and start it again on the
//! same address, as a load balancer's address outlives a replica.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::{database::TestDatabase, status::eventually};

/// The conversation-service binary the tests run.
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("CONVERSATION_SERVICE_BIN") {
        return path.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/conversation-service")
}

/// One conversation-service process; killed when dropped.
pub struct Replica {
    pub port: u16,
    database_url: String,
    env: HashMap<String, String>,
    child: Option<Child>,
}

impl Replica {
    pub fn new(database: &TestDatabase, port: u16) -> Self {
        Self::on(database.url().to_owned(), port)
    }

    /// A replica of the database at `database_url`.
    pub fn on(database_url: String, port: u16) -> Self {
        Self {
            port,
            database_url,
            env: HashMap::new(),
            child: None,
        }
    }

    #[must_use]
    pub fn with_env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process (without waiting for it to serve).
    ///
    /// # Panics
    /// When the binary cannot be run (tests only).
    pub fn spawn(&mut self) {
        let binary = binary();
        let child = Command::new(&binary)
            .env("LISTEN_ADDR", format!("127.0.0.1:{}", self.port))
            .env("DATABASE_URL", &self.database_url)
            // Idle streams show they are alive every 300 ms, so the tests wait little.
            .env("HEARTBEAT_INTERVAL", "300ms")
            .env("SHUTDOWN_GRACE", "1s")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(&self.env)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} (cargo build -p conversation-service --bins): {e}",
                    binary.display()
                )
            });
        self.child = Some(child);
    }

    /// Starts the process and waits until it is ready: its database reachable and
    /// migrated (health of `chat.v1.ConversationService` SERVING), over plaintext.
    ///
    /// # Panics
    /// When it is not ready within 30 s (tests only).
    pub async fn start(&mut self) {
        self.spawn();
        let Ok(endpoint) = Channel::from_shared(self.url()) else {
            unreachable!("a loopback URL is a valid endpoint")
        };
        let health = HealthClient::new(endpoint.connect_lazy());
        eventually(Duration::from_secs(30), || {
            let mut health = health.clone();
            async move {
                let request = HealthCheckRequest {
                    service: "chat.v1.ConversationService".into(),
                };
                let reply = health.check(request).await.ok()?;
                (reply.get_ref().status == ServingStatus::Serving as i32).then_some(())
            }
        })
        .await;
    }

    /// SIGKILL: no goodbye to its streams or calls, as when a host or a pod dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}
