//! The SendMessage write path under faults: idempotency keys per sender, a locked
//! conversation, callers that left, clocks that disagree, writer connections that die or
//! are kept at shutdown.

use std::time::Duration;

use chat_proto::v1;
use sqlx::Connection;
use tonic::{Code, Request};
use uuid::Uuid;

use crate::helpers::{
    create, customer, fresh_database, provider, reason, spawn_app, spawn_app_with,
    spawn_app_with_flags,
};

fn keyed(
    id: &str,
    sender: Option<v1::Participant>,
    body: &str,
    key: &str,
) -> v1::SendMessageRequest {
    v1::SendMessageRequest {
        conversation_id: id.into(),
        sender,
        body: body.into(),
        client_message_id: key.into(),
        attachments: Vec::new(),
    }
}

/// The provider's key "1" and the customer's key "1" are two messages; the same sender
/// reusing a key for another body is refused and writes nothing.
#[tokio::test]
async fn client_message_ids_belong_to_their_sender() {
    let mut app = spawn_app().await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    let from_provider = app
        .client
        .send_message(keyed(&id, provider("p1"), "from the provider", "1"))
        .await
        .unwrap()
        .into_inner();
    let from_customer = app
        .client
        .send_message(keyed(&id, customer(""), "from the customer", "1"))
        .await
        .unwrap()
        .into_inner();
    assert!(from_provider.created && from_customer.created);
    let message = from_customer.message.unwrap();
    assert_eq!(
        (message.seq, message.body.as_str()),
        (2, "from the customer")
    );

    let retry = app
        .client
        .send_message(keyed(&id, customer(""), "from the customer", "1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!retry.created);
    assert_eq!(retry.message.unwrap().message_id, message.message_id);

    let status = app
        .client
        .send_message(keyed(&id, customer(""), "something else", "1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "CLIENT_MESSAGE_ID_REUSED");
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 2);
}

async fn lock_conversation(app: &crate::helpers::TestApp, id: &str) -> sqlx::PgConnection {
    let mut db = app.db().await;
    sqlx::query("BEGIN").execute(&mut db).await.unwrap();
    sqlx::query("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE")
        .bind(Uuid::parse_str(id).unwrap())
        .execute(&mut db)
        .await
        .unwrap();
    db
}

/// A conversation row held locked by someone else: its sends fail fast with UNAVAILABLE
/// (nothing written) and the sends of other conversations go on meanwhile.
#[tokio::test]
async fn a_locked_conversation_fails_fast_and_stalls_no_other() {
    let mut app = spawn_app().await;
    let locked = create(&mut app.client, "p1").await.conversation_id;
    let free = create(&mut app.client, "p1").await.conversation_id;
    let _held = lock_conversation(&app, &locked).await;

    let mut client = app.client.clone();
    let request = keyed(&locked, provider("p1"), "stuck?", "");
    let stuck = tokio::spawn(async move {
        let mut request = Request::new(request);
        request.set_timeout(Duration::from_secs(8));
        client.send_message(request).await
    });
    let mut others = Vec::new();
    for i in 0..20 {
        let mut client = app.client.clone();
        let request = keyed(&free, provider("p1"), &format!("m{i}"), "");
        others.push(tokio::spawn(
            async move { client.send_message(request).await },
        ));
    }
    for other in others {
        other.await.unwrap().unwrap();
    }
    // The writer waiting on the lock held its turn; the other writer went on without it.
    assert!(
        !stuck.is_finished(),
        "the other sends were written while the locked one still waited"
    );
    let status = stuck.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let in_locked = format!("SELECT count(*) FROM messages WHERE conversation_id = '{locked}'");
    assert_eq!(app.count(&in_locked).await, 0);
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 20);
}

/// A send whose caller gave up (deadline passed) before a writer got to it is not
/// written, so a blind retry cannot duplicate it.
#[tokio::test]
async fn a_send_whose_caller_left_is_not_written() {
    let mut app = spawn_app_with_flags(&["--send-writers", "1"]).await;
    let locked = create(&mut app.client, "p1").await.conversation_id;
    let other = create(&mut app.client, "p1").await.conversation_id;
    let held = lock_conversation(&app, &locked).await;
    // The only writer waits on the lock...
    let mut client = app.client.clone();
    let first = keyed(&locked, provider("p1"), "first", "");
    let first = tokio::spawn(async move { client.send_message(first).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...while this caller gives up.
    let mut request = Request::new(keyed(&other, provider("p1"), "gave up", ""));
    request.set_timeout(Duration::from_millis(300));
    let status = app.client.send_message(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    held.close().await.unwrap();
    // Written, or UNAVAILABLE if the lock outlived lock_timeout on a slow machine.
    let _ = first.await.unwrap();
    // The writer is free again; anything it still had queued is done by now.
    crate::helpers::send(&mut app.client, &locked, provider("p1"), "after")
        .await
        .unwrap();
    let in_other = format!("SELECT count(*) FROM messages WHERE conversation_id = '{other}'");
    assert_eq!(
        app.count(&in_other).await,
        0,
        "the abandoned send was written"
    );
}

/// Another replica's clock ran ahead: a later send from this one must not move the
/// conversation's activity time back.
#[tokio::test]
async fn last_activity_never_moves_backwards() {
    let mut app = spawn_app().await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    let mut db = app.db().await;
    let (ahead,): (chrono::DateTime<chrono::Utc>,) = sqlx::query_as(
        "UPDATE conversations SET last_activity_at = date_trunc('second', now()) + interval '1 hour' \
         WHERE id = $1 RETURNING last_activity_at",
    )
    .bind(Uuid::parse_str(&id).unwrap())
    .fetch_one(&mut db)
    .await
    .unwrap();
    crate::helpers::send(&mut app.client, &id, provider("p1"), "hi")
        .await
        .unwrap();
    let conversation = app
        .client
        .get_conversation(v1::GetConversationRequest {
            conversation_id: id,
            viewer: None,
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(conversation.head_seq, 1);
    assert_eq!(
        conversation.last_activity_time.unwrap().seconds,
        ahead.timestamp()
    );
}

/// Waits until one of the service's sessions waits for a lock.
async fn wait_for_a_lock_waiter(app: &crate::helpers::TestApp) {
    let sql = "SELECT count(*) FROM pg_stat_activity \
               WHERE datname = current_database() AND wait_event_type = 'Lock'";
    for _ in 0..1000 {
        if app.count(sql).await > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("no session waited for the held row");
}

/// Conversation `id` holds `count` messages with distinct seqs 1..=count, and its head is
/// `count`.
async fn assert_gapless(app: &crate::helpers::TestApp, id: &str, count: i64) {
    let seqs = format!(
        "SELECT count(DISTINCT seq) FROM messages WHERE conversation_id = '{id}' \
         AND seq BETWEEN 1 AND {count}"
    );
    assert_eq!(app.count(&seqs).await, count, "{id}");
    let all = format!("SELECT count(*) FROM messages WHERE conversation_id = '{id}'");
    assert_eq!(app.count(&all).await, count, "{id}");
    let head = format!("SELECT head_seq FROM conversations WHERE id = '{id}'");
    assert_eq!(app.count(&head).await, count, "{id}");
}

/// Sends `request` on conversation `id` while its row is held; once the batch waits for
/// it, changes the row with `change` (`$1` is the id) and lets go.
async fn send_while_changed(
    app: &crate::helpers::TestApp,
    id: &str,
    request: v1::SendMessageRequest,
    change: &'static str,
) -> Result<v1::SendMessageResponse, tonic::Status> {
    let mut held = lock_conversation(app, id).await;
    let mut client = app.client.clone();
    let send = tokio::spawn(async move { client.send_message(request).await });
    wait_for_a_lock_waiter(app).await;
    sqlx::query(change)
        .bind(Uuid::parse_str(id).unwrap())
        .execute(&mut held)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut held).await.unwrap();
    send.await.unwrap().map(tonic::Response::into_inner)
}

/// A batch is planned on conversation rows read without a lock. When a row changes
/// before the write takes its lock (another replica wrote the conversation, closed it or
/// linked its customer), the write writes nothing and the batch is planned again under
/// the lock: seqs stay gapless, a closed conversation gets no message, and the anonymous
/// visitor of a conversation just linked is refused.
#[tokio::test]
async fn a_conversation_changed_between_plan_and_write_is_planned_again() {
    let mut app = spawn_app().await;
    let written = create(&mut app.client, "p1").await.conversation_id;
    let closed = create(&mut app.client, "p1").await.conversation_id;
    let linked = create(&mut app.client, "p1").await.conversation_id;

    // Another replica writes seq 1 while this replica's batch waits for the row.
    let request = keyed(&written, provider("p1"), "second", "");
    let sent = send_while_changed(
        &app,
        &written,
        request,
        "WITH m AS (INSERT INTO messages (conversation_id, seq, id, sender_role, sender_id, body) \
         VALUES ($1, 1, gen_random_uuid(), 1, 'p1', 'first')) \
         UPDATE conversations SET head_seq = 1 WHERE id = $1",
    )
    .await
    .unwrap()
    .message
    .unwrap();
    assert_eq!((sent.seq, sent.body.as_str()), (2, "second"));
    assert_gapless(&app, &written, 2).await;

    // Closed, or its customer linked (the anonymous visitor's message then belongs to
    // no one), while this replica's batch waits for the row.
    let refusals = [
        (
            &closed,
            provider("p1"),
            "UPDATE conversations SET status = 2 WHERE id = $1",
            Code::FailedPrecondition,
            "CONVERSATION_CLOSED",
        ),
        (
            &linked,
            customer(""),
            "UPDATE conversations SET customer_id = 'c1' WHERE id = $1",
            Code::PermissionDenied,
            "NOT_A_PARTICIPANT",
        ),
    ];
    for (id, sender, change, code, why) in refusals {
        let request = keyed(id, sender, "too late", "");
        let status = send_while_changed(&app, id, request, change)
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(reason(&status), why);
        assert_gapless(&app, id, 0).await;
    }
}

/// A replica plans a batch on the conversations as it last wrote them. When another
/// replica wrote, closed or reopened one since, the write notices and the batch is
/// planned again on the row as it is: seqs stay gapless, a closed conversation refuses
/// and a reopened one takes messages again.
#[tokio::test]
async fn rows_this_replica_remembers_are_checked_when_written() {
    let mut app = spawn_app().await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    let uuid = Uuid::parse_str(&id).unwrap();
    let send = |body: &str| keyed(&id, provider("p1"), body, "");
    let first = app.client.send_message(send("one")).await.unwrap();
    assert_eq!(first.into_inner().message.unwrap().seq, 1);

    // Another replica writes seq 2.
    let mut db = app.db().await;
    sqlx::query(
        "WITH m AS (INSERT INTO messages (conversation_id, seq, id, sender_role, sender_id, body) \
         VALUES ($1, 2, $2, 1, 'p1', 'two')) UPDATE conversations SET head_seq = 2 WHERE id = $1",
    )
    .bind(uuid)
    .bind(Uuid::now_v7())
    .execute(&mut db)
    .await
    .unwrap();
    let third = app.client.send_message(send("three")).await.unwrap();
    assert_eq!(third.into_inner().message.unwrap().seq, 3);

    // Another replica closes it.
    let set_status = |status: i16| {
        sqlx::query("UPDATE conversations SET status = $2 WHERE id = $1")
            .bind(uuid)
            .bind(status)
    };
    set_status(2).execute(&mut db).await.unwrap();
    let status = app.client.send_message(send("closed")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "CONVERSATION_CLOSED");

    // And reopens it.
    set_status(1).execute(&mut db).await.unwrap();
    let fourth = app.client.send_message(send("four")).await.unwrap();
    assert_eq!(fourth.into_inner().message.unwrap().seq, 4);

    assert_gapless(&app, &id, 4).await;
}

/// Two replicas sending to the same conversations at once, in waves: each plans on rows
/// the other keeps changing, so batches conflict, wait on each other's row locks and are
/// planned again under the locks. Every send is answered, and each conversation's seqs
/// are exactly 1..=N with the head at N.
#[tokio::test]
async fn two_replicas_writing_the_same_conversations_keep_seqs_gapless() {
    let test_database = fresh_database().await;
    let database = test_database.url().to_owned();
    let mut a = spawn_app_with(&database, &[]).await;
    let b = spawn_app_with(&database, &[]).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(create(&mut a.client, "p1").await.conversation_id);
    }
    let (waves, per_wave) = (5, 12);
    for wave in 0..waves {
        let mut tasks = Vec::new();
        for i in 0..per_wave {
            let id = ids[i % ids.len()].clone();
            let mut client = if i % 2 == 0 {
                a.client.clone()
            } else {
                b.client.clone()
            };
            let request = keyed(&id, provider("p1"), &format!("w{wave} m{i}"), "");
            tasks.push(tokio::spawn(async move {
                let sent = client.send_message(request).await;
                (id, sent.map(|r| r.into_inner().message.unwrap().seq))
            }));
        }
        for task in tasks {
            let (_, seq) = task.await.unwrap();
            assert!(seq.is_ok(), "{seq:?}");
        }
    }
    let each = i64::try_from(waves * per_wave / ids.len()).unwrap();
    for id in &ids {
        assert_gapless(&a, id, each).await;
    }
}

/// A send updates its conversation's head, read positions and activity time. With none
/// of those in an index (the inbox order indexes `inbox_at`, which changes at most once a
/// minute and once when its minute is settled), PostgreSQL updates the row in place (HOT): no new index entries
/// per message, and the table does not bloat between vacuums.
#[tokio::test]
async fn no_index_holds_a_column_every_send_updates() {
    let app = spawn_app().await;
    let mut db = app.db().await;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index \
         WHERE indrelid = 'conversations'::regclass",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert!(
        indexes.iter().any(|d| d.contains("inbox_at")),
        "{indexes:?}"
    );
    let updated = [
        "head_seq",
        "last_activity_at",
        "provider_read_seq",
        "customer_read_seq",
    ];
    for definition in &indexes {
        for column in updated {
            assert!(
                !definition.contains(column),
                "{column} is indexed: {definition}"
            );
        }
    }
}

/// The service's sessions whose last statement was a SendMessage batch's write.
const WRITER_SESSIONS: &str = "FROM pg_stat_activity WHERE datname = current_database() \
     AND query LIKE 'WITH old AS%'";

/// A kept connection that died while idle (here: killed by an operator) is found dead
/// before a batch uses it, and the batch is written on a new one.
#[tokio::test]
async fn a_kept_connection_killed_while_idle_is_replaced_before_the_next_batch() {
    let mut app = spawn_app().await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    crate::helpers::send(&mut app.client, &id, provider("p1"), "before")
        .await
        .unwrap();
    let kill = format!("SELECT count(pg_terminate_backend(pid)) {WRITER_SESSIONS}");
    assert_eq!(app.count(&kill).await, 1, "killed the writer's session");
    tokio::time::sleep(conversation_service::store::WRITER_PING_AFTER + Duration::from_millis(200))
        .await;
    crate::helpers::send(&mut app.client, &id, provider("p1"), "after")
        .await
        .unwrap();
    assert_gapless(&app, &id, 2).await;
}

/// Shutdown hands the writers' kept connections back to their pool, whose close waits
/// for every connection it opened: the service still stops.
#[tokio::test]
async fn a_service_whose_writers_keep_connections_still_stops() {
    let mut app = spawn_app().await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    for i in 0..5 {
        crate::helpers::send(&mut app.client, &id, provider("p1"), &format!("m{i}"))
            .await
            .unwrap();
    }
    app.stop().await.expect("stopped within 10 s").unwrap();
}
