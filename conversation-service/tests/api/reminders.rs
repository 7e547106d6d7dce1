//! Unread reminders: once per conversation, participant and unread streak, with two
//! replicas and with one of them killed; none while the participant has a stream open.

use std::time::Duration;

use chat_proto::v1::{self, EventKind, event::Payload};

use crate::helpers::{
    Client, Events, create, customer, events_client, new_provider, provider, provider_events, send,
    spawn_app_with_flags, spawn_process,
};

const DELAY: &str = "1s";

/// The reminders the feed holds for provider `p`'s conversations.
async fn reminders(events: &mut Events, p: &str) -> Vec<v1::UnreadReminder> {
    provider_events(events, EventKind::UnreadReminder, p)
        .await
        .into_iter()
        .map(|payload| match payload {
            Payload::UnreadReminder(r) => r,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Waits until `n` reminders are there, then a while longer (several scans), and
/// returns what is there then.
async fn settle(events: &mut Events, p: &str, n: usize) -> Vec<v1::UnreadReminder> {
    let started = std::time::Instant::now();
    while reminders(events, p).await.len() < n {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "fewer than {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    reminders(events, p).await
}

async fn mark_read(client: &mut Client, id: &str, p: &str, seq: i64) {
    client
        .mark_read(v1::MarkReadRequest {
            conversation_id: id.into(),
            reader: provider(p),
            seq,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn one_reminder_per_unread_streak_with_two_replicas() {
    let mut app = spawn_app_with_flags(&["--unread-reminder-delay", DELAY]).await;
    let _b = spawn_process(&app.database_url, &["--unread-reminder-delay", DELAY]).await;
    let mut events = events_client(app.addr);
    let p = new_provider();
    let c = create(&mut app.client, &p).await;
    let id = c.conversation_id.clone();
    let long = "x".repeat(500);
    send(&mut app.client, &id, customer(""), &long)
        .await
        .unwrap();
    send(&mut app.client, &id, customer(""), "second")
        .await
        .unwrap();
    let got = settle(&mut events, &p, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert_eq!(
        (
            r.conversation_id.as_str(),
            r.unread_count,
            r.first_unread_seq
        ),
        (id.as_str(), 2, 1)
    );
    assert_eq!(r.participant.as_ref().unwrap().id, p);
    assert_eq!(r.preview.chars().count(), 200);
    // More messages in the same streak: no second reminder.
    send(&mut app.client, &id, customer(""), "third")
        .await
        .unwrap();
    assert_eq!(settle(&mut events, &p, 1).await.len(), 1);
    // Reading starts a new streak.
    mark_read(&mut app.client, &id, &p, 3).await;
    send(&mut app.client, &id, customer(""), "fourth")
        .await
        .unwrap();
    let got = settle(&mut events, &p, 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (
            got[1].unread_count,
            got[1].first_unread_seq,
            got[1].preview.as_str()
        ),
        (1, 4, "fourth")
    );
}

#[tokio::test]
async fn no_reminder_while_the_participant_has_a_stream_open() {
    let mut app = spawn_app_with_flags(&["--unread-reminder-delay", DELAY]).await;
    let mut events = events_client(app.addr);
    let p = new_provider();
    let c = create(&mut app.client, &p).await;
    let _inbox = app
        .client
        .stream_inbox(v1::StreamInboxRequest {
            participant: provider(&p),
            cursor: String::new(),
        })
        .await
        .unwrap();
    // Presence is written by the next beat.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send(&mut app.client, &c.conversation_id, customer(""), "hi")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(reminders(&mut events, &p).await.is_empty());
}

#[tokio::test]
async fn a_reminder_is_not_lost_when_a_replica_is_killed() {
    let mut app = spawn_app_with_flags(&["--unread-reminder-delay", DELAY]).await;
    let mut b = spawn_process(&app.database_url, &["--unread-reminder-delay", DELAY]).await;
    let mut events = events_client(app.addr);
    let p = new_provider();
    let c = create(&mut b.client, &p).await;
    send(
        &mut b.client,
        &c.conversation_id,
        customer(""),
        "while b lives",
    )
    .await
    .unwrap();
    // Killed before the delay is over: the other replica sends it, once.
    b.child.kill().unwrap();
    let _ = b.child.wait();
    let got = settle(&mut events, &p, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    drop(b);
    let _ = &mut app;
}
