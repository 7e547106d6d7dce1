//! Resuming streams across a replica killed mid-stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chat_client::v1;
use futures::StreamExt;
use v1::stream_conversation_response::Event;
use v1::stream_inbox_response::Event as InboxEvent;

use crate::helpers::{
    database, message, new_conversation, next_event, provider, replica_with_client,
};

async fn next_message(events: &mut chat_client::Follow<v1::StreamConversationResponse>) -> i64 {
    loop {
        let event = next_event(events).await;
        if let Some(Event::Message(message)) = event.event {
            return message.seq;
        }
    }
}

#[tokio::test]
async fn follow_sees_every_message_once_in_order_while_its_replica_is_killed_and_replaced() {
    let db = database().await;
    let (mut serving, follower) = replica_with_client(&db).await;
    // Messages go through a second replica, which stays up: the kill cuts only the stream.
    let (_writer, sender) = replica_with_client(&db).await;
    let conversation = new_conversation(&sender).await;
    let mut events = follower.follow(conversation.clone(), provider(), 0);

    let total = 60;
    let mut seen = Vec::new();
    for i in 1..=total {
        let request = message(&conversation, provider(), &format!("m{i}"));
        sender.send(request).await.unwrap();
        if i == 20 {
            while seen.len() < 10 {
                seen.push(next_message(&mut events).await);
            }
            serving.kill();
        }
        if i == 40 {
            serving.start().await;
        }
    }
    while seen.len() < total {
        seen.push(next_message(&mut events).await);
    }
    assert_eq!(
        seen,
        (1..=i64::try_from(total).unwrap()).collect::<Vec<_>>()
    );
    assert!(
        events.reconnects() >= 1,
        "the kill must have cut the stream"
    );
    // Nothing more (no duplicate) arrives afterwards.
    let extra = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(event) = events.next().await {
            if let Ok(v1::StreamConversationResponse {
                event: Some(Event::Message(m)),
                ..
            }) = event
            {
                return Some(m.seq);
            }
        }
        None
    })
    .await;
    assert!(extra.is_err(), "no message after the last one: {extra:?}");
}

#[tokio::test]
async fn follow_inbox_resumes_from_its_cursor_across_a_killed_replica() {
    let db = database().await;
    let (mut serving, follower) = replica_with_client(&db).await;
    // Messages go through a second replica, which stays up: the kill cuts only the stream.
    let (_writer, sender) = replica_with_client(&db).await;
    let owner = provider();
    let first = new_conversation(&sender).await;
    let mut events = follower.follow_inbox(owner.clone(), "");
    let mut messages = Vec::new();
    let mut created = Vec::new();
    let mut next = async |messages: &mut Vec<String>, created: &mut Vec<String>| loop {
        let event = next_event(&mut events).await;
        match event.event {
            Some(InboxEvent::Message(m)) => {
                messages.push(format!("{}/{}", m.conversation_id, m.seq));
                return;
            }
            Some(InboxEvent::ConversationCreated(c)) => {
                created.push(c.conversation.unwrap().conversation_id)
            }
            Some(InboxEvent::Heartbeat(_)) => return,
            _ => {}
        }
    };
    // The first heartbeat means the stream is open and gave a cursor.
    next(&mut messages, &mut created).await;
    let send = async |conversation: &str, body: &str| {
        let request = message(conversation, owner.clone(), body);
        sender.send(request).await.unwrap();
    };
    send(&first, "before").await;
    while messages.is_empty() {
        next(&mut messages, &mut created).await;
    }
    serving.kill();
    send(&first, "while down").await;
    let second = new_conversation(&sender).await;
    send(&second, "while down 2").await;
    serving.start().await;
    send(&first, "after").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while messages.len() < 4 || tokio::time::Instant::now() < deadline {
        next(&mut messages, &mut created).await;
    }
    assert_eq!(
        messages,
        [
            format!("{first}/1"),
            format!("{first}/2"),
            format!("{second}/1"),
            format!("{first}/3")
        ]
    );
    assert_eq!(created, [second]);
    assert!(
        events.reconnects() >= 1,
        "the kill must have cut the stream"
    );
}

#[tokio::test]
async fn follow_of_an_unknown_conversation_ends_with_its_reason_instead_of_retrying() {
    let db = database().await;
    let (_replica, client) = replica_with_client(&db).await;
    let mut events = client.follow(uuid::Uuid::new_v4().to_string(), provider(), 0);
    let error = events.next().await.unwrap().unwrap_err();
    assert_eq!(error.code(), Some(tonic::Code::NotFound));
    assert_eq!(error.reason(), Some("CONVERSATION_NOT_FOUND"));
    assert!(events.next().await.is_none());
    assert_eq!(events.reconnects(), 0);
}
