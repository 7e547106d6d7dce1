//! SendMessage throughput and latency against the reference it must beat (PostgreSQL
//! itself doing one insert+NOTIFY transaction per message), plus end-to-end delivery
//! latency to a stream, on a quiet service and under load. All in one run, on a fresh
//! database each; the replicas run in this process.
//!
//! Phases:
//! - reference: PostgreSQL alone, `--clients` connections, one transaction per message
//!   (lock the conversation, take the next seq, insert, NOTIFY, commit).
//! - service: `--clients` senders call SendMessage over gRPC on loopback for `--seconds`
//!   against `--replicas` replicas on one database. Each replica gets `--connections`
//!   client connections (tonic `Channel`s, one HTTP/2 connection each); client c sends
//!   to replica c % replicas over that replica's connection (c / replicas) % connections,
//!   on conversation c % `--conversations`.
//! - delivery: `--deliveries` messages one at a time on a quiet conversation, each timed
//!   until a stream receives it, on the same replica and on another one.
//! - delivery under load: two replicas (A and B), `--load-streams` streams open in all
//!   (two viewers of each of the service phase's conversations, the provider on A and
//!   the customer on B; the rest on idle conversations, half on each replica; the
//!   probe's), each drained by a task of its own. The service phase's senders send at
//!   `--load-fraction` of its measured rate, paced (open loop: a send every
//!   clients/rate seconds per client, whatever the replies take), while `--deliveries`
//!   probes are timed as in the delivery phase: sent on A, received on B.
//! - event feed: one StreamEvents consumer (message events) on B while the senders run
//!   closed-loop for `--seconds`: events received per second, and each one's lag from
//!   its creation.
//! - own process (with `--service-bin`): the service as its own OS process on a fresh
//!   database, SendMessage closed-loop by `--clients` senders over 4 connections, then
//!   over one connection each (one call in flight per connection, as many small BFFs
//!   would), each with the CPU time a message cost the service process and PostgreSQL's
//!   processes (from /proc, so the senders' own CPU is not counted); then the same
//!   callers and connections on `grpc.health.v1.Health/Check`, the floor of what a call
//!   costs the HTTP/2 and gRPC stack on both sides. `--only-own-process` runs these alone.
//!
//! cargo run --release -p conversation-service --example bench -- [--seconds 10] [--clients 64]
//!     [--conversations 64] [--deliveries 2000] [--connections 1] [--replicas 1]
//!     [--load-streams 1000] [--load-fraction 0.5] [--service-bin target/release/conversation-service]
//!     [--only-own-process]

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chat_common::testing::cpu;
use chat_proto::v1::{
    self, conversation_service_client::ConversationServiceClient,
    stream_conversation_response::Event,
};
use clap::Parser;
use conversation_service::{config::Config, startup::Application};
use futures::StreamExt;
use sqlx::{Connection, PgConnection, postgres::PgPoolOptions};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Streaming, transport::Channel};
use uuid::Uuid;

mod load;

use load::{Client, Report, drive};

/// The binaries' allocator, so the service measured here is the one that ships.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Messages timed for delivery latency (per delivery measurement).
    #[arg(long, default_value_t = 2000)]
    deliveries: usize,
    /// Client connections (HTTP/2) to each replica the senders spread over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    connections: u16,
    /// Replicas of the service phase, on one database.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    replicas: u16,
    /// Streams open in all during the delivery under load (at least two per conversation
    /// plus the probe's).
    #[arg(long, default_value_t = 1000)]
    load_streams: usize,
    /// Background send rate of the delivery under load, as a fraction of saturation: the
    /// rate the senders reach with the same streams open and draining (measured first).
    #[arg(long, default_value_t = 0.5)]
    load_fraction: f64,
    /// The conversation-service binary: SendMessage is measured once more against it as
    /// its own process, at 4 connections and at one connection per sender, with CPU time
    /// per message.
    #[arg(long)]
    service_bin: Option<PathBuf>,
    /// Only the phases of `--service-bin` (for profiling that process).
    #[arg(long, requires = "service_bin")]
    only_own_process: bool,
    /// A database loaded by `scripts/load-big.sh`: SendMessage is measured once more on
    /// it (64 new conversations among its million), next to the fresh database's figure.
    /// It runs the service's migrations on it and adds the conversations and messages.
    #[arg(long)]
    loaded_database_url: Option<String>,
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

