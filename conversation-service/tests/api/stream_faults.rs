//! Streams under faults: shutdown while a client is behind, a listener without its pool,
//! a link that ends an anonymous viewer's stream, stale wake-ups after a resync.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chat_proto::v1::{
    self, ConversationStatus, StreamConversationResponse, stream_conversation_response::Event,
};
use tonic::{Code, Streaming};
use uuid::Uuid;

use crate::helpers::{
    Client, TestApp, create, customer, fresh_database, open_stream, provider, send, spawn_app,
    spawn_app_with, spawn_app_with_flags, spawn_process,
};

const WAIT: Duration = Duration::from_secs(20);

/// A client whose HTTP/2 windows are small, so a server that sends more than it reads
/// fills up quickly.
pub(crate) async fn slow_client(addr: std::net::SocketAddr) -> Client {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    Client::new(channel)
}

/// Stores `n` messages of 4000 bytes straight into the table (no NOTIFY), so a stream
/// that replays them has far more to send than its buffers hold.
pub(crate) async fn pile_up(app: &TestApp, conversation_id: &str, n: i64) {
    let mut db = app.db().await;
    let id = Uuid::parse_str(conversation_id).unwrap();
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, id, sender_role, sender_id, body) \
         SELECT $1, s, gen_random_uuid(), 1, provider_id, repeat('x', 4000) \
         FROM generate_series(1, $2) s, conversations WHERE conversations.id = $1",
    )
    .bind(id)
    .bind(n)
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query("UPDATE conversations SET head_seq = $2 WHERE id = $1")
        .bind(id)
        .bind(n)
        .execute(&mut db)
        .await
        .unwrap();
}

/// Reads until the stream ends: (seqs seen, the final status code, None for a clean end).
async fn drain(stream: &mut Streaming<StreamConversationResponse>) -> (Vec<i64>, Option<Code>) {
    let mut seqs = Vec::new();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(response)) => {
                    if let Some(Event::Message(m)) = response.event {
                        seqs.push(m.seq);
                    }
                }
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the stream ends");
    (seqs, ended)
}

/// A client that is behind when the server gets SIGTERM still gets UNAVAILABLE (resume),
/// never a clean end after a partial delivery.
#[tokio::test]
async fn a_stream_behind_at_sigterm_still_ends_unavailable() {
    let mut a = spawn_app().await;
    // No drain delay: the streams are told at once, while this client is still behind.
    // The grace only bounds how long the client may take to read its way to the status
    // (past it the connection is cut: UNKNOWN); 5 s was too short once, with the whole
    // suite running on two cores. It stays under `drain`'s WAIT, so a hang still fails.
    let b = spawn_process(
        &a.database_url,
        &["--shutdown-grace", "15s", "--drain-delay", "0s"],
    )
    .await;
    let id = create(&mut a.client, "p1").await.conversation_id;
    pile_up(&a, &id, 400).await;
    let mut client = slow_client(b.addr).await;
    let mut stream = open_stream(&mut client, &id, provider("p1"), 0).await;
    // Not reading: the replay fills every buffer on the way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = b.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let (seqs, ended) = drain(&mut stream).await;
    assert!(
        seqs.len() < 400,
        "the replay was cut short ({})",
        seqs.len()
    );
    assert_eq!(ended, Some(Code::Unavailable), "told to resume");
}

/// The LISTEN connection is not one of the pool's: with `DB_POOL_SIZE=1` the service
/// serves unary calls and live streams.
#[tokio::test]
async fn a_pool_of_one_serves_calls_and_streams() {
    let mut app = spawn_app_with_flags(&["--db-pool-size", "1"]).await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    let mut stream = open_stream(&mut app.client, &id, provider("p1"), 0).await;
    send(&mut app.client, &id, customer(""), "hello")
        .await
        .unwrap();
    loop {
        let response = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(Event::Message(m)) = response.event {
            assert_eq!((m.seq, response.replayed), (1, false));
            break;
        }
    }
    let (listeners,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'conversation-service listener'",
    )
    .fetch_one(&mut app.db().await)
    .await
    .unwrap();
    assert_eq!(listeners, 1, "the listener has a connection of its own");
}

