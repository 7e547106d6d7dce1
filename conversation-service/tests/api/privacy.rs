//! ConversationPrivacyService: erasing a customer's side of their conversations and
//! exporting them, and the audit trail of both.

use std::time::Duration;

use chat_proto::v1::{
    self, EraseCustomerConversationsRequest, ExportCustomerConversationsRequest,
    ListAuditRecordsRequest, Participant, UpdateCustomerRequest,
    audit_service_client::AuditServiceClient,
    conversation_privacy_service_client::ConversationPrivacyServiceClient,
    export_customer_conversations_response::Item,
    stream_conversation_response::Event as ConversationEvent,
    stream_inbox_response::Event as InboxEvent,
};
use tonic::{Code, Streaming, transport::Channel};
use uuid::Uuid;

use chat_common::testing::{
    database::tables_containing,
    status::{assert_refused, info_metadata},
};

use crate::{
    helpers::{
        Client, SESSION, TestApp, bad_field, create, new_provider, open_stream, provider, reason,
        send, spawn_app,
    },
    inbox::{cursor_now, open as open_inbox},
    stream_faults::{pile_up, slow_client},
    streams::next_inbox,
};

const WAIT: Duration = Duration::from_secs(20);

type Privacy = ConversationPrivacyServiceClient<Channel>;

async fn privacy(app: &TestApp) -> Privacy {
    ConversationPrivacyServiceClient::connect(format!("http://{}", app.addr))
        .await
        .unwrap()
}

/// Details no other test uses, so a search of the database finds only these.
struct Person {
    id: String,
    name: String,
    email: String,
    phone: String,
}

impl Person {
    fn new() -> Self {
        let uuid = Uuid::new_v4();
        let tag = uuid.simple().to_string();
        Self {
            id: format!("cust-{tag}"),
            name: format!("Erased Person {tag}"),
            email: format!("erased-{tag}@example.com"),
            phone: format!("+4420{:08}", uuid.as_u128() % 100_000_000),
        }
    }
}

/// A conversation of `provider` with `person` linked, one message from each side; returns
/// its id.
async fn linked_conversation(
    client: &mut Client,
    provider: &str,
    person: &Person,
    texts: (&str, &str),
) -> String {
    let id = create(client, provider).await.conversation_id;
    client
        .update_customer(UpdateCustomerRequest {
            conversation_id: id.clone(),
            customer_id: Some(person.id.clone()),
            name: Some(person.name.clone()),
            email: Some(person.email.clone()),
            phone: Some(person.phone.clone()),
        })
        .await
        .unwrap();
    send(
        client,
        &id,
        Some(Participant::customer(&person.id)),
        texts.0,
    )
    .await
    .unwrap();
    send(client, &id, Some(Participant::provider(provider)), texts.1)
        .await
        .unwrap();
    id
}

