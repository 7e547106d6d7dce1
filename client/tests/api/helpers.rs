//! The real service for the tests: a fresh database per test and conversation-service
//! replicas run from the built binary ([`Replica`], shared with token-service's tests),
//! which a test kills with SIGKILL and starts again on the same address, as a load
//! balancer's address outlives a replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chat_client::{Client, ClientConfig, Follow, v1};
pub use chat_common::testing::{database::TestDatabase, process::Replica};
use futures::StreamExt;

/// A fresh database; its prefix is one `scripts/test.sh` sweeps if a run is killed.
pub async fn database() -> TestDatabase {
    TestDatabase::create("cs_test_client").await
}

pub fn free_port() -> u16 {
    chat_common::testing::status::free_addr().port()
}

/// Waits until `client`'s service answers a call that reaches the database.
pub async fn wait_ready(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = v1::GetConversationRequest {
            conversation_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        };
        match client.conversations().get_conversation(request).await {
            Ok(_) => return,
            // NOT_FOUND (or any answer about the request) means it is serving.
            Err(status)
                if !matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                return;
            }
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "conversation-service did not become ready in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Settings that make the tests' reconnects quick.
pub fn fast(url: String) -> ClientConfig {
    let mut config = ClientConfig::new(url);
    config.backoff.initial = Duration::from_millis(50);
    config.backoff.max = Duration::from_millis(500);
    config.idle_timeout = Duration::from_secs(3);
    config
}

pub fn provider() -> v1::Participant {
    v1::Participant::provider("prov-rs")
}

/// A replica on a fresh port of `db`, started, and a client of it.
pub async fn replica_with_client(db: &TestDatabase) -> (Replica, Client) {
    let mut replica = Replica::new(db, free_port());
    replica.start().await;
    let client = Client::connect(fast(replica.url())).unwrap();
    (replica, client)
}

/// A SendMessage request of `sender` (no client_message_id: `send` makes one).
pub fn message(
    conversation_id: &str,
    sender: v1::Participant,
    body: &str,
) -> v1::SendMessageRequest {
    v1::SendMessageRequest {
        conversation_id: conversation_id.into(),
        sender: Some(sender),
        body: body.into(),
        ..Default::default()
    }
}

/// The next event of a followed stream; fails the test after 20 s or on an error.
pub async fn next_event<E: Send + 'static>(events: &mut Follow<E>) -> E {
    tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("an event within 20 s")
        .expect("the stream goes on")
        .expect("no error")
}

/// A new conversation of `provider()` with an anonymous visitor.
pub async fn new_conversation(client: &Client) -> String {
    let reply = client
        .conversations()
        .create_conversation(v1::CreateConversationRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            provider_id: provider().id,
            session_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    reply.conversation.unwrap().conversation_id
}

/// The bodies of a conversation's history, oldest first.
pub async fn history(client: &Client, conversation_id: &str) -> Vec<String> {
    let page = client
        .conversations()
        .list_messages(v1::ListMessagesRequest {
            conversation_id: conversation_id.into(),
            viewer: Some(provider()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    page.messages.into_iter().map(|m| m.body).collect()
}
