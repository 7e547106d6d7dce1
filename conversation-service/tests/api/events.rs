//! The event feed (EventService): one order for every reader, exact resumption across
//! replicas and a replica killed mid-stream, late commits, durable consumers, retention
//! and bad input.

use std::time::Duration;

use chat_proto::v1::{self, EventKind, event::Payload, stream_events_response::Item};
use sqlx::Connection;
use tonic::{Code, Streaming};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::helpers::{
    Events, TestApp, create, customer, delete, edit, events_client, new_provider, provider, reason,
    send, spawn_app, spawn_app_with_flags, spawn_process,
};

const WAIT: Duration = Duration::from_secs(20);

async fn list(
    events: &mut Events,
    after: &str,
    kinds: &[EventKind],
    providers: &[&str],
) -> v1::ListEventsResponse {
    events
        .list_events(v1::ListEventsRequest {
            after: after.into(),
            page_size: 1000,
            kinds: kinds.iter().map(|k| *k as i32).collect(),
            provider_ids: providers.iter().map(|p| (*p).to_owned()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every event after `after` (from the oldest held when empty), paging until it stops
/// growing for a moment, once at least `at_least` are there.
async fn all_after(events: &mut Events, after: &str, at_least: usize) -> Vec<v1::Event> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    let mut cursor = after.to_owned();
    loop {
        let page = list(events, &cursor, &[], &[]).await;
        let empty = page.events.is_empty();
        cursor = page.next_after;
        seen.extend(page.events);
        if empty && seen.len() >= at_least {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} events",
            seen.len()
        );
        if empty {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn stream(
    events: &mut Events,
    after: &str,
    consumer: &str,
) -> Streaming<v1::StreamEventsResponse> {
    events
        .stream_events(v1::StreamEventsRequest {
            after: after.into(),
            consumer: consumer.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The next `n` events of a stream (heartbeats skipped).
async fn next_events(stream: &mut Streaming<v1::StreamEventsResponse>, n: usize) -> Vec<v1::Event> {
    let mut got = Vec::new();
    while got.len() < n {
        let item = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream goes on");
        if let Some(Item::Event(event)) = item.item {
            got.push(event);
        }
    }
    got
}

fn cursors(events: &[v1::Event]) -> Vec<String> {
    events.iter().map(|e| e.cursor.clone()).collect()
}

fn kinds(events: &[v1::Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind()).collect()
}

#[tokio::test]
async fn the_feed_records_every_kind_with_what_it_carries() {
    let mut app = spawn_app().await;
    let mut events = events_client(app.addr);
    let (p, other) = (new_provider(), new_provider());
    let c = create(&mut app.client, &p).await;
    let id = c.conversation_id.clone();
    create(&mut app.client, &other).await;
    app.client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: id.clone(),
            customer_id: Some("cust-1".into()),
            name: Some("Ada".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    send(&mut app.client, &id, provider(&p), "hello")
        .await
        .unwrap();
    app.client
        .mark_read(v1::MarkReadRequest {
            conversation_id: id.clone(),
            reader: customer("cust-1"),
            seq: 1,
        })
        .await
        .unwrap();
    app.client
        .set_conversation_status(v1::SetConversationStatusRequest {
            conversation_id: id.clone(),
            status: v1::ConversationStatus::Closed.into(),
            actor: provider(&p),
        })
        .await
        .unwrap();
    let all = all_after(&mut events, "", 6).await;
    let mine: Vec<_> = all.iter().filter(|e| e.provider_id == p).cloned().collect();
    assert_eq!(
        kinds(&mine),
        [
            EventKind::ConversationCreated,
            EventKind::CustomerUpdated,
            EventKind::MessageSent,
            EventKind::ReadPositionMoved,
            EventKind::StatusChanged,
        ]
    );
    assert!(mine.iter().all(|e| e.conversation_id == id));
    match &mine[1].payload {
        Some(Payload::Conversation(c)) => {
            assert_eq!(c.customer.as_ref().unwrap().customer_id, "cust-1")
        }
        other => panic!("{other:?}"),
    }
    match &mine[2].payload {
        Some(Payload::Message(m)) => assert_eq!((m.seq, m.body.as_str()), (1, "hello")),
        other => panic!("{other:?}"),
    }
    match &mine[3].payload {
        Some(Payload::ReadReceipt(r)) => {
            assert_eq!(
                (r.reader.as_ref().unwrap().id.as_str(), r.read_seq),
                ("cust-1", 1)
            );
        }
        other => panic!("{other:?}"),
    }
    // Every event has its own cursor, and resuming after one yields exactly the rest.
    let distinct: std::collections::HashSet<_> = cursors(&all).into_iter().collect();
    assert_eq!(distinct.len(), all.len());
    let cut = all.len() / 2;
    let rest = list(&mut events, &all[cut].cursor, &[], &[]).await;
    let expected = cursors(&all[cut + 1..]);
    assert_eq!(cursors(&rest.events)[..expected.len()], expected[..]);
    // Filters: by provider, by kind.
    let only = list(&mut events, "0", &[], &[&p]).await;
    assert_eq!(cursors(&only.events), cursors(&mine));
    let messages = list(&mut events, "0", &[EventKind::MessageSent], &[]).await;
    assert_eq!(kinds(&messages.events), [EventKind::MessageSent]);
    let beyond = list(&mut events, &messages.next_after, &[], &[]).await;
    assert!(
        beyond.events.is_empty(),
        "a filtered page moves past what it skipped: {:?}",
        kinds(&beyond.events)
    );
}

#[tokio::test]
async fn resuming_on_either_of_two_replicas_gives_the_same_events_exactly_once() {
    let mut a = spawn_app().await;
    let mut b = spawn_process(&a.database_url, &[]).await;
    let mut feed_a = events_client(a.addr);
    let mut feed_b = events_client(b.addr);
    let mut live = stream(&mut feed_a, "0", "").await;
    let p = new_provider();
    let (ca, cb) = (
        create(&mut a.client, &p).await,
        create(&mut b.client, &p).await,
    );
    // Both replicas write at once, so windows interleave.
    let mut writers = Vec::new();
    for (mut client, id) in [
        (a.client.clone(), ca.conversation_id.clone()),
        (b.client.clone(), cb.conversation_id.clone()),
    ] {
        let p = p.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..40 {
                send(&mut client, &id, provider(&p), &format!("m{i}"))
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let total = 2 + 80;
    let streamed = next_events(&mut live, total).await;
    let listed_a = all_after(&mut feed_a, "0", total).await;
    let listed_b = all_after(&mut feed_b, "0", total).await;
    assert_eq!(cursors(&streamed), cursors(&listed_a));
    assert_eq!(cursors(&listed_a), cursors(&listed_b));
    // Per conversation, messages in seq order.
    for id in [&ca.conversation_id, &cb.conversation_id] {
        let seqs: Vec<i64> = listed_b
            .iter()
            .filter_map(|e| match &e.payload {
                Some(Payload::Message(m)) if &m.conversation_id == id => Some(m.seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    }
    // From any cursor, on the other replica, streamed: exactly the rest, in order.
    for cut in [0, 1, 17, 50, total - 1] {
        let mut resumed = stream(&mut feed_b, &listed_a[cut].cursor, "").await;
        let rest = next_events(&mut resumed, total - cut - 1).await;
        assert_eq!(cursors(&rest), cursors(&listed_a[cut + 1..]), "after {cut}");
    }
    drop(b);
}

#[tokio::test]
async fn a_transaction_that_commits_late_is_not_skipped() {
    let mut app = spawn_app().await;
    let mut events = events_client(app.addr);
    let p = new_provider();
    let late = create(&mut app.client, &p).await;
    let other = create(&mut app.client, &p).await;
    let before = all_after(&mut events, "0", 2).await;
    // A transaction takes its id (and inbox position) first, commits last.
    let mut db = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, id, sender_role, sender_id, body) \
         VALUES ($1, 1, gen_random_uuid(), 1, $2, 'late')",
    )
    .bind(Uuid::parse_str(&late.conversation_id).unwrap())
    .bind(&p)
    .execute(&mut *tx)
    .await
    .unwrap();
    send(
        &mut app.client,
        &other.conversation_id,
        provider(&p),
        "early",
    )
    .await
    .unwrap();
    let last = before.last().unwrap().cursor.clone();
    let seen = all_after(&mut events, &last, 1).await;
    assert_eq!(seen.len(), 1);
    tx.commit().await.unwrap();
    // Woken by the next write's notice (or the sequencer's timer).
    send(
        &mut app.client,
        &other.conversation_id,
        provider(&p),
        "after",
    )
    .await
    .unwrap();
    let rest = all_after(&mut events, &seen[0].cursor, 2).await;
    let bodies: Vec<_> = rest
        .iter()
        .map(|e| match &e.payload {
            Some(Payload::Message(m)) => m.body.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(bodies.contains(&"late".to_owned()), "{bodies:?}");
    assert_eq!(bodies.len(), 2);
}

#[tokio::test]
async fn a_replica_killed_mid_stream_is_resumed_exactly_on_another() {
    let mut a = spawn_app().await;
    let mut b = spawn_process(&a.database_url, &[]).await;
    let mut feed_b = events_client(b.addr);
    let mut live = stream(&mut feed_b, "0", "").await;
    let p = new_provider();
    let c = create(&mut a.client, &p).await;
    for i in 0..10 {
        send(
            &mut a.client,
            &c.conversation_id,
            provider(&p),
            &format!("m{i}"),
        )
        .await
        .unwrap();
    }
    let got = next_events(&mut live, 5).await;
    b.child.kill().unwrap();
    let _ = b.child.wait();
    // The writes go on while the consumer is away.
    for i in 10..20 {
        send(
            &mut a.client,
            &c.conversation_id,
            provider(&p),
            &format!("m{i}"),
        )
        .await
        .unwrap();
    }
    let mut feed_a = events_client(a.addr);
    let mut resumed = stream(&mut feed_a, &got.last().unwrap().cursor, "").await;
    let rest = next_events(&mut resumed, 21 - 5).await;
    let everything = all_after(&mut feed_a, "0", 21).await;
    let joined: Vec<_> = got.into_iter().chain(rest).collect();
    assert_eq!(cursors(&joined), cursors(&everything));
    drop(b);
}

#[tokio::test]
async fn consumers_resume_where_they_acknowledged_and_two_workers_each_get_everything() {
    let mut app = spawn_app().await;
    let mut events = events_client(app.addr);
    let p = new_provider();
    let c = create(&mut app.client, &p).await;
    for i in 0..5 {
        send(
            &mut app.client,
            &c.conversation_id,
            provider(&p),
            &format!("m{i}"),
        )
        .await
        .unwrap();
    }
    let all = all_after(&mut events, "0", 6).await;
    let ack = |cursor: &str| v1::AckEventsRequest {
        consumer: "crm".into(),
        cursor: cursor.into(),
    };
    let kept = events
        .ack_events(ack(&all[2].cursor))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.cursor, all[2].cursor);
    // Positions only advance: an older acknowledgement leaves it.
    let kept = events
        .ack_events(ack(&all[0].cursor))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.cursor, all[2].cursor);
    // Two workers of one consumer each get every event after the position: a consumer
    // is a position, not a work queue.
    let mut one = stream(&mut events, "", "crm").await;
    let mut two = stream(&mut events_client(app.addr), "", "crm").await;
    let (got_one, got_two) = (
        next_events(&mut one, 3).await,
        next_events(&mut two, 3).await,
    );
    assert_eq!(cursors(&got_one), cursors(&all[3..]));
    assert_eq!(cursors(&got_two), cursors(&all[3..]));
    // A restarted worker (another replica, after a restart) goes on where it acknowledged.
    let database_url = app.database_url.clone();
    drop(one);
    drop(two);
    let _ = events.ack_events(ack(&all[4].cursor)).await.unwrap();
    let restarted = spawn_process(&database_url, &[]).await;
    let mut after_restart = stream(&mut events_client(restarted.addr), "", "crm").await;
    assert_eq!(
        cursors(&next_events(&mut after_restart, 1).await),
        cursors(&all[5..])
    );
    drop(app);
}

#[tokio::test]
async fn a_cursor_past_the_retention_is_expired_naming_the_oldest_held() {
    let mut app = spawn_app_with_flags(&["--event-retention", "1s"]).await;
    let mut events = events_client(app.addr);
    let p = new_provider();
    let c = create(&mut app.client, &p).await;
    send(&mut app.client, &c.conversation_id, provider(&p), "old")
        .await
        .unwrap();
    all_after(&mut events, "0", 2).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.count("SELECT count(*) FROM feed_windows").await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send(&mut app.client, &c.conversation_id, provider(&p), "new")
        .await
        .unwrap();
    let mut oldest_cursors = Vec::new();
    for call in ["list", "stream"] {
        let status = if call == "list" {
            events
                .list_events(v1::ListEventsRequest {
                    after: "0".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err()
        } else {
            events
                .stream_events(v1::StreamEventsRequest {
                    after: "0".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err()
        };
        assert_eq!(status.code(), Code::FailedPrecondition, "{call}");
        assert_eq!(reason(&status), "CURSOR_EXPIRED");
        let oldest =
            status.get_error_details().error_info().unwrap().metadata["oldest_cursor"].clone();
        assert_ne!(oldest, "0", "{call}");
        oldest_cursors.push(oldest);
    }
    // From the oldest cursor held, nothing is lost.
    let rest = all_after(&mut events, &oldest_cursors[0], 1).await;
    assert_eq!(rest.len(), 1);
}

#[tokio::test]
async fn bad_input_is_refused_and_writes_nothing() {
    let app = spawn_app().await;
    let mut events = events_client(app.addr);
    let invalid = |status: tonic::Status, field: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(crate::helpers::bad_field(&status), field, "{status:?}");
    };
    let list_with = |after: &str, kinds: Vec<i32>| v1::ListEventsRequest {
        after: after.into(),
        kinds,
        ..Default::default()
    };
    invalid(
        events
            .list_events(list_with("", vec![0]))
            .await
            .unwrap_err(),
        "kinds",
    );
    invalid(
        events
            .list_events(list_with("", vec![99]))
            .await
            .unwrap_err(),
        "kinds",
    );
    for forged in ["-1", "x", "1 ", "99999999999999999999", "1000000"] {
        invalid(
            events
                .list_events(list_with(forged, vec![]))
                .await
                .unwrap_err(),
            "after",
        );
        invalid(
            events
                .stream_events(v1::StreamEventsRequest {
                    after: forged.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            "after",
        );
    }
    invalid(
        events
            .list_events(v1::ListEventsRequest {
                page_size: -1,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        "page_size",
    );
    let unknown = events
        .stream_events(v1::StreamEventsRequest {
            consumer: "nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(reason(&unknown), "CONSUMER_NOT_FOUND");
    invalid(
        events
            .stream_events(v1::StreamEventsRequest {
                consumer: "a".into(),
                after: "0".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        "consumer",
    );
    let ack = |consumer: &str, cursor: &str| v1::AckEventsRequest {
        consumer: consumer.into(),
        cursor: cursor.into(),
    };
    invalid(
        events.ack_events(ack("", "0")).await.unwrap_err(),
        "consumer",
    );
    invalid(
        events.ack_events(ack("bad name", "0")).await.unwrap_err(),
        "consumer",
    );
    invalid(
        events.ack_events(ack("crm", "")).await.unwrap_err(),
        "cursor",
    );
    invalid(
        events.ack_events(ack("crm", "1000000")).await.unwrap_err(),
        "cursor",
    );
    assert_eq!(app.count("SELECT count(*) FROM feed_consumers").await, 0);
    let _: &TestApp = &app;
}

#[tokio::test]
async fn edits_and_deletions_are_in_the_feed_with_the_message_as_it_is_now() {
    let mut app = spawn_app().await;
    let mut events = events_client(app.addr);
    let p = new_provider();
    let c = create(&mut app.client, &p).await;
    let sent = send(&mut app.client, &c.conversation_id, provider(&p), "helo")
        .await
        .unwrap();
    let key = Uuid::new_v4().to_string();
    edit(
        &mut app.client,
        &c.conversation_id,
        &sent.message_id,
        provider(&p),
        "hello",
        &key,
    )
    .await
    .unwrap();
    let key = Uuid::new_v4().to_string();
    delete(
        &mut app.client,
        &c.conversation_id,
        &sent.message_id,
        provider(&p),
        &key,
    )
    .await
    .unwrap();
    let changes = [EventKind::MessageEdited, EventKind::MessageDeleted];
    let deadline = tokio::time::Instant::now() + WAIT;
    let page = loop {
        let page = list(&mut events, "0", &changes, &[&p]).await;
        if page.events.len() >= 2 {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", page.events);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(kinds(&page.events), changes);
    match (&page.events[0].payload, &page.events[1].payload) {
        (Some(Payload::MessageEdited(edited)), Some(Payload::MessageDeleted(deleted))) => {
            assert_eq!((edited.change_seq, deleted.change_seq), (1, 2));
            // Read when the event is read: the edit shows the message as it is now, a
            // tombstone with no text left anywhere.
            let tombstone = deleted.message.as_ref().unwrap();
            assert!(
                tombstone.deleted && tombstone.body.is_empty(),
                "{tombstone:?}"
            );
            assert_eq!(edited.message.as_ref().unwrap().seq, sent.seq);
        }
        other => panic!("{other:?}"),
    }
}