/// The service's own runtime (`chat_common::runtime`), shared with the senders here.
fn main() -> anyhow::Result<()> {
    chat_common::runtime::build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.load_fraction > 0.0, "--load-fraction must be above 0");
    println!(
        "SendMessage write path: {} clients over {} conversations, {} s per phase, bodies of 100 bytes, \
         replicas={}, connections={} per replica",
        args.clients, args.conversations, args.seconds, args.replicas, args.connections
    );
    if let (true, Some(bin)) = (args.only_own_process, &args.service_bin) {
        return own_process(&args, bin).await;
    }

    // Reference: PostgreSQL alone, one transaction per message: lock the conversation,
    // take the next seq, insert, NOTIFY, commit (what a naive SendMessage does).
    let url = fresh_database("bench_ref").await?;
    let app = start(&url).await?;
    let ids = create_conversations(&app.client, args.conversations).await?;
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
    app.stop.cancel();

    // The service: SendMessage over gRPC on loopback, to every replica, each over its own
    // connections.
    let url = fresh_database("bench_svc").await?;
    let mut replicas = Vec::new();
    for _ in 0..args.replicas {
        replicas.push(start(&url).await?);
    }
    let ids = create_conversations(&replicas[0].client, args.conversations).await?;
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let senders = Arc::new(senders(&addrs, args.clients, args.connections.into())?);
    let mut wal = PgConnection::connect(&url).await?;
    let wal_before = wal_lsn(&mut wal).await?;
    let service = closed_loop_sends(
        "conversation-service SendMessage (gRPC)",
        &args,
        &senders,
        &ids,
    )
    .await;
    let wal_bytes = wal_lsn(&mut wal).await? - wal_before;
    let mut reference = reference;
    let mut service = service;
    reference.print();
    service.print();
    // Cluster-wide, so anything else writing meanwhile counts too.
    println!(
        "WAL written during the service phase: {:.0} bytes per message",
        wal_bytes / service.latencies.len().max(1) as f64
    );
    let service_rate = service.rate();
    println!(
        "service / reference throughput: {:.2}x (target >= 1.5x)",
        service_rate / reference.rate()
    );
    if let Some(loaded) = &args.loaded_database_url {
        match loaded_sends(&args, loaded).await {
            Ok(rate) => println!(
                "SendMessage on the loaded database / on a fresh one: {:.2}",
                rate / service_rate
            ),
            Err(error) => println!("loaded database: {error}"),
        }
    }
    if let Err(error) = edits_and_deletions(&args, &senders, &ids).await {
        println!("edits and deletions: {error}");
    }

    // Delivery: one message at a time on a quiet conversation, timed until a stream of
    // the other participant receives it, on the same replica and on a second replica
    // (its own LISTEN connection) against the same database.
    println!("delivery, one message at a time (commit latency is the floor):");
    if replicas.len() < 2 {
        replicas.push(start(&url).await?);
    }
    let mut client = replicas[0].client.clone();
    for (label, mut stream_client) in [
        ("same replica", replicas[0].client.clone()),
        ("other replica", replicas[1].client.clone()),
    ] {
        let id = ids[1].to_string();
        let (replies, deliveries, elapsed) =
            measure_delivery(&mut client, &mut stream_client, &id, args.deliveries).await?;
        println!("  stream on the {label}:");
        print_delivery(replies, deliveries, elapsed);
    }

    let loaded = delivery_under_load(&args, (&replicas[0], &replicas[1]), &senders, &ids).await;
    if let Err(error) = event_feed(&args, &replicas[1], &senders, &ids).await {
        println!("event feed: {error}");
    }
    for replica in &replicas {
        replica.stop.cancel();
    }
    if let Some(bin) = &args.service_bin
        && let Err(error) = own_process(&args, bin).await
    {
        println!("own process: {error}");
    }
    loaded
}

