//! `spawn_app`: a fresh database (dropped when the test ends), migrations applied, the
//! service on a random port, and a typed client. `spawn_process` starts a second replica
//! as a real OS process. Status assertions and throwaway databases come from
//! `chat_common::testing`, shared with token-service.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

pub use chat_common::testing::{
    database::{ADMIN_URL, TestDatabase},
    status::{bad_field, free_addr, reason},
};
use chat_proto::v1::{self, Participant, conversation_service_client::ConversationServiceClient};
use clap::Parser;
use conversation_service::{config::Config, realtime::Hub, startup::Application};
use sqlx::{Connection, PgConnection};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;

pub type Client = ConversationServiceClient<Channel>;

/// An empty database with a random name, dropped with the guard.
pub async fn fresh_database() -> TestDatabase {
    TestDatabase::create("cs_test").await
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
    /// The database the app made for itself (`spawn_app`), dropped with it.
    database: Option<TestDatabase>,
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
    spawn_app_with_flags(&[]).await
}

/// Starts the service in-process on a database of its own, with extra flags.
pub async fn spawn_app_with_flags(flags: &[&str]) -> TestApp {
    let database = fresh_database().await;
    let mut app = spawn_app_with(database.url(), flags).await;
    app.database = Some(database);
    app
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
        database: None,
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

pub async fn spawn_process(database_url: &str, flags: &[&str]) -> Replica {
    let addr = free_addr();
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
    Some(Participant::provider(id))
}

/// The session every conversation made by [`create`] is opened for.
pub const SESSION: &str = "5e55105e-0000-4000-8000-000000000001";

/// A customer; the anonymous one (`""`) presents [`SESSION`].
pub fn customer(id: &str) -> Option<Participant> {
    Some(if id.is_empty() {
        Participant::anonymous(SESSION)
    } else {
        Participant::customer(id)
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
            attachments: Vec::new(),
        })
        .await
        .map(|r| r.into_inner().message.unwrap())
}

/// Opens StreamConversation for `viewer`, replaying after `after_seq`.
pub async fn open_stream(
    client: &mut Client,
    conversation_id: &str,
    viewer: Option<Participant>,
    after_seq: i64,
) -> tonic::Streaming<v1::StreamConversationResponse> {
    client
        .stream_conversation(v1::StreamConversationRequest {
            conversation_id: conversation_id.into(),
            viewer,
            after_seq,
            after_change: None,
        })
        .await
        .unwrap()
        .into_inner()
}

pub type Events = chat_proto::v1::event_service_client::EventServiceClient<Channel>;

/// An EventService client on a connection of its own.
pub fn events_client(addr: SocketAddr) -> Events {
    Events::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy(),
    )
}

/// The payloads of every held event of `kind` about provider `p`, oldest first.
pub async fn provider_events(
    events: &mut Events,
    kind: v1::EventKind,
    p: &str,
) -> Vec<v1::event::Payload> {
    events
        .list_events(v1::ListEventsRequest {
            after: String::new(),
            page_size: 1000,
            kinds: vec![kind.into()],
            provider_ids: vec![p.to_owned()],
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .filter_map(|e| e.payload)
        .collect()
}

/// EditMessage; the message as it is after the edit.
pub async fn edit(
    client: &mut Client,
    conversation_id: &str,
    message_id: &str,
    editor: Option<v1::Participant>,
    body: &str,
    request_id: &str,
) -> Result<v1::Message, tonic::Status> {
    client
        .edit_message(v1::EditMessageRequest {
            conversation_id: conversation_id.into(),
            message_id: message_id.into(),
            editor,
            body: body.into(),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().message.unwrap())
}

/// DeleteMessage; the tombstone.
pub async fn delete(
    client: &mut Client,
    conversation_id: &str,
    message_id: &str,
    actor: Option<v1::Participant>,
    request_id: &str,
) -> Result<v1::Message, tonic::Status> {
    client
        .delete_message(v1::DeleteMessageRequest {
            conversation_id: conversation_id.into(),
            message_id: message_id.into(),
            actor,
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().message.unwrap())
}

/// The rows a plan read from `table`: what its scans of the table returned and what their
/// filters removed, over all their loops.
pub fn rows_read(plan: &serde_json::Value, table: &str) -> u64 {
    match plan {
        serde_json::Value::Object(node) => {
            let own = if node.get("Relation Name").and_then(|n| n.as_str()) == Some(table) {
                let count = |key: &str| node.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
                let loops = node
                    .get("Actual Loops")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(1);
                (count("Actual Rows")
                    + count("Rows Removed by Filter")
                    + count("Rows Removed by Index Recheck"))
                    * loops
            } else {
                0
            };
            own + node.values().map(|v| rows_read(v, table)).sum::<u64>()
        }
        serde_json::Value::Array(items) => items.iter().map(|v| rows_read(v, table)).sum(),
        _ => 0,
    }
}

/// Reads `stream` until `pick` returns something, within 20 s: the inbox waits of the
/// tests, each picking the event it waits for and skipping the rest.
pub async fn inbox_until<T>(
    stream: &mut tonic::Streaming<v1::StreamInboxResponse>,
    mut pick: impl FnMut(v1::StreamInboxResponse) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let response = stream
                .message()
                .await
                .unwrap()
                .expect("the inbox stays open");
            if let Some(picked) = pick(response) {
                return picked;
            }
        }
    })
    .await
    .expect("the inbox event waited for, within the deadline")
}
