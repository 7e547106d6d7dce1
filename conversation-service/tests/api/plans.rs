//! Issue 26's plan check: on a database of a production's shape, no query the service
//! runs scans `conversations` or `messages` sequentially.
//!
//! On the near-empty tables of the other tests a sequential scan is the right plan, so
//! this test loads `scripts/load-big.sql` (the PostgreSQL part of `scripts/load-big.sh`)
//! at a small scale whose statistics make an index the cheaper way to any few rows, and
//! ANALYZEs it. It then runs the service on it and calls every RPC the service serves,
//! each at least [`CALLS`] times with varying arguments, on the loaded conversations and
//! on new ones, while the background tasks (feed sequencer, unread reminders, presence,
//! retention, inbox settling) run with their intervals shortened.
//!
//! It does so twice: with `plan_cache_mode=force_custom_plan` (every statement planned
//! for its arguments) and with `force_generic_plan` (the plan PostgreSQL may cache for a
//! prepared statement after five runs on one connection, where a scan can hide behind
//! parameters it cannot see). Which pooled connection runs a query is chance, so forcing
//! each mode is what makes the check deterministic. CreateConversation's writers force
//! custom plans themselves (`store/pools.rs`) and keep doing so here.
//!
//! The verdict is `pg_stat_user_tables.seq_scan` of both tables, unchanged from after
//! the load (whose CREATE INDEX counts as scans) to after the service stopped (a backend
//! flushes its counters when it exits). To say which query scanned, every connection of
//! the service loads `auto_explain` and sends each plan to its client as a NOTICE, which
//! the test collects: a failure quotes the statements whose plans read either table
//! sequentially.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use chat_proto::v1::{
    self, ConversationStatus, Direction, EventKind, Participant,
    audit_service_client::AuditServiceClient,
    conversation_privacy_service_client::ConversationPrivacyServiceClient,
    stream_conversation_response::Event as ConversationEvent,
    stream_events_response::Item as FeedItem, stream_inbox_response::Event as InboxEvent,
};
use prost::Message as _;
use sqlx::{Connection, PgConnection};
use tonic::{Code, Streaming, transport::Channel};
use tracing_subscriber::{Layer, layer::SubscriberExt};
use uuid::Uuid;

use crate::helpers::{
    Client, Events, SESSION, TestApp, TestDatabase, delete, edit, events_client, fresh_database,
    inbox_until, new_provider, send, spawn_app_with,
};

/// Conversations loaded (10 messages each). Small enough to load in seconds, large
/// enough that every plan for a few rows prefers an index.
const CONVERSATIONS: i64 = 10_000;
/// Calls of each RPC per phase: more than the five custom plans PostgreSQL makes before
/// it may switch a statement to its generic plan.
const CALLS: usize = 6;
const WAIT: Duration = Duration::from_secs(20);
const FILES: &str = "https://files.example/";

/// Background intervals shortened so every task runs many times within a phase;
/// conversations closed for over a day lose their messages, four per batch.
const FLAGS: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--unread-reminder-delay",
    "1s",
    "--closed-message-retention",
    "1d",
    "--retention-interval",
    "1s",
    "--retention-batch",
    "4",
    "--edit-window",
    "0",
    "--stream-queue",
    "4",
    "--attachment-uri-prefixes",
    FILES,
];

/// Where sqlx reports a server's NOTICE (`sqlx-postgres`, connection/stream.rs).
const NOTICE_TARGET: &str = "sqlx::postgres::notice";