fn erase(customer_id: &str, conversation_ids: &[&str]) -> EraseCustomerConversationsRequest {
    EraseCustomerConversationsRequest {
        request_id: Uuid::new_v4().to_string(),
        customer_id: customer_id.into(),
        conversation_ids: conversation_ids.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Tables of the database with a row whose text contains `needle`.
pub(crate) async fn rows_containing(app: &TestApp, needle: &str) -> Vec<String> {
    tables_containing(&mut app.db().await, needle).await
}

async fn messages(
    client: &mut Client,
    conversation_id: &str,
    viewer: Participant,
) -> Vec<v1::Message> {
    client
        .list_messages(v1::ListMessagesRequest {
            conversation_id: conversation_id.into(),
            viewer: Some(viewer),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages
}

async fn audit(app: &TestApp) -> Vec<v1::AuditRecord> {
    AuditServiceClient::connect(format!("http://{}", app.addr))
        .await
        .unwrap()
        .list_audit_records(ListAuditRecordsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .audit_records
}

#[tokio::test]
async fn erase_blanks_the_customer_and_their_messages_everywhere_and_keeps_the_providers() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let person = Person::new();
    let said = format!("customer secret {}", Uuid::new_v4().simple());
    let linked = linked_conversation(
        &mut client,
        &new_provider(),
        &person,
        (&said, "provider reply"),
    )
    .await;
    // Opened by one of the customer's sessions and never linked: erased through the list.
    let anonymous_provider = new_provider();
    let anonymous = create(&mut client, &anonymous_provider)
        .await
        .conversation_id;
    let said_anonymously = format!("anonymous secret {}", Uuid::new_v4().simple());
    send(
        &mut client,
        &anonymous,
        Some(Participant::anonymous(SESSION)),
        &said_anonymously,
    )
    .await
    .unwrap();
    // Listed too, but linked to someone else: left alone.
    let other = Person::new();
    let others = linked_conversation(
        &mut client,
        &new_provider(),
        &other,
        ("other's words", "reply"),
    )
    .await;

    let erased = privacy(&app)
        .await
        .erase_customer_conversations(erase(&person.id, &[&anonymous, &others]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (erased.conversations_erased, erased.messages_erased),
        (1, 2)
    );

    let conversation = client
        .get_conversation(v1::GetConversationRequest {
            conversation_id: linked.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    let customer = conversation.customer.unwrap();
    assert_eq!(
        (
            customer.customer_id.as_str(),
            customer.name.as_str(),
            customer.email.as_str(),
            customer.phone.as_str()
        ),
        (person.id.as_str(), "", "", "")
    );
    let bodies: Vec<String> = messages(&mut client, &linked, Participant::customer(&person.id))
        .await
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(bodies, ["", "provider reply"]);
    for needle in [
        &person.name,
        &person.email,
        &person.phone,
        &said,
        &said_anonymously,
    ] {
        assert_eq!(
            rows_containing(&app, needle).await,
            Vec::<String>::new(),
            "{needle}"
        );
    }
    assert!(
        !rows_containing(&app, &other.email).await.is_empty(),
        "another customer was erased"
    );
    assert!(!rows_containing(&app, "other's words").await.is_empty());

    // Again: nothing more to erase.
    let again = privacy(&app)
        .await
        .erase_customer_conversations(erase(&person.id, &[&anonymous]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.conversations_erased, again.messages_erased), (0, 0));
    let records = audit(&app).await;
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.target == person.id
        && r.result == "OK"
        && r.method == "/chat.v1.ConversationPrivacyService/EraseCustomerConversations"
        && r.caller == "anonymous"));
}

/// The next StreamConversation event that is not a heartbeat.
async fn next_event(
    stream: &mut Streaming<v1::StreamConversationResponse>,
) -> (ConversationEvent, bool) {
    loop {
        let response = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an event within the deadline")
            .unwrap()
            .expect("the stream stays open");
        match response.event {
            Some(ConversationEvent::Heartbeat(_)) | None => {}
            Some(event) => return (event, response.replayed),
        }
    }
}

/// Waits until `stream` has shown everything written before now: the listener routes
/// notices in commit order and a stream handles its wake-ups in order, so once a typing
/// event sent now arrives, no older wake-up (a late CustomerUpdated of the link) is left.
async fn settle(
    stream: &mut Streaming<v1::StreamConversationResponse>,
    client: &mut Client,
    id: &str,
    customer_id: &str,
) {
    client
        .send_typing(v1::SendTypingRequest {
            conversation_id: id.into(),
            sender: Some(Participant::customer(customer_id)),
        })
        .await
        .unwrap();
    while !matches!(next_event(stream).await, (ConversationEvent::Typing(_), _)) {}
}

/// What a CustomerErased must say of `person`'s conversation, and nothing else: no name,
/// email or phone (its Debug text holds every field it carries).
fn assert_erasure_of(erased: &v1::CustomerErased, id: &str, person: &Person, through_seq: i64) {
    assert_eq!(
        (
            erased.conversation_id.as_str(),
            erased.customer_id.as_str(),
            erased.erased_through_seq
        ),
        (id, person.id.as_str(), through_seq)
    );
    assert!(erased.erase_time.is_some());
    let carried = format!("{erased:?}");
    for detail in [&person.name, &person.email, &person.phone] {
        assert!(!carried.contains(detail.as_str()), "{carried}");
    }
}

/// An erasure is its own event, CustomerErased, not a CustomerUpdated with blank
/// details: live on an open stream and inbox, again after the snapshot of a stream
/// reopened later, and once to an inbox resumed from a cursor taken before it.
#[tokio::test]
async fn streams_and_inboxes_get_customer_erased_live_and_on_resume() {
    let app = crate::helpers::spawn_app_with_flags(&["--heartbeat-interval", "200ms"]).await;
    let mut client = app.client.clone();
    let person = Person::new();
    let owner = new_provider();
    let id = linked_conversation(&mut client, &owner, &person, ("my words", "reply")).await;
    let before = cursor_now(&mut client, provider(&owner)).await;
    let mut inbox = open_inbox(&mut client, provider(&owner), &before)
        .await
        .unwrap();
    let mut stream = open_stream(&mut client, &id, provider(&owner), 2).await;
    match next_event(&mut stream).await {
        (ConversationEvent::Snapshot(snapshot), true) => {
            let customer = snapshot.conversation.unwrap().customer.unwrap();
            assert_eq!(
                customer.email, person.email,
                "not erased yet: no CustomerErased"
            );
        }
        other => panic!("a snapshot first, got {other:?}"),
    }
    settle(&mut stream, &mut client, &id, &person.id).await;

    privacy(&app)
        .await
        .erase_customer_conversations(erase(&person.id, &[]))
        .await
        .unwrap();

    match next_event(&mut stream).await {
        (ConversationEvent::CustomerErased(erased), false) => {
            assert_erasure_of(&erased, &id, &person, 2);
        }
        other => panic!("CustomerErased live, got {other:?}"),
    }
    // Nothing else follows it (no CustomerUpdated): the next event is a heartbeat.
    let after = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(after.event, Some(ConversationEvent::Heartbeat(_))),
        "{after:?}"
    );
    let live = next_inbox(&mut inbox).await;
    match &live.event {
        Some(InboxEvent::CustomerErased(erased)) => assert_erasure_of(erased, &id, &person, 2),
        other => panic!("CustomerErased in the live inbox, got {other:?}"),
    }
    assert!(!live.replayed);

    let mut resumed = open_inbox(&mut client, provider(&owner), &before)
        .await
        .unwrap();
    let replayed = next_inbox(&mut resumed).await;
    match &replayed.event {
        Some(InboxEvent::CustomerErased(erased)) => assert_erasure_of(erased, &id, &person, 2),
        other => panic!("CustomerErased on resume, got {other:?}"),
    }
    assert!(replayed.replayed);
    // Resumed after it, the inbox does not repeat it.
    let mut after_it = open_inbox(&mut client, provider(&owner), &replayed.cursor)
        .await
        .unwrap();
    let next = tokio::time::timeout(WAIT, after_it.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(next.event, Some(InboxEvent::Heartbeat(_))),
        "{next:?}"
    );

    // A client that was away reopens from what it has: the snapshot shows the blank
    // details, and the erasure follows it so the client drops its copy.
    let mut reopened = open_stream(&mut client, &id, provider(&owner), 2).await;
    match next_event(&mut reopened).await {
        (ConversationEvent::Snapshot(snapshot), true) => {
            let customer = snapshot.conversation.unwrap().customer.unwrap();
            assert_eq!(
                (
                    customer.customer_id,
                    customer.name,
                    customer.email,
                    customer.phone
                ),
                (
                    person.id.clone(),
                    String::new(),
                    String::new(),
                    String::new()
                )
            );
        }
        other => panic!("a snapshot first, got {other:?}"),
    }
    match next_event(&mut reopened).await {
        (ConversationEvent::CustomerErased(erased), true) => {
            assert_erasure_of(&erased, &id, &person, 2);
        }
        other => panic!("CustomerErased after the snapshot, got {other:?}"),
    }
}

/// A stream that lags behind (its queue overflowed) drops the wake-ups queued, the
/// erasure's among them, and resyncs: the erasure follows its fresh snapshot, once.
#[tokio::test]
async fn a_stream_that_missed_the_erasure_while_lagging_gets_it_after_its_resync_snapshot() {
    let mut app = crate::helpers::spawn_app_with_flags(&["--stream-queue", "4"]).await;
    let person = Person::new();
    let owner = new_provider();
    let id = create(&mut app.client, &owner).await.conversation_id;
    app.client
        .update_customer(UpdateCustomerRequest {
            conversation_id: id.clone(),
            customer_id: Some(person.id.clone()),
            name: Some(person.name.clone()),
            email: Some(person.email.clone()),
            phone: Some(person.phone.clone()),
        })
        .await
        .unwrap();
    let mut slow = slow_client(app.addr).await;
    let mut stream = open_stream(&mut slow, &id, provider(&owner), 0).await;
    stream.message().await.unwrap().unwrap(); // the first snapshot
    settle(&mut stream, &mut app.client, &id, &person.id).await;
    pile_up(&app, &id, 400).await;
    send(&mut app.client, &id, provider(&owner), "wake")
        .await
        .unwrap();
    // The task is stuck sending the replay; the erasure's wake-up queues behind it...
    tokio::time::sleep(Duration::from_millis(500)).await;
    privacy(&app)
        .await
        .erase_customer_conversations(erase(&person.id, &[]))
        .await
        .unwrap();
    // ...and these overflow the queue: the stream lags and resyncs.
    let typing = |client: &mut Client| {
        let request = v1::SendTypingRequest {
            conversation_id: id.clone(),
            sender: Some(Participant::customer(&person.id)),
        };
        let mut client = client.clone();
        async move { client.send_typing(request).await.unwrap() }
    };
    for _ in 0..5 {
        typing(&mut app.client).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut app.client, &id, provider(&owner), "marker")
        .await
        .unwrap();

    let mut seen = Vec::new();
    loop {
        let response = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match response.event {
            Some(ConversationEvent::Message(m)) if m.seq == 402 => {
                // Typing is queued behind anything still queued: the end marker.
                typing(&mut app.client).await;
            }
            Some(ConversationEvent::Typing(_)) if seen.contains(&"snapshot") => break,
            Some(ConversationEvent::Snapshot(_)) => seen.push("snapshot"),
            Some(ConversationEvent::CustomerErased(erased)) => {
                assert_erasure_of(&erased, &id, &person, 401);
                assert!(response.replayed, "announced by the resync");
                seen.push("erased");
            }
            Some(ConversationEvent::CustomerUpdated(_)) => seen.push("updated"),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        ["snapshot", "erased"],
        "one resync, the erasure after it"
    );
}

#[tokio::test]
async fn bad_erase_requests_change_nothing_and_are_not_audited() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let person = Person::new();
    linked_conversation(
        &mut client,
        &new_provider(),
        &person,
        ("kept words", "reply"),
    )
    .await;
    let mut privacy = privacy(&app).await;
    let cases = [
        (erase("", &[]), "customer_id"),
        (erase("bad\0id", &[]), "customer_id"),
        (erase(&person.id, &["not-a-uuid"]), "conversation_ids"),
        (
            EraseCustomerConversationsRequest {
                request_id: String::new(),
                ..erase(&person.id, &[])
            },
            "request_id",
        ),
    ];
    for (request, field) in cases {
        let status = privacy
            .erase_customer_conversations(request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(bad_field(&status), field);
        assert_eq!(reason(&status), "INVALID_ARGUMENT");
    }
    assert!(!rows_containing(&app, &person.email).await.is_empty());
    assert!(!rows_containing(&app, "kept words").await.is_empty());
    assert!(audit(&app).await.is_empty());
}

#[tokio::test]
async fn export_streams_each_conversation_then_its_messages() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let person = Person::new();
    let linked =
        linked_conversation(&mut client, &new_provider(), &person, ("mine", "theirs")).await;
    let anonymous = create(&mut client, &new_provider()).await.conversation_id;
    send(
        &mut client,
        &anonymous,
        Some(Participant::anonymous(SESSION)),
        "before login",
    )
    .await
    .unwrap();
    linked_conversation(
        &mut client,
        &new_provider(),
        &Person::new(),
        ("not mine", "x"),
    )
    .await;

    let mut stream = privacy(&app)
        .await
        .export_customer_conversations(ExportCustomerConversationsRequest {
            customer_id: person.id.clone(),
            conversation_ids: vec![anonymous.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut exported: Vec<(String, Vec<String>)> = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        match reply.item.unwrap() {
            Item::Conversation(c) => exported.push((c.conversation_id, Vec::new())),
            Item::Message(m) => {
                let (id, bodies) = exported
                    .last_mut()
                    .expect("a message after its conversation");
                assert_eq!(&m.conversation_id, id);
                bodies.push(m.body);
            }
        }
    }
    exported.sort();
    let mut expected = vec![
        (linked, vec!["mine".to_owned(), "theirs".to_owned()]),
        (anonymous, vec!["before login".to_owned()]),
    ];
    expected.sort();
    assert_eq!(exported, expected);
    let records = audit(&app).await;
    assert_eq!(
        (records[0].method.as_str(), records[0].result.as_str()),
        (
            "/chat.v1.ConversationPrivacyService/ExportCustomerConversations",
            "OK"
        )
    );
}

/// Closes `id` as its provider.
async fn close(client: &mut Client, id: &str, provider: &str) {
    client
        .set_conversation_status(v1::SetConversationStatusRequest {
            conversation_id: id.into(),
            status: v1::ConversationStatus::Closed.into(),
            actor: Some(Participant::provider(provider)),
        })
        .await
        .unwrap();
}

/// An app whose sweeper deletes the messages of conversations closed for over a day,
/// looking every second.
async fn spawn_sweeping(extra: &[&str]) -> TestApp {
    let flags = [
        "--closed-message-retention",
        "1d",
        "--retention-interval",
        "1s",
    ];
    crate::helpers::spawn_app_with_flags(&[&flags[..], extra].concat()).await
}

/// How many messages of `id` are stored.
async fn stored(app: &TestApp, id: &str) -> i64 {
    app.count(&format!(
        "SELECT count(*) FROM messages WHERE conversation_id = '{id}'"
    ))
    .await
}

/// Makes the closed conversation `id` look closed for two days, and waits until the
/// sweeper has deleted all of its messages.
async fn age_out(app: &TestApp, id: &str) {
    sqlx::query(
        "UPDATE conversations SET closed_at = now() - interval '2 days' WHERE id = $1::uuid",
    )
    .bind(id)
    .execute(&mut app.db().await)
    .await
    .unwrap();
    chat_common::testing::status::eventually(Duration::from_secs(20), || async {
        (stored(app, id).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn messages_of_long_closed_conversations_are_deleted_in_batches_and_not_replayed() {
    let app = spawn_sweeping(&["--retention-batch", "2"]).await;
    let mut client = app.client.clone();
    let provider = new_provider();
    let conversation = |label: &'static str| {
        let mut client = client.clone();
        let provider = provider.clone();
        async move {
            let id = create(&mut client, &provider).await.conversation_id;
            for n in 1..=5 {
                send(
                    &mut client,
                    &id,
                    Some(Participant::provider(&provider)),
                    &format!("{label} {n}"),
                )
                .await
                .unwrap();
            }
            id
        }
    };
    let old = conversation("old").await;
    let recent = conversation("recent").await;
    let active = conversation("active").await;
    close(&mut client, &old, &provider).await;
    close(&mut client, &recent, &provider).await;
    age_out(&app, &old).await;
    assert_eq!(stored(&app, &recent).await, 5, "closed a moment ago: kept");
    assert_eq!(stored(&app, &active).await, 5, "active: kept");
    let mut db = app.db().await;
    let (floor,): (i64,) =
        sqlx::query_as("SELECT kept_from_seq FROM conversations WHERE id = $1::uuid")
            .bind(&old)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(floor, 5);

    let stream = |after_seq| {
        let mut client = client.clone();
        let request = v1::StreamConversationRequest {
            conversation_id: old.clone(),
            viewer: Some(Participant::provider(&provider)),
            after_seq,
            after_change: None,
        };
        async move { client.stream_conversation(request).await }
    };
    let status = stream(0).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "MESSAGES_EXPIRED");
    stream(5).await.expect("from the floor on, a stream opens");
}

/// Asserts MESSAGES_EXPIRED naming the cursor's field and the oldest seq still held.
#[track_caller]
fn assert_expired<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str, oldest: i64) {
    let status = assert_refused(result, Code::FailedPrecondition, "MESSAGES_EXPIRED");
    assert_eq!(
        (
            info_metadata(&status, "field"),
            info_metadata(&status, "oldest_seq")
        ),
        (field.to_owned(), oldest.to_string()),
        "{status:?}"
    );
}

/// Once retention has deleted a conversation's oldest messages (it was closed long
/// ago, then reopened), reading forward from below what is kept is refused with the
/// oldest seq held, by cursor, by a page token taken before the sweep, and by a stream's
/// after_seq; a backward listing ends where the kept messages do.
#[tokio::test]
async fn reads_from_below_the_retention_floor_are_refused_and_backward_ends_at_it() {
    let app = spawn_sweeping(&[]).await;
    let mut client = app.client.clone();
    let owner = new_provider();
    let id = create(&mut client, &owner).await.conversation_id;
    for n in 1..=5 {
        send(&mut client, &id, provider(&owner), &format!("old {n}"))
            .await
            .unwrap();
    }
    let lister = client.clone();
    let list = |direction: v1::Direction, cursor_seq: i64, page_token: String| {
        let mut client = lister.clone();
        let request = v1::ListMessagesRequest {
            conversation_id: id.clone(),
            viewer: provider(&owner),
            direction: direction.into(),
            cursor_seq,
            page_size: 2,
            page_token,
        };
        async move {
            client
                .list_messages(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let first = list(v1::Direction::Forward, 0, String::new())
        .await
        .unwrap();
    assert_eq!(first.messages.len(), 2);
    let token = first.next_page_token;

    close(&mut client, &id, &owner).await;
    age_out(&app, &id).await;
    // The listing began before the sweep: its next page would skip 3 to 5.
    assert_expired(
        list(v1::Direction::Forward, 0, token).await,
        "page_token",
        6,
    );
    client
        .set_conversation_status(v1::SetConversationStatusRequest {
            conversation_id: id.clone(),
            status: v1::ConversationStatus::Active.into(),
            actor: provider(&owner),
        })
        .await
        .unwrap();
    for n in 6..=8 {
        send(&mut client, &id, provider(&owner), &format!("new {n}"))
            .await
            .unwrap();
    }
    let before = app.count("SELECT count(*) FROM messages").await;

    for cursor in [0, 4] {
        assert_expired(
            list(v1::Direction::Forward, cursor, String::new()).await,
            "cursor_seq",
            6,
        );
    }
    let stream = client
        .stream_conversation(v1::StreamConversationRequest {
            conversation_id: id.clone(),
            viewer: provider(&owner),
            after_seq: 3,
            after_change: None,
        })
        .await;
    assert_expired(stream, "after_seq", 6);
    assert_eq!(
        app.count("SELECT count(*) FROM messages").await,
        before,
        "a refusal writes nothing"
    );

    let seqs = |page: &v1::ListMessagesResponse| -> Vec<i64> {
        page.messages.iter().map(|m| m.seq).collect()
    };
    let from_floor = list(v1::Direction::Forward, 5, String::new())
        .await
        .unwrap();
    assert_eq!(seqs(&from_floor), [6, 7]);
    let rest = list(v1::Direction::Forward, 5, from_floor.next_page_token)
        .await
        .unwrap();
    assert_eq!((seqs(&rest), rest.next_page_token.as_str()), (vec![8], ""));
    let newest = list(v1::Direction::Backward, 0, String::new())
        .await
        .unwrap();
    assert_eq!(seqs(&newest), [8, 7]);
    let oldest = list(v1::Direction::Backward, 0, newest.next_page_token)
        .await
        .unwrap();
    assert_eq!(
        (seqs(&oldest), oldest.next_page_token.as_str()),
        (vec![6], ""),
        "backward ends at the floor"
    );
    let below = list(v1::Direction::Backward, 4, String::new())
        .await
        .unwrap();
    assert!(below.messages.is_empty() && below.next_page_token.is_empty());

    let mut replay = open_stream(&mut client, &id, provider(&owner), 5).await;
    let mut replayed = Vec::new();
    while replayed.len() < 3 {
        if let (ConversationEvent::Message(m), true) = next_event(&mut replay).await {
            replayed.push(m.seq);
        }
    }
    assert_eq!(
        replayed,
        [6, 7, 8],
        "from the floor on, a stream replays what is kept"
    );
}

#[tokio::test]
async fn callers_file_reloads_are_in_the_audit_trail() {
    let dir = std::env::temp_dir().join(format!("cs-callers-audit-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let callers = dir.join("callers.toml");
    let open = "allow_no_callers = true\n[open]\nmethods = [\"/grpc.health.v1.Health/*\", \
                \"/chat.v1.AuditService/*\"]\n";
    std::fs::write(&callers, open).unwrap();
    let app = crate::helpers::spawn_app_with_flags(&[
        "--callers-file",
        callers.to_str().unwrap(),
        "--tls-reload-interval",
        "50ms",
    ])
    .await;
    // A change is noticed by the file's modification time.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    std::fs::write(&callers, format!("{open}# edited\n")).unwrap();
    let record =
        chat_common::testing::status::eventually(std::time::Duration::from_secs(10), || {
            let app = &app;
            async move {
                audit(app)
                    .await
                    .into_iter()
                    .find(|r| r.method == "callers-file-reload")
            }
        })
        .await;
    assert_eq!(
        (
            record.caller.as_str(),
            record.result.as_str(),
            record.target.as_str()
        ),
        ("conversation-service", "OK", callers.to_str().unwrap())
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Retention that deletes what an open stream has yet to replay ends the stream with
/// MESSAGES_EXPIRED after what it did send, never with a silent gap.
#[tokio::test]
async fn a_stream_whose_replay_retention_deletes_ends_with_messages_expired() {
    let app = spawn_sweeping(&[]).await;
    let mut client = app.client.clone();
    let owner = new_provider();
    let id = create(&mut client, &owner).await.conversation_id;
    pile_up(&app, &id, 600).await;
    close(&mut client, &id, &owner).await;
    let mut slow = slow_client(app.addr).await;
    let mut stream = open_stream(&mut slow, &id, provider(&owner), 0).await;
    let mut seqs = Vec::new();
    // The snapshot, then the first message: the task has read its first page and is
    // stuck sending it to a client that does not read.
    while seqs.is_empty() {
        if let (ConversationEvent::Message(m), _) = next_event(&mut stream).await {
            seqs.push(m.seq);
        }
    }
    age_out(&app, &id).await;

    let ended = loop {
        match tokio::time::timeout(WAIT, stream.message()).await.unwrap() {
            Ok(Some(response)) => {
                if let Some(ConversationEvent::Message(m)) = response.event {
                    seqs.push(m.seq);
                }
            }
            Ok(None) => panic!("the stream ended without a status after {seqs:?}"),
            Err(status) => break status,
        }
    };
    assert_expired(Err::<(), _>(ended), "after_seq", 601);
    let sent = i64::try_from(seqs.len()).unwrap();
    assert!(sent < 600, "the sweep deleted some before they were sent");
    assert_eq!(
        seqs,
        (1..=sent).collect::<Vec<_>>(),
        "no gap in what was sent"
    );
}

#[tokio::test]
async fn the_event_feed_says_customer_erased_and_then_holds_none_of_the_details() {
    use chat_proto::v1::{EventKind, event::Payload};
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let person = Person::new();
    let owner = new_provider();
    let id = linked_conversation(&mut client, &owner, &person, ("my secret", "reply")).await;
    privacy(&app)
        .await
        .erase_customer_conversations(erase(&person.id, &[&id]))
        .await
        .unwrap();
    let mut feed = crate::helpers::events_client(app.addr);
    let deadline = tokio::time::Instant::now() + WAIT;
    let events = loop {
        let page = feed
            .list_events(v1::ListEventsRequest {
                after: "0".into(),
                page_size: 1000,
                provider_ids: vec![owner.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if page
            .events
            .iter()
            .any(|e| e.kind() == EventKind::CustomerErased)
        {
            break page.events;
        }
        assert!(tokio::time::Instant::now() < deadline, "no CUSTOMER_ERASED");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let erased = events
        .iter()
        .find_map(|e| match &e.payload {
            Some(Payload::CustomerErased(erased)) => Some(erased.clone()),
            _ => None,
        })
        .expect("the erasure carries its payload");
    assert_eq!(
        (erased.conversation_id.as_str(), erased.customer_id.as_str()),
        (id.as_str(), person.id.as_str())
    );
    // Everything the feed holds is read when it is read: nothing of the person is left.
    let text = format!("{events:?}");
    for secret in [
        &person.name,
        &person.email,
        &person.phone,
        &"my secret".to_owned(),
    ] {
        assert!(
            !text.contains(secret.as_str()),
            "{secret} still in the feed"
        );
    }
}
