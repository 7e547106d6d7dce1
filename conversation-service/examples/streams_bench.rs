//! Streams: memory per idle StreamConversation stream, and database reads per message
//! fanned out to several viewers. The service runs as its own process (the binary named
//! by `--service-bin`) on a fresh database, so its RSS is its own.
//!
//! - idle: RSS of the service before and after opening `--streams` streams (one per
//!   conversation, nothing sent), divided by the streams.
//! - fan-out: `--fanout-conversations` conversations with `--viewers` streams each;
//!   `--fanout-messages` messages are sent one at a time, each awaited on all its viewers.
//!   Reads are the service's own count of the reads of `messages` its streams made
//!   (`chat_stream_message_reads_total` on its metrics endpoint), before and after.
//! - many (`--many-streams N`, instead of the two above): N StreamConversation streams
//!   over `--connections` HTTP/2 connections (a BFF multiplexing its users), one per
//!   conversation: the service's RSS growth divided by N, its file descriptors; then,
//!   with all of them open and read, delivery under load as `examples/bench.rs` measures
//!   it: `--senders` senders on conversations with two viewers each, first closed loop
//!   (saturation with these streams open), then paced at `--load-fraction` of it while
//!   `--deliveries` probes are timed one at a time until a stream of the same process
//!   has them.
//!
//! The service's log (warnings and errors) goes to the file `SERVICE_LOG` names, if set.
//!
//! cargo run --release -p conversation-service --example streams_bench -- \
//!     --service-bin target/release/conversation-service [--streams 2000]
//!     [--many-streams 100000 --connections 64]

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use chat_proto::v1::{
    self, conversation_service_client::ConversationServiceClient,
    stream_conversation_response::Event,
};
use clap::Parser;
use futures::StreamExt;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use uuid::Uuid;

mod load;

use load::{Client, Report};

#[derive(Parser)]
struct Args {
    /// The conversation-service binary to measure.
    #[arg(long, default_value = "target/release/conversation-service")]
    service_bin: PathBuf,
    /// Idle streams to open.
    #[arg(long, default_value_t = 2000)]
    streams: usize,
    /// Conversations of the fan-out phase.
    #[arg(long, default_value_t = 20)]
    fanout_conversations: usize,
    /// Streams per conversation in the fan-out phase.
    #[arg(long, default_value_t = 10)]
    viewers: usize,
    /// Messages sent in the fan-out phase.
    #[arg(long, default_value_t = 200)]
    fanout_messages: usize,
    /// Instead of the idle and fan-out phases: this many streams, and delivery under
    /// load with all of them open.
    #[arg(long)]
    many_streams: Option<usize>,
    /// HTTP/2 connections the many streams and the senders spread over.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    connections: u16,
    /// Senders of the delivery under load, one loaded conversation each.
    #[arg(long, default_value_t = 64)]
    senders: usize,
    /// Seconds of the saturation measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Probe messages timed for the delivery latency.
    #[arg(long, default_value_t = 2000)]
    deliveries: usize,
    /// Background send rate, as a fraction of the saturation measured with the streams
    /// open.
    #[arg(long, default_value_t = 0.5)]
    load_fraction: f64,
}

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Streams per client connection (the service allows 2048 by default).
const STREAMS_PER_CONNECTION: usize = 1000;
/// The session every conversation is opened for (its anonymous viewer's proof).
const BENCH_SESSION: &str = "0b6d1c2e-5d0a-4c1e-9d7f-2a9f3c1e8b11";