#[tokio::test]
async fn no_query_of_any_rpc_or_background_task_scans_conversations_or_messages() {
    let plans = Plans::installed();
    let database = fresh_database().await;
    let url = database.url().to_owned();
    migrate(&url).await;
    let migrated = index_definitions(&url).await;
    load(&database, CONVERSATIONS);
    assert_eq!(
        index_definitions(&url).await,
        migrated,
        "the loader re-creates every index it dropped as migrated"
    );
    let loaded = Loaded::read(&url).await;

    let before = settled_counters(&url).await;
    // Each statement whose plan scans, once per mode: (mode, query text) -> (runs, a plan).
    let mut found: BTreeMap<(&str, String), (usize, String)> = BTreeMap::new();
    for (phase, mode) in ["force_custom_plan", "force_generic_plan"]
        .iter()
        .enumerate()
    {
        let picks = Picks::of(&loaded, phase);
        // Closed two days ago: due for the retention sweeper as soon as it runs.
        age(&url, &picks.swept).await;
        let app = spawn_app_with(&explained(&url, mode), FLAGS).await;
        let mut workload = Workload::new(&app, &picks, phase).await;
        workload.run().await;
        workload.assert_every_rpc_called();
        drop(workload);
        app.stop().await.expect("the service stops").unwrap();
        for plan in plans.take() {
            let entry = found
                .entry((*mode, query_text(&plan).to_owned()))
                .or_insert((0, plan));
            entry.0 += 1;
        }
    }
    let after = settled_counters(&url).await;

    for table in TABLES {
        let (b, a) = (before[table], after[table]);
        assert!(
            a.idx_scan > b.idx_scan,
            "the workload read `{table}` through no index ({b:?} before, {a:?} after)"
        );
    }
    let scanned: Vec<String> = TABLES
        .iter()
        .filter(|table| after[**table].seq_scan > before[**table].seq_scan)
        .map(|table| {
            format!(
                "`{table}` ({} sequential scans)",
                after[*table].seq_scan - before[*table].seq_scan
            )
        })
        .collect();
    assert!(
        scanned.is_empty() && found.is_empty(),
        "queries of the service scanned {} on a loaded database. Plans with a sequential \
         scan of either table (from auto_explain; empty if the scan was not one of the \
         service's statements):\n\n{}",
        if scanned.is_empty() {
            "nothing by the counters, but plans hold a scan".to_owned()
        } else {
            scanned.join(" and ")
        },
        found
            .iter()
            .map(|((mode, _), (runs, plan))| format!("{mode}, {runs} runs: {plan}"))
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

const TABLES: [&str; 2] = ["conversations", "messages"];

/// The service's database URL: each connection loads `auto_explain`, which sends the
/// plan of every statement (nested ones too) to the client as a NOTICE, and plans
/// prepared statements as `mode` says.
fn explained(url: &str, mode: &str) -> String {
    let options = [
        "session_preload_libraries=auto_explain",
        "auto_explain.log_min_duration=0",
        "auto_explain.log_level=notice",
        "auto_explain.log_nested_statements=on",
        &format!("plan_cache_mode={mode}"),
    ]
    .map(|option| format!("-c%20{}", option.replace('=', "%3D")))
    .join("%20");
    format!("{url}?options={options}")
}

/// The NOTICEs of auto_explain whose plans scan `conversations` or `messages`.
#[derive(Clone, Default)]
struct Plans(Arc<Mutex<Vec<String>>>);

impl Plans {
    /// The process's subscriber: SendMessage's writers run on a thread of their own, so
    /// a subscriber of this test's thread would not see their connections' notices.
    /// Installed once; if something else installed one first, the counters still give
    /// the verdict, only without the plans.
    fn installed() -> Self {
        static PLANS: std::sync::OnceLock<Plans> = std::sync::OnceLock::new();
        PLANS
            .get_or_init(|| {
                let plans = Plans::default();
                let notices = tracing_subscriber::filter::Targets::new()
                    .with_target(NOTICE_TARGET, tracing::Level::TRACE);
                let subscriber =
                    tracing_subscriber::registry().with(plans.clone().with_filter(notices));
                let _ = tracing::subscriber::set_global_default(subscriber);
                plans
            })
            .clone()
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl<S: tracing::Subscriber> Layer<S> for Plans {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut text = NoticeText::default();
        event.record(&mut text);
        if scans_a_loaded_table(&text.0) {
            self.0.lock().unwrap().push(text.0);
        }
    }
}

#[derive(Default)]
struct NoticeText(String);

impl tracing::field::Visit for NoticeText {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            value.clone_into(&mut self.0);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && self.0.is_empty() {
            self.0 = format!("{value:?}");
        }
    }
}

/// The statement of an auto_explain text notice: from `Query Text:` to the plan's first
/// node (the first line with a cost).
fn query_text(notice: &str) -> &str {
    let Some(start) = notice.find("Query Text: ") else {
        return notice;
    };
    let text = &notice[start + "Query Text: ".len()..];
    let end = text
        .find("(cost=")
        .and_then(|cost| text[..cost].rfind('\n'))
        .unwrap_or(text.len());
    text[..end].trim()
}

/// Whether a text plan has a (parallel) sequential scan of either table.
fn scans_a_loaded_table(plan: &str) -> bool {
    plan.split("Seq Scan on ").skip(1).any(|rest| {
        let table = rest.split_whitespace().next().unwrap_or_default();
        TABLES.contains(&table)
    })
}

#[test]
fn a_plan_scanning_a_loaded_table_is_recognised() {
    assert!(scans_a_loaded_table(
        "Query Text: SELECT 1\nLimit\n  ->  Seq Scan on messages m  (cost=0.00..1.00 rows=1)"
    ));
    assert!(scans_a_loaded_table(
        "Parallel Seq Scan on conversations  (cost=0.00..1.00 rows=1)"
    ));
    assert!(!scans_a_loaded_table(
        "Seq Scan on conversation_events e  (cost=0.00..1.00 rows=1)\n\
         Index Scan using messages_pkey on messages m"
    ));
    assert_eq!(
        query_text(
            "duration: 1.0 ms  plan:\nQuery Text: SELECT 1\n  FROM messages\n\
             Seq Scan on messages  (cost=0.00..1.00 rows=1)"
        ),
        "SELECT 1\n  FROM messages"
    );
}

async fn migrate(url: &str) {
    use clap::Parser as _;
    let config = conversation_service::config::Config::try_parse_from([
        "conversation-service",
        "--database-url",
        url,
    ])
    .unwrap();
    conversation_service::startup::migrate_database(&config)
        .await
        .unwrap();
}

/// Every index of the two tables, by definition.
async fn index_definitions(url: &str) -> Vec<String> {
    let mut db = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes \
         WHERE tablename IN ('conversations', 'messages') ORDER BY indexname",
    )
    .fetch_all(&mut db)
    .await
    .unwrap()
}

/// Runs the loader's SQL with psql, as `scripts/load-big.sh` does.
fn load(database: &TestDatabase, conversations: i64) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/load-big.sql");
    let output = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
        ])
        .args(["-d", database.name()])
        .args(["-v", &format!("conversations={conversations}")])
        .args(["-f", script])
        .output()
        .expect("psql runs (it comes with PostgreSQL)");
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[derive(Debug, Clone, Copy)]
struct Counters {
    seq_scan: i64,
    idx_scan: i64,
}

/// The scan counters of both tables once every other session of the database has ended,
/// so each has flushed its counters (a backend does so before it leaves
/// `pg_stat_activity`).
async fn settled_counters(url: &str) -> BTreeMap<&'static str, Counters> {
    let mut db = PgConnection::connect(url).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND backend_type = 'client backend'",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        if others == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{others} sessions still on the database"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut counters = BTreeMap::new();
    for table in TABLES {
        let (seq_scan, idx_scan): (i64, i64) = sqlx::query_as(
            "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = $1",
        )
        .bind(table)
        .fetch_one(&mut db)
        .await
        .unwrap();
        counters.insert(table, Counters { seq_scan, idx_scan });
    }
    counters
}

