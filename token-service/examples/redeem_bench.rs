//! RedeemToken end to end: token-service and conversation-service started in-process on
//! a fresh SQLite file and a fresh PostgreSQL database, `--callers` concurrent callers each
//! redeeming its own unlimited link again and again (every redemption a new session and a
//! new conversation). A redemption counts only if it came back READY with a conversation.
//!
//! cargo run --release -p token-service --example redeem_bench -- [--seconds 10] [--callers 4,16,64]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chat_common::testing::{
    cpu::process_seconds,
    database::{ADMIN_URL, TestDatabase},
};
use chat_proto::v1::{
    ConversationState, IssueTokenRequest, RedeemTokenRequest,
    token_service_client::TokenServiceClient,
};
use clap::Parser;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

/// The binaries' allocator, so the service measured here is the one that ships.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
struct Args {
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent callers, one phase per value.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
    callers: Vec<usize>,
    /// Serve both services' Prometheus metrics here while it runs (one recorder per
    /// process: conversation-service's endpoint carries token-service's metrics too).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// A token file loaded by `scripts/load-big.sh`: after the phases on a fresh file, the
    /// same phases run on a copy of it (the original is not written).
    #[arg(long)]
    loaded_sqlite: Option<std::path::PathBuf>,
    /// Request ids the callers send: random UUIDs (v4, what AIP-155 callers send) or
    /// time-ordered ones (v7).
    #[arg(long, value_enum, default_value_t = RequestIds::V4)]
    request_ids: RequestIds,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RequestIds {
    V4,
    V7,
}

impl RequestIds {
    fn next(self) -> String {
        match self {
            Self::V4 => Uuid::new_v4(),
            Self::V7 => Uuid::now_v7(),
        }
        .to_string()
    }
}

/// CPU seconds used so far by this process (client and both services) and by the
/// PostgreSQL backends serving `database`: a figure that a loaded machine distorts less
/// than throughput.
async fn cpu_seconds(database: &str) -> (f64, f64) {
    let backends: Vec<i32> = match PgConnection::connect(ADMIN_URL).await {
        Ok(mut admin) => sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
            .bind(database)
            .fetch_all(&mut admin)
            .await
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let postgres = backends
        .iter()
        .map(|pid| process_seconds(&pid.to_string()))
        .sum();
    (process_seconds("self"), postgres)
}

/// conversation-service on the database at `url`; returns its address.
async fn start_conversations(
    url: &str,
    metrics_addr: Option<&str>,
    shutdown: &CancellationToken,
) -> anyhow::Result<String> {
    use conversation_service::{config::Config, startup::Application};
    let mut args = vec![
        "conversation-service",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        url,
    ];
    if let Some(addr) = metrics_addr {
        args.extend(["--metrics-addr", addr]);
    }
    let config = Config::try_parse_from(args)?;
    let app = Application::build(config).await?;
    let addr = format!("http://{}", app.local_addr());
    let token = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        token.cancel();
    });
    Ok(addr)
}

/// token-service on a fresh SQLite file, or on a copy of `loaded`; returns a client.
async fn start_tokens(
    conversations: &str,
    loaded: Option<&std::path::Path>,
    shutdown: &CancellationToken,
) -> anyhow::Result<TokenServiceClient<Channel>> {
    use token_service::{config::Config, startup::Application};
    let dir = std::env::temp_dir().join(format!("redeem-bench-{}", Uuid::new_v4().simple()));
    let db = dir.join("token.db");
    if let Some(loaded) = loaded {
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(loaded, &db)?;
    }
    let db = db.to_str().ok_or_else(|| anyhow::anyhow!("temp path"))?;
    let config = Config::try_parse_from([
        "token-service",
        "--listen",
        "127.0.0.1:0",
        "--database",
        db,
        "--conversation-service",
        conversations,
        "--max-concurrent-requests",
        "4096",
        "--failed-redemptions-limit",
        "0",
    ])?;
    let app = Application::build(config).await?;
    let addr = format!("http://{}", app.local_addr());
    let token = app.shutdown_token();
    tokio::spawn(app.run());
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        token.cancel();
        let _ = std::fs::remove_dir_all(dir);
    });
    let channel = Channel::from_shared(addr)?.connect().await?;
    Ok(TokenServiceClient::new(channel))
}