/// SendMessage closed-loop, as in the service phase, by a replica on the loaded
/// database at `url`; returns its rate.
async fn loaded_sends(args: &Args, url: &str) -> anyhow::Result<f64> {
    let replica = start(url).await?;
    let ids = create_conversations(&replica.client, args.conversations).await?;
    let senders = Arc::new(senders(
        &[replica.addr],
        args.clients,
        args.connections.into(),
    )?);
    let mut report = closed_loop_sends(
        "SendMessage on the loaded database (gRPC)",
        args,
        &senders,
        &ids,
    )
    .await;
    replica.stop.cancel();
    report.print();
    Ok(report.rate())
}

/// A conversation-service process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SendMessage against the service as its own process: closed-loop over 4 connections,
/// then over one connection per sender, each with the CPU time per message of the
/// service and of PostgreSQL.
async fn own_process(args: &Args, bin: &PathBuf) -> anyhow::Result<()> {
    let url = fresh_database("bench_svc").await?;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let process = Process(
        Command::new(bin)
            .args(["--listen", &addr.to_string(), "--database-url", &url])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let pid = process.0.id().to_string();
    let client = connect(addr)?;
    let started = Instant::now();
    let ids = loop {
        match create_conversations(&client, args.conversations).await {
            Ok(ids) => break ids,
            Err(error) if started.elapsed() > Duration::from_secs(30) => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    println!(
        "own process: the service as its own OS process, {} senders:",
        args.clients
    );
    for (name, connections) in [
        ("SendMessage, own process, 4 connections", 4),
        ("SendMessage, own process, 1 connection each", args.clients),
    ] {
        let senders = Arc::new(senders(&[addr], args.clients, connections)?);
        let phase = closed_loop_sends(name, args, &senders, &ids);
        cpu_per_call(&pid, ("message", "senders"), connections, phase).await;
    }
    stack_floor(args, addr, &pid).await?;
    drop(process);
    Ok(())
}

/// The same callers and connections calling `grpc.health.v1.Health/Check` on the same
/// process: what a call costs the HTTP/2 and gRPC stack (and the kernel's loopback) with
/// nothing behind it, on both sides, so the service's CPU per message splits into that
/// floor and its own work.
async fn stack_floor(args: &Args, addr: SocketAddr, pid: &str) -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    for (name, connections) in [
        ("Health/Check (floor), own process, 4 connections", 4),
        (
            "Health/Check (floor), own process, 1 connection each",
            args.clients,
        ),
    ] {
        let clients = (0..connections)
            .map(|_| channel(addr).map(HealthClient::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let phase = drive(name, args.clients, args.seconds, move |c, _| {
            let mut client = clients[c % clients.len()].clone();
            async move {
                client.check(HealthCheckRequest::default()).await?;
                Ok(())
            }
        });
        cpu_per_call(pid, ("call", "callers"), connections, phase).await;
    }
    Ok(())
}

/// Runs `phase` (closed-loop calls on the service process `pid`) and prints its report,
/// then the CPU time each call cost the service, all PostgreSQL processes and this process
/// (the callers), read from /proc, naming a call and the callers as `(call, callers)` say.
async fn cpu_per_call(
    pid: &str,
    (call, callers): (&str, &str),
    connections: usize,
    phase: impl Future<Output = Report>,
) {
    let seconds = || {
        [
            cpu::process_seconds(pid),
            cpu::postgres_seconds(),
            cpu::process_seconds("self"),
        ]
    };
    let before = seconds();
    let mut report = phase.await;
    let after = seconds();
    report.print();
    let per_call = 1e6 / report.latencies.len().max(1) as f64;
    let [service, postgres, here] = std::array::from_fn(|i| (after[i] - before[i]) * per_call);
    println!(
        "  CPU per {call} ({connections} connections): service {service:.1} us, \
         PostgreSQL {postgres:.1} us, {callers} {here:.1} us"
    );
}

/// EditMessage and DeleteMessage, each closed-loop for `--seconds` by the senders (one
/// conversation each, as in the service phase). Edits rewrite one message of the
/// sender's; each deletion takes a message the sender sent before the phase (untimed).
async fn edits_and_deletions(
    args: &Args,
    senders: &Arc<Vec<Client>>,
    ids: &[Uuid],
) -> anyhow::Result<()> {
    let body = "y".repeat(100);
    // A message per sender to edit, and a stock per sender to delete: more than one
    // sender's share of a phase at 6,400 deletions a second (a sender that runs out
    // stops, and says so).
    let stock = 100 * usize::try_from(args.seconds).unwrap_or(10) + 100;
    let mut targets = Vec::with_capacity(args.clients);
    let mut tasks = JoinSet::new();
    for c in 0..args.clients {
        let mut client = senders[c].clone();
        let id = ids[c % ids.len()].to_string();
        let body = body.clone();
        tasks.spawn(async move {
            let mut sent = Vec::with_capacity(stock + 1);
            for _ in 0..=stock {
                let reply = client
                    .send_message(v1::SendMessageRequest {
                        conversation_id: id.clone(),
                        sender: Some(provider()),
                        body: body.clone(),
                        client_message_id: String::new(),
                        attachments: Vec::new(),
                    })
                    .await?
                    .into_inner();
                let message = reply.message.ok_or_else(|| anyhow::anyhow!("no message"))?;
                sent.push(message.message_id);
            }
            anyhow::Ok((c, id, sent))
        });
    }
    while let Some(done) = tasks.join_next().await {
        targets.push(done??);
    }
    targets.sort_by_key(|(c, ..)| *c);
    let targets = Arc::new(targets);
    let mut edits = {
        let senders = Arc::clone(senders);
        let targets = Arc::clone(&targets);
        drive(
            "EditMessage (gRPC)",
            args.clients,
            args.seconds,
            move |c, i| {
                let mut client = senders[c].clone();
                let (_, id, sent) = &targets[c];
                let request = v1::EditMessageRequest {
                    conversation_id: id.clone(),
                    message_id: sent[0].clone(),
                    editor: Some(provider()),
                    body: format!("edit {i}"),
                    request_id: Uuid::new_v4().to_string(),
                };
                async move {
                    client.edit_message(request).await?;
                    Ok(())
                }
            },
        )
        .await
    };
    let mut deletions = {
        let senders = Arc::clone(senders);
        let targets = Arc::clone(&targets);
        drive(
            "DeleteMessage (gRPC)",
            args.clients,
            args.seconds,
            move |c, i| {
                let mut client = senders[c].clone();
                let (_, id, sent) = &targets[c];
                let message = usize::try_from(i)
                    .ok()
                    .and_then(|i| sent.get(i + 1))
                    .cloned();
                let id = id.clone();
                async move {
                    let message =
                        message.ok_or_else(|| anyhow::anyhow!("out of messages to delete"))?;
                    client
                        .delete_message(v1::DeleteMessageRequest {
                            conversation_id: id,
                            message_id: message,
                            actor: Some(provider()),
                            request_id: Uuid::new_v4().to_string(),
                        })
                        .await?;
                    Ok(())
                }
            },
        )
        .await
    };
    edits.print();
    deletions.print();
    Ok(())
}

/// The event feed: one StreamEvents consumer (message events) on a replica while the
/// senders run closed-loop for `--seconds`; how many events it receives per second and
/// how long after their creation (the commit's start, stamped by PostgreSQL; one clock).
async fn event_feed(
    args: &Args,
    replica: &Replica,
    senders: &Arc<Vec<Client>>,
    ids: &[Uuid],
) -> anyhow::Result<()> {
    use v1::{
        event::Payload, event_service_client::EventServiceClient, stream_events_response::Item,
    };
    let channel = Channel::from_shared(format!("http://{}", replica.addr))?.connect_lazy();
    let mut feed = EventServiceClient::new(channel)
        .stream_events(v1::StreamEventsRequest {
            kinds: vec![v1::EventKind::MessageSent.into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let stop = CancellationToken::new();
    let consumer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut lags = Vec::new();
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => break,
                    next = feed.message() => next,
                };
                let Ok(Some(response)) = next else { break };
                if let Some(Item::Event(event)) = response.item
                    && let Some(Payload::Message(message)) = event.payload
                    && let Some(created) = message.create_time
                {
                    let created = std::time::UNIX_EPOCH
                        + Duration::new(
                            u64::try_from(created.seconds).unwrap_or(0),
                            u32::try_from(created.nanos).unwrap_or(0),
                        );
                    lags.push(created.elapsed().unwrap_or_default());
                }
            }
            lags
        })
    };
    let sends = closed_loop_sends(
        "SendMessage with a StreamEvents consumer",
        args,
        senders,
        ids,
    )
    .await;
    // What was sent has a second to arrive; the rate counts the phase only.
    let elapsed = sends.elapsed;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let lags = consumer.await.unwrap_or_default();
    let mut sends = sends;
    println!("event feed (StreamEvents, message events, one consumer on the other replica):");
    sends.print();
    Report {
        name: "    created -> received on StreamEvents",
        latencies: lags,
        elapsed,
    }
    .print();
    Ok(())
}

/// The senders send 100-byte bodies closed-loop for `--seconds`, sender c on
/// conversation c % `ids`.
async fn closed_loop_sends(
    name: &'static str,
    args: &Args,
    senders: &Arc<Vec<Client>>,
    ids: &[Uuid],
) -> Report {
    let senders = Arc::clone(senders);
    let ids = ids.to_vec();
    let body = "x".repeat(100);
    drive(name, args.clients, args.seconds, move |c, _| {
        let mut client = senders[c].clone();
        let id = ids[c % ids.len()].to_string();
        let body = body.clone();
        async move {
            send(&mut client, id, body).await?;
            Ok(())
        }
    })
    .await
}

/// Prints the two rows of a delivery measurement.
fn print_delivery(replies: Vec<Duration>, deliveries: Vec<Duration>, elapsed: Duration) {
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

/// Delivery latency while `--load-streams` streams split over the two replicas are open
/// and the service carries `--load-fraction` of its saturation in background sends (by
/// `senders`, on `ids`). Saturation is measured first, with the same streams open: the
/// closed-loop rate of the senders while every stream drains what they send.
async fn delivery_under_load(
    args: &Args,
    (a, b): (&Replica, &Replica),
    senders: &Arc<Vec<Client>>,
    ids: &[Uuid],
) -> anyhow::Result<()> {
    anyhow::ensure!(!senders.is_empty(), "no senders");
    // The viewers: both participants of each loaded conversation, then one per idle
    // conversation, alternately on A and on B; the probe's stream is the last one.
    // Their streams have connections of their own, one per replica.
    let on = [a.connect()?, b.connect()?];
    let viewer_on = [provider(), customer()];
    let mut viewers = Vec::new();
    for id in ids {
        let head = head_seq(&a.client, &id.to_string()).await?;
        for (replica, client) in on.iter().enumerate() {
            viewers.push((client.clone(), *id, viewer_on[replica].clone(), head));
        }
    }
    let idle = args.load_streams.saturating_sub(viewers.len() + 1);
    for (i, id) in create_conversations(&a.client, idle)
        .await?
        .into_iter()
        .enumerate()
    {
        viewers.push((on[i % 2].clone(), id, viewer_on[i % 2].clone(), 0));
    }

    // Open them all, each as far as its first event (the snapshot), then drain each in a
    // task of its own until `stop`, counting the messages.
    let stop = CancellationToken::new();
    let received = Arc::new(AtomicU64::new(0));
    let mut drains = JoinSet::new();
    let mut failures = Vec::new();
    let wanted = viewers.len();
    let mut opened = futures::stream::iter(viewers)
        .map(|(client, id, viewer, head)| async move {
            load::open_stream(
                client,
                id.to_string(),
                viewer,
                head,
                Duration::from_secs(10),
            )
            .await
        })
        .buffer_unordered(32);
    while let Some(stream) = opened.next().await {
        match stream {
            Ok(stream) => {
                drains.spawn(drain(stream, stop.clone(), Arc::clone(&received)));
            }
            Err(error) => failures.push(format!("open: {error}")),
        }
    }
    drop(opened);
    let open = drains.len();

    let probe_id = create_conversations(&a.client, 1).await?[0].to_string();

    // Saturation with these streams open.
    let mut saturated = {
        let senders = Arc::clone(senders);
        let ids = ids.to_vec();
        drive(
            "  saturation, these streams open (closed loop)",
            senders.len(),
            args.seconds,
            move |c, _| {
                let mut client = senders[c].clone();
                let id = ids[c % ids.len()].to_string();
                async move {
                    send(&mut client, id, "x".repeat(100)).await?;
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

    // The background: each sender sends on its conversation every clients/rate seconds,
    // the senders' schedules staggered over one period. A send is not awaited before the
    // next one is due (open loop), so slow replies do not lower the offered rate.
    let clients = senders.len();
    let period = Duration::from_secs_f64(clients as f64 / rate);
    let load_stop = CancellationToken::new();
    let mut load = JoinSet::new();
    let load_started = Instant::now();
    for c in 0..clients {
        let (client, id) = (senders[c].clone(), ids[c % ids.len()].to_string());
        let first = tokio::time::Instant::now() + period.mul_f64(c as f64 / clients as f64);
        load.spawn(load::paced_sender(
            client,
            id,
            provider(),
            (first, period),
            load_stop.clone(),
        ));
    }

    // The probes, after a second for the load to settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probe = measure_delivery(
        &mut a.client.clone(),
        &mut b.client.clone(),
        &probe_id,
        args.deliveries,
    )
    .await;
    load_stop.cancel();
    let load_elapsed = load_started.elapsed();
    let (background, send_errors) = load::join_paced(&mut load).await?;

    // Every message sent reaches its conversation's two viewers; wait for the last ones,
    // then close the streams.
    let expected = 2 * (sent_at_saturation + background.len() as u64);
    load::await_deliveries(&received, expected).await;
    stop.cancel();
    while let Some(drained) = drains.join_next().await {
        if let Some(error) = drained? {
            failures.push(error);
        }
    }

    let (replies, deliveries, elapsed) = probe?;
    let achieved = background.len() as f64 / load_elapsed.as_secs_f64();
    println!(
        "delivery under load: {} streams over 2 replicas, background SendMessage paced at {:.0} msg/s \
         ({:.0}% of saturation with these streams, {saturation:.0} msg/s); probes one at a time, \
         sent on replica A, stream on replica B:",
        wanted + 1,
        rate,
        args.load_fraction * 100.0,
    );
    print_delivery(replies, deliveries, elapsed);
    saturated.print();
    Report {
        name: "  background SendMessage, paced (open loop)",
        latencies: background,
        elapsed: load_elapsed,
    }
    .print();
    println!(
        "  background achieved {achieved:.0} msg/s of {rate:.0} offered ({clients} clients, one send each every {:.1} ms), \
         {} send errors; streams open {} of {} (incl. the probe's), stream failures {}; \
         viewers got {} of {expected} messages",
        period.as_secs_f64() * 1000.0,
        send_errors.len(),
        open + 1,
        wanted + 1,
        failures.len(),
        received.load(Ordering::Relaxed),
    );
    for error in send_errors.iter().chain(&failures).take(5) {
        println!("    e.g. {error}");
    }
    Ok(())
}

/// Reads `stream` until `stop`, counting its messages into `received`. A stream that ends
/// or fails before is returned as a failure.
async fn drain(
    mut stream: Streaming<v1::StreamConversationResponse>,
    stop: CancellationToken,
    received: Arc<AtomicU64>,
) -> Option<String> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            event = stream.message() => match event {
                Ok(Some(v1::StreamConversationResponse { event: Some(Event::Message(_)), .. })) => {
                    received.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(_)) => {}
                Ok(None) => return Some("stream ended".into()),
                Err(status) => return Some(format!("stream failed: {status}")),
            },
        }
    }
}

/// Sends `body` on `id` as its provider; returns the message's seq.
async fn send(client: &mut Client, id: String, body: String) -> anyhow::Result<i64> {
    load::send(client, id, provider(), body).await
}

async fn head_seq(client: &Client, id: &str) -> anyhow::Result<i64> {
    Ok(client
        .clone()
        .get_conversation(v1::GetConversationRequest {
            conversation_id: id.to_owned(),
            viewer: None,
        })
        .await?
        .into_inner()
        .conversation
        .map_or(0, |c| c.head_seq))
}

/// Sends `n` messages one by one on `sender`, each awaited on a stream held on `receiver`.
async fn measure_delivery(
    sender: &mut Client,
    receiver: &mut Client,
    id: &str,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, Duration)> {
    // Start from the head: no replay to wait through.
    let head = head_seq(sender, id).await?;
    let mut stream = receiver
        .stream_conversation(v1::StreamConversationRequest {
            conversation_id: id.to_owned(),
            viewer: Some(customer()),
            after_seq: head,
            after_change: None,
        })
        .await?
        .into_inner();
    let started = Instant::now();
    let probes = load::probe_deliveries(sender, provider(), (id, &mut stream), n).await?;
    if let Some(error) = probes.errors.first() {
        anyhow::bail!("{error}");
    }
    Ok((probes.replies, probes.deliveries, started.elapsed()))
}

/// A replica of the service running in this process.
struct Replica {
    stop: CancellationToken,
    addr: SocketAddr,
    /// A client on a connection of its own (creating conversations, probes).
    client: Client,
}

impl Replica {
    /// A client on a new connection to this replica.
    fn connect(&self) -> anyhow::Result<Client> {
        connect(self.addr)
    }
}

/// A client on a new connection (a `Channel` of its own is one HTTP/2 connection).
/// A channel to `addr` that connects on its first call.
fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?.connect_lazy())
}

fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
    Ok(ConversationServiceClient::new(channel(addr)?))
}

