//! EditMessage, DeleteMessage and attachments: every rule and refusal, the text really
//! gone after a delete, and changes delivered live and on resume (also across a
//! listener kill).

use std::time::Duration;

use chat_proto::v1::{
    self, ConversationStatus, StreamConversationResponse, stream_conversation_response::Event,
};
use tonic::{Code, Streaming};
use uuid::Uuid;

use crate::helpers::{
    Client, TestApp, bad_field, create, customer, delete, edit, inbox_until, new_provider,
    provider, reason, send, spawn_app, spawn_app_with_flags,
};

const WAIT: Duration = Duration::from_secs(20);
const FILES: &str = "https://files.example/chat/";

async fn history(client: &mut Client, conversation_id: &str) -> Vec<v1::Message> {
    client
        .list_messages(v1::ListMessagesRequest {
            conversation_id: conversation_id.into(),
            viewer: provider_of(conversation_id),
            page_size: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages
}

/// Conversations in this module are made by [`setup`], whose provider is `p-<id>`.
fn provider_of(conversation_id: &str) -> Option<v1::Participant> {
    provider(&format!("p-{conversation_id}"))
}

/// A conversation whose provider is [`provider_of`] it, with a provider message and an
/// anonymous customer's message.
async fn setup(app: &TestApp) -> (String, v1::Message, v1::Message) {
    let mut client = app.client.clone();
    let provider_id = new_provider();
    let conversation = create(&mut client, &provider_id).await;
    let id = conversation.conversation_id;
    // Rename the provider so provider_of works without carrying it around.
    let mut db = app.db().await;
    sqlx::query("UPDATE conversations SET provider_id = 'p-' || id::text WHERE id = $1::uuid")
        .bind(&id)
        .execute(&mut db)
        .await
        .unwrap();
    let from_provider = send(&mut client, &id, provider_of(&id), "hello from provider")
        .await
        .unwrap();
    let from_customer = send(&mut client, &id, customer(""), "hello from customer")
        .await
        .unwrap();
    (id, from_provider, from_customer)
}

async fn change_seq(app: &TestApp, id: &str) -> i64 {
    app.count(&format!(
        "SELECT change_seq FROM conversations WHERE id = '{id}'"
    ))
    .await
}

fn expect(status: &tonic::Status, code: Code, why: &str) {
    assert_eq!(
        (status.code(), reason(status).as_str()),
        (code, why),
        "{status:?}"
    );
}

#[tokio::test]
async fn the_sender_edits_its_message_which_keeps_its_seq_and_counts_edits() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let (id, mine, theirs) = setup(&app).await;
    let edited = edit(
        &mut client,
        &id,
        &mine.message_id,
        provider_of(&id),
        "fixed",
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        (edited.seq, edited.body.as_str(), edited.edit_count),
        (mine.seq, "fixed", 1)
    );
    assert!(edited.edit_time.is_some() && !edited.deleted);
    let again = edit(
        &mut client,
        &id,
        &mine.message_id,
        provider_of(&id),
        "fixed twice",
        "",
    )
    .await
    .unwrap();
    assert_eq!(again.edit_count, 2);
    // The anonymous customer edits its own, presenting its session.
    let customers = edit(
        &mut client,
        &id,
        &theirs.message_id,
        customer(""),
        "mine",
        "",
    )
    .await
    .unwrap();
    assert_eq!(customers.body, "mine");
    let listed = history(&mut client, &id).await;
    assert_eq!(listed[0].body, "fixed twice");
    assert_eq!(listed[1].body, "mine");
    assert_eq!(change_seq(&app, &id).await, 3);
    // The conversation's last message (the inbox preview) shows the edit.
    let conversation = client
        .get_conversation(v1::GetConversationRequest {
            conversation_id: id.clone(),
            viewer: None,
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    let last = conversation.last_message.unwrap();
    assert_eq!((last.body.as_str(), last.edit_count), ("mine", 1));
}

#[tokio::test]
async fn refused_edits_and_deletes_write_nothing() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let (id, mine, theirs) = setup(&app).await;
    let before = history(&mut client, &id).await;

    let status = edit(
        &mut client,
        &id,
        &theirs.message_id,
        provider_of(&id),
        "x",
        "",
    )
    .await
    .unwrap_err();
    expect(&status, Code::PermissionDenied, "NOT_MESSAGE_SENDER");
    let status = delete(&mut client, &id, &mine.message_id, customer(""), "")
        .await
        .unwrap_err();
    expect(&status, Code::PermissionDenied, "NOT_MESSAGE_SENDER");
    let status = edit(
        &mut client,
        &id,
        &mine.message_id,
        provider("someone-else"),
        "x",
        "",
    )
    .await
    .unwrap_err();
    expect(&status, Code::PermissionDenied, "NOT_A_PARTICIPANT");
    let status = delete(
        &mut client,
        &id,
        &mine.message_id,
        customer("c-unlinked"),
        "",
    )
    .await
    .unwrap_err();
    expect(&status, Code::PermissionDenied, "NOT_A_PARTICIPANT");
    let wrong_session = Some(v1::Participant::anonymous(Uuid::new_v4().to_string()));
    let status = edit(&mut client, &id, &theirs.message_id, wrong_session, "x", "")
        .await
        .unwrap_err();
    expect(&status, Code::PermissionDenied, "SESSION_MISMATCH");
    let status = edit(
        &mut client,
        &id,
        &Uuid::new_v4().to_string(),
        provider_of(&id),
        "x",
        "",
    )
    .await
    .unwrap_err();
    expect(&status, Code::NotFound, "MESSAGE_NOT_FOUND");
    let status = edit(
        &mut client,
        &Uuid::new_v4().to_string(),
        &mine.message_id,
        provider_of(&id),
        "x",
        "",
    )
    .await
    .unwrap_err();
    expect(&status, Code::NotFound, "CONVERSATION_NOT_FOUND");

    // Bad input names its field.
    for (body, message_id, request_id, field) in [
        ("   ", mine.message_id.as_str(), "", "body"),
        (&"x".repeat(4001), &mine.message_id, "", "body"),
        ("a\u{0}b", &mine.message_id, "", "body"),
        ("ok", "not-a-uuid", "", "message_id"),
        ("ok", &mine.message_id, "not-a-uuid", "request_id"),
    ] {
        let status = edit(
            &mut client,
            &id,
            message_id,
            provider_of(&id),
            body,
            request_id,
        )
        .await
        .unwrap_err();
        assert_eq!(
            (status.code(), bad_field(&status).as_str()),
            (Code::InvalidArgument, field)
        );
    }
    let status = edit(&mut client, &id, &mine.message_id, None, "ok", "")
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "editor");

    // Past the edit window (24 h by default).
    let mut db = app.db().await;
    sqlx::query(
        "UPDATE messages SET created_at = created_at - interval '25 hours' WHERE id = $1::uuid",
    )
    .bind(&mine.message_id)
    .execute(&mut db)
    .await
    .unwrap();
    let status = edit(
        &mut client,
        &id,
        &mine.message_id,
        provider_of(&id),
        "late",
        "",
    )
    .await
    .unwrap_err();
    expect(&status, Code::FailedPrecondition, "EDIT_WINDOW_PASSED");

    // A closed conversation takes no edits (deletions still go).
    client
        .set_conversation_status(v1::SetConversationStatusRequest {
            conversation_id: id.clone(),
            status: ConversationStatus::Closed.into(),
            actor: None,
        })
        .await
        .unwrap();
    let status = edit(
        &mut client,
        &id,
        &theirs.message_id,
        customer(""),
        "closed",
        "",
    )
    .await
    .unwrap_err();
    expect(&status, Code::FailedPrecondition, "CONVERSATION_CLOSED");

    let after = history(&mut client, &id).await;
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (&b.body, b.edit_count, b.deleted),
            (&a.body, a.edit_count, a.deleted)
        );
    }
    assert_eq!(change_seq(&app, &id).await, 0);
    assert_eq!(app.count("SELECT count(*) FROM message_changes").await, 0);
}

