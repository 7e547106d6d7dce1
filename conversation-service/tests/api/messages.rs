//! SendMessage, ListMessages, MarkRead, SendTyping.

use std::collections::HashSet;

use chat_proto::v1::{self, ConversationStatus, Direction};
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{bad_field, create, customer, provider, reason, send, spawn_app};

#[tokio::test]
async fn fifty_concurrent_sends_get_seqs_one_to_fifty() {
    let mut app = spawn_app().await;
    let conversation = create(&mut app.client, "p1").await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = app.client.clone();
        let id = conversation.conversation_id.clone();
        let sender = if i % 2 == 0 {
            provider("p1")
        } else {
            customer("")
        };
        tasks.push(tokio::spawn(async move {
            send(&mut client, &id, sender, &format!("m{i}"))
                .await
                .unwrap()
                .seq
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=50).collect::<Vec<i64>>());
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 50);
    assert_eq!(
        app.count("SELECT max(head_seq) FROM conversations").await,
        50
    );
}

#[tokio::test]
async fn repeated_client_message_id_returns_the_original() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let conversation = create(&mut client, "p1").await;
    let request = v1::SendMessageRequest {
        conversation_id: conversation.conversation_id.clone(),
        sender: provider("p1"),
        body: "hello".into(),
        client_message_id: "client-1".into(),
        attachments: Vec::new(),
    };
    // Ten concurrent retries plus one later: one message.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut client = client.clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            client.send_message(request).await.unwrap().into_inner()
        }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        created += usize::from(reply.created);
        ids.insert(reply.message.unwrap().message_id);
    }
    let again = client.send_message(request).await.unwrap().into_inner();
    assert!(!again.created);
    ids.insert(again.message.unwrap().message_id);
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 1);
}

#[tokio::test]
async fn send_errors_change_nothing() {
    let mut app = spawn_app().await;
    let conversation = create(&mut app.client, "p1").await;
    let id = conversation.conversation_id.clone();

    let status = send(&mut app.client, &id, provider("p2"), "hi")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "NOT_A_PARTICIPANT");
    let status = send(&mut app.client, &id, customer("c9"), "hi")
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "no customer linked yet"
    );
    let status = send(&mut app.client, &id, provider("p1"), "   ")
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), bad_field(&status).as_str()),
        (Code::InvalidArgument, "body")
    );
    let status = send(&mut app.client, &id, provider("p1"), &"x".repeat(4001))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), bad_field(&status).as_str()),
        (Code::InvalidArgument, "body")
    );
    let status = send(&mut app.client, &id, None, "hi").await.unwrap_err();
    assert_eq!(
        (status.code(), bad_field(&status).as_str()),
        (Code::InvalidArgument, "sender")
    );
    let status = send(&mut app.client, "nope", provider("p1"), "hi")
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), bad_field(&status).as_str()),
        (Code::InvalidArgument, "conversation_id")
    );
    let status = send(
        &mut app.client,
        &Uuid::new_v4().to_string(),
        provider("p1"),
        "hi",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    app.client
        .set_conversation_status(v1::SetConversationStatusRequest {
            conversation_id: id.clone(),
            status: ConversationStatus::Closed.into(),
            actor: None,
        })
        .await
        .unwrap();
    let status = send(&mut app.client, &id, provider("p1"), "hi")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "CONVERSATION_CLOSED");
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 0);
    assert_eq!(
        app.count("SELECT max(head_seq) FROM conversations").await,
        0
    );
}

#[tokio::test]
async fn anonymous_customer_can_talk_until_a_customer_is_linked() {
    let mut app = spawn_app().await;
    let conversation = create(&mut app.client, "p1").await;
    let id = conversation.conversation_id.clone();
    send(
        &mut app.client,
        &id,
        customer(""),
        "hi, I came from your link",
    )
    .await
    .unwrap();
    app.client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: id.clone(),
            customer_id: Some("c1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let status = send(&mut app.client, &id, customer(""), "again")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        send(&mut app.client, &id, customer("c1"), "now as c1")
            .await
            .unwrap()
            .seq,
        2
    );
}

