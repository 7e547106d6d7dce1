//! Latency of the inbox reads through the service, on a database loaded by
//! `scripts/load-big.sh`: GetUnreadSummary, ListConversations (first and 40th page, with
//! and without the status filter, the burst provider included), ListMessages' newest
//! page, SearchMessages. One replica in this process; each read is called `--calls` times
//! one after another (after 10 calls not counted), and its p50/p99 printed.
//!
//! cargo run --release -p conversation-service --example inbox_reads -- \
//!     --database-url postgres://postgres@127.0.0.1:5432/chat_big [--calls 300]

use std::time::{Duration, Instant};

use chat_proto::v1::{self, conversation_service_client::ConversationServiceClient};
use clap::Parser;
use conversation_service::{config::Config, startup::Application};
use tonic::transport::Channel;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
struct Args {
    /// The loaded database.
    #[arg(long)]
    database_url: String,
    /// Calls per read.
    #[arg(long, default_value_t = 300)]
    calls: usize,
}

type Client = ConversationServiceClient<Channel>;

/// Calls before each read's timed ones: the service's pool opens its connections on first
/// use, and a connection's first statements load PostgreSQL's catalog caches, which a
/// service in steady state has done long before.
const WARMUP: usize = 10;

fn provider(id: &str) -> Option<v1::Participant> {
    Some(v1::Participant {
        role: v1::Role::Provider.into(),
        id: id.into(),
        ..Default::default()
    })
}

fn list(id: &str, status: v1::ConversationStatus, token: String) -> v1::ListConversationsRequest {
    v1::ListConversationsRequest {
        participant: provider(id),
        status: status.into(),
        page_size: 50,
        page_token: token,
        ..Default::default()
    }
}

/// The token of the 40th page of 50 of `request`'s list, if it has one.
async fn fortieth(
    client: &mut Client,
    request: &v1::ListConversationsRequest,
) -> anyhow::Result<Option<String>> {
    let mut token = String::new();
    for _ in 0..39 {
        token = client
            .list_conversations(v1::ListConversationsRequest {
                page_token: token,
                ..request.clone()
            })
            .await?
            .into_inner()
            .next_page_token;
        if token.is_empty() {
            return Ok(None);
        }
    }
    Ok(Some(token))
}

/// Times `request`, the same page each time.
async fn measure_list(
    name: &str,
    calls: usize,
    client: &Client,
    request: v1::ListConversationsRequest,
) -> anyhow::Result<()> {
    measure(name, calls, || {
        let (mut c, r) = (client.clone(), request.clone());
        async move { c.list_conversations(r).await.map(drop) }
    })
    .await
}

/// Calls `call` `calls` times after [`WARMUP`] calls that are not counted; prints p50 and
/// p99.
async fn measure<F, Fut>(name: &str, calls: usize, mut call: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    for _ in 0..WARMUP {
        call().await?;
    }
    let mut times: Vec<Duration> = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call().await?;
        times.push(started.elapsed());
    }
    times.sort();
    let at = |q: f64| {
        let index = ((times.len() as f64 - 1.0) * q).round() as usize;
        times[index].as_secs_f64() * 1000.0
    };
    println!(
        "{name:<58} p50 {:>7.2} ms   p99 {:>7.2} ms   (n={calls})",
        at(0.5),
        at(0.99)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::try_parse_from([
        "conversation-service",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &args.database_url,
    ])?;
    let app = Application::build(config).await?;
    let addr = app.local_addr();
    let stop = app.shutdown_token();
    let served = tokio::spawn(app.run_until_stopped());
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let client = ConversationServiceClient::new(channel);
    let n = args.calls;
    let any = v1::ConversationStatus::Unspecified;
    let active = v1::ConversationStatus::Active;

    for owner in ["prov-burst", "prov-7"] {
        let c = client.clone();
        measure(&format!("GetUnreadSummary {owner}"), n, || {
            let mut c = c.clone();
            async move {
                c.get_unread_summary(v1::GetUnreadSummaryRequest {
                    participant: provider(owner),
                })
                .await
                .map(drop)
            }
        })
        .await?;
    }
    let month_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        .saturating_sub(30 * 86_400);
    for owner in ["prov-burst", "prov-7"] {
        let base = list(owner, any, String::new());
        let cases = [
            ("no filter", base.clone()),
            ("status ACTIVE", list(owner, active, String::new())),
            (
                "unread_only",
                v1::ListConversationsRequest {
                    unread_only: true,
                    ..base.clone()
                },
            ),
            (
                "customer_query Lovelace",
                v1::ListConversationsRequest {
                    customer_query: "Lovelace".into(),
                    ..base.clone()
                },
            ),
            (
                "customer_query customer1234",
                v1::ListConversationsRequest {
                    customer_query: "customer1234".into(),
                    ..base.clone()
                },
            ),
            (
                // One phone in the whole database, none of prov-burst's, while `000` is
                // in a third of prov-burst's phones.
                "customer_query 00000001",
                v1::ListConversationsRequest {
                    customer_query: "00000001".into(),
                    ..base.clone()
                },
            ),
            (
                "active_after 30 days ago",
                v1::ListConversationsRequest {
                    active_after: Some(prost_types::Timestamp {
                        seconds: i64::try_from(month_ago)?,
                        nanos: 0,
                    }),
                    ..base.clone()
                },
            ),
        ];
        for (name, request) in cases {
            let label = |which: &str| format!("ListConversations {owner} {which} page, {name}");
            measure_list(&label("first"), n, &client, request.clone()).await?;
            if let Some(token) = fortieth(&mut client.clone(), &request).await? {
                let page = v1::ListConversationsRequest {
                    page_token: token,
                    ..request
                };
                measure_list(&label("40th"), n, &client, page).await?;
            }
        }
    }
    let newest = client
        .clone()
        .list_conversations(list("prov-burst", any, String::new()))
        .await?
        .into_inner()
        .conversations;
    let conversation_id = newest
        .first()
        .map(|c| c.conversation_id.clone())
        .unwrap_or_default();
    let c = client.clone();
    measure("ListMessages newest page (50)", n, || {
        let (mut c, id) = (c.clone(), conversation_id.clone());
        async move {
            c.list_messages(v1::ListMessagesRequest {
                conversation_id: id,
                viewer: provider("prov-burst"),
                direction: v1::Direction::Backward.into(),
                page_size: 50,
                ..Default::default()
            })
            .await
            .map(drop)
        }
    })
    .await?;
    // The loader's bodies draw from a few words each, so "boiler" is a common word (about
    // one message in eight) and "dripping again" a phrase; the whole of prov-burst's
    // messages and one conversation's.
    for (query, scope) in [
        ("boiler", String::new()),
        ("\"dripping again\"", String::new()),
        ("invoice paid", String::new()),
        ("boiler", conversation_id.clone()),
    ] {
        let c = client.clone();
        let name = if scope.is_empty() {
            format!("SearchMessages prov-burst {query}")
        } else {
            format!("SearchMessages one conversation {query}")
        };
        measure(&name, n, || {
            let (mut c, scope) = (c.clone(), scope.clone());
            async move {
                c.search_messages(v1::SearchMessagesRequest {
                    participant: provider("prov-burst"),
                    query: query.into(),
                    conversation_id: scope,
                    page_size: 20,
                    ..Default::default()
                })
                .await
                .map(drop)
            }
        })
        .await?;
    }
    stop.cancel();
    served.await??;
    Ok(())
}
