//! `spawn_app`: a fresh database, migrations applied, the service on a random port, and a
//! typed client. `spawn_process` starts a second replica as a real OS process.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use chat_proto::v1::{
    self, Participant, Role, conversation_service_client::ConversationServiceClient,
};
use clap::Parser;
use conversation_service::{config::Config, realtime::Hub, startup::Application};
use sqlx::{Connection, PgConnection};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub type Client = ConversationServiceClient<Channel>;

/// Creates an empty database with a random name and returns its URL.
pub async fn fresh_database() -> String {
    let name = format!("cs_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(ADMIN_URL)
        .await
        .expect("PostgreSQL must run at 127.0.0.1:5432 (see README)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub database_url: String,
    pub client: Client,
    pub hub: Arc<Hub>,
    /// `GET /metrics`, when started with `--metrics-addr`.
    pub metrics: Option<SocketAddr>,
    /// Stops the service when the test ends.
    shutdown: tokio_util::sync::DropGuard,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub async fn db(&self) -> PgConnection {
        PgConnection::connect(&self.database_url).await.unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let mut db = self.db().await;
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut db)
            .await
            .unwrap();
        n
    }

    /// Shuts the service down and waits until it has stopped (`None`: not within 10 s).
    pub async fn stop(self) -> Option<anyhow::Result<()>> {
        let Self {
            client,
            shutdown,
            server,
            ..
        } = self;
        drop(client);
        shutdown.disarm().cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(10), server).await;
        Some(stopped.ok()?.expect("the server task does not panic"))
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&fresh_database().await, &[]).await
}

/// Starts the service in-process against `database_url` with extra flags.
pub async fn spawn_app_with(database_url: &str, flags: &[&str]) -> TestApp {
    let mut args = vec![
        "conversation-service",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
    ];
    args.extend_from_slice(flags);
    let config = Config::try_parse_from(args).unwrap();
    let app = Application::build(config).await.unwrap();
    let addr = app.local_addr();
    let hub = app.hub();
    let metrics = app.metrics_addr();
    let shutdown = app.shutdown_token().drop_guard();
    let server = tokio::spawn(app.run_until_stopped());
    let client = connect(addr).await;
    wait_serving(addr).await;
    TestApp {
        addr,
        database_url: database_url.to_owned(),
        client,
        hub,
        metrics,
        shutdown,
        server,
    }
}

pub async fn connect(addr: SocketAddr) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    ConversationServiceClient::new(channel)
}

/// Waits until health says SERVING (listener connected, migrations applied).
pub async fn wait_serving(addr: SocketAddr) {
    wait_health(addr, 1).await;
}

/// Waits until health reports `status` (1 SERVING, 2 NOT_SERVING) for the service.
pub async fn wait_health(addr: SocketAddr, status: i32) {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut health = HealthClient::new(channel);
    for _ in 0..200 {
        let reply = health
            .check(HealthCheckRequest {
                service: "chat.v1.ConversationService".into(),
            })
            .await;
        if reply.is_ok_and(|r| r.into_inner().status == status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} never reported health status {status}");
}

/// A replica as a separate OS process (killed on drop).
pub struct Replica {
    pub child: Child,
    pub addr: SocketAddr,
    pub client: Client,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

pub async fn spawn_process(database_url: &str, flags: &[&str]) -> Replica {
    let addr = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_conversation-service"))
        .args([
            "--listen",
            &addr.to_string(),
            "--database-url",
            database_url,
        ])
        .args(flags)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_serving(addr).await;
    Replica {
        child,
        addr,
        client: connect(addr).await,
    }
}

pub fn provider(id: &str) -> Option<Participant> {
    Some(Participant {
        role: Role::Provider.into(),
        id: id.into(),
        ..Default::default()
    })
}

/// The session every conversation made by [`create`] is opened for.
pub const SESSION: &str = "5e55105e-0000-4000-8000-000000000001";

/// A customer; the anonymous one (`""`) presents [`SESSION`].
pub fn customer(id: &str) -> Option<Participant> {
    Some(Participant {
        role: Role::Customer.into(),
        id: id.into(),
        session_id: if id.is_empty() {
            SESSION.into()
        } else {
            String::new()
        },
    })
}

/// A fresh provider id, so tests sharing nothing never see each other's rows.
pub fn new_provider() -> String {
    format!("prov-{}", Uuid::new_v4().simple())
}

pub async fn create(client: &mut Client, provider_id: &str) -> v1::Conversation {
    client
        .create_conversation(v1::CreateConversationRequest {
            request_id: Uuid::new_v4().to_string(),
            provider_id: provider_id.into(),
            session_id: SESSION.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
}

pub async fn send(
    client: &mut Client,
    conversation_id: &str,
    sender: Option<Participant>,
    body: &str,
) -> Result<v1::Message, tonic::Status> {
    client
        .send_message(v1::SendMessageRequest {
            conversation_id: conversation_id.into(),
            sender,
            body: body.into(),
            client_message_id: String::new(),
        })
        .await
        .map(|r| r.into_inner().message.unwrap())
}

/// The ErrorInfo reason of a status.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// The field named by a BadRequest violation.
pub fn bad_field(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}