#[tokio::test]
async fn an_edit_window_of_zero_means_no_limit() {
    let app = spawn_app_with_flags(&["--edit-window", "0"]).await;
    let mut client = app.client.clone();
    let (id, mine, _) = setup(&app).await;
    let mut db = app.db().await;
    sqlx::query(
        "UPDATE messages SET created_at = created_at - interval '400 days' WHERE id = $1::uuid",
    )
    .bind(&mine.message_id)
    .execute(&mut db)
    .await
    .unwrap();
    let edited = edit(
        &mut client,
        &id,
        &mine.message_id,
        provider_of(&id),
        "old but fixed",
        "",
    )
    .await
    .unwrap();
    assert_eq!(edited.edit_count, 1);
}

#[tokio::test]
async fn a_retried_request_id_answers_the_same_and_another_request_under_it_is_refused() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let (id, mine, theirs) = setup(&app).await;
    let key = Uuid::new_v4().to_string();
    let first = edit(
        &mut client,
        &id,
        &mine.message_id,
        provider_of(&id),
        "v2",
        &key,
    )
    .await
    .unwrap();
    let retry = edit(
        &mut client,
        &id,
        &mine.message_id,
        provider_of(&id),
        "v2",
        &key,
    )
    .await
    .unwrap();
    assert_eq!(first, retry);
    assert_eq!(retry.edit_count, 1, "the retry edited nothing");
    let status = edit(
        &mut client,
        &id,
        &mine.message_id,
        provider_of(&id),
        "v3",
        &key,
    )
    .await
    .unwrap_err();
    expect(&status, Code::FailedPrecondition, "REQUEST_ID_REUSED");
    let status = delete(&mut client, &id, &mine.message_id, provider_of(&id), &key)
        .await
        .unwrap_err();
    expect(&status, Code::FailedPrecondition, "REQUEST_ID_REUSED");

    let delete_key = Uuid::new_v4().to_string();
    let gone = delete(
        &mut client,
        &id,
        &theirs.message_id,
        customer(""),
        &delete_key,
    )
    .await
    .unwrap();
    let again = delete(
        &mut client,
        &id,
        &theirs.message_id,
        customer(""),
        &delete_key,
    )
    .await
    .unwrap();
    assert_eq!(
        gone, again,
        "a retried delete answers the tombstone, not MESSAGE_DELETED"
    );
    // Someone else under the same key is another request.
    let status = delete(
        &mut client,
        &id,
        &theirs.message_id,
        provider_of(&id),
        &delete_key,
    )
    .await
    .unwrap_err();
    expect(&status, Code::FailedPrecondition, "REQUEST_ID_REUSED");
    assert_eq!(change_seq(&app, &id).await, 2);

    // Concurrent retries of one edit: one change.
    let key = Uuid::new_v4().to_string();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (mut client, id, message_id, key) = (
            client.clone(),
            id.clone(),
            mine.message_id.clone(),
            key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            edit(&mut client, &id, &message_id, provider_of(&id), "v4", &key)
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().edit_count, 2);
    }
    assert_eq!(change_seq(&app, &id).await, 3);
}

