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
//!
//! cargo run --release -p conversation-service --example streams_bench -- \
//!     --service-bin target/release/conversation-service [--streams 2000]

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
use sqlx::{Connection, PgConnection};
use tonic::{Streaming, transport::Channel};
use uuid::Uuid;

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
}

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Streams per client connection (the service allows 2048 by default).
const STREAMS_PER_CONNECTION: usize = 1000;

type Client = ConversationServiceClient<Channel>;

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
        .stdout(Stdio::null())
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

async fn connect(addr: &str) -> anyhow::Result<Client> {
    let channel = Channel::from_shared(addr.to_owned())?.connect().await?;
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let per_stream = idle(&args).await?;
    let reads = fanout(&args).await?;
    println!("idle_stream_kib={per_stream:.1} reads_per_message={reads:.2}");
    Ok(())
}