/// The service process; killed and its database dropped on drop.
struct Service {
    child: Child,
    database: String,
    addr: String,
    metrics: std::net::SocketAddr,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(bin: &PathBuf, max_streams: usize) -> anyhow::Result<Service> {
    let database = format!("bench_streams_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(ADMIN_URL).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{database}\""
    )))
    .execute(&mut admin)
    .await?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let metrics = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let child = Command::new(bin)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            &format!("postgres://postgres@127.0.0.1:5432/{database}"),
            "--max-streams",
            &(max_streams + 100).to_string(),
            "--metrics-addr",
            &metrics.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(match std::env::var_os("SERVICE_LOG") {
            Some(path) => Stdio::from(std::fs::File::create(path)?),
            None => Stdio::null(),
        })
        .spawn()?;
    let service = Service {
        child,
        database,
        addr: format!("http://127.0.0.1:{port}"),
        metrics,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut client) = connect(&service.addr).await
            && client
                .list_conversations(v1::ListConversationsRequest {
                    participant: Some(v1::Participant::provider("bench")),
                    ..Default::default()
                })
                .await
                .is_ok()
        {
            return Ok(service);
        }
        anyhow::ensure!(Instant::now() < deadline, "the service did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn drop_database(name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(ADMIN_URL).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}

/// A client on a connection of its own.
async fn connect(addr: &str) -> anyhow::Result<Client> {
    let channel = tonic::transport::Channel::from_shared(addr.to_owned())?
        .connect()
        .await?;
    Ok(ConversationServiceClient::new(channel))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))
}

