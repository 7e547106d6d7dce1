//! UnreadSummaryChanged on StreamInbox: sent when the participant's unread summary
//! changes, coalesced, the last one exact.

use std::time::Duration;

use chat_proto::v1::{self, StreamInboxResponse, stream_inbox_response::Event};
use tokio::time::Instant;
use tonic::Streaming;
use uuid::Uuid;

use crate::helpers::{
    Client, create, customer, inbox_until, new_provider, provider, send, spawn_app,
};

async fn open(
    client: &mut Client,
    participant: Option<v1::Participant>,
) -> Streaming<StreamInboxResponse> {
    client
        .stream_inbox(v1::StreamInboxRequest {
            participant,
            cursor: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next summary the stream sends, skipping every other event.
async fn next_summary(stream: &mut Streaming<StreamInboxResponse>) -> (i64, i64) {
    inbox_until(stream, |response| match response.event {
        Some(Event::UnreadSummaryChanged(s)) => Some((s.unread_messages, s.unread_conversations)),
        _ => None,
    })
    .await
}

/// Every summary the stream sends until it has been quiet for `quiet`.
async fn summaries_until_quiet(
    stream: &mut Streaming<StreamInboxResponse>,
    quiet: Duration,
) -> Vec<(i64, i64)> {
    let mut seen = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        match tokio::time::timeout(quiet, stream.message()).await {
            Ok(response) => {
                let response = response.unwrap().expect("the inbox stays open");
                if let Some(Event::UnreadSummaryChanged(s)) = response.event {
                    seen.push((s.unread_messages, s.unread_conversations));
                    last = Instant::now();
                }
            }
            Err(_) => break,
        }
    }
    seen
}

async fn summary(client: &mut Client, who: Option<v1::Participant>) -> (i64, i64) {
    let reply = client
        .get_unread_summary(v1::GetUnreadSummaryRequest { participant: who })
        .await
        .unwrap()
        .into_inner();
    (reply.unread_messages, reply.unread_conversations)
}

#[tokio::test]
async fn messages_and_reads_bring_the_new_summary() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let c = &mut client;
    let owner = new_provider();
    let cust = format!("cust-{}", Uuid::new_v4().simple());
    let first = create(c, &owner).await.conversation_id;
    let second = create(c, &owner).await.conversation_id;
    c.update_customer(v1::UpdateCustomerRequest {
        conversation_id: second.clone(),
        customer_id: Some(cust.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut inbox = open(c, provider(&owner)).await;
    let mut customer_inbox = open(c, customer(&cust)).await;

    send(c, &first, customer(""), "hello").await.unwrap();
    assert_eq!(next_summary(&mut inbox).await, (1, 1));
    send(c, &second, customer(&cust), "one").await.unwrap();
    send(c, &second, customer(&cust), "two").await.unwrap();
    let mut last = next_summary(&mut inbox).await;
    if last != (3, 2) {
        last = next_summary(&mut inbox).await;
    }
    assert_eq!(last, (3, 2));

    // A reply marks the provider's side read and gives the customer one unread.
    send(c, &second, provider(&owner), "reply").await.unwrap();
    assert_eq!(next_summary(&mut inbox).await, (1, 1));
    assert_eq!(next_summary(&mut customer_inbox).await, (1, 1));

    c.mark_read(v1::MarkReadRequest {
        conversation_id: second.clone(),
        reader: customer(&cust),
        seq: 3,
    })
    .await
    .unwrap();
    assert_eq!(next_summary(&mut customer_inbox).await, (0, 0));
    c.mark_read(v1::MarkReadRequest {
        conversation_id: first.clone(),
        reader: provider(&owner),
        seq: 1,
    })
    .await
    .unwrap();
    assert_eq!(next_summary(&mut inbox).await, (0, 0));
    assert_eq!(summary(c, provider(&owner)).await, (0, 0));
}

#[tokio::test]
async fn a_burst_brings_a_few_summaries_and_the_last_is_exact() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let c = &mut client;
    let owner = new_provider();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(create(c, &owner).await.conversation_id);
    }
    let mut inbox = open(c, provider(&owner)).await;
    let mut sends = Vec::new();
    for n in 0..50 {
        let mut client = c.clone();
        let id = ids[n % ids.len()].clone();
        sends.push(tokio::spawn(async move {
            // Spread over about a second, so the stream is woken many times.
            tokio::time::sleep(Duration::from_millis(20 * n as u64)).await;
            send(&mut client, &id, customer(""), &format!("burst {n}"))
                .await
                .unwrap();
        }));
    }
    for task in sends {
        task.await.unwrap();
    }
    let seen = summaries_until_quiet(&mut inbox, Duration::from_secs(2)).await;
    assert!(
        !seen.is_empty() && seen.len() < 15,
        "{} summaries for 50 sends: {seen:?}",
        seen.len()
    );
    assert_eq!(seen.last(), Some(&(50, 5)), "{seen:?}");
    assert_eq!(summary(c, provider(&owner)).await, (50, 5));
}
