//! EraseCustomer, ExportCustomer, the audit trail and retention. Where a test needs real
//! conversations it runs the real conversation-service; where it needs to count or
//! control conversation-service's side (ConversationPrivacyService) a small recording
//! server plays it.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use chat_common::scrape::{sample, scrape};
use chat_proto::v1::{
    self as pb, EraseCustomerConversationsRequest, EraseCustomerConversationsResponse,
    EraseCustomerRequest, ErasureState, ExportCustomerConversationsRequest,
    ExportCustomerConversationsResponse, ExportCustomerRequest, IdentifySessionRequest,
    ListAuditRecordsRequest,
    audit_service_client::AuditServiceClient,
    conversation_privacy_service_server::{
        ConversationPrivacyService, ConversationPrivacyServiceServer,
    },
    export_customer_conversations_response::Item as RemoteItem,
    export_customer_response::Item,
    privacy_service_client::PrivacyServiceClient,
    token_admin_service_client::TokenAdminServiceClient,
    token_service_client::TokenServiceClient,
};
use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, transport::Channel};
use uuid::Uuid;

use chat_common::testing::{database::tables_containing, process::Replica};
use sqlx::Connection;

use crate::helpers::{
    NOWHERE, TestApp, assert_invalid, assert_refused, db_dump, eventually, free_addr,
    spawn_app_with, spawn_fresh_conversation_service, temp_db_path, test_database,
};

const SETTLE: Duration = Duration::from_secs(20);

// ---- conversation-service's side, played by a recording server ----

/// What the stand-in for ConversationPrivacyService was asked, and answers with fixed
/// counts and a fixed export.
#[derive(Clone, Default)]
struct FakePrivacy {
    erased: Arc<Mutex<Vec<EraseCustomerConversationsRequest>>>,
    exported: Arc<Mutex<Vec<ExportCustomerConversationsRequest>>>,
}

const FAKE_CONVERSATIONS: i64 = 3;
const FAKE_MESSAGES: i64 = 7;