/// Marks closed conversations as closed two days ago (the loader sets no `closed_at`).
async fn age(url: &str, conversations: &[Conversation]) {
    let mut db = PgConnection::connect(url).await.unwrap();
    let ids: Vec<Uuid> = conversations
        .iter()
        .map(|c| Uuid::parse_str(&c.id).unwrap())
        .collect();
    let aged = sqlx::query(
        "UPDATE conversations SET closed_at = now() - interval '2 days' \
         WHERE id = ANY($1) AND status = 2",
    )
    .bind(&ids)
    .execute(&mut db)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(aged, ids.len() as u64);
    db.close().await.unwrap();
}

/// Conversation `i` of the load (`scripts/load-big.sql` says how each is made).
#[derive(Debug, Clone)]
struct Conversation {
    id: String,
    provider: String,
    /// `None`: an anonymous visitor's, who presents `session`.
    customer: Option<String>,
    session: String,
    closed: bool,
}

impl Conversation {
    fn provider(&self) -> Participant {
        Participant::provider(&self.provider)
    }

    /// The customer side: the linked customer, or the anonymous visitor.
    fn customer(&self) -> Participant {
        match &self.customer {
            Some(id) => Participant::customer(id),
            None => Participant::anonymous(&self.session),
        }
    }
}

/// The loaded conversations this test uses, by `i`.
struct Loaded(BTreeMap<i64, Conversation>);

impl Loaded {
    /// Ids computed as the loader does (`md5(...)::uuid`), without reading the tables.
    async fn read(url: &str) -> Self {
        let mut db = PgConnection::connect(url).await.unwrap();
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT i, md5('conversation-' || i)::uuid::text, md5('request-' || i)::uuid::text \
             FROM generate_series(1::bigint, 1000) i",
        )
        .fetch_all(&mut db)
        .await
        .unwrap();
        Self(
            rows.into_iter()
                .map(|(i, id, session)| {
                    let conversation = Conversation {
                        id,
                        provider: if i % 10 == 0 {
                            "prov-burst".into()
                        } else {
                            format!("prov-{}", i % 10_000)
                        },
                        customer: (i % 5 != 1).then(|| format!("cust-{i}")),
                        session,
                        closed: i % 7 == 0,
                    };
                    (i, conversation)
                })
                .collect(),
        )
    }
}

/// The loaded conversations one phase works on (each phase its own, so what one phase
/// erased, closed or deleted does not change what the other finds).
struct Picks {
    /// Active, with a linked customer; its provider has this one conversation.
    linked: Vec<Conversation>,
    /// Active, an anonymous visitor's.
    anonymous: Vec<Conversation>,
    /// Closed two days ago, for the retention sweeper.
    swept: Vec<Conversation>,
    /// `prov-burst`'s (anonymous, many in one minute).
    burst: Vec<Conversation>,
}

impl Picks {
    fn of(loaded: &Loaded, phase: usize) -> Self {
        let phase = i64::try_from(phase).unwrap();
        let range = (1 + 500 * phase)..=(500 * (1 + phase));
        let pick = |wanted: &dyn Fn(i64, &Conversation) -> bool, n: usize| -> Vec<Conversation> {
            let picked: Vec<Conversation> = range
                .clone()
                .filter(|i| wanted(*i, &loaded.0[i]))
                .take(n)
                .map(|i| loaded.0[&i].clone())
                .collect();
            assert_eq!(picked.len(), n);
            picked
        };
        let plain = |i: i64| i % 10 != 0;
        Self {
            linked: pick(&|i, c| plain(i) && !c.closed && c.customer.is_some(), 24),
            anonymous: pick(&|i, c| plain(i) && !c.closed && c.customer.is_none(), 12),
            swept: pick(&|i, c| plain(i) && c.closed, 6),
            burst: pick(&|i, c| !plain(i) && !c.closed, 8),
        }
    }
}

type Privacy = ConversationPrivacyServiceClient<Channel>;
type Audit = AuditServiceClient<Channel>;

/// The calls of one phase, counted per RPC.
struct Workload<'a> {
    picks: &'a Picks,
    client: Client,
    addr: std::net::SocketAddr,
    events: Events,
    privacy: Privacy,
    audit: Audit,
    /// A provider of this phase with no loaded conversations, and its new conversations.
    fresh: String,
    created: Vec<v1::Conversation>,
    tag: String,
    calls: HashMap<&'static str, usize>,
}

impl<'a> Workload<'a> {
    async fn new(app: &TestApp, picks: &'a Picks, phase: usize) -> Self {
        Self {
            picks,
            client: app.client.clone(),
            addr: app.addr,
            events: events_client(app.addr),
            privacy: ConversationPrivacyServiceClient::connect(format!("http://{}", app.addr))
                .await
                .unwrap(),
            audit: AuditServiceClient::connect(format!("http://{}", app.addr))
                .await
                .unwrap(),
            fresh: new_provider(),
            created: Vec::new(),
            tag: format!("phase{phase}"),
            calls: HashMap::new(),
        }
    }

    fn called(&mut self, rpc: &'static str) {
        *self.calls.entry(rpc).or_default() += 1;
    }

    async fn run(&mut self) {
        self.create().await;
        self.update_and_status().await;
        self.send().await;
        self.read().await;
        self.list().await;
        self.change().await;
        self.streams().await;
        self.inboxes().await;
        self.search().await;
        self.feed().await;
        self.privacy().await;
        self.background().await;
    }

