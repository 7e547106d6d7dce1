//! StreamConversation and StreamInbox: across replicas (a second OS process), resume,
//! listener faults, slow consumers, limits and cancellation.

use std::time::Duration;

use chat_proto::v1::{
    self, ConversationStatus, StreamConversationResponse, StreamInboxResponse,
    stream_conversation_response::Event, stream_inbox_response::Event as InboxEvent,
};
use tonic::{Code, Streaming};
use uuid::Uuid;

use crate::helpers::{
    Client, create, customer, inbox_until, new_provider, open_stream, provider, send, spawn_app,
    spawn_app_with_flags, spawn_process,
};

const WAIT: Duration = Duration::from_secs(20);

async fn next(stream: &mut Streaming<StreamConversationResponse>) -> StreamConversationResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an event within the deadline")
        .unwrap()
        .expect("the stream stays open")
}

/// Reads until a message with seq `until` arrived; returns (seq, replayed) of messages.
async fn messages_until(
    stream: &mut Streaming<StreamConversationResponse>,
    until: i64,
) -> Vec<(i64, bool)> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(seq, _)| *seq < until) {
        let response = next(stream).await;
        if let Some(Event::Message(message)) = response.event {
            seen.push((message.seq, response.replayed));
        }
    }
    seen
}

fn seqs(seen: &[(i64, bool)]) -> Vec<i64> {
    seen.iter().map(|(seq, _)| *seq).collect()
}

#[tokio::test]
async fn sent_on_one_replica_arrives_in_order_on_another() {
    let mut a = spawn_app().await;
    let mut b = spawn_process(&a.database_url, &[]).await;
    let conversation = create(&mut a.client, "p1").await;
    let id = conversation.conversation_id;
    let mut stream = open_stream(&mut b.client, &id, provider("p1"), 0).await;
    let first = next(&mut stream).await;
    assert!(
        matches!(first.event, Some(Event::Snapshot(_))),
        "a snapshot comes first"
    );
    for i in 0..20 {
        send(&mut a.client, &id, customer(""), &format!("m{i}"))
            .await
            .unwrap();
    }
    let seen = messages_until(&mut stream, 20).await;
    assert_eq!(seqs(&seen), (1..=20).collect::<Vec<_>>());
    assert!(seen.iter().all(|(_, replayed)| !replayed), "delivered live");
}

/// A new conversation and `n` provider streams on it, each past its snapshot.
async fn conversation_with_viewers(
    app: &mut crate::helpers::TestApp,
    n: usize,
) -> (String, Vec<Streaming<StreamConversationResponse>>) {
    let provider_id = new_provider();
    let id = create(&mut app.client, &provider_id).await.conversation_id;
    let mut viewers = Vec::new();
    for _ in 0..n {
        let mut stream = open_stream(&mut app.client, &id, provider(&provider_id), 0).await;
        let first = next(&mut stream).await;
        assert!(matches!(first.event, Some(Event::Snapshot(_))));
        viewers.push(stream);
    }
    (id, viewers)
}

/// Sends `body` `n` times, one at a time, each awaited on every viewer (which must get
/// exactly it, body included).
async fn send_to_viewers(
    app: &mut crate::helpers::TestApp,
    id: &str,
    viewers: &mut [Streaming<StreamConversationResponse>],
    body: &str,
    n: usize,
) {
    for _ in 0..n {
        let seq = send(&mut app.client, id, customer(""), body)
            .await
            .unwrap()
            .seq;
        for viewer in viewers.iter_mut() {
            let response = next(viewer).await;
            let Some(Event::Message(message)) = response.event else {
                panic!("a message, got {response:?}");
            };
            assert_eq!((message.seq, message.body.as_str()), (seq, body));
        }
    }
}

#[tokio::test]
async fn viewers_read_nothing_back_when_the_notice_carries_the_message_and_share_one_read_otherwise()
 {
    let mut app = spawn_app().await;
    let (id, mut viewers) = conversation_with_viewers(&mut app, 10).await;
    let reads = |app: &crate::helpers::TestApp| app.hub.message_reads();

    let before = reads(&app);
    send_to_viewers(&mut app, &id, &mut viewers, "small enough to carry", 10).await;
    assert_eq!(reads(&app), before, "carried by the notice: no read");

    // 3,000 three-byte characters do not fit a NOTIFY payload: the first viewer woken
    // reads each message once for all ten.
    let large = "€".repeat(3000);
    let before = reads(&app);
    send_to_viewers(&mut app, &id, &mut viewers, &large, 10).await;
    let after = reads(&app);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (10, 0),
        "one shared read per message for ten viewers, none of their own"
    );
}