fn fake_message(seq: i64, body: &str) -> pb::Message {
    pb::Message {
        conversation_id: "conv-1".into(),
        seq,
        body: body.into(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl ConversationPrivacyService for FakePrivacy {
    async fn erase_customer_conversations(
        &self,
        request: Request<EraseCustomerConversationsRequest>,
    ) -> Result<Response<EraseCustomerConversationsResponse>, Status> {
        self.erased.lock().unwrap().push(request.into_inner());
        Ok(Response::new(EraseCustomerConversationsResponse {
            conversations_erased: FAKE_CONVERSATIONS,
            messages_erased: FAKE_MESSAGES,
        }))
    }

    type ExportCustomerConversationsStream =
        Pin<Box<dyn Stream<Item = Result<ExportCustomerConversationsResponse, Status>> + Send>>;

    async fn export_customer_conversations(
        &self,
        request: Request<ExportCustomerConversationsRequest>,
    ) -> Result<Response<Self::ExportCustomerConversationsStream>, Status> {
        self.exported.lock().unwrap().push(request.into_inner());
        let items = [
            RemoteItem::Conversation(pb::Conversation {
                conversation_id: "conv-1".into(),
                ..Default::default()
            }),
            RemoteItem::Message(fake_message(1, "hello from the customer")),
            RemoteItem::Message(fake_message(2, "hello from the provider")),
        ];
        let stream = futures::stream::iter(
            items
                .into_iter()
                .map(|item| Ok(ExportCustomerConversationsResponse { item: Some(item) })),
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves `fake` at `addr`; stops when the guard drops.
async fn serve_fake(fake: FakePrivacy, addr: SocketAddr) -> tokio_util::sync::DropGuard {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let stop = CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConversationPrivacyServiceServer::new(fake))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                until.cancelled_owned(),
            ),
    );
    stop.drop_guard()
}

// ---- helpers ----

fn privacy(app: &TestApp) -> PrivacyServiceClient<Channel> {
    PrivacyServiceClient::new(app.channel.clone())
}

fn erase_request(request_id: &str, customer_id: &str) -> EraseCustomerRequest {
    EraseCustomerRequest {
        request_id: request_id.into(),
        customer_id: customer_id.into(),
    }
}

/// Contact details no other test uses, so a search of the file finds only these.
struct Person {
    customer_id: String,
    name: String,
    email: String,
    phone: String,
}

impl Person {
    fn new() -> Self {
        let uuid = Uuid::new_v4();
        let tag = uuid.simple().to_string();
        Self {
            customer_id: format!("cust-{tag}"),
            name: format!("Erasable Person {tag}"),
            email: format!("erase-{tag}@example.com"),
            phone: format!("+4420{:08}", uuid.as_u128() % 100_000_000),
        }
    }

    fn strings(&self) -> [&str; 3] {
        [&self.name, &self.email, &self.phone]
    }
}

/// Opens a session on a fresh link and identifies it as `person`; returns the session's
/// secret.
async fn identified_session(
    tokens: &TokenServiceClient<Channel>,
    provider: &str,
    person: &Person,
) -> String {
    let mut tokens = tokens.clone();
    let issued = tokens
        .issue_token(pb::IssueTokenRequest {
            provider_id: provider.into(),
            label: "test link".into(),
            ttl: None,
            max_uses: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let secret = tokens
        .redeem_token(pb::RedeemTokenRequest {
            request_id: Uuid::new_v4().to_string(),
            provider_id: provider.into(),
            secret: issued.secret,
            customer_id: String::new(),
            new_conversation: false,
        })
        .await
        .unwrap()
        .into_inner()
        .session_secret;
    tokens
        .identify_session(IdentifySessionRequest {
            session_secret: secret.clone(),
            customer_id: person.customer_id.clone(),
            name: Some(person.name.clone()),
            email: Some(person.email.clone()),
            phone: Some(person.phone.clone()),
        })
        .await
        .unwrap();
    secret
}

/// The database file and its WAL, byte for byte.
fn raw_bytes(db: &std::path::Path) -> Vec<u8> {
    let mut bytes = std::fs::read(db).unwrap();
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    bytes.extend(std::fs::read(std::path::PathBuf::from(wal)).unwrap_or_default());
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Erases `customer_id` and retries with the same request id until conversation-service's
/// part is done: it waits while a call of the customer's sessions is in flight.
async fn erase_until_complete(app: &TestApp, request_id: &str, customer_id: &str) -> pb::Erasure {
    erase_through_until_complete(&privacy(app), request_id, customer_id).await
}

/// [`erase_until_complete`] through `client`, for a token-service that is not a `TestApp`.
async fn erase_through_until_complete(
    client: &PrivacyServiceClient<Channel>,
    request_id: &str,
    customer_id: &str,
) -> pb::Erasure {
    eventually(SETTLE, || {
        let mut client = client.clone();
        let request = erase_request(request_id, customer_id);
        async move {
            let erasure = client
                .erase_customer(request)
                .await
                .ok()?
                .into_inner()
                .erasure?;
            (erasure.state() == ErasureState::Complete).then_some(erasure)
        }
    })
    .await
}

async fn audit_records(channel: &Channel) -> Vec<pb::AuditRecord> {
    AuditServiceClient::new(channel.clone())
        .list_audit_records(ListAuditRecordsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .audit_records
}

// ---- erase ----

#[tokio::test]
async fn after_an_erase_the_sqlite_file_and_its_wal_hold_none_of_the_customers_details() {
    let conv = spawn_fresh_conversation_service().await;
    let app = spawn_app_with(temp_db_path(), &conv.url, &[]).await;
    let person = Person::new();
    // One session linked through conversation-service (its call done and deleted), one
    // whose UpdateCustomer was refused for good and kept, like an operator would see it.
    identified_session(&app.tokens, "prov-erase", &person).await;
    let other = identified_session(&app.tokens, "prov-erase-2", &person).await;
    let _ = other;
    app.store
        .call(|conn| {
            conn.execute(
                "INSERT INTO outbox (session_id, kind, customer_id, name, email, phone,
                                     next_attempt_time, create_time, failed_time, last_error)
                 SELECT session_id, 'update_customer', customer_id, ?1, ?2, ?3, 0, 0, 1, 'refused'
                 FROM chat_sessions WHERE provider_id = 'prov-erase-2'",
                rusqlite::params![format!("{} (old)", "x"), "old@example.com", "+15550100999"],
            )
            .map_err(|e| token_service::error::Error::Internal(e.to_string()))
        })
        .await
        .unwrap();
    let before = raw_bytes(&app.db_path);
    for s in person.strings() {
        assert!(contains(&before, s), "{s} not in the file before the erase");
    }

    let erasure =
        erase_until_complete(&app, &Uuid::new_v4().to_string(), &person.customer_id).await;
    assert_eq!(erasure.sessions_erased, 2);
    assert_eq!(erasure.calls_erased, 1, "the refused call is erased too");
    assert_eq!(
        erasure.conversations_erased, 2,
        "both sessions' conversations"
    );

    let after = raw_bytes(&app.db_path);
    for s in person
        .strings()
        .into_iter()
        .chain(["old@example.com", "+15550100999"])
    {
        assert!(!contains(&after, s), "{s} is still in the file or its WAL");
    }
    let dump = app.db_dump();
    assert!(!dump.contains(&person.customer_id), "{dump}");
    app.stop().await;
    conv.stop().await;
}

#[tokio::test]
async fn erase_deletes_queued_calls_ends_sessions_and_completes_through_conversation_service() {
    let fake = FakePrivacy::default();
    let addr = free_addr();
    let _fake = serve_fake(fake.clone(), addr).await;
    // CreateConversation is not served there: every session's calls stay queued.
    let app = spawn_app_with(temp_db_path(), &format!("http://{addr}"), &[]).await;
    let person = Person::new();
    let bystander = Person::new();
    let secret = identified_session(&app.tokens, "prov-q", &person).await;
    identified_session(&app.tokens, "prov-q", &bystander).await;

    let request_id = Uuid::new_v4().to_string();
    let erasure = erase_until_complete(&app, &request_id, &person.customer_id).await;
    assert_eq!(
        (erasure.sessions_erased, erasure.calls_erased),
        (1, 2),
        "the session's CreateConversation and UpdateCustomer"
    );
    assert_eq!(
        (erasure.conversations_erased, erasure.messages_erased),
        (FAKE_CONVERSATIONS, FAKE_MESSAGES)
    );
    let asked = fake.erased.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        (asked[0].customer_id.as_str(), asked[0].request_id.as_str()),
        (person.customer_id.as_str(), request_id.as_str())
    );
    let dump = app.db_dump();
    for s in person.strings() {
        assert!(!dump.contains(s), "{s} left in {dump}");
    }
    assert!(
        dump.contains(&bystander.email),
        "another customer was erased"
    );
    // The erased session's secret no longer works.
    assert_refused(
        app.tokens
            .clone()
            .get_session(pb::GetSessionRequest {
                session_secret: secret,
            })
            .await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );

    // A retry answers the same erasure and asks conversation-service nothing more.
    let again = privacy(&app)
        .erase_customer(erase_request(&request_id, &person.customer_id))
        .await
        .unwrap()
        .into_inner()
        .erasure
        .unwrap();
    assert_eq!(again, erasure);
    assert_eq!(fake.erased.lock().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn refused_erasures_change_nothing_and_are_not_audited() {
    let app = spawn_app_with(temp_db_path(), NOWHERE, &[]).await;
    let person = Person::new();
    identified_session(&app.tokens, "prov-r", &person).await;
    let request_id = Uuid::new_v4().to_string();
    privacy(&app)
        .erase_customer(erase_request(&request_id, "cust-someone-else"))
        .await
        .unwrap();
    let dump = app.db_dump();
    let audited = audit_records(&app.channel).await.len();

    let mut client = privacy(&app);
    assert_invalid(
        client
            .erase_customer(erase_request("not-a-uuid", &person.customer_id))
            .await,
        "request_id",
    );
    assert_invalid(
        client
            .erase_customer(erase_request(&Uuid::new_v4().to_string(), ""))
            .await,
        "customer_id",
    );
    assert_invalid(
        client
            .erase_customer(erase_request(&Uuid::new_v4().to_string(), "bad\0id"))
            .await,
        "customer_id",
    );
    assert_refused(
        client
            .erase_customer(erase_request(&request_id, &person.customer_id))
            .await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
    assert_eq!(app.db_dump(), dump, "a refused erase changed the database");
    assert_eq!(audit_records(&app.channel).await.len(), audited);
    app.stop().await;
}

/// token-service as a process, so it can be SIGKILLed between its own erase and
/// conversation-service's.
#[tokio::test]
async fn an_erasure_cut_short_by_a_kill_is_finished_after_restart() {
    let fake = FakePrivacy::default();
    let fake_addr = free_addr();
    let fake_url = format!("http://{fake_addr}");
    let db = temp_db_path();
    let listen = free_addr().to_string();
    let person = Person::new();
    let request_id = Uuid::new_v4().to_string();

    // conversation-service is down: the erasure is done here and queued for there.
    let process = crate::faults::start_process(&listen, &db, &fake_url);
    let channel = connect(&listen).await;
    let mut client = PrivacyServiceClient::new(channel.clone());
    let first = client
        .erase_customer(erase_request(&request_id, &person.customer_id))
        .await
        .unwrap()
        .into_inner()
        .erasure
        .unwrap();
    assert_eq!(first.state(), ErasureState::Pending);
    drop(process);

    let _fake = serve_fake(fake.clone(), fake_addr).await;
    let _process = crate::faults::start_process(&listen, &db, &fake_url);
    let channel = connect(&listen).await;
    let mut client = PrivacyServiceClient::new(channel);
    let done = erase_through_until_complete(&client, &request_id, &person.customer_id).await;
    assert_eq!(done.create_time, first.create_time, "the same erasure");
    assert_eq!(done.messages_erased, FAKE_MESSAGES);
    assert_eq!(fake.erased.lock().unwrap().len(), 1, "asked once");
    let _ = client
        .erase_customer(erase_request(&request_id, &person.customer_id))
        .await
        .unwrap();
}

/// Both services as real processes, each SIGKILLed in turn: conversation-service before
/// the erasure can reach it, then token-service with the erasure pending. Restarted on
/// the same addresses, the erasure completes, and neither PostgreSQL's tables nor the
/// SQLite file and its WAL hold anything the customer gave or said; the provider's words
/// stay. (The conversation-service binary is the one `cargo build` last built: `cargo test
/// --workspace` builds it.)
#[tokio::test]
async fn killed_mid_erase_both_real_services_finish_it_and_nothing_of_the_customer_is_left() {
    let database = test_database().await;
    let mut conversations = Replica::new(&database, free_addr().port());
    conversations.start().await;
    let db = temp_db_path();
    let listen = free_addr().to_string();
    let person = Person::new();
    let request_id = Uuid::new_v4().to_string();

    let process = crate::faults::start_process(&listen, &db, &conversations.url());
    let channel = connect(&listen).await;
    let tokens = TokenServiceClient::new(channel.clone());
    let secret = identified_session(&tokens, "prov-kill-erase", &person).await;
    let session = tokens
        .clone()
        .get_session(pb::GetSessionRequest {
            session_secret: secret,
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let pg = Channel::from_shared(conversations.url())
        .unwrap()
        .connect_lazy();
    let mut chat = pb::conversation_service_client::ConversationServiceClient::new(pg);
    // The identification reaches conversation-service through the outbox.
    eventually(SETTLE, || {
        let mut chat = chat.clone();
        let request = pb::GetConversationRequest {
            conversation_id: session.conversation_id.clone(),
            viewer: None,
        };
        let email = person.email.clone();
        async move {
            let conversation = chat.get_conversation(request).await.ok()?.into_inner();
            let customer = conversation.conversation?.customer?;
            (customer.email == email).then_some(())
        }
    })
    .await;
    let said = format!("words to erase {}", Uuid::new_v4().simple());
    let replied = format!("provider's words {}", Uuid::new_v4().simple());
    for (sender, body) in [
        (pb::Participant::customer(&person.customer_id), &said),
        (pb::Participant::provider("prov-kill-erase"), &replied),
    ] {
        chat.send_message(pb::SendMessageRequest {
            conversation_id: session.conversation_id.clone(),
            sender: Some(sender),
            body: body.clone(),
            client_message_id: String::new(),
            attachments: Vec::new(),
        })
        .await
        .unwrap();
    }
    let mut pg_db = sqlx::PgConnection::connect(database.url()).await.unwrap();
    let held = tables_containing(&mut pg_db, &person.email).await;
    assert!(
        !held.is_empty(),
        "the details reached PostgreSQL before the erase"
    );

    conversations.kill();
    let first = PrivacyServiceClient::new(channel)
        .erase_customer(erase_request(&request_id, &person.customer_id))
        .await
        .unwrap()
        .into_inner()
        .erasure
        .unwrap();
    assert_eq!(
        first.state(),
        ErasureState::Pending,
        "conversation-service is down"
    );
    drop(process);

    conversations.start().await;
    let _process = crate::faults::start_process(&listen, &db, &conversations.url());
    let client = PrivacyServiceClient::new(connect(&listen).await);
    let done = erase_through_until_complete(&client, &request_id, &person.customer_id).await;
    assert_eq!(done.create_time, first.create_time, "the same erasure");
    assert_eq!(
        (
            done.sessions_erased,
            done.conversations_erased,
            done.messages_erased
        ),
        (1, 1, 1)
    );
    let bytes = raw_bytes(&db);
    for needle in person.strings().into_iter().chain([said.as_str()]) {
        assert_eq!(
            tables_containing(&mut pg_db, needle).await,
            Vec::<String>::new(),
            "{needle} left in PostgreSQL"
        );
        assert!(
            !contains(&bytes, needle),
            "{needle} left in the SQLite file"
        );
    }
    assert_eq!(
        tables_containing(&mut pg_db, &replied).await,
        ["messages"],
        "the provider's words stay"
    );
}

async fn connect(listen: &str) -> Channel {
    let endpoint = Channel::from_shared(format!("http://{listen}")).unwrap();
    eventually(Duration::from_secs(10), || {
        let endpoint = endpoint.clone();
        async move { endpoint.connect().await.ok() }
    })
    .await
}

// Current-thread runtime: token-service runs on this thread, so the capturing subscriber
// set here sees everything it logs.
#[tokio::test(flavor = "current_thread")]
async fn neither_logs_nor_metrics_name_a_customer_identified_exported_and_erased() {
    use chat_common::telemetry::{LogFormat, subscriber, tracer_provider};
    let capture = crate::observability::Capture::default();
    let sink = capture.clone();
    let provider = tracer_provider("token-chat-test");
    let _logs = tracing::subscriber::set_default(subscriber(
        "token-chat-test",
        LogFormat::Json,
        move || sink.clone(),
        false,
        provider.as_ref(),
    ));
    let fake = FakePrivacy::default();
    let addr = free_addr();
    let _fake = serve_fake(fake, addr).await;
    let app = spawn_app_with(
        temp_db_path(),
        &format!("http://{addr}"),
        &["--metrics-addr", "127.0.0.1:0"],
    )
    .await;
    let person = Person::new();
    identified_session(&app.tokens, "prov-logs", &person).await;
    let (_, error) = export(&app, &person.customer_id).await;
    assert!(error.is_none(), "{error:?}");
    let _erased =
        erase_until_complete(&app, &Uuid::new_v4().to_string(), &person.customer_id).await;

    let metrics = scrape(app.metrics.unwrap()).await.unwrap();
    let logs = capture.text();
    assert!(logs.contains("erasure complete"), "the capture saw nothing");
    for s in person.strings() {
        assert!(!logs.contains(s), "{s} logged");
        assert!(!metrics.contains(s), "{s} in /metrics");
    }
    app.stop().await;
}

#[tokio::test]
async fn erase_and_export_reach_the_customers_conversations_in_conversation_service() {
    let conv = spawn_fresh_conversation_service().await;
    let app = spawn_app_with(temp_db_path(), &conv.url, &[]).await;
    let person = Person::new();
    identified_session(&app.tokens, "prov-e2e", &person).await;
    let session = app
        .tokens
        .clone()
        .get_session(pb::GetSessionRequest {
            session_secret: identified_session(&app.tokens, "prov-e2e-2", &person).await,
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let said = format!("words to erase {}", Uuid::new_v4().simple());
    conv.client
        .clone()
        .send_message(pb::SendMessageRequest {
            conversation_id: session.conversation_id.clone(),
            sender: Some(pb::Participant::customer(&person.customer_id)),
            body: said.clone(),
            client_message_id: String::new(),
            attachments: Vec::new(),
        })
        .await
        .unwrap();

    let (items, error) = export(&app, &person.customer_id).await;
    assert!(error.is_none(), "{error:?}");
    let conversations = items
        .iter()
        .filter(|i| {
            matches!(i, Item::Conversation(c)
            if c.customer.as_ref().is_some_and(|c| c.email == person.email))
        })
        .count();
    assert_eq!(conversations, 2, "{items:?}");
    assert!(
        items
            .iter()
            .any(|i| matches!(i, Item::Message(m) if m.body == said))
    );

    let erasure =
        erase_until_complete(&app, &Uuid::new_v4().to_string(), &person.customer_id).await;
    assert_eq!(
        (erasure.conversations_erased, erasure.messages_erased),
        (2, 1)
    );
    let (items, _) = export(&app, &person.customer_id).await;
    for item in &items {
        let text = format!("{item:?}");
        for s in person.strings().into_iter().chain([said.as_str()]) {
            assert!(!text.contains(s), "{s} still exported: {text}");
        }
    }
    app.stop().await;
    conv.stop().await;
}

// ---- export ----

async fn export(app: &TestApp, customer_id: &str) -> (Vec<Item>, Option<Status>) {
    let mut stream = privacy(app)
        .export_customer(ExportCustomerRequest {
            customer_id: customer_id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut items = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(reply)) => items.extend(reply.item),
            Ok(None) => return (items, None),
            Err(status) => return (items, Some(status)),
        }
    }
}

#[tokio::test]
async fn export_streams_sessions_queued_contact_details_then_conversations_and_messages() {
    let fake = FakePrivacy::default();
    let addr = free_addr();
    let _fake = serve_fake(fake.clone(), addr).await;
    let app = spawn_app_with(temp_db_path(), &format!("http://{addr}"), &[]).await;
    let person = Person::new();
    identified_session(&app.tokens, "prov-x", &person).await;
    identified_session(&app.tokens, "prov-x", &Person::new()).await;

    let (items, error) = export(&app, &person.customer_id).await;
    assert!(error.is_none(), "{error:?}");
    let [
        Item::Session(session),
        Item::ContactDetails(contact),
        Item::Conversation(conversation),
        Item::Message(first),
        Item::Message(second),
    ] = items.as_slice()
    else {
        panic!("unexpected export: {items:?}");
    };
    assert_eq!(session.provider_id, "prov-x");
    assert_eq!(contact.session_id, session.session_id);
    assert_eq!(
        (
            contact.name.as_deref(),
            contact.email.as_deref(),
            contact.phone.as_deref()
        ),
        (
            Some(person.name.as_str()),
            Some(person.email.as_str()),
            Some(person.phone.as_str())
        )
    );
    assert_eq!(conversation.conversation_id, "conv-1");
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!(
        fake.exported.lock().unwrap()[0].customer_id,
        person.customer_id
    );

    let records = audit_records(&app.channel).await;
    let newest = &records[0];
    assert_eq!(
        (
            newest.method.as_str(),
            newest.target.as_str(),
            newest.result.as_str()
        ),
        (
            "/chat.v1.PrivacyService/ExportCustomer",
            person.customer_id.as_str(),
            "OK"
        )
    );
    app.stop().await;
}

#[tokio::test]
async fn an_export_without_conversation_service_ends_unavailable_after_the_local_part() {
    let app = spawn_app_with(temp_db_path(), NOWHERE, &[]).await;
    let person = Person::new();
    identified_session(&app.tokens, "prov-y", &person).await;
    let (items, error) = export(&app, &person.customer_id).await;
    assert_eq!(
        items.len(),
        2,
        "the session and its contact details: {items:?}"
    );
    let status = error.expect("the export must not look complete");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        crate::helpers::reason(&status),
        "CONVERSATION_SERVICE_UNAVAILABLE"
    );
    assert_invalid(
        privacy(&app)
            .export_customer(ExportCustomerRequest {
                customer_id: String::new(),
            })
            .await,
        "customer_id",
    );
    let newest = &audit_records(&app.channel).await[0];
    assert_eq!(
        (newest.result.as_str(), newest.reason.as_str()),
        ("UNAVAILABLE", "CONVERSATION_SERVICE_UNAVAILABLE")
    );
    app.stop().await;
}

// ---- audit ----

#[tokio::test]
async fn admin_calls_are_audited_newest_first_and_paged() {
    let app = spawn_app_with(temp_db_path(), NOWHERE, &[]).await;
    let mut admin = TokenAdminServiceClient::new(app.channel.clone());
    admin
        .backup_database(pb::BackupDatabaseRequest {
            file_name: "audited.db".into(),
        })
        .await
        .unwrap();
    assert_refused(
        admin
            .drop_failed_call(pb::DropFailedCallRequest { call_id: 42 })
            .await,
        Code::NotFound,
        "FAILED_CALL_NOT_FOUND",
    );
    // Bad input did nothing: not recorded.
    assert_invalid(
        admin
            .retry_failed_call(pb::RetryFailedCallRequest { call_id: -1 })
            .await,
        "call_id",
    );
    let mut audit = AuditServiceClient::new(app.channel.clone());
    let page = audit
        .list_audit_records(ListAuditRecordsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let newest = &page.audit_records[0];
    assert_eq!(
        (
            newest.caller.as_str(),
            newest.method.as_str(),
            newest.target.as_str(),
            newest.result.as_str(),
            newest.reason.as_str()
        ),
        (
            "anonymous",
            "/chat.v1.TokenAdminService/DropFailedCall",
            "42",
            "NOT_FOUND",
            "FAILED_CALL_NOT_FOUND"
        )
    );
    let rest = audit
        .list_audit_records(ListAuditRecordsRequest {
            page_size: 10,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.audit_records.len(), 1);
    assert_eq!(
        rest.audit_records[0].method,
        "/chat.v1.TokenAdminService/BackupDatabase"
    );
    assert!(rest.audit_records[0].target.ends_with("audited.db"));
    assert!(rest.next_page_token.is_empty());
    assert_refused(
        audit
            .list_audit_records(ListAuditRecordsRequest {
                page_size: 1,
                page_token: "forged".into(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );
    app.stop().await;
}

// ---- retention ----

#[tokio::test]
async fn the_sweeper_removes_old_sessions_links_contacts_and_audit_records_in_batches() {
    let app = spawn_app_with(
        temp_db_path(),
        NOWHERE,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--retention-interval",
            "1s",
            "--retention-batch",
            "2",
        ],
    )
    .await;
    let old = 1_i64; // 1970: older than any retention
    // Three ended sessions with no calls left, on three links revoked long ago.
    for i in 0..3 {
        let issued = app.issue("prov-old", 0).await;
        let _ = app.redeem("prov-old", &issued.secret).await.unwrap();
        let _ = i;
    }
    let fresh = app.issue("prov-fresh", 0).await;
    let kept_session = app.redeem("prov-fresh", &fresh.secret).await.unwrap();
    let person = Person::new();
    identified_session(&app.tokens, "prov-failed", &person).await;
    app.store
        .call(move |conn| {
            conn.execute_batch(&format!(
                "DELETE FROM outbox WHERE session_id IN
                   (SELECT session_id FROM chat_sessions WHERE provider_id = 'prov-old');
                 UPDATE chat_sessions SET end_time = {old} WHERE provider_id = 'prov-old';
                 UPDATE chat_tokens SET revoke_time = {old} WHERE provider_id = 'prov-old';
                 UPDATE outbox SET failed_time = {old}
                   WHERE kind = 'update_customer' AND session_id IN
                   (SELECT session_id FROM chat_sessions WHERE provider_id = 'prov-failed');
                 INSERT INTO audit_records (caller, method, target, time, result, reason)
                   VALUES ('old', 'm', 't', {old}, 'OK', ''), ('old', 'm', 't', {old}, 'OK', ''),
                          ('old', 'm', 't', {old}, 'OK', '');"
            ))
            .map_err(|e| token_service::error::Error::Internal(e.to_string()))
        })
        .await
        .unwrap();

    let metrics = app.metrics.unwrap();
    let removed =
        |text: &str, kind: &str| sample(text, "token_retention_removed_total", &[("kind", kind)]);
    // The metrics recorder is shared by every test of this binary: at least ours. The
    // sweep counts each kind as it finishes it.
    let expected = [
        ("links", 3.0),
        ("ended_sessions", 3.0),
        ("audit_records", 3.0),
        ("failed_call_contacts", 1.0),
    ];
    eventually(SETTLE, || async move {
        let text = scrape(metrics).await.ok()?;
        expected
            .iter()
            .all(|(kind, rows)| removed(&text, kind) >= *rows)
            .then_some(())
    })
    .await;
    let dump = app.db_dump();
    assert!(!dump.contains("prov-old"), "{dump}");
    assert!(dump.contains(&kept_session.session.unwrap().session_id));
    // The refused call stays for operators, without the contact details.
    assert!(dump.contains("update_customer"));
    for s in person.strings() {
        assert!(!dump.contains(s), "{s} kept in {dump}");
    }
    assert!(
        audit_records(&app.channel)
            .await
            .iter()
            .all(|r| r.caller != "old")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_request_id_is_recognised_within_the_retry_window_and_forgotten_after_it() {
    let app = spawn_app_with(
        temp_db_path(),
        NOWHERE,
        &["--retention-interval", "1s", "--redeem-retry-window", "1h"],
    )
    .await;
    let issued = app.issue("prov-window", 0).await;
    let request = |request_id: &str| pb::RedeemTokenRequest {
        request_id: request_id.into(),
        provider_id: "prov-window".into(),
        secret: issued.secret.clone(),
        customer_id: String::new(),
        new_conversation: false,
    };
    let (old_id, recent_id) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let first_old = app.redeem_req(request(&old_id)).await.unwrap();
    let first_recent = app.redeem_req(request(&recent_id)).await.unwrap();
    let session_of = |r: pb::RedeemTokenResponse| r.session.unwrap().session_id;
    let old_session = session_of(first_old);
    // One of them made two hours ago, as far as the window can tell.
    let two_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(2)).timestamp_micros();
    let aged = old_id.clone();
    app.store
        .call(move |conn| {
            conn.execute(
                "UPDATE redeem_requests SET create_time = ?1 WHERE request_id = ?2",
                rusqlite::params![two_hours_ago, aged],
            )
            .map_err(|e| token_service::error::Error::Internal(e.to_string()))
        })
        .await
        .unwrap();
    let path = app.db_path.clone();
    eventually(SETTLE, || {
        let path = path.clone();
        let old_id = old_id.clone();
        async move { (!db_dump(&path).contains(&old_id)).then_some(()) }
    })
    .await;
    // Within the window: the same session. After it: a new redemption.
    let retried = app.redeem_req(request(&recent_id)).await.unwrap();
    assert_eq!(session_of(retried), session_of(first_recent));
    let again = session_of(app.redeem_req(request(&old_id)).await.unwrap());
    assert_ne!(again, old_session);
    assert_eq!(
        session_of(app.redeem_req(request(&old_id)).await.unwrap()),
        again,
        "the id is kept again for the new redemption"
    );
    app.stop().await;
}
