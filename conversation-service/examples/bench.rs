//! SendMessage throughput and latency against the reference it must beat (PostgreSQL
//! itself doing one insert+NOTIFY transaction per message), plus end-to-end delivery
//! latency to a stream. All in one run, on a fresh database each.
//!
//! cargo run --release -p conversation-service --example bench -- [--seconds 10] [--clients 64] [--conversations 64]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chat_proto::v1::{
    self, conversation_service_client::ConversationServiceClient,
    stream_conversation_response::Event,
};
use clap::Parser;
use conversation_service::{config::Config, startup::Application};
use sqlx::{Connection, PgConnection, postgres::PgPoolOptions};
use tonic::transport::Channel;
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent senders.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Conversations the senders spread over.
    #[arg(long, default_value_t = 64)]
    conversations: usize,
    /// Messages timed for delivery latency.
    #[arg(long, default_value_t = 2000)]
    deliveries: usize,
}

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

async fn fresh_database(prefix: &str) -> anyhow::Result<String> {
    let name = format!("{prefix}_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(ADMIN_URL).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await?;
    Ok(format!("postgres://postgres@127.0.0.1:5432/{name}"))
}

struct Report {
    name: &'static str,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Report {
    fn print(&mut self) {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        let pct = |p: f64| {
            let i = ((n as f64 * p).ceil() as usize).clamp(1, n.max(1)) - 1;
            self.latencies
                .get(i)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        println!(
            "{:<44} {:>9.0} msg/s   p50 {:>7.2} ms   p90 {:>7.2} ms   p99 {:>7.2} ms   (n={n})",
            self.name,
            n as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.90),
            pct(0.99),
        );
    }
}

/// Runs `clients` loops of `op` for `seconds`, timing each call.
async fn drive<F, Fut>(name: &'static str, clients: usize, seconds: u64, op: F) -> Report
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let op = Arc::clone(&op);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                if let Err(error) = op(client, i).await {
                    eprintln!("{name}: {error}");
                    break;
                }
                latencies.push(t.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap_or_default());
    }
    Report {
        name,
        latencies,
        elapsed: started.elapsed(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "SendMessage write path: {} clients over {} conversations, {} s per phase, bodies of 100 bytes",
        args.clients, args.conversations, args.seconds
    );

    // Reference: PostgreSQL alone, one transaction per message: lock the conversation,
    // take the next seq, insert, NOTIFY, commit (what a naive SendMessage does).
    let url = fresh_database("bench_ref").await?;
    let app = start(&url).await?;
    let mut client = app.1.clone();
    let ids = create_conversations(&mut client, args.conversations).await?;
    let pool = PgPoolOptions::new()
        .max_connections(args.clients as u32)
        .connect(&url)
        .await?;
    let body = "x".repeat(100);
    let reference = {
        let pool = pool.clone();
        let ids = ids.clone();
        let body = body.clone();
        drive(
            "reference: PostgreSQL, 1 tx + NOTIFY per msg",
            args.clients,
            args.seconds,
            move |c, _| {
                let pool = pool.clone();
                let id = ids[c % ids.len()];
                let body = body.clone();
                async move {
                    let mut tx = pool.begin().await?;
                    let (seq,): (i64,) = sqlx::query_as(
                    "UPDATE conversations SET head_seq = head_seq + 1, last_activity_at = now() \
                     WHERE id = $1 RETURNING head_seq",
                )
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                    sqlx::query(
                    "INSERT INTO messages (conversation_id, seq, id, sender_role, sender_id, body) \
                     VALUES ($1, $2, $3, 1, 'bench', $4)",
                )
                .bind(id)
                .bind(seq)
                .bind(Uuid::now_v7())
                .bind(&body)
                .execute(&mut *tx)
                .await?;
                    sqlx::query("SELECT pg_notify('chat_events', $1)")
                        .bind(format!(
                            "{{\"k\":\"m\",\"m\":[{{\"c\":\"{id}\",\"s\":{seq},\"p\":\"bench\"}}]}}"
                        ))
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                }
            },
        )
        .await
    };
    pool.close().await;
    app.0.cancel();

    // The service: SendMessage over gRPC on loopback.
    let url = fresh_database("bench_svc").await?;
    let app = start(&url).await?;
    let mut client = app.1.clone();
    let ids = create_conversations(&mut client, args.conversations).await?;
    let service = {
        let client = app.1.clone();
        let ids = ids.clone();
        drive(
            "conversation-service SendMessage (gRPC)",
            args.clients,
            args.seconds,
            move |c, _| {
                let mut client = client.clone();
                let id = ids[c % ids.len()].to_string();
                let body = body.clone();
                async move {
                    client
                        .send_message(v1::SendMessageRequest {
                            conversation_id: id,
                            sender: Some(v1::Participant {
                                role: v1::Role::Provider.into(),
                                id: "bench".into(),
                                ..Default::default()
                            }),
                            body,
                            client_message_id: String::new(),
                        })
                        .await?;
                    Ok(())
                }
            },
        )
        .await
    };
    let mut reference = reference;
    let mut service = service;
    reference.print();
    service.print();
    let ratio = service.latencies.len() as f64
        / service.elapsed.as_secs_f64()
        / (reference.latencies.len() as f64 / reference.elapsed.as_secs_f64());
    println!("service / reference throughput: {ratio:.2}x (target >= 1.5x)");

    // Delivery: one message at a time on a quiet conversation, timed until a stream of
    // the other participant receives it, on the same replica and on a second replica
    // (its own LISTEN connection) against the same database.
    println!("delivery, one message at a time (commit latency is the floor):");
    let other = start(&url).await?;
    for (label, mut stream_client) in [
        ("same replica", client.clone()),
        ("other replica", other.1.clone()),
    ] {
        let id = ids[1].to_string();
        let (replies, deliveries, elapsed) =
            measure_delivery(&mut client, &mut stream_client, &id, args.deliveries).await?;
        println!("  stream on the {label}:");
        Report {
            name: "    SendMessage call -> reply (committed)",
            latencies: replies,
            elapsed,
        }
        .print();
        Report {
            name: "    SendMessage call -> received on the stream",
            latencies: deliveries,
            elapsed,
        }
        .print();
    }
    other.0.cancel();
    app.0.cancel();
    Ok(())
}

/// Sends `n` messages one by one on `sender`, each awaited on a stream held on `receiver`.
async fn measure_delivery(
    sender: &mut ConversationServiceClient<Channel>,
    receiver: &mut ConversationServiceClient<Channel>,
    id: &str,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, Duration)> {
    let head = sender
        .get_conversation(v1::GetConversationRequest {
            conversation_id: id.to_owned(),
            viewer: None,
        })
        .await?
        .into_inner()
        .conversation
        .map_or(0, |c| c.head_seq);
    // Start from the head: no replay to wait through.
    let mut stream = receiver
        .stream_conversation(v1::StreamConversationRequest {
            conversation_id: id.to_owned(),
            viewer: Some(v1::Participant {
                role: v1::Role::Customer.into(),
                id: String::new(),
                session_id: BENCH_SESSION.into(),
            }),
            after_seq: head,
        })
        .await?
        .into_inner();
    let (mut replies, mut deliveries) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let sent = sender
            .send_message(v1::SendMessageRequest {
                conversation_id: id.to_owned(),
                sender: Some(v1::Participant {
                    role: v1::Role::Provider.into(),
                    id: "bench".into(),
                    ..Default::default()
                }),
                body: "ping".into(),
                client_message_id: String::new(),
            })
            .await?
            .into_inner()
            .message
            .map_or(0, |m| m.seq);
        replies.push(t.elapsed());
        loop {
            let Some(event) = stream.message().await? else {
                anyhow::bail!("stream ended")
            };
            if let Some(Event::Message(m)) = event.event
                && m.seq == sent
            {
                break;
            }
        }
        deliveries.push(t.elapsed());
    }
    Ok((replies, deliveries, started.elapsed()))
}

async fn start(
    url: &str,
) -> anyhow::Result<(
    tokio_util::sync::CancellationToken,
    ConversationServiceClient<Channel>,
)> {
    let config = Config::try_parse_from([
        "conversation-service",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        url,
    ])?;
    let app = Application::build(config).await?;
    let addr = app.local_addr();
    let token = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect_lazy();
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((token, ConversationServiceClient::new(channel)))
}

/// The session every benchmark conversation is opened for (its anonymous viewer's proof).
const BENCH_SESSION: &str = "0b6d1c2e-5d0a-4c1e-9d7f-2a9f3c1e8b11";

async fn create_conversations(
    client: &mut ConversationServiceClient<Channel>,
    n: usize,
) -> anyhow::Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let reply = client
            .create_conversation(v1::CreateConversationRequest {
                request_id: Uuid::new_v4().to_string(),
                provider_id: "bench".into(),
                session_id: BENCH_SESSION.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let id = reply
            .conversation
            .map(|c| c.conversation_id)
            .unwrap_or_default();
        ids.push(Uuid::parse_str(&id)?);
    }
    Ok(ids)
}
