//! Presence: online while a stream is open on any replica, offline within the stated
//! bound after a replica is SIGKILLed, no offline/online pair for a quick reconnect.

use std::time::{Duration, Instant};

use chat_proto::v1::{self, EventKind, event::Payload};

use crate::helpers::{
    Client, Events, events_client, new_provider, provider, provider_events, spawn_app,
    spawn_process,
};

/// What conversation-service states (realtime/presence.rs): rows expire 5 s after the
/// last beat (1 s apart), and any replica's next beat announces it.
const OFFLINE_BOUND: Duration = Duration::from_secs(7);

async fn online(events: &mut Events, p: &str) -> bool {
    let reply = events
        .get_presence(v1::GetPresenceRequest {
            participants: vec![provider(p).unwrap()],
        })
        .await
        .unwrap()
        .into_inner();
    reply.presences[0].online
}

/// Waits until `p`'s presence is `want`; returns how long it took.
async fn until(events: &mut Events, p: &str, want: bool) -> Duration {
    let started = Instant::now();
    while online(events, p).await != want {
        assert!(started.elapsed() < Duration::from_secs(20), "never {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

/// The presence changes the feed holds for provider `p`, in order.
async fn changes(events: &mut Events, p: &str) -> Vec<bool> {
    provider_events(events, EventKind::PresenceChanged, p)
        .await
        .into_iter()
        .map(|payload| match payload {
            Payload::PresenceChanged(c) => c.online,
            other => panic!("{other:?}"),
        })
        .collect()
}

async fn inbox(client: &mut Client, p: &str) -> tonic::Streaming<v1::StreamInboxResponse> {
    client
        .stream_inbox(v1::StreamInboxRequest {
            participant: provider(p),
            cursor: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_sigkilled_replica_leaves_nobody_online_past_the_bound() {
    let app = spawn_app().await;
    let mut b = spawn_process(&app.database_url, &[]).await;
    let mut events = events_client(app.addr);
    let p = new_provider();
    assert!(!online(&mut events, &p).await);
    let _stream = inbox(&mut b.client, &p).await;
    until(&mut events, &p, true).await;
    b.child.kill().unwrap();
    let killed = Instant::now();
    let _ = b.child.wait();
    until(&mut events, &p, false).await;
    assert!(
        killed.elapsed() <= OFFLINE_BOUND,
        "offline after {:?}",
        killed.elapsed()
    );
    // The feed says so too, once each way.
    let started = Instant::now();
    while changes(&mut events, &p).await != [true, false] {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            changes(&mut events, &p).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_quick_reconnect_on_another_replica_is_not_an_offline_online_pair() {
    let mut app = spawn_app().await;
    let mut b = spawn_process(&app.database_url, &[]).await;
    let mut events = events_client(app.addr);
    let p = new_provider();
    let first = inbox(&mut app.client, &p).await;
    until(&mut events, &p, true).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = inbox(&mut b.client, &p).await;
    // Past the grace period and several beats of both replicas.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(online(&mut events, &p).await);
    assert_eq!(changes(&mut events, &p).await, [true]);
    drop(second);
    until(&mut events, &p, false).await;
    let started = Instant::now();
    while changes(&mut events, &p).await != [true, false] {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            changes(&mut events, &p).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn get_presence_refuses_what_it_cannot_name() {
    let app = spawn_app().await;
    let mut events = events_client(app.addr);
    for participants in [
        vec![v1::Participant::default()],
        vec![v1::Participant::anonymous(crate::helpers::SESSION)],
        vec![provider("p").unwrap(); 101],
    ] {
        let status = events
            .get_presence(v1::GetPresenceRequest { participants })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert_eq!(crate::helpers::bad_field(&status), "participants");
    }
}

/// The next PresenceChanged on a conversation stream (other events are skipped).
async fn next_presence(
    stream: &mut tonic::Streaming<v1::StreamConversationResponse>,
) -> v1::PresenceChanged {
    use v1::stream_conversation_response::Event;
    let deadline = Duration::from_secs(20);
    loop {
        let next = tokio::time::timeout(deadline, stream.message())
            .await
            .expect("no presence change")
            .unwrap()
            .unwrap();
        if let Some(Event::PresenceChanged(change)) = next.event {
            return change;
        }
    }
}

#[tokio::test]
async fn a_conversation_stream_hears_its_customer_come_and_go_on_another_replica() {
    let mut app = spawn_app().await;
    let mut b = spawn_process(&app.database_url, &[]).await;
    let p = new_provider();
    let c = crate::helpers::create(&mut app.client, &p).await;
    let customer_id = format!("cust-{}", uuid::Uuid::new_v4().simple());
    app.client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: c.conversation_id.clone(),
            customer_id: Some(customer_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut watching =
        crate::helpers::open_stream(&mut app.client, &c.conversation_id, provider(&p), 0).await;
    // The provider's own stream makes it online first.
    let first = next_presence(&mut watching).await;
    assert_eq!(
        (first.participant.unwrap().id, first.online),
        (p.clone(), true)
    );
    let customer = crate::helpers::customer(&customer_id);
    let visit = crate::helpers::open_stream(&mut b.client, &c.conversation_id, customer, 0).await;
    let came = next_presence(&mut watching).await;
    assert_eq!(
        (came.participant.unwrap().id, came.online),
        (customer_id.clone(), true)
    );
    drop(visit);
    let went = next_presence(&mut watching).await;
    assert_eq!(
        (went.participant.unwrap().id, went.online),
        (customer_id, false)
    );
}

/// The next PresenceChanged on an inbox stream (other events are skipped).
async fn next_inbox_presence(
    stream: &mut tonic::Streaming<v1::StreamInboxResponse>,
) -> (String, bool) {
    use v1::stream_inbox_response::Event;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("no presence change")
            .unwrap()
            .unwrap();
        if let Some(Event::PresenceChanged(change)) = next.event {
            return (change.participant.unwrap().id, change.online);
        }
    }
}

#[tokio::test]
async fn inboxes_hear_their_counterparts_and_nobody_else() {
    let mut app = spawn_app().await;
    let mut b = spawn_process(&app.database_url, &[]).await;
    let (p, stranger) = (new_provider(), new_provider());
    let c = crate::helpers::create(&mut app.client, &p).await;
    let customer_id = format!("cust-{}", uuid::Uuid::new_v4().simple());
    app.client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: c.conversation_id.clone(),
            customer_id: Some(customer_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut provider_inbox = inbox(&mut app.client, &p).await;
    let mut customer_inbox = app
        .client
        .stream_inbox(v1::StreamInboxRequest {
            participant: crate::helpers::customer(&customer_id),
            cursor: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // Each inbox makes its owner online: the other one hears it.
    let mut heard = [
        next_inbox_presence(&mut provider_inbox).await,
        next_inbox_presence(&mut customer_inbox).await,
    ];
    heard.sort();
    let mut expected = [(customer_id.clone(), true), (p.clone(), true)];
    expected.sort();
    assert_eq!(heard, expected);
    // A provider the customer never talked to comes and goes on the other replica:
    // the customer's inbox hears nothing of it, but does hear its own provider leave.
    let other = inbox(&mut b.client, &stranger).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(other);
    drop(provider_inbox);
    assert_eq!(next_inbox_presence(&mut customer_inbox).await, (p, false));
}