async fn issue(client: &mut TokenServiceClient<Channel>, provider: &str) -> anyhow::Result<String> {
    Ok(client
        .issue_token(IssueTokenRequest {
            provider_id: provider.into(),
            label: "bench".into(),
            ttl: None,
            max_uses: 0,
        })
        .await?
        .into_inner()
        .secret)
}

async fn redeem(
    client: &mut TokenServiceClient<Channel>,
    provider: &str,
    secret: &str,
    ids: RequestIds,
) -> anyhow::Result<()> {
    let session = client
        .redeem_token(RedeemTokenRequest {
            request_id: ids.next(),
            provider_id: provider.into(),
            secret: secret.into(),
            customer_id: String::new(),
            new_conversation: false,
        })
        .await?
        .into_inner()
        .session
        .ok_or_else(|| anyhow::anyhow!("no session"))?;
    anyhow::ensure!(
        session.conversation_state == ConversationState::Ready as i32
            && !session.conversation_id.is_empty(),
        "redemption answered without its conversation (state {})",
        session.conversation_state
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// One phase per `--callers` value; returns the best rate.
async fn best_phase(
    client: &TokenServiceClient<Channel>,
    database: &str,
    args: &Args,
) -> anyhow::Result<f64> {
    let mut best: f64 = 0.0;
    for &callers in &args.callers {
        let rate = phase(
            client,
            database,
            callers.max(1),
            args.seconds,
            args.request_ids,
        )
        .await?;
        best = best.max(rate);
    }
    Ok(best)
}

/// One phase: `callers` loops for `seconds`; returns redemptions per second.
async fn phase(
    client: &TokenServiceClient<Channel>,
    database: &str,
    callers: usize,
    seconds: u64,
    ids: RequestIds,
) -> anyhow::Result<f64> {
    let mut secrets = Vec::with_capacity(callers);
    for c in 0..callers {
        let provider = format!("bench-{c}");
        secrets.push((
            provider.clone(),
            issue(&mut client.clone(), &provider).await?,
        ));
    }
    let secrets = Arc::new(secrets);
    // Warm up: one redemption per caller (connections, statement caches).
    for (provider, secret) in secrets.iter() {
        redeem(&mut client.clone(), provider, secret, ids).await?;
    }
    let cpu_before = cpu_seconds(database).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(callers);
    for c in 0..callers {
        let mut client = client.clone();
        let secrets = Arc::clone(&secrets);
        tasks.push(tokio::spawn(async move {
            let (provider, secret) = &secrets[c];
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                redeem(&mut client, provider, secret, ids).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let cpu_after = cpu_seconds(database).await;
    latencies.sort_unstable();
    #[allow(clippy::cast_precision_loss)]
    let rate = latencies.len() as f64 / elapsed.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let per_redeem =
        |before: f64, after: f64| (after - before) * 1000.0 / latencies.len().max(1) as f64;
    println!(
        "RedeemToken end to end, {callers:>3} callers      {rate:>9.0} /s   p50 {:>7.2} ms   p90 {:>7.2} ms   p99 {:>7.2} ms   (n={}; CPU ms per redemption: services+client {:.2}, PostgreSQL {:.2})",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        latencies.len(),
        per_redeem(cpu_before.0, cpu_after.0),
        per_redeem(cpu_before.1, cpu_after.1),
    );
    Ok(rate)
}

/// The services' own runtime (`chat_common::runtime`), shared with the callers here.
fn main() -> anyhow::Result<()> {
    chat_common::runtime::build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let shutdown = CancellationToken::new();
    // Dropped (WITH FORCE) when this returns.
    let database = TestDatabase::create("bench_redeem").await;
    let conversations =
        start_conversations(database.url(), args.metrics_addr.as_deref(), &shutdown).await?;
    let client = start_tokens(&conversations, None, &shutdown).await?;
    // Let both services see each other healthy (token-service's first probe).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let best = best_phase(&client, database.name(), &args).await?;
    println!("redeem_per_s={best:.0}");
    if let Some(loaded) = &args.loaded_sqlite {
        println!("on a copy of {}:", loaded.display());
        let client = start_tokens(&conversations, Some(loaded), &shutdown).await?;
        let best_loaded = best_phase(&client, database.name(), &args).await?;
        println!(
            "redeem_loaded_per_s={best_loaded:.0} (loaded / fresh: {:.2})",
            best_loaded / best.max(1.0)
        );
    }
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}