async fn create(client: &mut Client) -> anyhow::Result<String> {
    Ok(client
        .create_conversation(v1::CreateConversationRequest {
            request_id: Uuid::new_v4().to_string(),
            provider_id: "bench".into(),
            session_id: BENCH_SESSION.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .conversation
        .map(|c| c.conversation_id)
        .unwrap_or_default())
}

async fn open(
    client: &mut Client,
    conversation_id: &str,
) -> anyhow::Result<Streaming<v1::StreamConversationResponse>> {
    Ok(client
        .stream_conversation(v1::StreamConversationRequest {
            conversation_id: conversation_id.to_owned(),
            viewer: Some(v1::Participant::provider("bench")),
            after_seq: 0,
            after_change: None,
        })
        .await?
        .into_inner())
}

/// Creates `n` conversations, `concurrency` at a time.
async fn create_many(clients: &[Client], n: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let calls = chunk.iter().map(|i| {
            let mut client = clients[i % clients.len()].clone();
            async move { create(&mut client).await }
        });
        for id in futures::future::join_all(calls).await {
            ids.push(id?);
        }
    }
    Ok(ids)
}

async fn idle(args: &Args) -> anyhow::Result<f64> {
    let service = start(&args.service_bin, args.streams).await?;
    let connections = args.streams.div_ceil(STREAMS_PER_CONNECTION).max(1);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(&service.addr).await?);
    }
    let ids = create_many(&clients, args.streams).await?;
    // Warm up: one stream opened and closed, so first-use allocations are not counted.
    drop(open(&mut clients[0].clone(), &ids[0]).await?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(service.child.id())?;
    let mut streams = Vec::with_capacity(args.streams);
    for (i, id) in ids.iter().enumerate() {
        let mut client = clients[i / STREAMS_PER_CONNECTION].clone();
        streams.push(open(&mut client, id).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(service.child.id())?;
    #[allow(clippy::cast_precision_loss)]
    let per_stream = after.saturating_sub(before) as f64 / args.streams as f64;
    println!(
        "idle StreamConversation streams: {} open, service RSS {before} KiB -> {after} KiB: {per_stream:.1} KiB per stream",
        args.streams
    );
    drop(streams);
    let database = service.database.clone();
    drop(service);
    drop_database(&database).await?;
    Ok(per_stream)
}

/// Waits until `stream` delivers message `seq`.
async fn until_seq(
    stream: &mut Streaming<v1::StreamConversationResponse>,
    seq: i64,
) -> anyhow::Result<()> {
    loop {
        let Some(event) = stream.message().await? else {
            anyhow::bail!("stream ended")
        };
        if let Some(Event::Message(m)) = event.event
            && m.seq >= seq
        {
            return Ok(());
        }
    }
}

/// Reads of `messages` the service's streams made so far.
async fn stream_reads(service: &Service) -> anyhow::Result<f64> {
    let text = chat_common::scrape::scrape(service.metrics).await?;
    Ok(chat_common::scrape::sample(
        &text,
        "chat_stream_message_reads_total",
        &[],
    ))
}

async fn fanout(args: &Args) -> anyhow::Result<f64> {
    let streams_needed = args.fanout_conversations * args.viewers;
    let service = start(&args.service_bin, streams_needed).await?;
    let mut client = connect(&service.addr).await?;
    let ids = create_many(std::slice::from_ref(&client), args.fanout_conversations).await?;
    let mut streams = Vec::with_capacity(ids.len());
    for id in &ids {
        let mut viewers = Vec::with_capacity(args.viewers);
        for _ in 0..args.viewers {
            viewers.push(open(&mut client, id).await?);
        }
        streams.push(viewers);
    }
    // Let the streams' first reads be counted before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = stream_reads(&service).await?;
    for i in 0..args.fanout_messages {
        let c = i % ids.len();
        let seq = client
            .send_message(v1::SendMessageRequest {
                conversation_id: ids[c].clone(),
                sender: Some(v1::Participant::provider("bench")),
                body: "fan-out".into(),
                client_message_id: String::new(),
                attachments: Vec::new(),
            })
            .await?
            .into_inner()
            .message
            .map_or(0, |m| m.seq);
        for viewer in &mut streams[c] {
            until_seq(viewer, seq).await?;
        }
    }
    let after = stream_reads(&service).await?;
    #[allow(clippy::cast_precision_loss)]
    let reads = (after - before) / args.fanout_messages.max(1) as f64;
    println!(
        "fan-out: {} conversations x {} viewers, {} messages one at a time: {} reads of messages, {reads:.2} per message ({:.2} per delivery)",
        args.fanout_conversations,
        args.viewers,
        args.fanout_messages,
        after - before,
        reads / args.viewers.max(1) as f64,
    );
    drop(streams);
    let database = service.database.clone();
    drop(service);
    drop_database(&database).await?;
    Ok(reads)
}

/// Open file descriptors of process `pid`.
fn descriptors(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// `n` conversations of provider `bench`, written straight into the service's table:
/// creating a hundred thousand through the API would take longer than the rest of the
/// phase, and idle streams need nothing but the row. Last active a day ago, as an idle
/// user's conversation is, so the inbox order has settled them already.
async fn insert_idle(database: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let mut conn = PgConnection::connect(&url).await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO conversations (id, provider_id, created_at, last_activity_at, inbox_at) \
         SELECT gen_random_uuid(), 'bench', a, a, a \
         FROM generate_series(1, $1), (SELECT now() - interval '1 day' AS a) t RETURNING id",
    )
    .bind(i64::try_from(n)?)
    .fetch_all(&mut conn)
    .await?;
    Ok(ids.iter().map(Uuid::to_string).collect())
}

/// Opens a stream of `id` for `viewer` from its start (the probe's and the idle ones).
async fn open_first(
    client: Client,
    id: String,
    viewer: v1::Participant,
) -> anyhow::Result<Streaming<v1::StreamConversationResponse>> {
    load::open_stream(client, id, viewer, 0, Duration::from_secs(60)).await
}

/// Reads `streams` until `stop`, counting their messages into `received`; returns the
/// streams that failed.
async fn drain_all(
    streams: Vec<Streaming<v1::StreamConversationResponse>>,
    stop: CancellationToken,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Vec<String> {
    use std::sync::atomic::Ordering;
    let mut all = futures::stream::select_all(streams);
    let mut failures = Vec::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return failures,
            event = all.next() => match event {
                Some(Ok(v1::StreamConversationResponse { event: Some(Event::Message(_)), .. })) => {
                    received.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(_)) => {}
                Some(Err(status)) => failures.push(format!("stream failed: {status}")),
                None => return failures,
            },
        }
    }
}

/// What the many-streams phase measured.
struct Many {
    kib_per_stream: f64,
    delivery_p99_ms: f64,
}

/// `--many-streams` streams over `--connections` connections: memory per stream, then
/// delivery under load with all of them open.
#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
async fn many(args: &Args, n: usize) -> anyhow::Result<Many> {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    let senders = args.senders.max(1);
    anyhow::ensure!(
        n > 2 * senders + 1,
        "--many-streams must be more than two viewers per sender and the probe's"
    );
    anyhow::ensure!(args.load_fraction > 0.0, "--load-fraction must be above 0");
    let service = start(&args.service_bin, n).await?;
    let pid = service.child.id();
    let connections = usize::from(args.connections);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(&service.addr).await?);
    }
    // The senders' conversations and the probe's (the last), created as a client would;
    // the idle ones written into the table.
    let loaded = create_many(&clients, senders + 1).await?;
    let idle = insert_idle(&service.database, n - 2 * senders - 1).await?;
    let (provider, customer) = (
        v1::Participant::provider("bench"),
        v1::Participant::anonymous(BENCH_SESSION),
    );
    // Warm up: one stream opened and closed, so first-use allocations are not counted.
    drop(open_first(clients[0].clone(), idle[0].clone(), provider.clone()).await?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib(pid)?;
    let fds_before = descriptors(pid)?;

    // Both participants of each sender's conversation, then one viewer of each idle
    // one, stream i on connection i % connections; the probe's stream last, on its own.
    let mut viewers = Vec::with_capacity(n);
    for id in &loaded[..senders] {
        viewers.push((id.clone(), provider.clone()));
        viewers.push((id.clone(), customer.clone()));
    }
    viewers.extend(idle.iter().map(|id| (id.clone(), provider.clone())));
    let opening = Instant::now();
    let mut opened = futures::stream::iter(viewers.into_iter().enumerate())
        .map(|(i, (id, viewer))| {
            let client = clients[i % connections].clone();
            async move { (i % connections, open_first(client, id, viewer).await) }
        })
        .buffer_unordered(256);
    let mut by_connection: Vec<Vec<_>> = (0..connections).map(|_| Vec::new()).collect();
    let mut open_failures = Vec::new();
    while let Some((connection, stream)) = opened.next().await {
        match stream {
            Ok(stream) => by_connection[connection].push(stream),
            Err(error) => open_failures.push(error.to_string()),
        }
    }
    drop(opened);
    let probe_id = loaded[senders].clone();
    let mut probe = open_first(
        clients[connections - 1].clone(),
        probe_id.clone(),
        customer.clone(),
    )
    .await?;
    let opened_in = opening.elapsed();
    let stop = CancellationToken::new();
    let received = Arc::new(AtomicU64::new(0));
    let mut drains = JoinSet::new();
    for streams in by_connection {
        drains.spawn(drain_all(streams, stop.clone(), Arc::clone(&received)));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(pid)?;
    let fds_after = descriptors(pid)?;
    let metrics = chat_common::scrape::scrape(service.metrics).await?;
    let open =
        chat_common::scrape::sample(&metrics, "chat_streams_open", &[("kind", "conversation")]);
    let kib_per_stream = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    println!(
        "many streams: {n} StreamConversation streams over {connections} connections, opened in {:.1} s \
         ({} failed; the service counts {open} open): service RSS {rss_before} KiB -> {rss_after} KiB: \
         {kib_per_stream:.2} KiB per stream; file descriptors {fds_before} -> {fds_after}",
        opened_in.as_secs_f64(),
        open_failures.len(),
    );

    // Saturation with these streams open: the senders closed loop, sender c on its own
    // conversation over connection c % connections.
    let conversation = |c: usize| (clients[c % connections].clone(), loaded[c].clone());
    let mut saturated = {
        let targets: Vec<_> = (0..senders).map(conversation).collect();
        let provider = provider.clone();
        load::drive(
            "  saturation, these streams open (closed loop)",
            senders,
            args.seconds,
            move |c, _| {
                let (mut client, id) = targets[c].clone();
                let provider = provider.clone();
                async move {
                    load::send(&mut client, id, provider, "x".repeat(100)).await?;
                    Ok(())
                }
            },
        )
        .await
    };
    let saturation = saturated.rate();
    let rate = saturation * args.load_fraction;
    anyhow::ensure!(rate > 0.0, "no background rate to run");
    let sent_at_saturation = saturated.latencies.len() as u64;

    // The background, each sender every senders/rate seconds, their schedules staggered
    // over one period; then the probes, after a second for the load to settle.
    let period = Duration::from_secs_f64(senders as f64 / rate);
    let load_stop = CancellationToken::new();
    let mut background = JoinSet::new();
    let load_started = Instant::now();
    for c in 0..senders {
        let (client, id) = conversation(c);
        let first = tokio::time::Instant::now() + period.mul_f64(c as f64 / senders as f64);
        background.spawn(load::paced_sender(
            client,
            id,
            provider.clone(),
            (first, period),
            load_stop.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probed = Instant::now();
    let probes = load::probe_deliveries(
        &mut clients[0].clone(),
        provider.clone(),
        (&probe_id, &mut probe),
        args.deliveries,
    )
    .await;
    let probe_elapsed = probed.elapsed();
    load_stop.cancel();
    let load_elapsed = load_started.elapsed();
    let (sent, send_errors) = load::join_paced(&mut background).await?;
    // Every message sent reaches its conversation's two viewers.
    let expected = 2 * (sent_at_saturation + sent.len() as u64);
    load::await_deliveries(&received, expected).await;
    let rss_loaded = rss_kib(pid)?;
    let metrics = chat_common::scrape::scrape(service.metrics).await?;
    let open_after =
        chat_common::scrape::sample(&metrics, "chat_streams_open", &[("kind", "conversation")]);
    stop.cancel();
    let mut failures = open_failures;
    while let Some(drained) = drains.join_next().await {
        failures.extend(drained?);
    }

    let load::Probes {
        replies,
        deliveries,
        errors: probe_errors,
    } = probes?;
    println!(
        "delivery with them open: background SendMessage paced at {rate:.0} msg/s ({:.0}% of \
         saturation with these streams, {saturation:.0} msg/s); probes one at a time on one connection, \
         their stream on another:",
        args.load_fraction * 100.0,
    );
    Report {
        name: "    SendMessage call -> reply (committed)",
        latencies: replies,
        elapsed: probe_elapsed,
    }
    .print();
    let mut delivered = Report {
        name: "    SendMessage call -> received on the stream",
        latencies: deliveries,
        elapsed: probe_elapsed,
    };
    delivered.print();
    saturated.print();
    Report {
        name: "  background SendMessage, paced (open loop)",
        latencies: sent,
        elapsed: load_elapsed,
    }
    .print();
    println!(
        "  {} background send errors, {} probe send errors; stream failures {}; viewers got {} of \
         {expected} messages; the service counts {open_after} streams open after the load; service RSS \
         then {rss_loaded} KiB",
        send_errors.len(),
        probe_errors.len(),
        failures.len(),
        received.load(Ordering::Relaxed),
    );
    for error in send_errors
        .iter()
        .chain(&probe_errors)
        .chain(&failures)
        .take(5)
    {
        println!("    e.g. {error}");
    }
    let delivery_p99_ms = delivered.percentile_ms(0.99);
    drop(probe);
    let database = service.database.clone();
    drop(service);
    drop_database(&database).await?;
    Ok(Many {
        kib_per_stream,
        delivery_p99_ms,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.many_streams {
        let many = many(&args, n).await?;
        println!(
            "many_streams={n} many_stream_kib={:.2} many_delivery_p99_ms={:.2}",
            many.kib_per_stream, many.delivery_p99_ms
        );
        return Ok(());
    }
    let per_stream = idle(&args).await?;
    let reads = fanout(&args).await?;
    println!("idle_stream_kib={per_stream:.1} reads_per_message={reads:.2}");
    Ok(())
}
