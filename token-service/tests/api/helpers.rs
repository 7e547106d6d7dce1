//! spawn_app and friends: every test gets its own SQLite file and its own server.

#![allow(dead_code)]

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use chat_common::testing::database::TestDatabase;
pub use chat_common::testing::status::{
    assert_invalid, assert_refused, eventually, free_addr, reason,
};
use chat_proto::v1::{
    GetSessionRequest, IssueTokenRequest, IssueTokenResponse, RedeemTokenRequest,
    RedeemTokenResponse, Session, token_service_client::TokenServiceClient,
};
use clap::Parser;
use token_service::{config::Config, startup::Application};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Status, transport::Channel};
use uuid::Uuid;

/// An address nothing listens on: conversation-service "down".
pub const NOWHERE: &str = "http://127.0.0.1:9";

pub struct TestApp {
    pub addr: SocketAddr,
    pub tokens: TokenServiceClient<Channel>,
    pub channel: Channel,
    pub db_path: PathBuf,
    /// `GET /metrics`, when started with `--metrics-addr`.
    pub metrics: Option<SocketAddr>,
    /// The service's own database handle, to reach under the API (reopen it, ...).
    pub store: token_service::store::Store,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
}

pub fn temp_db_path() -> PathBuf {
    std::env::temp_dir()
        .join(format!("token-service-test-{}", Uuid::new_v4()))
        .join("token.db")
}