#[tokio::test]
async fn viewers_sharing_reads_get_a_burst_complete_and_in_order() {
    let mut app = spawn_app().await;
    let (id, mut viewers) = conversation_with_viewers(&mut app, 8).await;
    // 300 sends at once: batches too large to carry, wake-ups in bursts, streams that may
    // fall behind the shared tail (64 messages) and read on their own; every one still
    // gets 1..=300.
    let sends = (0..300).map(|i| {
        let mut client = app.client.clone();
        let id = id.clone();
        async move { send(&mut client, &id, customer(""), &format!("b{i}")).await }
    });
    for sent in futures::future::join_all(sends).await {
        sent.unwrap();
    }
    for viewer in &mut viewers {
        let seen = messages_until(viewer, 300).await;
        assert_eq!(seqs(&seen), (1..=300).collect::<Vec<_>>());
    }
    let (shared, own) = app.hub.message_reads();
    assert!(
        shared + own < 8 * 300,
        "fewer reads than one per message per viewer: {shared} shared, {own} own"
    );
}

#[tokio::test]
async fn resume_gets_exactly_what_was_missed() {
    let mut app = spawn_app().await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    let mut stream = open_stream(&mut app.client, &id, customer(""), 0).await;
    for i in 0..10 {
        send(&mut app.client, &id, provider("p1"), &format!("m{i}"))
            .await
            .unwrap();
    }
    assert_eq!(
        seqs(&messages_until(&mut stream, 10).await),
        (1..=10).collect::<Vec<_>>()
    );
    drop(stream);
    for i in 10..20 {
        send(&mut app.client, &id, provider("p1"), &format!("m{i}"))
            .await
            .unwrap();
    }
    let mut stream = open_stream(&mut app.client, &id, customer(""), 10).await;
    let missed = messages_until(&mut stream, 20).await;
    assert_eq!(
        missed,
        (11..=20).map(|s| (s, true)).collect::<Vec<_>>(),
        "exactly the missed ones, replayed"
    );
    send(&mut app.client, &id, provider("p1"), "live")
        .await
        .unwrap();
    assert_eq!(messages_until(&mut stream, 21).await, vec![(21, false)]);
}