/// The anonymous visitor's stream ends with PERMISSION_DENIED once a customer is linked
/// (new anonymous sends are refused too); the linked customer streams on.
#[tokio::test]
async fn an_anonymous_stream_ends_when_a_customer_is_linked() {
    let mut app = spawn_app().await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    let mut anonymous = open_stream(&mut app.client, &id, customer(""), 0).await;
    send(&mut app.client, &id, customer(""), "before the link")
        .await
        .unwrap();
    app.client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: id.clone(),
            customer_id: Some("c1".into()),
            email: Some("ada@example.com".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let status = tokio::time::timeout(WAIT, async {
        loop {
            match anonymous.message().await {
                Ok(Some(response)) => assert!(
                    !matches!(response.event, Some(Event::CustomerUpdated(_))),
                    "the linked customer's details never reach the anonymous viewer"
                ),
                Ok(None) => panic!("ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the anonymous stream ends");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(crate::helpers::reason(&status), "CUSTOMER_LINKED");

    let mut linked = open_stream(&mut app.client, &id, customer("c1"), 0).await;
    send(&mut app.client, &id, provider("p1"), "to c1")
        .await
        .unwrap();
    assert_eq!(messages_until(&mut linked, 2).await, [1, 2]);
}

/// Reads until a message with seq `until`; returns the seqs of messages seen.
async fn messages_until(
    stream: &mut Streaming<StreamConversationResponse>,
    until: i64,
) -> Vec<i64> {
    let mut seqs = Vec::new();
    while seqs.last().is_none_or(|seq| *seq < until) {
        let response = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an event within the deadline")
            .unwrap()
            .expect("the stream stays open");
        if let Some(Event::Message(m)) = response.event {
            seqs.push(m.seq);
        }
    }
    seqs
}

/// A stream behind its client resyncs (fresh snapshot) while older wake-ups are still
/// queued: nothing older than that snapshot follows it (no CLOSED after a snapshot that
/// shows it reopened, no read receipt moving backwards).
#[tokio::test]
async fn nothing_older_than_a_resync_snapshot_follows_it() {
    let mut app = spawn_app_with_flags(&["--stream-queue", "4"]).await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    let mut client = slow_client(app.addr).await;
    let mut stream = open_stream(&mut client, &id, provider("p1"), 0).await;
    stream.message().await.unwrap().unwrap(); // the first snapshot
    pile_up(&app, &id, 400).await;
    send(&mut app.client, &id, provider("p1"), "wake")
        .await
        .unwrap();
    // The task is now stuck sending the replay; these wake-ups queue up behind it...
    tokio::time::sleep(Duration::from_millis(500)).await;
    for status in [ConversationStatus::Closed, ConversationStatus::Active] {
        app.client
            .set_conversation_status(v1::SetConversationStatusRequest {
                conversation_id: id.clone(),
                status: status.into(),
                actor: None,
            })
            .await
            .unwrap();
    }
    for seq in [5, 10] {
        app.client
            .mark_read(v1::MarkReadRequest {
                conversation_id: id.clone(),
                reader: customer(""),
                seq,
            })
            .await
            .unwrap();
    }
    // ...and this one overflows the queue: the stream is lagging and will resync.
    app.client
        .send_typing(v1::SendTypingRequest {
            conversation_id: id.clone(),
            sender: customer(""),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut app.client, &id, provider("p1"), "marker")
        .await
        .unwrap();

    let mut snapshots = 0;
    let mut after_resync = Vec::new();
    loop {
        let response = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match response.event {
            Some(Event::Snapshot(s)) => {
                snapshots += 1;
                let c = s.conversation.unwrap();
                assert_eq!(c.status(), ConversationStatus::Active);
                assert_eq!(c.customer_read_seq, 10);
            }
            Some(Event::Message(m)) if m.seq == 402 => {
                // Typing is queued behind anything still queued: the end marker.
                app.client
                    .send_typing(v1::SendTypingRequest {
                        conversation_id: id.clone(),
                        sender: customer(""),
                    })
                    .await
                    .unwrap();
            }
            Some(Event::Typing(_)) if snapshots >= 1 => break,
            Some(event) if snapshots >= 1 => after_resync.push(event),
            _ => {}
        }
    }
    assert!(snapshots >= 1, "the lagging stream resynced");
    for event in after_resync {
        match event {
            Event::StatusChanged(s) => assert_eq!(
                s.status(),
                ConversationStatus::Active,
                "a stale CLOSED followed the snapshot"
            ),
            Event::ReadReceipt(r) => assert!(r.read_seq > 10, "a receipt moved backwards: {r:?}"),
            _ => {}
        }
    }
}

/// A TCP proxy to PostgreSQL that can silently freeze the connections that LISTEN:
/// bytes stop flowing both ways, and the sockets stay open (no FIN, no RST).
struct FreezingProxy {
    port: u16,
    listening: Arc<Mutex<HashSet<u64>>>,
    frozen: Arc<Mutex<HashSet<u64>>>,
    /// While set, a connection is frozen as soon as it sends LISTEN.
    block_listen: Arc<AtomicBool>,
}

impl FreezingProxy {
    async fn start() -> Self {
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let proxy = Self {
            port,
            listening: Arc::default(),
            frozen: Arc::default(),
            block_listen: Arc::default(),
        };
        let (listening, frozen, block) = (
            Arc::clone(&proxy.listening),
            Arc::clone(&proxy.frozen),
            Arc::clone(&proxy.block_listen),
        );
        tokio::spawn(async move {
            for id in 0.. {
                let Ok((client, _)) = socket.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let state = (
                    Arc::clone(&listening),
                    Arc::clone(&frozen),
                    Arc::clone(&block),
                );
                tokio::spawn(pump(id, client_read, server_write, state.clone(), true));
                tokio::spawn(pump(id, server_read, client_write, state, false));
            }
        });
        proxy
    }

    fn freeze_listeners(&self) {
        let listening = self.listening.lock().unwrap().clone();
        self.frozen.lock().unwrap().extend(listening);
    }
}

type ProxyState = (
    Arc<Mutex<HashSet<u64>>>,
    Arc<Mutex<HashSet<u64>>>,
    Arc<AtomicBool>,
);

async fn pump(
    id: u64,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    (listening, frozen, block): ProxyState,
    from_client: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        if from_client && buf[..n].windows(6).any(|w| w == b"LISTEN") {
            listening.lock().unwrap().insert(id);
            if block.load(Ordering::SeqCst) {
                frozen.lock().unwrap().insert(id);
            }
        }
        if frozen.lock().unwrap().contains(&id) {
            // Silently dead: hold both sockets open, pass nothing.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The LISTEN connection stops passing bytes without closing: within seconds health says
/// NOT_SERVING; once a new LISTEN connection works, health says SERVING again and open
/// streams catch up on what was sent meanwhile.
#[tokio::test]
async fn a_silently_dead_listener_is_found_and_replaced() {
    let proxy = FreezingProxy::start().await;
    let direct_database = fresh_database().await;
    let direct = direct_database.url().to_owned();
    let name = direct.rsplit('/').next().unwrap();
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/{name}", proxy.port);
    let mut app = spawn_app_with(&via_proxy, &[]).await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    let mut stream = open_stream(&mut app.client, &id, provider("p1"), 0).await;
    stream.message().await.unwrap().unwrap(); // snapshot

    proxy.block_listen.store(true, Ordering::SeqCst);
    proxy.freeze_listeners();
    send(&mut app.client, &id, customer(""), "while deaf")
        .await
        .unwrap();
    crate::helpers::wait_health(app.addr, 2).await;

    proxy.block_listen.store(false, Ordering::SeqCst);
    crate::helpers::wait_serving(app.addr).await;
    assert_eq!(messages_until(&mut stream, 1).await, [1]);
    send(&mut app.client, &id, customer(""), "live again")
        .await
        .unwrap();
    assert_eq!(messages_until(&mut stream, 2).await, [2]);
}

/// 2,000 streams resync at once after the listener reconnects: the catch-up is paced, so
/// SendMessage keeps working on a small pool and no stream ends.
#[tokio::test]
async fn a_resync_of_two_thousand_streams_starves_no_call() {
    const STREAMS: usize = 2000;
    const SENDS: i64 = 20;
    let mut app =
        spawn_app_with_flags(&["--db-pool-size", "4", "--db-acquire-timeout", "1s"]).await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    // HTTP/2 allows 2048 streams per connection: spread them over four.
    let mut openers = Vec::new();
    for _ in 0..4 {
        let mut client = crate::helpers::connect(app.addr).await;
        let id = id.clone();
        openers.push(tokio::spawn(async move {
            let mut streams = Vec::new();
            for _ in 0..STREAMS / 4 {
                let mut stream = open_stream(&mut client, &id, provider("p1"), 0).await;
                stream.message().await.unwrap().unwrap(); // snapshot
                streams.push(stream);
            }
            streams
        }));
    }
    let mut streams = Vec::new();
    for opener in openers {
        streams.extend(opener.await.unwrap());
    }
    assert_eq!(app.hub.open_streams(), STREAMS);

    let (killed,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() \
         AND application_name = 'conversation-service listener') k",
    )
    .fetch_one(&mut app.db().await)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    // Unary calls while every stream resyncs.
    for i in 0..SENDS {
        send(&mut app.client, &id, customer(""), &format!("m{i}"))
            .await
            .unwrap();
    }
    for stream in &mut streams {
        let seen = messages_until(stream, SENDS).await;
        assert_eq!(seen.last(), Some(&SENDS));
    }
    assert_eq!(app.hub.open_streams(), STREAMS, "no stream ended");
}

/// A listener further behind than `--listener-lag-limit` (here any lag at all) is
/// reconnected once its probe arrives: the reconnect is counted, and a stream open across
/// the reconnects gets every message once, in order (it catches up from the table).
#[tokio::test]
async fn a_listener_behind_its_lag_limit_is_replaced_and_streams_catch_up() {
    use chat_common::scrape::{sample, scrape};
    let flags = [
        "--listener-lag-limit",
        "1ns",
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    let mut app = spawn_app_with_flags(&flags).await;
    let metrics = app.metrics.expect("metrics address");
    let id = create(&mut app.client, "p1").await.conversation_id;
    let mut stream = open_stream(&mut app.client, &id, provider("p1"), 0).await;
    stream.message().await.unwrap().unwrap(); // snapshot

    let reconnects = || async {
        let text = scrape(metrics).await.unwrap();
        sample(&text, "chat_listener_reconnects_total", &[])
    };
    let mut sent = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while reconnects().await < 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "never reconnected");
        send(&mut app.client, &id, customer(""), &format!("m{sent}"))
            .await
            .unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expected: Vec<i64> = (1..=sent).collect();
    assert_eq!(messages_until(&mut stream, sent).await, expected);
}