async fn start(url: &str) -> anyhow::Result<Replica> {
    let config = Config::try_parse_from([
        "conversation-service",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        url,
    ])?;
    let app = Application::build(config).await?;
    let addr = app.local_addr();
    let stop = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(Replica {
        stop,
        addr,
        client: connect(addr)?,
    })
}

/// The server's current WAL position, in bytes.
async fn wal_lsn(conn: &mut PgConnection) -> anyhow::Result<f64> {
    Ok(
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8")
            .fetch_one(conn)
            .await?,
    )
}

/// The senders' clients: client c on replica c % replicas, over that replica's
/// connection (c / replicas) % connections.
fn senders(
    replicas: &[SocketAddr],
    clients: usize,
    connections: usize,
) -> anyhow::Result<Vec<Client>> {
    let mut channels = Vec::with_capacity(replicas.len());
    for &replica in replicas {
        channels.push(
            (0..connections)
                .map(|_| connect(replica))
                .collect::<anyhow::Result<Vec<_>>>()?,
        );
    }
    Ok((0..clients)
        .map(|c| channels[c % replicas.len()][(c / replicas.len()) % connections].clone())
        .collect())
}

/// The session every benchmark conversation is opened for (its anonymous viewer's proof).
const BENCH_SESSION: &str = "0b6d1c2e-5d0a-4c1e-9d7f-2a9f3c1e8b11";

/// The provider of every benchmark conversation.
fn provider() -> v1::Participant {
    v1::Participant::provider("bench")
}

/// The anonymous customer of every benchmark conversation.
fn customer() -> v1::Participant {
    v1::Participant::anonymous(BENCH_SESSION)
}

/// Creates `n` conversations, 16 at a time.
async fn create_conversations(client: &Client, n: usize) -> anyhow::Result<Vec<Uuid>> {
    futures::stream::iter(0..n)
        .map(|_| {
            let mut client = client.clone();
            async move {
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
                Ok(Uuid::parse_str(&id)?)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<anyhow::Result<Uuid>>>()
        .await
        .into_iter()
        .collect()
}