/// Flags every test uses: short waits so fault paths run quickly.
pub fn test_args(db_path: &std::path::Path, conversation_url: &str) -> Vec<String> {
    [
        "token-service",
        "--listen",
        "127.0.0.1:0",
        "--database",
        db_path.to_str().unwrap(),
        "--conversation-service",
        conversation_url,
        "--inline-wait",
        "300ms",
        "--call-timeout",
        "1s",
        "--outbox-retry",
        "100ms",
        "--outbox-retry-max",
        "500ms",
        "--outbox-poll",
        "100ms",
        "--health-interval",
        "100ms",
        "--failed-redemptions-limit",
        "10",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// token-service with conversation-service unreachable.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(temp_db_path(), NOWHERE, &[]).await
}

pub async fn spawn_app_with(db_path: PathBuf, conversation_url: &str, extra: &[&str]) -> TestApp {
    let mut args = test_args(&db_path, conversation_url);
    // Kept for the whole test process: dropping it would stop giving spans trace ids.
    static TELEMETRY: std::sync::OnceLock<chat_common::telemetry::Telemetry> =
        std::sync::OnceLock::new();
    TELEMETRY
        .get_or_init(|| token_service::telemetry::init(chat_common::telemetry::LogFormat::Text));
    // A flag `test_args` already sets gets the new value; others are added.
    let mut extra = extra.iter();
    while let Some(arg) = extra.next() {
        match args.iter().position(|a| a == arg) {
            Some(at) if arg.starts_with("--") => {
                args[at + 1] = (*extra.next().expect("a value for the flag")).to_owned();
            }
            _ => args.push((*arg).to_owned()),
        }
    }
    let config = Config::try_parse_from(args).unwrap();
    let app = Application::build(config).await.unwrap();
    let store = app.store();
    let addr = app.local_addr();
    let metrics = app.metrics_addr();
    let shutdown = app.shutdown_token();
    let handle = tokio::spawn(async move {
        app.run().await.unwrap();
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    TestApp {
        addr,
        tokens: TokenServiceClient::new(channel.clone()),
        channel,
        db_path,
        metrics,
        store,
        shutdown,
        handle,
    }
}

impl TestApp {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("token-service did not stop in time")
            .unwrap();
    }

    pub async fn issue(&self, provider: &str, max_uses: i32) -> IssueTokenResponse {
        self.tokens
            .clone()
            .issue_token(IssueTokenRequest {
                provider_id: provider.into(),
                label: "test link".into(),
                ttl: None,
                max_uses,
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn redeem(
        &self,
        provider: &str,
        secret: &str,
    ) -> Result<RedeemTokenResponse, Status> {
        self.redeem_req(RedeemTokenRequest {
            request_id: Uuid::new_v4().to_string(),
            provider_id: provider.into(),
            secret: secret.into(),
            customer_id: String::new(),
            new_conversation: false,
        })
        .await
    }

    pub async fn redeem_req(&self, req: RedeemTokenRequest) -> Result<RedeemTokenResponse, Status> {
        self.tokens
            .clone()
            .redeem_token(req)
            .await
            .map(tonic::Response::into_inner)
    }

    /// GetSession with `secret`: the session, or the refusal.
    pub async fn get_session(&self, secret: &str) -> Result<Session, Status> {
        self.tokens
            .clone()
            .get_session(GetSessionRequest {
                session_secret: secret.into(),
            })
            .await
            .map(|r| r.into_inner().session.expect("a session in the reply"))
    }

    /// Every row that matters, so a refused call can be shown to have changed nothing.
    /// Outbox bookkeeping (attempts, retry times) is left out: the worker moves it on its own.
    pub fn db_dump(&self) -> String {
        db_dump(&self.db_path)
    }
}

pub fn db_dump(path: &std::path::Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut out = String::new();
    for query in [
        "SELECT * FROM chat_tokens ORDER BY token_id",
        "SELECT * FROM chat_sessions ORDER BY session_id",
        "SELECT * FROM redeem_requests ORDER BY request_id",
        "SELECT job_id, session_id, kind, request_id, customer_id, name, email, phone, failed_time
         FROM outbox ORDER BY job_id",
    ] {
        let mut stmt = conn.prepare(query).unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                (0..n)
                    .map(|i| {
                        row.get::<_, rusqlite::types::Value>(i)
                            .map(|v| format!("{v:?}"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap();
        for row in rows {
            out.push_str(&row.unwrap().join("|"));
            out.push('\n');
        }
        out.push_str("--\n");
    }
    out
}

// ---- conversation-service, in-process, on a fresh PostgreSQL database ----

use chat_proto::v1::{Participant, conversation_service_client::ConversationServiceClient};
use tonic_health::pb::health_check_response::ServingStatus;

pub type ConversationClient = ConversationServiceClient<Channel>;

/// A PostgreSQL database of this test's own, dropped with the guard.
pub async fn test_database() -> TestDatabase {
    TestDatabase::create("tk_test").await
}

pub struct ConversationService {
    pub addr: SocketAddr,
    pub url: String,
    pub client: ConversationClient,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
    /// The database it was started on when it owns it; dropped after it stops.
    database: Option<TestDatabase>,
}

/// conversation-service on any port and a database of its own, dropped with it.
pub async fn spawn_fresh_conversation_service() -> ConversationService {
    let database = test_database().await;
    let mut service = spawn_conversation_service(database.url(), "127.0.0.1:0").await;
    service.database = Some(database);
    service
}

/// Starts conversation-service at `listen` ("127.0.0.1:0" for any port) and waits until
/// it is SERVING.
pub async fn spawn_conversation_service(database_url: &str, listen: &str) -> ConversationService {
    let config = conversation_service::config::Config::try_parse_from([
        "conversation-service",
        "--listen",
        listen,
        "--database-url",
        database_url,
        "--shutdown-grace",
        "1s",
    ])
    .unwrap();
    let app = conversation_service::startup::Application::build(config)
        .await
        .unwrap();
    let addr = app.local_addr();
    let shutdown = app.shutdown_token();
    let handle = tokio::spawn(app.run_until_stopped());
    let url = format!("http://{addr}");
    let channel = Channel::from_shared(url.clone()).unwrap().connect_lazy();
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    eventually(Duration::from_secs(10), || {
        let mut health = health.clone();
        async move {
            let reply = health
                .check(tonic_health::pb::HealthCheckRequest {
                    // Readiness: the database is reachable and migrated.
                    service: "chat.v1.ConversationService".into(),
                })
                .await;
            reply
                .ok()
                .filter(|r| r.get_ref().status == ServingStatus::Serving as i32)
                .map(|_| ())
        }
    })
    .await;
    ConversationService {
        addr,
        url,
        client: ConversationServiceClient::new(channel),
        shutdown,
        handle,
        database: None,
    }
}

impl ConversationService {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("conversation-service did not stop in time")
            .unwrap()
            .unwrap();
    }
}

/// Every conversation of a participant, all pages.
pub async fn list_all(
    client: &ConversationClient,
    who: Option<Participant>,
) -> Vec<chat_proto::v1::Conversation> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .clone()
            .list_conversations(chat_proto::v1::ListConversationsRequest {
                participant: who.clone(),
                status: 0,
                page_size: 200,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.conversations);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

/// A fresh provider id, so tests never see each other's rows.
pub fn new_provider() -> String {
    format!("prov-{}", Uuid::new_v4().simple())
}
