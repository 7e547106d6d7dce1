//! `send` retries and typed errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use chat_client::{Client, ClientConfig, v1};
use futures::future::BoxFuture;
use tonic::Code;
use tonic::body::Body;
use tonic::transport::Channel;

use crate::helpers::{
    Replica, database, fast, free_port, history, message, new_conversation, provider,
    replica_with_client,
};

/// A transport that lets the first SendMessage reach the service (so it is written),
/// then loses its answer, as when a connection drops after the request went out.
#[derive(Clone)]
struct LoseFirstAnswer {
    inner: Channel,
    sends: Arc<AtomicUsize>,
}

impl tower::Service<http::Request<Body>> for LoseFirstAnswer {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let is_send = request.uri().path().ends_with("/SendMessage");
        let first = is_send && self.sends.fetch_add(1, Ordering::SeqCst) == 0;
        let answer = tower::Service::call(&mut self.inner, request);
        Box::pin(async move {
            let response = answer.await?;
            if !first {
                return Ok(response);
            }
            // The headers of a unary answer come once the handler is done: the message
            // is committed. Drop it and say UNAVAILABLE instead (trailers-only).
            drop(response);
            let lost = http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "14")
                .header("grpc-message", "connection reset")
                .body(Body::empty())
                .unwrap();
            Ok(lost)
        })
    }
}

#[tokio::test]
async fn send_retries_a_lost_answer_with_the_same_client_message_id_and_writes_once() {
    let db = database().await;
    let (replica, plain) = replica_with_client(&db).await;
    let conversation = new_conversation(&plain).await;
    let channel = Channel::from_shared(replica.url()).unwrap().connect_lazy();
    let sends = Arc::new(AtomicUsize::new(0));
    let lossy = LoseFirstAnswer {
        inner: channel,
        sends: Arc::clone(&sends),
    };
    let client = Client::with_service(lossy, fast(replica.url())).unwrap();
    let reply = client
        .send(message(&conversation, provider(), "once"))
        .await
        .unwrap();
    assert_eq!(
        sends.load(Ordering::SeqCst),
        2,
        "one lost answer, one retry"
    );
    assert!(!reply.created, "the retry gets the original message back");
    let message = reply.message.unwrap();
    assert_eq!(message.seq, 1);
    assert!(!message.client_message_id.is_empty());
    assert_eq!(history(&plain, &conversation).await, ["once"]);
}

#[tokio::test]
async fn send_waits_out_a_replica_that_is_down_and_writes_once() {
    let db = database().await;
    let mut replica = Replica::new(&db, free_port());
    replica.start().await;
    let mut config = fast(replica.url());
    config.send_attempts = 40;
    let client = Client::connect(config).unwrap();
    let conversation = new_conversation(&client).await;
    replica.kill();
    let sending = tokio::spawn({
        let client = client.clone();
        let conversation = conversation.clone();
        async move {
            client
                .send(v1::SendMessageRequest {
                    conversation_id: conversation,
                    sender: Some(provider()),
                    body: "late".into(),
                    client_message_id: "k1".into(),
                    attachments: Vec::new(),
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    if sending.is_finished() {
        panic!(
            "finished while nothing listens: {:?}",
            sending.await.unwrap()
        );
    }
    replica.start().await;
    let reply = sending.await.unwrap().unwrap();
    assert!(reply.created);
    assert_eq!(reply.message.unwrap().client_message_id, "k1");
    assert_eq!(history(&client, &conversation).await, ["late"]);
}

#[tokio::test]
async fn send_gives_up_after_its_attempts_with_unavailable() {
    let mut config = fast(format!("http://127.0.0.1:{}", free_port()));
    config.send_attempts = 3;
    let client = Client::connect(config).unwrap();
    let error = client
        .send(message(&uuid::Uuid::new_v4().to_string(), provider(), "x"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::Unavailable));
    assert!(error.is_transient());
}

#[tokio::test]
async fn a_bad_configuration_is_refused_before_any_call() {
    let refused = |config: ClientConfig| {
        matches!(Client::connect(config), Err(chat_client::Error::Config(_)))
    };
    assert!(refused(ClientConfig::new("not a url")));
    let mut plaintext_with_tls = ClientConfig::new("http://127.0.0.1:1");
    plaintext_with_tls.tls = Some(chat_client::TlsConfig::default());
    assert!(
        refused(plaintext_with_tls),
        "no silent plaintext when TLS was asked for"
    );
    assert!(
        refused(ClientConfig::new("https://127.0.0.1:1")),
        "https without a CA"
    );
    let mut bad_token = ClientConfig::new("http://127.0.0.1:1");
    bad_token.bearer_token = Some("line\nbreak".into());
    assert!(refused(bad_token));
}

#[tokio::test]
async fn refusals_carry_their_error_info_and_field() {
    let db = database().await;
    let (_replica, client) = replica_with_client(&db).await;
    let conversation = new_conversation(&client).await;
    let empty = client
        .send(message(&conversation, provider(), ""))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Some(Code::InvalidArgument));
    let chat_client::Error::Rpc(rpc) = &empty else {
        panic!("{empty}")
    };
    assert!(
        rpc.field_violations.iter().any(|v| v.field == "body"),
        "{rpc:?}"
    );
    assert_eq!(rpc.domain.as_deref(), Some("chat.v1"));

    client
        .conversations()
        .set_conversation_status(v1::SetConversationStatusRequest {
            conversation_id: conversation.clone(),
            status: v1::ConversationStatus::Closed.into(),
            actor: None,
        })
        .await
        .unwrap();
    let closed = client
        .send(message(&conversation, provider(), "too late"))
        .await
        .unwrap_err();
    assert_eq!(closed.code(), Some(Code::FailedPrecondition));
    assert_eq!(closed.reason(), Some("CONVERSATION_CLOSED"));
}