#[tokio::test]
async fn unread_counts_last_message_and_mark_read() {
    let mut app = spawn_app().await;
    let conversation = create(&mut app.client, "p1").await;
    let id = conversation.conversation_id.clone();
    for i in 0..3 {
        send(&mut app.client, &id, customer(""), &format!("c{i}"))
            .await
            .unwrap();
    }
    send(&mut app.client, &id, provider("p1"), "answer")
        .await
        .unwrap();
    send(&mut app.client, &id, customer(""), "thanks")
        .await
        .unwrap();

    let listed = app
        .client
        .list_conversations(v1::ListConversationsRequest {
            participant: provider("p1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversations;
    // The provider's own message at seq 4 marked 1..4 read; seq 5 is unread.
    assert_eq!(listed[0].unread_count, 1);
    assert_eq!(listed[0].head_seq, 5);
    assert_eq!(listed[0].last_message.as_ref().unwrap().body, "thanks");

    let read = |seq: i64, reader| v1::MarkReadRequest {
        conversation_id: id.clone(),
        reader,
        seq,
    };
    let reply = app
        .client
        .mark_read(read(5, provider("p1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.read_seq, reply.unread_count), (5, 0));
    let reply = app
        .client
        .mark_read(read(2, provider("p1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.read_seq, 5, "read position never moves back");
    let reply = app
        .client
        .mark_read(read(3, customer("")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.read_seq, reply.unread_count),
        (5, 0),
        "customer's own send at 5 already read"
    );

    let status = app
        .client
        .mark_read(read(6, provider("p1")))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), bad_field(&status).as_str()),
        (Code::InvalidArgument, "seq")
    );
    let status = app
        .client
        .mark_read(read(-1, provider("p1")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = app
        .client
        .mark_read(read(1, provider("p2")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        app.count("SELECT provider_read_seq FROM conversations")
            .await,
        5
    );
}

#[tokio::test]
async fn list_messages_pages_both_directions_and_refuses_bad_tokens_sizes_and_intruders() {
    let mut app = spawn_app().await;
    let conversation = create(&mut app.client, "p1").await;
    let id = conversation.conversation_id.clone();
    for i in 1..=7 {
        send(&mut app.client, &id, provider("p1"), &format!("m{i}"))
            .await
            .unwrap();
    }
    let list =
        |direction: Direction, cursor_seq: i64, page_token: String| v1::ListMessagesRequest {
            conversation_id: id.clone(),
            viewer: provider("p1"),
            direction: direction.into(),
            cursor_seq,
            page_size: 3,
            page_token,
        };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list_messages(list(Direction::Backward, 0, token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.head_seq, 7);
        seen.extend(page.messages.iter().map(|m| m.seq));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, vec![7, 6, 5, 4, 3, 2, 1]);
    let page = app
        .client
        .list_messages(list(Direction::Forward, 5, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![6, 7]
    );
    assert!(page.next_page_token.is_empty());

    let first = app
        .client
        .list_messages(list(Direction::Forward, 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    let status = app
        .client
        .list_messages(list(Direction::Backward, 0, first.next_page_token))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), bad_field(&status).as_str()),
        (Code::InvalidArgument, "page_token")
    );
    let mut bad = list(Direction::Forward, 0, String::new());
    bad.page_size = -1;
    let status = app.client.list_messages(bad).await.unwrap_err();
    assert_eq!(
        (status.code(), bad_field(&status).as_str()),
        (Code::InvalidArgument, "page_size")
    );
    let mut intruder = list(Direction::Forward, 0, String::new());
    intruder.viewer = provider("p2");
    assert_eq!(
        app.client.list_messages(intruder).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn forward_pagination_sees_every_message_once_while_new_ones_arrive() {
    let mut app = spawn_app().await;
    let conversation = create(&mut app.client, "p1").await;
    let id = conversation.conversation_id.clone();
    for i in 0..25 {
        send(&mut app.client, &id, provider("p1"), &format!("m{i}"))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list_messages(v1::ListMessagesRequest {
                conversation_id: id.clone(),
                viewer: customer(""),
                page_size: 4,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.messages.iter().map(|m| m.seq));
        // Two more arrive between pages, up to 40 in all.
        if seen.len() < 40 {
            for _ in 0..2 {
                send(&mut app.client, &id, customer(""), "late")
                    .await
                    .unwrap();
            }
        }
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let total = app.count("SELECT count(*) FROM messages").await;
    assert_eq!(seen, (1..=total).collect::<Vec<i64>>());
}

#[tokio::test]
async fn typing_requires_a_participant() {
    let mut app = spawn_app().await;
    let conversation = create(&mut app.client, "p1").await;
    let typing = |sender| v1::SendTypingRequest {
        conversation_id: conversation.conversation_id.clone(),
        sender,
    };
    app.client
        .send_typing(typing(provider("p1")))
        .await
        .unwrap();
    let status = app
        .client
        .send_typing(typing(provider("p2")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 0);
}