    /// Every method of the services this process serves was called [`CALLS`] times.
    fn assert_every_rpc_called(&self) {
        let set = prost_types::FileDescriptorSet::decode(chat_proto::FILE_DESCRIPTOR_SET).unwrap();
        let served = [
            "ConversationService",
            "EventService",
            "ConversationPrivacyService",
            "AuditService",
        ];
        let services: Vec<_> = set
            .file
            .iter()
            .flat_map(|file| &file.service)
            .filter(|service| served.contains(&service.name()))
            .collect();
        assert_eq!(
            services.len(),
            served.len(),
            "the served services' descriptors"
        );
        let methods: Vec<String> = services
            .iter()
            .flat_map(|service| &service.method)
            .map(|method| method.name().to_owned())
            .collect();
        let short: Vec<String> = methods
            .into_iter()
            .filter(|method| self.calls.get(method.as_str()).copied().unwrap_or(0) < CALLS)
            .collect();
        assert!(
            short.is_empty(),
            "called fewer than {CALLS} times: {short:?} ({:?})",
            self.calls
        );
    }

    async fn create(&mut self) {
        let fresh = self.fresh.clone();
        // New conversations, anonymous or with a new customer; half of them retried.
        for k in 0..8 {
            let request = v1::CreateConversationRequest {
                request_id: Uuid::new_v4().to_string(),
                provider_id: fresh.clone(),
                customer: (k % 2 == 1).then(|| v1::Customer {
                    customer_id: format!("plans-{}-{k}", self.tag),
                    name: format!("Plan Tester {k}"),
                    email: format!("tester{k}@example.com"),
                    phone: format!("+44 20 7946 00{k:02}"),
                }),
                reuse_active: k % 4 == 1,
                origin: format!("token:{}", Uuid::new_v4()),
                session_id: SESSION.into(),
            };
            let first = self.create_one(request.clone()).await;
            assert!(first.created);
            if k % 2 == 0 {
                let retry = self.create_one(request).await;
                assert!(!retry.created);
            }
            self.created.push(first.conversation.unwrap());
        }
        // A customer's active conversation with a provider, reused; new ones for
        // prov-burst and for loaded providers.
        for c in self.picks.linked.iter().take(4) {
            let reused = self
                .create_one(v1::CreateConversationRequest {
                    request_id: Uuid::new_v4().to_string(),
                    provider_id: c.provider.clone(),
                    customer: Some(v1::Customer {
                        customer_id: c.customer.clone().unwrap(),
                        ..Default::default()
                    }),
                    reuse_active: true,
                    ..Default::default()
                })
                .await;
            assert!(!reused.created);
            assert_eq!(reused.conversation.unwrap().conversation_id, c.id);
        }
        for provider in ["prov-burst", &self.picks.linked[4].provider] {
            for _ in 0..2 {
                let made = self
                    .create_one(v1::CreateConversationRequest {
                        request_id: Uuid::new_v4().to_string(),
                        provider_id: provider.to_owned(),
                        session_id: SESSION.into(),
                        ..Default::default()
                    })
                    .await;
                assert!(made.created);
            }
        }
    }

    async fn create_one(
        &mut self,
        request: v1::CreateConversationRequest,
    ) -> v1::CreateConversationResponse {
        self.called("CreateConversation");
        self.client
            .create_conversation(request)
            .await
            .unwrap()
            .into_inner()
    }

