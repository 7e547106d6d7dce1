//! StreamInbox resume: forged cursors, commit order, keyset pages over a membership that
//! changes, and cheap wakes while a long transaction holds the snapshot's xmin back.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chat_proto::v1::{self, ConversationStatus, StreamInboxResponse, stream_inbox_response::Event};
use tonic::{Code, Streaming};
use uuid::Uuid;

use crate::helpers::{
    Client, TestApp, create, customer, new_provider, provider, rows_read, send,
    spawn_app_with_flags,
};

const WAIT: Duration = Duration::from_secs(20);

async fn spawn() -> TestApp {
    spawn_app_with_flags(&["--heartbeat-interval", "200ms"]).await
}

pub(crate) async fn open(
    client: &mut Client,
    participant: Option<v1::Participant>,
    cursor: &str,
) -> Result<Streaming<StreamInboxResponse>, tonic::Status> {
    client
        .stream_inbox(v1::StreamInboxRequest {
            participant,
            cursor: cursor.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn next(stream: &mut Streaming<StreamInboxResponse>) -> StreamInboxResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an inbox event within the deadline")
        .unwrap()
        .expect("the inbox stays open")
}

/// The next event that is not a heartbeat or an unread summary.
async fn next_event(stream: &mut Streaming<StreamInboxResponse>) -> (Event, String) {
    tokio::time::timeout(WAIT, async {
        loop {
            let response = next(stream).await;
            match response.event {
                Some(
                    Event::Heartbeat(_)
                    | Event::PresenceChanged(_)
                    | Event::UnreadSummaryChanged(_),
                )
                | None => {}
                Some(event) => return (event, response.cursor),
            }
        }
    })
    .await
    .expect("an inbox event (not a heartbeat or summary) within the deadline")
}

/// A cursor for "now", from a fresh inbox's first heartbeat.
pub(crate) async fn cursor_now(
    client: &mut Client,
    participant: Option<v1::Participant>,
) -> String {
    let mut stream = open(client, participant, "").await.unwrap();
    loop {
        let response = next(&mut stream).await;
        if matches!(response.event, Some(Event::Heartbeat(_))) {
            return response.cursor;
        }
    }
}

fn label(event: &Event) -> String {
    match event {
        Event::ConversationCreated(_) => "created".into(),
        Event::CustomerUpdated(_) => "customer".into(),
        Event::CustomerErased(_) => "erased".into(),
        Event::StatusChanged(s) => format!("status {:?}", s.status()),
        Event::Message(m) => format!("message {}", m.body),
        Event::Heartbeat(_) => "heartbeat".into(),
        Event::MessageEdited(e) => format!("edited {}", e.change_seq),
        Event::MessageDeleted(d) => format!("deleted {}", d.change_seq),
        Event::PresenceChanged(p) => format!("presence {}", p.online),
        Event::UnreadSummaryChanged(s) => {
            format!("unread {} {}", s.unread_messages, s.unread_conversations)
        }
    }
}

/// Cursors PostgreSQL would refuse as snapshots (or that contradict themselves) are
/// INVALID_ARGUMENT, never INTERNAL.
#[tokio::test]
async fn forged_cursors_are_invalid_argument() {
    let mut app = spawn().await;
    for json in [
        r#"{"p":"0:0:"}"#,
        r#"{"p":"5:10:8,6"}"#,
        r#"{"p":"1:2:","n":"0:5:"}"#,
        r#"{"p":"5:10:6,6"}"#,
        r#"{"p":"9:12:","n":"5:8:"}"#,
    ] {
        let cursor = URL_SAFE_NO_PAD.encode(json);
        let outcome = match open(&mut app.client, provider("p1"), &cursor).await {
            Err(status) => status,
            Ok(mut stream) => tokio::time::timeout(WAIT, stream.message())
                .await
                .unwrap()
                .expect_err("the stream must refuse the cursor"),
        };
        assert_eq!(outcome.code(), Code::InvalidArgument, "{json}: {outcome:?}");
        assert_eq!(crate::helpers::bad_field(&outcome), "cursor", "{json}");
    }
}

/// A resumed inbox shows what happened in the order it happened, not grouped by kind.
#[tokio::test]
async fn a_resumed_inbox_is_in_commit_order() {
    let mut app = spawn().await;
    let owner = new_provider();
    let start = cursor_now(&mut app.client, provider(&owner)).await;
    let id = create(&mut app.client, &owner).await.conversation_id;
    send(&mut app.client, &id, provider(&owner), "one")
        .await
        .unwrap();
    app.client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: id.clone(),
            customer_id: Some("c-order".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    send(&mut app.client, &id, customer("c-order"), "two")
        .await
        .unwrap();
    app.client
        .set_conversation_status(v1::SetConversationStatusRequest {
            conversation_id: id.clone(),
            status: ConversationStatus::Closed.into(),
            actor: None,
        })
        .await
        .unwrap();
    let mut resumed = open(&mut app.client, provider(&owner), &start)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(label(&next_event(&mut resumed).await.0));
    }
    assert_eq!(
        seen,
        [
            "created",
            "message one",
            "customer",
            "message two",
            "status Closed"
        ]
    );
}

/// A conversation linked to the customer between two pages of one window neither shifts
/// nor repeats what the resumed inbox delivers next.
#[tokio::test]
async fn a_conversation_linked_mid_window_repeats_nothing() {
    let mut app = spawn().await;
    let owner = new_provider();
    let me = format!("cust-{}", Uuid::new_v4().simple());
    // B is older than A, so B's rows sort before A's within a window by id.
    let b = create(&mut app.client, &owner).await.conversation_id;
    let a = create(&mut app.client, &owner).await.conversation_id;
    app.client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: a.clone(),
            customer_id: Some(me.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let start = cursor_now(&mut app.client, customer(&me)).await;
    for i in 1..=3 {
        send(&mut app.client, &b, provider(&owner), &format!("b{i}"))
            .await
            .unwrap();
    }
    for i in 1..=5 {
        send(&mut app.client, &a, provider(&owner), &format!("a{i}"))
            .await
            .unwrap();
    }
    let mut first = open(&mut app.client, customer(&me), &start).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..2 {
        let (event, at) = next_event(&mut first).await;
        seen.push(label(&event));
        cursor = at;
    }
    drop(first);
    app.client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: b.clone(),
            customer_id: Some(me.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut resumed = open(&mut app.client, customer(&me), &cursor).await.unwrap();
    loop {
        let (event, _) = next_event(&mut resumed).await;
        let done = matches!(&event, Event::CustomerUpdated(c)
            if c.conversation.as_ref().is_some_and(|c| c.conversation_id == b));
        seen.push(label(&event));
        if done {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            "message a1",
            "message a2",
            "message a3",
            "message a4",
            "message a5",
            "customer"
        ]
    );
}

/// A transaction held open for long keeps every snapshot's xmin back; an inbox wake must
/// still read only the new rows, not every row written since (checked on the plan of the
/// query the service runs, with the cursor it handed out).
#[tokio::test]
async fn a_wake_stays_cheap_behind_a_long_transaction() {
    use sqlx::Connection;
    let mut app = spawn().await;
    let owner = new_provider();
    let id = create(&mut app.client, &owner).await.conversation_id;
    let other = create(&mut app.client, "someone-else")
        .await
        .conversation_id;

    let mut long = app.db().await;
    let mut held = long.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *held)
        .await
        .unwrap();

    let mut db = app.db().await;
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, id, sender_role, sender_id, body) \
         SELECT $1, s, gen_random_uuid(), 1, 'someone-else', 'x' FROM generate_series(1, 20000) s",
    )
    .bind(Uuid::parse_str(&other).unwrap())
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query("UPDATE conversations SET head_seq = 20000 WHERE id = $1")
        .bind(Uuid::parse_str(&other).unwrap())
        .execute(&mut db)
        .await
        .unwrap();

    let mut inbox = open(&mut app.client, provider(&owner), "").await.unwrap();
    let start = loop {
        let response = next(&mut inbox).await;
        if matches!(response.event, Some(Event::Heartbeat(_))) {
            break response.cursor;
        }
    };
    send(&mut app.client, &id, provider(&owner), "wake")
        .await
        .unwrap();
    let (event, _) = next_event(&mut inbox).await;
    assert_eq!(label(&event), "message wake");

    let json: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&start).unwrap()).unwrap();
    let delivered = json["p"].as_str().unwrap().to_owned();
    let (xmin,): (String,) = sqlx::query_as("SELECT pg_snapshot_xmin($1::text::pg_snapshot)::text")
        .bind(&delivered)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let (held_xid,): (String,) = sqlx::query_as("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    // Other transactions on the shared cluster may hold it back further still.
    assert!(
        xmin.parse::<u64>().unwrap() <= held_xid.parse::<u64>().unwrap(),
        "the long transaction holds the cursor's xmin back"
    );

    let xip: Vec<String> = delivered
        .rsplit(':')
        .next()
        .unwrap()
        .split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect();
    let (now,): (String,) = sqlx::query_as("SELECT pg_current_snapshot()::text")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let sql = format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {}",
        conversation_service::store::window_sql(conversation_service::domain::Role::Provider)
    );
    let (plan,): (serde_json::Value,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&owner)
        .bind(&delivered)
        .bind(xip)
        .bind(&now)
        .bind(i64::MIN)
        .bind(i16::MIN)
        .bind(Uuid::nil())
        .bind(i64::MIN)
        .bind(256_i64)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let read = rows_read(&plan[0]["Plan"], "messages");
    // For comparison only: the predicate the inbox used before (xid >= the cursor's xmin).
    let (old_plan,): (serde_json::Value,) = sqlx::query_as(
        "EXPLAIN (ANALYZE, FORMAT JSON) SELECT m.seq FROM messages m \
         WHERE m.xid >= pg_snapshot_xmin($1::text::pg_snapshot) \
         AND NOT pg_visible_in_snapshot(m.xid, $1::text::pg_snapshot) \
         AND pg_visible_in_snapshot(m.xid, $2::text::pg_snapshot)",
    )
    .bind(&delivered)
    .bind(&now)
    .fetch_one(&mut db)
    .await
    .unwrap();
    let before = rows_read(&old_plan[0]["Plan"], "messages");
    eprintln!(
        "inbox wake behind a long transaction: {read} message rows read (xmin predicate: {before})"
    );
    assert!(read < 1000, "a wake read {read} message rows: {plan}");
    held.rollback().await.unwrap();
}
