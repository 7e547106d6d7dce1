//! Starting up: replicas migrating the same database at once, and a database that
//! appears only after the service started.

use std::time::Duration;

use chat_proto::v1;
use clap::Parser;
use conversation_service::{config::Config, startup::Application};
use sqlx::{Connection, PgConnection};
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{ADMIN_URL, connect, create, fresh_database, spawn_app_with, wait_serving};

#[tokio::test]
async fn two_replicas_starting_together_both_serve_one_schema() {
    let database = fresh_database().await;
    let url = database.url().to_owned();
    let (mut a, mut b) = tokio::join!(spawn_app_with(&url, &[]), spawn_app_with(&url, &[]));
    let made = create(&mut a.client, "p1").await;
    let seen = b
        .client
        .get_conversation(v1::GetConversationRequest {
            conversation_id: made.conversation_id,
            viewer: None,
        })
        .await
        .unwrap();
    assert!(seen.into_inner().conversation.is_some());
    // Each migration applied once, whoever got there first.
    let files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations/conversation"
    ))
    .unwrap()
    .count();
    assert_eq!(
        a.count("SELECT count(*) FROM _sqlx_migrations").await,
        i64::try_from(files).unwrap()
    );
}

#[tokio::test]
async fn a_database_that_appears_later_is_picked_up() {
    // A fresh name whose database is dropped again at the end, even on failure; it
    // does not exist while the service starts.
    let database = fresh_database().await;
    let (name, url) = (database.name().to_owned(), database.url().to_owned());
    let mut admin = PgConnection::connect(ADMIN_URL).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .unwrap();
    let config = Config::try_parse_from([
        "conversation-service",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &url,
        "--db-acquire-timeout",
        "300ms",
    ])
    .unwrap();
    let app = Application::build(config).await.unwrap();
    let addr = app.local_addr();
    let _stop = app.shutdown_token().drop_guard();
    tokio::spawn(app.run_until_stopped());
    let mut client = connect(addr).await;
    let refused = client
        .create_conversation(v1::CreateConversationRequest {
            provider_id: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "no database yet");

    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .unwrap();
    wait_serving(addr).await;
    create(&mut client, "p1").await;
}

/// Asserts that a call was refused as UNAVAILABLE.
fn unavailable<T: std::fmt::Debug>(result: Result<T, tonic::Status>) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

/// The database goes away under a running service (here: it stops accepting
/// connections and the service's backends are terminated): calls answer UNAVAILABLE,
/// never INTERNAL, health says NOT_SERVING, and all recovers when it comes back.
#[tokio::test]
async fn a_database_lost_while_serving_gives_unavailable_then_recovers() {
    let database = fresh_database().await;
    let url = database.url().to_owned();
    let mut app = spawn_app_with(&url, &["--db-acquire-timeout", "500ms"]).await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    let name = url.rsplit('/').next().unwrap().to_owned();
    let mut admin = PgConnection::connect(ADMIN_URL).await.unwrap();
    let allow = |yes: bool| {
        sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS {yes}"
        ))
    };
    sqlx::query(allow(false)).execute(&mut admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&mut admin)
        .await
        .unwrap();

    let send = v1::SendMessageRequest {
        conversation_id: id.clone(),
        sender: crate::helpers::provider("p1"),
        body: "hello".into(),
        client_message_id: "m1".into(),
        attachments: Vec::new(),
    };
    unavailable(app.client.send_message(send.clone()).await);
    unavailable(
        app.client
            .get_conversation(v1::GetConversationRequest {
                conversation_id: id.clone(),
                viewer: None,
            })
            .await,
    );
    // The unread summary, a filtered inbox and a search read the same pool.
    unavailable(
        app.client
            .get_unread_summary(v1::GetUnreadSummaryRequest {
                participant: crate::helpers::provider("p1"),
            })
            .await,
    );
    unavailable(
        app.client
            .list_conversations(v1::ListConversationsRequest {
                participant: crate::helpers::provider("p1"),
                unread_only: true,
                customer_query: "lovelace".into(),
                ..Default::default()
            })
            .await,
    );
    unavailable(
        app.client
            .search_messages(v1::SearchMessagesRequest {
                participant: crate::helpers::provider("p1"),
                query: "hello".into(),
                ..Default::default()
            })
            .await,
    );
    // CreateConversation's writers have connections of their own.
    unavailable(
        app.client
            .create_conversation(v1::CreateConversationRequest {
                request_id: Uuid::new_v4().to_string(),
                provider_id: "p1".into(),
                session_id: crate::helpers::SESSION.into(),
                ..Default::default()
            })
            .await,
    );
    // The event feed and presence read the same pool.
    let mut events = crate::helpers::events_client(app.addr);
    unavailable(events.list_events(v1::ListEventsRequest::default()).await);
    unavailable(
        events
            .ack_events(v1::AckEventsRequest {
                consumer: "crm".into(),
                cursor: "0".into(),
            })
            .await,
    );
    unavailable(
        events
            .get_presence(v1::GetPresenceRequest {
                participants: vec![v1::Participant::provider("p1")],
            })
            .await,
    );
    let (key, missing) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let editor = crate::helpers::provider("p1");
    unavailable(crate::helpers::edit(&mut app.client, &id, &missing, editor, "edited", &key).await);
    crate::helpers::wait_health(app.addr, 2).await;

    sqlx::query(allow(true)).execute(&mut admin).await.unwrap();
    wait_serving(app.addr).await;
    let sent = app.client.send_message(send).await.unwrap().into_inner();
    assert_eq!(sent.message.unwrap().seq, 1);
    create(&mut app.client, "p1").await;
    assert_eq!(
        app.count("SELECT count(*) FROM conversations WHERE provider_id = 'p1'")
            .await,
        2,
        "the refused create wrote nothing"
    );
}