#[tokio::test]
async fn killing_the_listener_during_a_thousand_sends_loses_nothing() {
    let mut a = spawn_app().await;
    let mut b = spawn_process(&a.database_url, &[]).await;
    let id = create(&mut a.client, "p1").await.conversation_id;
    let mut streams = vec![
        open_stream(&mut a.client, &id, provider("p1"), 0).await,
        open_stream(&mut b.client, &id, customer(""), 0).await,
        open_stream(&mut b.client, &id, provider("p1"), 0).await,
    ];
    let mut senders = Vec::new();
    for task in 0..4 {
        let mut client = if task % 2 == 0 {
            a.client.clone()
        } else {
            b.client.clone()
        };
        let id = id.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..250 {
                send(&mut client, &id, provider("p1"), &format!("t{task}-{i}"))
                    .await
                    .unwrap();
            }
        }));
    }
    // Kill every LISTEN backend (both replicas) twice while the sends run.
    let mut db = a.db().await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (killed,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()) k",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert!(killed >= 1, "found the listener backends");
    }
    for sender in senders {
        sender.await.unwrap();
    }
    for stream in &mut streams {
        let seen = messages_until(stream, 1000).await;
        assert_eq!(
            seqs(&seen),
            (1..=1000).collect::<Vec<_>>(),
            "every seq once, in order"
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_stream_that_never_reads_keeps_memory_bounded_then_gets_everything() {
    let mut a = spawn_app().await;
    let mut b = spawn_process(&a.database_url, &[]).await;
    let id = create(&mut a.client, "p1").await.conversation_id;
    let mut stuck = open_stream(&mut b.client, &id, provider("p1"), 0).await;
    let before = rss_kib(b.child.id());
    let body = "x".repeat(4000);
    let mut senders = Vec::new();
    for _ in 0..16 {
        let mut client = a.client.clone();
        let id = id.clone();
        let body = body.clone();
        senders.push(tokio::spawn(async move {
            for _ in 0..625 {
                send(&mut client, &id, customer(""), &body).await.unwrap();
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(b.child.id());
    // 10,000 messages of 4 KB are 40 MB; the stream may hold a few queues' worth.
    let grown = after.saturating_sub(before);
    eprintln!("stuck stream: replica RSS {before} KiB -> {after} KiB");
    assert!(
        grown < 24 * 1024,
        "replica grew by {grown} KiB while a stream did not read"
    );
    let seen = messages_until(&mut stuck, 10_000).await;
    assert_eq!(seqs(&seen), (1..=10_000).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_thousand_opened_and_cancelled_streams_free_their_slots() {
    let mut app = spawn_app().await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    let mut streams = Vec::new();
    for _ in 0..1000 {
        let mut stream = open_stream(&mut app.client, &id, provider("p1"), 0).await;
        next(&mut stream).await;
        streams.push(stream);
    }
    assert_eq!(app.hub.open_streams(), 1000);
    drop(streams);
    for _ in 0..200 {
        if app.hub.open_streams() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.hub.open_streams(), 0);
}

#[tokio::test]
async fn the_stream_limit_answers_resource_exhausted() {
    let mut app = spawn_app_with_flags(&["--max-streams", "2"]).await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    let _one = open_stream(&mut app.client, &id, provider("p1"), 0).await;
    let _two = open_stream(&mut app.client, &id, provider("p1"), 0).await;
    let status = app
        .client
        .stream_conversation(v1::StreamConversationRequest {
            conversation_id: id.clone(),
            viewer: provider("p1"),
            after_seq: 0,
            after_change: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn streams_refuse_intruders_bad_positions_unknown_conversations_and_foreign_cursors() {
    let mut app = spawn_app().await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    send(&mut app.client, &id, provider("p1"), "one")
        .await
        .unwrap();
    let request = |conversation_id: &str, viewer, after_seq| v1::StreamConversationRequest {
        conversation_id: conversation_id.into(),
        viewer,
        after_seq,
        after_change: None,
    };
    let cases = [
        (request(&id, provider("p2"), 0), Code::PermissionDenied),
        (request(&id, provider("p1"), 2), Code::OutOfRange),
        (request(&id, provider("p1"), -1), Code::InvalidArgument),
        (request(&id, None, 0), Code::InvalidArgument),
        (
            request(&Uuid::new_v4().to_string(), provider("p1"), 0),
            Code::NotFound,
        ),
    ];
    for (request, code) in cases {
        assert_eq!(
            app.client
                .stream_conversation(request)
                .await
                .unwrap_err()
                .code(),
            code
        );
    }
    let status = app
        .client
        .stream_inbox(v1::StreamInboxRequest {
            participant: provider("p1"),
            cursor: "bogus".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // A well-formed cursor from the future (another database): OUT_OF_RANGE, not a
    // silent partial replay.
    use base64::Engine;
    let future = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"p":"4000000000:4000000000:"}"#);
    let mut inbox = open_inbox(&mut app.client, provider("p1"), future).await;
    let status = tokio::time::timeout(WAIT, inbox.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    drop(inbox);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.hub.open_streams(),
        0,
        "refused and ended streams hold no slot"
    );
}

#[tokio::test]
async fn receipts_typing_status_and_heartbeats_arrive_live() {
    let mut app = spawn_app_with_flags(&["--heartbeat-interval", "300ms"]).await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    send(&mut app.client, &id, provider("p1"), "hi")
        .await
        .unwrap();
    let mut stream = open_stream(&mut app.client, &id, provider("p1"), 1).await;
    next(&mut stream).await; // snapshot
    app.client
        .mark_read(v1::MarkReadRequest {
            conversation_id: id.clone(),
            reader: customer(""),
            seq: 1,
        })
        .await
        .unwrap();
    app.client
        .send_typing(v1::SendTypingRequest {
            conversation_id: id.clone(),
            sender: customer(""),
        })
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
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        match next(&mut stream).await.event {
            Some(Event::ReadReceipt(r)) => {
                assert_eq!(r.read_seq, 1);
                kinds.push("read");
            }
            Some(Event::Typing(_)) => kinds.push("typing"),
            Some(Event::StatusChanged(s)) => {
                assert_eq!(s.status(), ConversationStatus::Closed);
                kinds.push("status");
            }
            Some(Event::Heartbeat(_)) => {
                if kinds.len() == 3 {
                    kinds.push("heartbeat");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds, ["read", "typing", "status", "heartbeat"]);
}

async fn open_inbox(
    client: &mut Client,
    participant: Option<v1::Participant>,
    cursor: String,
) -> Streaming<StreamInboxResponse> {
    client
        .stream_inbox(v1::StreamInboxRequest {
            participant,
            cursor,
        })
        .await
        .unwrap()
        .into_inner()
}

pub(crate) async fn next_inbox(stream: &mut Streaming<StreamInboxResponse>) -> StreamInboxResponse {
    inbox_until(stream, |response| {
        (!matches!(
            response.event,
            Some(InboxEvent::Heartbeat(_) | InboxEvent::UnreadSummaryChanged(_))
        ))
        .then_some(response)
    })
    .await
}

#[tokio::test]
async fn inbox_shows_what_the_other_replica_did() {
    let mut a = spawn_app().await;
    let mut b = spawn_process(&a.database_url, &[]).await;
    let owner = new_provider();
    let mut inbox = open_inbox(&mut b.client, provider(&owner), String::new()).await;
    let conversation = create(&mut a.client, &owner).await;
    let id = conversation.conversation_id.clone();
    match next_inbox(&mut inbox).await.event {
        Some(InboxEvent::ConversationCreated(c)) => {
            assert_eq!(c.conversation.unwrap().conversation_id, id)
        }
        other => panic!("expected the new conversation, got {other:?}"),
    }
    let mut customer_inbox = open_inbox(&mut b.client, customer("cust-1"), String::new()).await;
    a.client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: id.clone(),
            customer_id: Some("cust-1".into()),
            name: Some("Ada".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    for stream in [&mut inbox, &mut customer_inbox] {
        match next_inbox(stream).await.event {
            Some(InboxEvent::CustomerUpdated(c)) => {
                assert_eq!(
                    c.conversation.unwrap().customer.unwrap().customer_id,
                    "cust-1"
                );
            }
            other => panic!("expected the customer link, got {other:?}"),
        }
    }
    send(&mut a.client, &id, customer("cust-1"), "hello")
        .await
        .unwrap();
    for stream in [&mut inbox, &mut customer_inbox] {
        let response = next_inbox(stream).await;
        match response.event {
            Some(InboxEvent::Message(m)) => {
                assert_eq!((m.conversation_id.as_str(), m.seq), (id.as_str(), 1))
            }
            other => panic!("expected the message, got {other:?}"),
        }
        assert!(!response.replayed);
        assert!(!response.cursor.is_empty());
    }
}

/// A transaction that took its id first but commits last must still reach an inbox
/// that resumes from a cursor taken in between.
#[tokio::test]
async fn inbox_resume_survives_out_of_order_commits() {
    use sqlx::Connection;
    let mut app = spawn_app().await;
    let owner = new_provider();
    let early = create(&mut app.client, &owner).await;
    let mut inbox = open_inbox(&mut app.client, provider(&owner), String::new()).await;
    // A slow writer: its event row gets its id now, commits later.
    let mut slow = app.db().await;
    let mut tx = slow.begin().await.unwrap();
    sqlx::query("INSERT INTO conversation_events (conversation_id, kind) VALUES ($1, 2)")
        .bind(Uuid::parse_str(&early.conversation_id).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    let late = create(&mut app.client, &owner).await;
    let response = next_inbox(&mut inbox).await;
    match &response.event {
        Some(InboxEvent::ConversationCreated(c)) => {
            assert_eq!(
                c.conversation.as_ref().unwrap().conversation_id,
                late.conversation_id
            );
        }
        other => panic!("expected the later conversation, got {other:?}"),
    }
    let cursor = response.cursor;
    drop(inbox);
    tx.commit().await.unwrap();

    let mut resumed = open_inbox(&mut app.client, provider(&owner), cursor).await;
    let response = next_inbox(&mut resumed).await;
    assert!(response.replayed, "a resumed event is marked as replayed");
    match response.event {
        Some(InboxEvent::CustomerUpdated(c)) => {
            assert_eq!(
                c.conversation.unwrap().conversation_id,
                early.conversation_id
            );
        }
        other => panic!("expected the late-committing event, got {other:?}"),
    }
}

#[tokio::test]
async fn without_a_database_health_is_not_serving_and_calls_are_unavailable() {
    use clap::Parser;
    use conversation_service::{config::Config, startup::Application};
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let config = Config::try_parse_from([
        "conversation-service",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        "postgres://postgres@127.0.0.1:1/nowhere",
        "--db-acquire-timeout",
        "300ms",
    ])
    .unwrap();
    let app = Application::build(config).await.unwrap();
    let addr = app.local_addr();
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut health = HealthClient::new(channel.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = health
        .check(HealthCheckRequest {
            service: "chat.v1.ConversationService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 2, "NOT_SERVING");
    let mut client = v1::conversation_service_client::ConversationServiceClient::new(channel);
    let status = client
        .create_conversation(v1::CreateConversationRequest {
            provider_id: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn sigterm_ends_streams_with_unavailable_and_exits_cleanly() {
    let mut a = spawn_app().await;
    let mut b = spawn_process(&a.database_url, &["--shutdown-grace", "2s"]).await;
    let id = create(&mut a.client, "p1").await.conversation_id;
    let mut stream = open_stream(&mut b.client, &id, provider("p1"), 0).await;
    next(&mut stream).await;
    let pid = b.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the stream ends promptly");
    assert_eq!(ended, Some(Code::Unavailable), "told to resume elsewhere");
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Some(status) = b.child.try_wait().unwrap() {
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(exited, Some(true), "exits 0 within the grace period");
    // The other replica carries on: the message written meanwhile is readable on resume.
    send(&mut a.client, &id, provider("p1"), "after")
        .await
        .unwrap();
    let mut resumed = open_stream(&mut a.client, &id, provider("p1"), 0).await;
    assert_eq!(seqs(&messages_until(&mut resumed, 1).await), vec![1]);
}