    async fn update_and_status(&mut self) {
        // Link customers to the new anonymous conversations, change loaded details.
        let anonymous: Vec<String> = self
            .created
            .iter()
            .filter(|c| c.customer.as_ref().is_none_or(|c| c.customer_id.is_empty()))
            .map(|c| c.conversation_id.clone())
            .collect();
        let loaded: Vec<String> = self.picks.linked[5..8]
            .iter()
            .map(|c| c.id.clone())
            .collect();
        for (k, id) in anonymous.iter().take(3).chain(&loaded).enumerate() {
            self.called("UpdateCustomer");
            let linked = k < 3;
            self.client
                .update_customer(v1::UpdateCustomerRequest {
                    conversation_id: id.clone(),
                    customer_id: linked.then(|| format!("plans-linked-{}-{k}", self.tag)),
                    name: Some(format!("Renamed {k}")),
                    email: (k % 2 == 0).then(|| format!("renamed{k}@example.com")),
                    phone: None,
                })
                .await
                .unwrap();
        }
        // Close and reopen, with and without an actor.
        let targets: Vec<(String, String)> = self.created[..2]
            .iter()
            .map(|c| (c.conversation_id.clone(), c.provider_id.clone()))
            .chain(
                self.picks.linked[8..10]
                    .iter()
                    .map(|c| (c.id.clone(), c.provider.clone())),
            )
            .collect();
        for (k, (id, provider)) in targets.iter().enumerate() {
            for status in [ConversationStatus::Closed, ConversationStatus::Active] {
                self.called("SetConversationStatus");
                let reply = self
                    .client
                    .set_conversation_status(v1::SetConversationStatusRequest {
                        conversation_id: id.clone(),
                        status: status.into(),
                        actor: (k % 2 == 0).then(|| Participant::provider(provider)),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(reply.conversation.unwrap().status, i32::from(status));
            }
        }
    }

    async fn send_one(
        &mut self,
        conversation_id: &str,
        sender: Participant,
        body: String,
        client_message_id: String,
    ) -> v1::SendMessageResponse {
        self.called("SendMessage");
        self.client
            .send_message(v1::SendMessageRequest {
                conversation_id: conversation_id.into(),
                sender: Some(sender),
                body,
                client_message_id,
                attachments: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn send(&mut self) {
        // One at a time: each side of loaded conversations, retries by client key.
        let picks = self.picks;
        for (k, c) in picks.linked[..6]
            .iter()
            .chain(&picks.anonymous[..4])
            .enumerate()
        {
            let sender = if k % 2 == 0 {
                c.provider()
            } else {
                c.customer()
            };
            let key = format!("{}-{k}", self.tag);
            let body = format!("About the boiler invoice {k}, reference {}.", self.tag);
            let first = self
                .send_one(&c.id, sender.clone(), body.clone(), key.clone())
                .await;
            assert!(first.created);
            if k % 3 == 0 {
                let retry = self.send_one(&c.id, sender, body, key).await;
                assert!(!retry.created);
            }
        }
        // New conversations, and one body too long for a NOTIFY to carry.
        let created: Vec<(String, String)> = self
            .created
            .iter()
            .map(|c| (c.conversation_id.clone(), c.provider_id.clone()))
            .collect();
        for (k, (id, provider)) in created.iter().enumerate() {
            let body = if k == 0 {
                "long ".repeat(700)
            } else {
                format!("Hello number {k}")
            };
            self.send_one(id, Participant::provider(provider), body, String::new())
                .await;
        }
        // Many at once (written in batches), to loaded conversations and prov-burst's.
        let sends = picks.linked[10..16].iter().chain(&picks.burst).map(|c| {
            let mut client = self.client.clone();
            let (id, sender) = (c.id.clone(), c.provider());
            async move {
                client
                    .send_message(v1::SendMessageRequest {
                        conversation_id: id,
                        sender: Some(sender),
                        body: "The garden looks fine.".into(),
                        client_message_id: Uuid::new_v4().to_string(),
                        attachments: vec![v1::Attachment {
                            uri: format!("{FILES}{}.png", Uuid::new_v4()),
                            content_type: "image/png".into(),
                            size_bytes: 1234,
                            ..Default::default()
                        }],
                    })
                    .await
            }
        });
        let sent = futures::future::join_all(sends).await;
        for reply in sent {
            reply.unwrap();
            self.called("SendMessage");
        }
        // Typing on both sides.
        for c in picks.linked[..3].iter().chain(&picks.anonymous[..3]) {
            for sender in [c.provider(), c.customer()] {
                self.called("SendTyping");
                self.client
                    .send_typing(v1::SendTypingRequest {
                        conversation_id: c.id.clone(),
                        sender: Some(sender),
                    })
                    .await
                    .unwrap();
            }
        }
    }

    async fn read(&mut self) {
        let picks = self.picks;
        // GetConversation with every kind of viewer, and none.
        for (k, c) in picks.linked[..4]
            .iter()
            .chain(&picks.anonymous[..4])
            .enumerate()
        {
            let viewer = match k % 3 {
                0 => None,
                1 => Some(c.provider()),
                _ => Some(c.customer()),
            };
            self.called("GetConversation");
            let got = self
                .client
                .get_conversation(v1::GetConversationRequest {
                    conversation_id: c.id.clone(),
                    viewer,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.conversation.unwrap().conversation_id, c.id);
        }
        // The other side writes, then MarkRead moves each side's read position to it.
        for (k, c) in picks.linked[..4]
            .iter()
            .chain(&picks.anonymous[4..8])
            .enumerate()
        {
            let (writer, reader) = if k % 2 == 0 {
                (c.customer(), c.provider())
            } else {
                (c.provider(), c.customer())
            };
            let sent = self
                .send_one(&c.id, writer, format!("read me {k}"), String::new())
                .await;
            self.called("MarkRead");
            let read = self
                .client
                .mark_read(v1::MarkReadRequest {
                    conversation_id: c.id.clone(),
                    reader: Some(reader),
                    seq: sent.message.unwrap().seq,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(read.unread_count, 0);
        }
        // Unread summaries of providers (one with a tenth of all conversations) and
        // customers.
        let mut owners: Vec<Participant> = vec![Participant::provider("prov-burst")];
        owners.extend(picks.linked[..4].iter().map(Conversation::provider));
        owners.extend(picks.linked[..4].iter().map(Conversation::customer));
        for participant in owners {
            self.called("GetUnreadSummary");
            self.client
                .get_unread_summary(v1::GetUnreadSummaryRequest {
                    participant: Some(participant),
                })
                .await
                .unwrap();
        }
        // ListMessages: both directions, from a cursor, page after page.
        for c in &picks.linked[..3] {
            for (direction, cursor_seq) in [
                (Direction::Forward, 0),
                (Direction::Backward, 0),
                (Direction::Forward, 5),
            ] {
                let mut page_token = String::new();
                for _ in 0..3 {
                    self.called("ListMessages");
                    let page = self
                        .client
                        .list_messages(v1::ListMessagesRequest {
                            conversation_id: c.id.clone(),
                            viewer: Some(c.provider()),
                            direction: direction.into(),
                            cursor_seq,
                            page_size: 3,
                            page_token: page_token.clone(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert!(!page.messages.is_empty());
                    page_token = page.next_page_token;
                    if page_token.is_empty() {
                        break;
                    }
                }
            }
        }
    }

    async fn list_one(&mut self, request: v1::ListConversationsRequest, pages: usize) -> usize {
        let mut request = request;
        let mut seen = 0;
        for _ in 0..pages {
            self.called("ListConversations");
            let page = self
                .client
                .list_conversations(request.clone())
                .await
                .unwrap()
                .into_inner();
            seen += page.conversations.len();
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        seen
    }

    async fn list(&mut self) {
        let now = chrono::Utc::now();
        let ago = |days: i64| {
            let t = now - chrono::Duration::days(days);
            prost_types::Timestamp {
                seconds: t.timestamp(),
                nanos: 0,
            }
        };
        let c = self.picks.linked[0].clone();
        let owners = [
            Participant::provider("prov-burst"),
            c.provider(),
            c.customer(),
            Participant::provider(self.fresh.clone()),
        ];
        for participant in owners {
            let base = v1::ListConversationsRequest {
                participant: Some(participant.clone()),
                page_size: 3,
                ..Default::default()
            };
            let filters = [
                base.clone(),
                v1::ListConversationsRequest {
                    status: ConversationStatus::Active.into(),
                    ..base.clone()
                },
                v1::ListConversationsRequest {
                    status: ConversationStatus::Closed.into(),
                    ..base.clone()
                },
                v1::ListConversationsRequest {
                    unread_only: true,
                    ..base.clone()
                },
                v1::ListConversationsRequest {
                    customer_query: "Lovelace".into(),
                    ..base.clone()
                },
                v1::ListConversationsRequest {
                    customer_query: "@example.com".into(),
                    ..base.clone()
                },
                v1::ListConversationsRequest {
                    active_after: Some(ago(30)),
                    ..base.clone()
                },
                v1::ListConversationsRequest {
                    active_after: Some(ago(400)),
                    status: ConversationStatus::Active.into(),
                    unread_only: true,
                    ..base.clone()
                },
            ];
            for filter in filters {
                self.list_one(filter, 3).await;
            }
        }
        // Deep into prov-burst's list (inside its burst minute), page after page.
        let deep = self
            .list_one(
                v1::ListConversationsRequest {
                    participant: Some(Participant::provider("prov-burst")),
                    page_size: 200,
                    ..Default::default()
                },
                5,
            )
            .await;
        assert!(deep >= 800, "prov-burst lists {deep} conversations");
    }

    async fn change(&mut self) {
        let picks = self.picks;
        // Edits of loaded messages (an even seq is the provider's, an odd one the
        // customer's) by their sender, and deletions by the provider (any message) and by
        // the customer (its own), each retried with its request id.
        for (k, c) in picks.linked[16..20]
            .iter()
            .chain(&picks.anonymous[8..10])
            .enumerate()
        {
            let (edited_seq, deleted_seq, actor) = if k % 2 == 0 {
                (4, 5, c.provider())
            } else {
                (3, 7, c.customer())
            };
            let edited_id = self.message_id(c, edited_seq).await;
            let deleted_id = self.message_id(c, deleted_seq).await;
            let (edit_key, delete_key) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
            for _ in 0..2 {
                self.called("EditMessage");
                let edited = edit(
                    &mut self.client,
                    &c.id,
                    &edited_id,
                    Some(actor.clone()),
                    &format!("Edited: the roof {k}"),
                    &edit_key,
                )
                .await
                .unwrap();
                assert_eq!(edited.edit_count, 1);
                self.called("DeleteMessage");
                let deleted = delete(
                    &mut self.client,
                    &c.id,
                    &deleted_id,
                    Some(actor.clone()),
                    &delete_key,
                )
                .await
                .unwrap();
                assert!(deleted.deleted);
            }
        }
    }

    /// The id of message `seq` of `c`, as ListMessages gives it.
    async fn message_id(&mut self, c: &Conversation, seq: i64) -> String {
        self.called("ListMessages");
        let page = self
            .client
            .list_messages(v1::ListMessagesRequest {
                conversation_id: c.id.clone(),
                viewer: Some(c.provider()),
                direction: Direction::Forward.into(),
                cursor_seq: seq - 1,
                page_size: 1,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.messages[0].seq, seq);
        page.messages[0].message_id.clone()
    }

    async fn open_conversation(
        &mut self,
        c: &Conversation,
        viewer: Participant,
        after_seq: i64,
        after_change: Option<i64>,
    ) -> Streaming<v1::StreamConversationResponse> {
        self.called("StreamConversation");
        self.client
            .stream_conversation(v1::StreamConversationRequest {
                conversation_id: c.id.clone(),
                viewer: Some(viewer),
                after_seq,
                after_change,
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn streams(&mut self) {
        let picks = self.picks;
        // Replays from a seq (and of the changes after a change position), then live
        // messages (carried by NOTIFY, and one too long for it), then a resume.
        for (k, c) in picks.linked[16..20]
            .iter()
            .chain(&picks.anonymous[..2])
            .enumerate()
        {
            let viewer = if k % 2 == 0 {
                c.provider()
            } else {
                c.customer()
            };
            let after_change = (k < 4).then_some(0);
            let mut stream = self
                .open_conversation(c, viewer.clone(), 2, after_change)
                .await;
            let head = head_of(&mut stream).await;
            let mut last = replay_until(&mut stream, head, after_change.is_some()).await;
            let body = if k == 0 {
                "x".repeat(3000)
            } else {
                format!("live {k}")
            };
            let sent = self
                .send_one(&c.id, c.provider(), body, String::new())
                .await;
            let seq = sent.message.unwrap().seq;
            last = replay_until(&mut stream, seq, false).await.max(last);
            drop(stream);
            let sent = self
                .send_one(&c.id, c.provider(), "while away".into(), String::new())
                .await;
            let mut resumed = self.open_conversation(c, viewer, last, None).await;
            head_of(&mut resumed).await;
            replay_until(&mut resumed, sent.message.unwrap().seq, false).await;
        }
        // A stream too slow for its queue (4 events): it catches up from the table.
        let c = &picks.linked[20];
        let mut slow = self.open_conversation(c, c.provider(), 10, None).await;
        head_of(&mut slow).await;
        let burst = (0..12).map(|k| {
            let mut client = self.client.clone();
            let (id, sender) = (c.id.clone(), c.provider());
            async move { send(&mut client, &id, Some(sender), &format!("burst {k}")).await }
        });
        let sent = futures::future::join_all(burst).await;
        let top = sent.into_iter().map(|m| m.unwrap().seq).max().unwrap();
        for _ in 0..12 {
            self.called("SendMessage");
        }
        replay_until(&mut slow, top, false).await;
    }

    async fn open_inbox(
        &mut self,
        participant: Participant,
        cursor: String,
    ) -> Streaming<v1::StreamInboxResponse> {
        self.called("StreamInbox");
        self.client
            .stream_inbox(v1::StreamInboxRequest {
                participant: Some(participant),
                cursor,
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn inboxes(&mut self) {
        let picks = self.picks;
        // Open at "now", let things happen, resume from the cursor; a provider's, a
        // customer's and the big provider's.
        let owners: Vec<(Participant, Conversation)> = vec![
            (picks.linked[21].provider(), picks.linked[21].clone()),
            (picks.linked[22].customer(), picks.linked[22].clone()),
            (Participant::provider("prov-burst"), picks.burst[0].clone()),
        ];
        for (owner, c) in owners {
            let mut inbox = self.open_inbox(owner.clone(), String::new()).await;
            let cursor = inbox_heartbeat(&mut inbox).await;
            // Live: a message arrives while the inbox is open.
            self.send_one(&c.id, c.provider(), "inbox live".into(), String::new())
                .await;
            let live = inbox_items_until_heartbeat(&mut inbox).await;
            assert!(!live.is_empty());
            drop(inbox);
            self.send_one(&c.id, c.provider(), "inbox away".into(), String::new())
                .await;
            self.called("MarkRead");
            self.client
                .mark_read(v1::MarkReadRequest {
                    conversation_id: c.id.clone(),
                    reader: Some(c.provider()),
                    seq: 1,
                })
                .await
                .unwrap();
            let mut resumed = self.open_inbox(owner, cursor).await;
            let replayed = inbox_items_until_heartbeat(&mut resumed).await;
            assert!(replayed.len() >= 2, "resumed inbox replays {replayed:?}");
        }
    }

    async fn search_one(&mut self, participant: Participant, query: &str, conversation_id: &str) {
        let mut page_token = String::new();
        for _ in 0..2 {
            self.called("SearchMessages");
            let page = self
                .client
                .search_messages(v1::SearchMessagesRequest {
                    participant: Some(participant.clone()),
                    query: query.into(),
                    conversation_id: conversation_id.into(),
                    page_size: 2,
                    page_token: page_token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            page_token = page.next_page_token;
            if page_token.is_empty() {
                break;
            }
        }
    }

    async fn search(&mut self) {
        let picks = self.picks;
        for (k, c) in picks.linked[..4].iter().enumerate() {
            let query = ["boiler", "invoice paid", "\"needs a look\"", "leak -roof"][k];
            self.search_one(c.provider(), query, "").await;
            self.search_one(c.customer(), query, "").await;
            self.search_one(c.provider(), query, &c.id).await;
        }
        self.search_one(Participant::provider("prov-burst"), "invoice paid", "")
            .await;
        self.search_one(
            Participant::provider("prov-burst"),
            "boiler",
            &picks.burst[1].id,
        )
        .await;
    }

    async fn feed(&mut self) {
        let picks = self.picks;
        let providers: Vec<String> = picks.linked[..6]
            .iter()
            .map(|c| c.provider.clone())
            .collect();
        // The feed from its oldest event, page after page.
        let mut cursors = Vec::new();
        let mut after = String::new();
        for _ in 0..3 {
            let page = self.list_events(&after, 3, &[], &[]).await;
            cursors.extend(page.events.iter().map(|e| e.cursor.clone()));
            after = page.next_after;
        }
        assert!(
            cursors.len() >= 6,
            "the feed holds {} events",
            cursors.len()
        );
        // Durable consumers acknowledge, and stream from where they did; streams from a
        // cursor and from now.
        let mut newest = String::new();
        for (k, cursor) in cursors.iter().take(6).enumerate() {
            let consumer = format!("plans-{}-{}", self.tag, k % 3);
            self.called("AckEvents");
            self.events
                .ack_events(v1::AckEventsRequest {
                    consumer: consumer.clone(),
                    cursor: cursor.clone(),
                })
                .await
                .unwrap();
            let request = match k % 3 {
                0 => v1::StreamEventsRequest {
                    consumer,
                    ..Default::default()
                },
                1 => v1::StreamEventsRequest {
                    after: cursor.clone(),
                    kinds: vec![EventKind::MessageSent.into()],
                    ..Default::default()
                },
                _ => v1::StreamEventsRequest {
                    provider_ids: providers.clone(),
                    ..Default::default()
                },
            };
            self.called("StreamEvents");
            let mut stream = events_client(self.addr)
                .stream_events(request)
                .await
                .unwrap()
                .into_inner();
            // A message of one of the providers: every stream has an event to give.
            let c = &picks.linked[k];
            self.send_one(&c.id, c.provider(), format!("feed {k}"), String::new())
                .await;
            let event = tokio::time::timeout(WAIT, async {
                loop {
                    let item = stream
                        .message()
                        .await
                        .unwrap()
                        .expect("the feed stays open");
                    if let Some(FeedItem::Event(event)) = item.item {
                        return event;
                    }
                }
            })
            .await
            .expect("a feed event within the deadline");
            match k % 3 {
                1 => assert_eq!(event.kind, i32::from(EventKind::MessageSent)),
                2 => assert!(providers.contains(&event.provider_id), "{event:?}"),
                _ => {}
            }
            newest = event.cursor;
        }
        // Filtered pages, from the newest event seen: a narrow filter reads the feed
        // window by window, one statement each, so from the oldest it would read every
        // window this test made, and slowly.
        let filters = [
            (vec![EventKind::MessageSent], Vec::new()),
            (Vec::new(), providers.clone()),
            (
                vec![EventKind::MessageEdited, EventKind::MessageDeleted],
                providers[..2].to_vec(),
            ),
        ];
        for (kinds, provider_ids) in filters {
            self.list_events(&newest, 20, &kinds, &provider_ids).await;
        }
        // Presence of providers with and without open streams, and of customers.
        let c = &picks.linked[23];
        let online = self.open_conversation(c, c.provider(), 10, None).await;
        for k in 0..6 {
            let c = &picks.linked[18 + k];
            self.called("GetPresence");
            self.events
                .get_presence(v1::GetPresenceRequest {
                    participants: vec![c.provider(), c.customer(), picks.linked[23].provider()],
                })
                .await
                .unwrap();
        }
        drop(online);
    }

    async fn list_events(
        &mut self,
        after: &str,
        page_size: i32,
        kinds: &[EventKind],
        provider_ids: &[String],
    ) -> v1::ListEventsResponse {
        self.called("ListEvents");
        self.events
            .list_events(v1::ListEventsRequest {
                after: after.to_owned(),
                page_size,
                kinds: kinds.iter().map(|k| i32::from(*k)).collect(),
                provider_ids: provider_ids.to_vec(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn privacy(&mut self) {
        let picks = self.picks;
        // Exports, then erasures, of loaded customers (with an anonymous conversation of
        // theirs listed) and of a customer linked in this phase.
        let mut customers: Vec<(String, Vec<String>)> = picks.linked[..5]
            .iter()
            .zip(&picks.anonymous)
            .map(|(c, a)| (c.customer.clone().unwrap(), vec![a.id.clone()]))
            .collect();
        customers.push((format!("plans-linked-{}-0", self.tag), Vec::new()));
        for (customer_id, conversation_ids) in &customers {
            self.called("ExportCustomerConversations");
            let mut export = self
                .privacy
                .export_customer_conversations(v1::ExportCustomerConversationsRequest {
                    customer_id: customer_id.clone(),
                    conversation_ids: conversation_ids.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            let mut items = 0;
            while let Some(_item) = export.message().await.unwrap() {
                items += 1;
            }
            assert!(items > 0, "{customer_id} exports nothing");
        }
        for (customer_id, conversation_ids) in &customers {
            self.called("EraseCustomerConversations");
            let erased = self
                .privacy
                .erase_customer_conversations(v1::EraseCustomerConversationsRequest {
                    request_id: Uuid::new_v4().to_string(),
                    customer_id: customer_id.clone(),
                    conversation_ids: conversation_ids.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(erased.conversations_erased > 0, "{customer_id}: {erased:?}");
        }
        let mut page_token = String::new();
        for _ in 0..CALLS {
            self.called("ListAuditRecords");
            let page = self
                .audit
                .list_audit_records(v1::ListAuditRecordsRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            page_token = page.next_page_token;
        }
    }

    /// Waits for what the background tasks do: the sweeper deletes the aged
    /// conversations' messages (then reading below what it kept is refused, and reading
    /// backward finds nothing), and reminders go out for messages nobody online read.
    async fn background(&mut self) {
        for c in &self.picks.swept {
            let client = self.client.clone();
            chat_common::testing::status::eventually(WAIT, || {
                let mut client = client.clone();
                let request = v1::ListMessagesRequest {
                    conversation_id: c.id.clone(),
                    viewer: Some(c.provider()),
                    direction: Direction::Forward.into(),
                    ..Default::default()
                };
                async move {
                    match client.list_messages(request).await {
                        Ok(_) => None,
                        Err(status) if status.code() == Code::FailedPrecondition => Some(()),
                        Err(status) => panic!("ListMessages of a swept conversation: {status:?}"),
                    }
                }
            })
            .await;
            self.called("ListMessages");
            let backward = self
                .client
                .list_messages(v1::ListMessagesRequest {
                    conversation_id: c.id.clone(),
                    viewer: Some(c.customer()),
                    direction: Direction::Backward.into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(backward.messages.is_empty(), "{:?}", backward.messages);
        }
        // The feed from its oldest event until a reminder shows.
        let mut after = String::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let page = self
                .events
                .list_events(v1::ListEventsRequest {
                    after: after.clone(),
                    page_size: 100,
                    kinds: vec![EventKind::UnreadReminder.into()],
                    provider_ids: Vec::new(),
                })
                .await
                .unwrap()
                .into_inner();
            if !page.events.is_empty() {
                break;
            }
            after = page.next_after;
            assert!(
                tokio::time::Instant::now() < deadline,
                "no unread reminder within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The head of the conversation, from the stream's first event (its snapshot).
async fn head_of(stream: &mut Streaming<v1::StreamConversationResponse>) -> i64 {
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a snapshot within the deadline")
        .unwrap()
        .expect("the stream stays open");
    match first.event {
        Some(ConversationEvent::Snapshot(s)) => s.conversation.unwrap().head_seq,
        other => panic!("a stream starts with its snapshot, not {other:?}"),
    }
}

/// Reads until message `seq` arrived (and, with `changes`, a change position); returns
/// the last seq seen.
async fn replay_until(
    stream: &mut Streaming<v1::StreamConversationResponse>,
    seq: i64,
    changes: bool,
) -> i64 {
    let (mut last, mut position) = (0, !changes);
    tokio::time::timeout(WAIT, async {
        while last < seq || !position {
            let response = stream
                .message()
                .await
                .unwrap()
                .expect("the stream stays open");
            match response.event {
                Some(ConversationEvent::Message(m)) => last = last.max(m.seq),
                Some(ConversationEvent::ChangePosition(_)) => position = true,
                _ => {}
            }
        }
    })
    .await
    .expect("the stream delivers within the deadline");
    last
}

/// The cursor of the inbox's first heartbeat.
async fn inbox_heartbeat(stream: &mut Streaming<v1::StreamInboxResponse>) -> String {
    inbox_until(stream, |response| {
        matches!(response.event, Some(InboxEvent::Heartbeat(_))).then_some(response.cursor)
    })
    .await
}

/// The inbox's items (not heartbeats, summaries or presence) up to the first heartbeat
/// after at least one of them.
async fn inbox_items_until_heartbeat(
    stream: &mut Streaming<v1::StreamInboxResponse>,
) -> Vec<String> {
    let mut items = Vec::new();
    inbox_until(stream, |response| {
        match response.event {
            Some(InboxEvent::Heartbeat(_)) if !items.is_empty() => return Some(()),
            Some(
                InboxEvent::Heartbeat(_)
                | InboxEvent::UnreadSummaryChanged(_)
                | InboxEvent::PresenceChanged(_),
            )
            | None => {}
            Some(event) => items.push(format!("{event:?}").chars().take(60).collect()),
        }
        None
    })
    .await;
    items
}