#[tokio::test]
async fn a_deleted_message_leaves_a_tombstone_and_no_trace_of_its_text() {
    let app = spawn_app_with_flags(&["--attachment-uri-prefixes", FILES]).await;
    let mut client = app.client.clone();
    let (id, mine, _) = setup(&app).await;
    let secret = client
        .send_message(v1::SendMessageRequest {
            conversation_id: id.clone(),
            sender: customer(""),
            body: "my card is 4111-SECRET".into(),
            client_message_id: "k-1".into(),
            attachments: vec![attachment("scan-SECRET.pdf", "application/pdf")],
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    edit(
        &mut client,
        &id,
        &secret.message_id,
        customer(""),
        "edited SECRET",
        &Uuid::new_v4().to_string(),
    )
    .await
    .unwrap();
    // The provider moderates: it deletes the customer's message.
    let tombstone = delete(&mut client, &id, &secret.message_id, provider_of(&id), "")
        .await
        .unwrap();
    assert!(tombstone.deleted);
    assert_eq!((tombstone.seq, tombstone.body.as_str()), (secret.seq, ""));
    assert!(tombstone.attachments.is_empty());
    // No row of any table holds the text any more.
    assert_eq!(
        crate::privacy::rows_containing(&app, "SECRET").await,
        Vec::<String>::new()
    );
    assert_eq!(
        app.count("SELECT count(*) FROM messages m WHERE m::text ILIKE '%SECRET%'")
            .await,
        0
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM message_changes x WHERE kind = 1 AND fingerprint IS NOT NULL"
        )
        .await,
        0
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM messages WHERE id = '{}' AND body = '' AND attachments IS NULL \
             AND deleted_at IS NOT NULL",
            secret.message_id
        ))
        .await,
        1
    );
    // History has no gap and shows the tombstone.
    let listed = history(&mut client, &id).await;
    assert_eq!(listed.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(listed[2].deleted);
    // Deleting again, or editing the tombstone: MESSAGE_DELETED, nothing written.
    let status = delete(&mut client, &id, &secret.message_id, customer(""), "")
        .await
        .unwrap_err();
    expect(&status, Code::FailedPrecondition, "MESSAGE_DELETED");
    let status = edit(
        &mut client,
        &id,
        &secret.message_id,
        customer(""),
        "back",
        "",
    )
    .await
    .unwrap_err();
    expect(&status, Code::FailedPrecondition, "MESSAGE_DELETED");
    assert_eq!(change_seq(&app, &id).await, 2);
    // A retry of the original send answers the tombstone, not a new message.
    let retry = client
        .send_message(v1::SendMessageRequest {
            conversation_id: id.clone(),
            sender: customer(""),
            body: "my card is 4111-SECRET".into(),
            client_message_id: "k-1".into(),
            attachments: vec![attachment("scan-SECRET.pdf", "application/pdf")],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!retry.created);
    assert!(retry.message.unwrap().deleted);
    // The sender deletes its own; the last message preview shows the tombstone.
    let own = delete(&mut client, &id, &mine.message_id, provider_of(&id), "")
        .await
        .unwrap();
    assert!(own.deleted);
    let conversation = client
        .get_conversation(v1::GetConversationRequest {
            conversation_id: id.clone(),
            viewer: None,
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    let last = conversation.last_message.unwrap();
    assert!(last.deleted && last.body.is_empty());
}

/// Makes one field of an attachment bad.
type Spoil = fn(&mut v1::Attachment);

fn attachment(file_name: &str, content_type: &str) -> v1::Attachment {
    v1::Attachment {
        uri: format!("{FILES}{}", Uuid::new_v4()),
        content_type: content_type.into(),
        size_bytes: 1234,
        sha256: "ab".repeat(32),
        file_name: file_name.into(),
        width: 0,
        height: 0,
    }
}

#[tokio::test]
async fn attachments_are_stored_by_reference_and_refused_field_by_field() {
    let app = spawn_app_with_flags(&[
        "--attachment-uri-prefixes",
        FILES,
        "--attachment-max-bytes",
        "5000",
    ])
    .await;
    let mut client = app.client.clone();
    let conversation = create(&mut client, "p1").await;
    let id = conversation.conversation_id;
    let mut photo = attachment("cat.png", "image/png");
    (photo.width, photo.height) = (640, 480);
    let sent = client
        .send_message(v1::SendMessageRequest {
            conversation_id: id.clone(),
            sender: provider("p1"),
            body: String::new(),
            client_message_id: String::new(),
            attachments: vec![photo.clone(), attachment("terms.pdf", "application/pdf")],
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(sent.body, "");
    assert_eq!(sent.attachments[0], photo);
    let stored = &history_of(&mut client, &id, "p1").await[0];
    assert_eq!(stored.attachments, sent.attachments);

    let send_with = |attachments: Vec<v1::Attachment>, body: &str| v1::SendMessageRequest {
        conversation_id: id.clone(),
        sender: provider("p1"),
        body: body.into(),
        client_message_id: String::new(),
        attachments,
    };
    let spoilt: [(Spoil, &str); 6] = [
        (|a| a.uri = "http://files.example/chat/x".into(), "uri"),
        (|a| a.uri = "https://elsewhere.example/chat/x".into(), "uri"),
        (
            |a| a.content_type = "application/x-sh".into(),
            "content_type",
        ),
        (|a| a.size_bytes = 5001, "size_bytes"),
        (|a| a.sha256 = "not hex".into(), "sha256"),
        (|a| a.file_name = "a\u{0}b".into(), "file_name"),
    ];
    for (spoil, field) in spoilt {
        let mut bad = attachment("x.png", "image/png");
        spoil(&mut bad);
        let list = vec![
            attachment("a.png", "image/png"),
            attachment("b.png", "image/png"),
            bad,
        ];
        let status = client
            .send_message(send_with(list, "hi"))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), bad_field(&status)),
            (Code::InvalidArgument, format!("attachments[2].{field}"))
        );
    }
    let status = client
        .send_message(send_with(vec![attachment("a.png", "image/png"); 11], "hi"))
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "attachments");
    let status = client
        .send_message(send_with(Vec::new(), ""))
        .await
        .unwrap_err();
    assert_eq!(bad_field(&status), "body", "no body needs attachments");
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 1);
}

