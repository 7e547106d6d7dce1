//! Health and reflection.

use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{NOWHERE, eventually, spawn_app, spawn_app_with, temp_db_path};

async fn status(channel: &Channel, service: &str) -> ServingStatus {
    let reply = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(reply.status).unwrap()
}

/// Waits (up to 5 s) until `service` reports `want`.
async fn wait_status(channel: &Channel, service: &str, want: ServingStatus) {
    eventually(Duration::from_secs(5), || async move {
        (status(channel, service).await == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn ready_without_conversation_service_and_reports_it_not_serving() {
    let app = spawn_app().await;
    let channel = app.channel.clone();
    eventually(Duration::from_secs(5), || {
        let channel = channel.clone();
        async move {
            (status(&channel, "").await == ServingStatus::Serving
                && status(&channel, "chat.v1.TokenService").await == ServingStatus::Serving
                && status(&channel, "chat.v1.ConversationService").await
                    == ServingStatus::NotServing)
                .then_some(())
        }
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn not_ready_but_alive_while_the_database_cannot_be_opened_then_recovers() {
    // The database's directory is blocked by a plain file: nothing can be opened.
    let db_path = temp_db_path();
    let dir = db_path.parent().unwrap().to_owned();
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    std::fs::write(&dir, b"in the way").unwrap();

    let app = spawn_app_with(db_path.clone(), NOWHERE, &[]).await;
    let channel = app.channel.clone();
    wait_status(&channel, "chat.v1.TokenService", ServingStatus::NotServing).await;
    // Liveness stays SERVING: restarting would not bring the database back.
    assert_eq!(status(&channel, "").await, ServingStatus::Serving);
    let refused = app
        .tokens
        .clone()
        .issue_token(chat_proto::v1::IssueTokenRequest {
            provider_id: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        !refused.message().contains("directory"),
        "leaks internals: {refused:?}"
    );

    // Clear the way: the service opens the database by itself.
    std::fs::remove_file(&dir).unwrap();
    wait_status(&channel, "chat.v1.TokenService", ServingStatus::Serving).await;
    app.issue("p", 0).await;
    app.stop().await;
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_services() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::{v1, v1alpha};

    let app = spawn_app().await;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.next().await.unwrap().unwrap();
    let listed = format!("{reply:?}");
    assert!(listed.contains("chat.v1.TokenService"), "{listed}");
    assert!(listed.contains("chat.v1.TokenAdminService"), "{listed}");
    assert!(listed.contains("grpc.health.v1.Health"), "{listed}");
    assert!(!listed.contains("chat.v1.ConversationService"), "{listed}");

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.next().await.unwrap().unwrap();
    assert!(format!("{reply:?}").contains("chat.v1.TokenService"));
    app.stop().await;
}

#[tokio::test]
async fn a_second_process_on_the_same_database_waits_for_the_first() {
    let first = spawn_app().await;
    first.issue("p", 0).await;
    let second = spawn_app_with(first.db_path.clone(), NOWHERE, &[]).await;
    let channel = second.channel.clone();
    wait_status(&channel, "chat.v1.TokenService", ServingStatus::NotServing).await;
    let refused = second
        .tokens
        .clone()
        .list_tokens(chat_proto::v1::ListTokensRequest {
            provider_id: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);

    // The first one goes away: the second takes the database over.
    first.stop().await;
    wait_status(&channel, "chat.v1.TokenService", ServingStatus::Serving).await;
    let listed = second
        .tokens
        .clone()
        .list_tokens(chat_proto::v1::ListTokensRequest {
            provider_id: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
    second.stop().await;
}