async fn history_of(client: &mut Client, id: &str, provider_id: &str) -> Vec<v1::Message> {
    client
        .list_messages(v1::ListMessagesRequest {
            conversation_id: id.into(),
            viewer: provider(provider_id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages
}

#[tokio::test]
async fn without_uri_prefixes_attachments_are_refused() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let conversation = create(&mut client, "p1").await;
    let status = client
        .send_message(v1::SendMessageRequest {
            conversation_id: conversation.conversation_id,
            sender: provider("p1"),
            body: "hi".into(),
            client_message_id: String::new(),
            attachments: vec![attachment("a.png", "image/png")],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), bad_field(&status).as_str()),
        (Code::InvalidArgument, "attachments")
    );
}

// ---- streams ----

async fn next(stream: &mut Streaming<StreamConversationResponse>) -> StreamConversationResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an event within the deadline")
        .unwrap()
        .expect("the stream stays open")
}

/// What a stream showed, heartbeats, typing and snapshots left out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Message(i64, String),
    Edited(i64, i64, String),
    Deleted(i64, i64),
    Position(i64),
}

async fn seen(stream: &mut Streaming<StreamConversationResponse>) -> Seen {
    loop {
        match next(stream).await.event {
            Some(Event::Message(m)) => return Seen::Message(m.seq, m.body),
            Some(Event::MessageEdited(e)) => {
                let m = e.message.unwrap();
                return Seen::Edited(e.change_seq, m.seq, m.body);
            }
            Some(Event::MessageDeleted(d)) => {
                return Seen::Deleted(d.change_seq, d.message.unwrap().seq);
            }
            Some(Event::ChangePosition(p)) => return Seen::Position(p.change_seq),
            _ => {}
        }
    }
}

async fn stream_from(
    client: &mut Client,
    id: &str,
    after_seq: i64,
    after_change: Option<i64>,
) -> Streaming<StreamConversationResponse> {
    client
        .stream_conversation(v1::StreamConversationRequest {
            conversation_id: id.into(),
            viewer: provider_of(id),
            after_seq,
            after_change,
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn edits_and_deletions_arrive_live_and_a_resume_replays_those_it_missed_once() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let (id, first, second) = setup(&app).await;
    let mut stream = stream_from(&mut client, &id, 0, Some(0)).await;
    assert_eq!(
        seen(&mut stream).await,
        Seen::Message(1, "hello from provider".into())
    );
    assert_eq!(
        seen(&mut stream).await,
        Seen::Message(2, "hello from customer".into())
    );
    assert_eq!(seen(&mut stream).await, Seen::Position(0));
    edit(
        &mut client,
        &id,
        &first.message_id,
        provider_of(&id),
        "live edit",
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        seen(&mut stream).await,
        Seen::Edited(1, 1, "live edit".into())
    );
    delete(&mut client, &id, &second.message_id, customer(""), "")
        .await
        .unwrap();
    assert_eq!(seen(&mut stream).await, Seen::Deleted(2, 2));
    drop(stream);

    // While away: a new message, an edit of an old one, an edit of the new one.
    let third = send(&mut client, &id, customer(""), "third").await.unwrap();
    edit(
        &mut client,
        &id,
        &first.message_id,
        provider_of(&id),
        "edited while away",
        "",
    )
    .await
    .unwrap();
    edit(
        &mut client,
        &id,
        &third.message_id,
        customer(""),
        "third, fixed",
        "",
    )
    .await
    .unwrap();

    // Resume from seq 2 and change 2: the old message's edit once, the new message as it
    // is now (its edit shows in it, not again as an event), then the position.
    let mut stream = stream_from(&mut client, &id, 2, Some(2)).await;
    assert_eq!(
        seen(&mut stream).await,
        Seen::Message(3, "third, fixed".into())
    );
    assert_eq!(
        seen(&mut stream).await,
        Seen::Edited(3, 1, "edited while away".into())
    );
    assert_eq!(seen(&mut stream).await, Seen::Position(4));
    delete(&mut client, &id, &third.message_id, customer(""), "")
        .await
        .unwrap();
    assert_eq!(seen(&mut stream).await, Seen::Deleted(5, 3));

    // Beyond the conversation's changes: OUT_OF_RANGE.
    let status = client
        .stream_conversation(v1::StreamConversationRequest {
            conversation_id: id.clone(),
            viewer: provider_of(&id),
            after_seq: 0,
            after_change: Some(99),
        })
        .await
        .unwrap_err();
    expect(&status, Code::OutOfRange, "CURSOR_OUT_OF_RANGE");
}

#[tokio::test]
async fn a_client_without_after_change_gets_no_replay_of_changes_but_live_ones() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let (id, first, _) = setup(&app).await;
    edit(
        &mut client,
        &id,
        &first.message_id,
        provider_of(&id),
        "before",
        "",
    )
    .await
    .unwrap();
    let mut stream = stream_from(&mut client, &id, 1, None).await;
    // Message 2, then nothing about the edit made before the stream opened.
    assert_eq!(
        seen(&mut stream).await,
        Seen::Message(2, "hello from customer".into())
    );
    edit(
        &mut client,
        &id,
        &first.message_id,
        provider_of(&id),
        "after",
        "",
    )
    .await
    .unwrap();
    assert_eq!(seen(&mut stream).await, Seen::Edited(2, 1, "after".into()));
}

#[tokio::test]
async fn changes_made_while_the_listener_is_down_arrive_once_and_in_order() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let (id, first, second) = setup(&app).await;
    let mut stream = stream_from(&mut client, &id, 0, Some(0)).await;
    for _ in 0..3 {
        seen(&mut stream).await;
    }
    let mut db = app.db().await;
    let mut expected = Vec::new();
    for round in 0..3 {
        let (killed,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()) k",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert!(killed >= 1, "found the listener backend");
        for i in 0..4 {
            let body = format!("round {round} edit {i}");
            edit(
                &mut client,
                &id,
                &first.message_id,
                provider_of(&id),
                &body,
                "",
            )
            .await
            .unwrap();
            expected.push(expected.len() as i64 + 1);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    delete(&mut client, &id, &second.message_id, provider_of(&id), "")
        .await
        .unwrap();
    expected.push(expected.len() as i64 + 1);
    let mut got = Vec::new();
    while got.len() < expected.len() {
        match seen(&mut stream).await {
            Seen::Edited(change, seq, _) => {
                assert_eq!(seq, 1);
                got.push(change);
            }
            Seen::Deleted(change, seq) => {
                assert_eq!(seq, 2);
                got.push(change);
            }
            Seen::Message(..) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, expected, "every change once, in order");
}

#[tokio::test]
async fn erasing_a_customer_also_clears_its_attachments_and_edit_fingerprints() {
    let app = spawn_app_with_flags(&["--attachment-uri-prefixes", FILES]).await;
    let mut client = app.client.clone();
    let provider_id = new_provider();
    let conversation = create(&mut client, &provider_id).await;
    let id = conversation.conversation_id;
    client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: id.clone(),
            customer_id: Some("c-erase".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let sent = client
        .send_message(v1::SendMessageRequest {
            conversation_id: id.clone(),
            sender: customer("c-erase"),
            body: "photo".into(),
            client_message_id: String::new(),
            attachments: vec![attachment("me.png", "image/png")],
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    edit(
        &mut client,
        &id,
        &sent.message_id,
        customer("c-erase"),
        "my photo",
        &Uuid::new_v4().to_string(),
    )
    .await
    .unwrap();
    let mut privacy = chat_proto::v1::conversation_privacy_service_client::ConversationPrivacyServiceClient::connect(
        format!("http://{}", app.addr),
    )
    .await
    .unwrap();
    privacy
        .erase_customer_conversations(v1::EraseCustomerConversationsRequest {
            request_id: Uuid::new_v4().to_string(),
            customer_id: "c-erase".into(),
            conversation_ids: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        app.count("SELECT count(*) FROM messages WHERE body <> '' OR attachments IS NOT NULL")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM message_changes WHERE fingerprint IS NOT NULL")
            .await,
        0
    );
}

#[tokio::test]
async fn the_inbox_follows_edits_and_deletions_and_replays_them_from_a_cursor() {
    use chat_proto::v1::stream_inbox_response::Event as InboxEvent;
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let (id, first, second) = setup(&app).await;
    let owner = provider_of(&id);
    let mut inbox = client
        .stream_inbox(v1::StreamInboxRequest {
            participant: owner.clone(),
            cursor: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // An inbox event that is not a heartbeat, with its cursor.
    async fn item(inbox: &mut Streaming<v1::StreamInboxResponse>) -> (InboxEvent, String) {
        inbox_until(inbox, |response| match response.event {
            Some(InboxEvent::Heartbeat(_) | InboxEvent::UnreadSummaryChanged(_)) | None => None,
            Some(event) => Some((event, response.cursor)),
        })
        .await
    }
    // Subscribed and at its starting point once a first event arrives.
    send(&mut client, &id, customer(""), "third").await.unwrap();
    let (_, cursor) = item(&mut inbox).await;
    edit(
        &mut client,
        &id,
        &first.message_id,
        owner.clone(),
        "preview follows",
        "",
    )
    .await
    .unwrap();
    let (event, _) = item(&mut inbox).await;
    let InboxEvent::MessageEdited(edited) = event else {
        panic!("not an edit: {event:?}")
    };
    assert_eq!(edited.message.unwrap().body, "preview follows");
    delete(&mut client, &id, &second.message_id, customer(""), "")
        .await
        .unwrap();
    let (event, _) = item(&mut inbox).await;
    let InboxEvent::MessageDeleted(deleted) = event else {
        panic!("not a deletion: {event:?}")
    };
    assert_eq!((deleted.change_seq, deleted.message.unwrap().seq), (2, 2));
    drop(inbox);

    // Resumed from the cursor before them: both again, in commit order.
    let mut inbox = client
        .stream_inbox(v1::StreamInboxRequest {
            participant: owner,
            cursor,
        })
        .await
        .unwrap()
        .into_inner();
    let (event, _) = item(&mut inbox).await;
    assert!(matches!(event, InboxEvent::MessageEdited(e) if e.change_seq == 1));
    let (event, _) = item(&mut inbox).await;
    assert!(matches!(event, InboxEvent::MessageDeleted(d) if d.change_seq == 2));
}

#[tokio::test]
async fn a_stream_far_behind_gets_every_message_and_every_change_once() {
    let app = spawn_app_with_flags(&["--stream-queue", "4"]).await;
    let mut client = app.client.clone();
    let (id, _, _) = setup(&app).await;
    let mut stream = stream_from(&mut client, &id, 0, Some(0)).await;
    for _ in 0..3 {
        seen(&mut stream).await;
    }
    // Not read meanwhile: the stream falls behind its feed and its queue, and catches
    // up from the table, where the messages already show their changes.
    let mut sent = Vec::new();
    for i in 0..150 {
        sent.push(
            send(&mut client, &id, customer(""), &format!("m{i}"))
                .await
                .unwrap(),
        );
    }
    edit(
        &mut client,
        &id,
        &sent[120].message_id,
        customer(""),
        "edited",
        "",
    )
    .await
    .unwrap();
    delete(
        &mut client,
        &id,
        &sent[130].message_id,
        provider_of(&id),
        "",
    )
    .await
    .unwrap();
    let (mut messages, mut changes) = (Vec::new(), Vec::new());
    while messages.len() < 150 || changes.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(2), seen(&mut stream)).await {
            Ok(Seen::Message(seq, _)) => messages.push(seq),
            Ok(Seen::Edited(c, seq, _) | Seen::Deleted(c, seq)) => changes.push((c, seq)),
            Ok(Seen::Position(_)) => {}
            // The changes showed in the messages read from the table: not sent again.
            Err(_) => break,
        }
    }
    assert_eq!(
        messages,
        (3..=152).collect::<Vec<_>>(),
        "every message once, in order"
    );
    let mut once = changes.clone();
    once.dedup();
    assert_eq!(once, changes, "no change twice");
    assert!(changes.iter().all(|(c, _)| [1, 2].contains(c)));
    // Whichever way they came, the last word on 123 and 133 is the change.
    let listed = history(&mut client, &id).await;
    assert_eq!(listed[122].body, "edited");
    assert!(listed[132].deleted);
}

#[tokio::test]
async fn retention_deletes_the_changes_of_the_messages_it_deletes() {
    let app = spawn_app_with_flags(&[
        "--closed-message-retention",
        "1d",
        "--retention-interval",
        "1s",
    ])
    .await;
    let mut client = app.client.clone();
    let (id, first, second) = setup(&app).await;
    edit(
        &mut client,
        &id,
        &first.message_id,
        provider_of(&id),
        "edited",
        "",
    )
    .await
    .unwrap();
    delete(&mut client, &id, &second.message_id, customer(""), "")
        .await
        .unwrap();
    client
        .set_conversation_status(v1::SetConversationStatusRequest {
            conversation_id: id.clone(),
            status: ConversationStatus::Closed.into(),
            actor: None,
        })
        .await
        .unwrap();
    let mut db = app.db().await;
    sqlx::query(
        "UPDATE conversations SET closed_at = now() - interval '2 days' WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(&mut db)
    .await
    .unwrap();
    for _ in 0..100 {
        if app.count("SELECT count(*) FROM messages").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM message_changes").await, 0);
}

#[tokio::test]
async fn an_attachment_prefix_without_a_path_is_refused_at_start() {
    use clap::Parser;
    let database = crate::helpers::fresh_database().await;
    for prefix in [
        "https://files.example",
        "http://files.example/",
        "files.example/",
    ] {
        let config = conversation_service::config::Config::try_parse_from([
            "conversation-service",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            database.url(),
            "--attachment-uri-prefixes",
            prefix,
        ])
        .unwrap();
        let built = conversation_service::startup::Application::build(config).await;
        let error = built.err().expect("refused").to_string();
        assert!(
            error.contains("ATTACHMENT_URI_PREFIXES"),
            "{prefix}: {error}"
        );
    }
}

#[tokio::test]
async fn search_finds_the_edited_text_and_nothing_of_a_deleted_message() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let (id, first, second) = setup(&app).await;
    edit(
        &mut client,
        &id,
        &first.message_id,
        provider_of(&id),
        "invoice attached",
        "",
    )
    .await
    .unwrap();
    delete(&mut client, &id, &second.message_id, customer(""), "")
        .await
        .unwrap();
    let search = |query: &'static str| {
        let mut client = client.clone();
        let participant = provider_of(&id);
        async move {
            client
                .search_messages(v1::SearchMessagesRequest {
                    participant,
                    query: query.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .hits
                .into_iter()
                .map(|hit| hit.message.unwrap().seq)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(search("invoice").await, [1]);
    assert!(
        search("provider").await.is_empty(),
        "the text before the edit"
    );
    assert!(search("customer").await.is_empty(), "the deleted message");
}
