//! Load for the benchmarks that measure delivery under load: closed-loop and paced
//! (open-loop) SendMessage senders, one-at-a-time delivery probes, and the latency
//! report they print. The same procedure as `examples/bench.rs`'s delivery under load.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chat_proto::v1::{
    self, conversation_service_client::ConversationServiceClient,
    stream_conversation_response::Event,
};
use tokio::{task::JoinSet, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::{Streaming, transport::Channel};

pub type Client = ConversationServiceClient<Channel>;

/// Latencies of the calls of one phase.
pub struct Report {
    pub name: &'static str,
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl Report {
    #[allow(clippy::cast_precision_loss)]
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at `p` (0..=1), in milliseconds; sorts the latencies.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n.max(1)) - 1;
        self.latencies
            .get(i)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }

    pub fn print(&mut self) {
        let (p50, p90, p99) = (
            self.percentile_ms(0.50),
            self.percentile_ms(0.90),
            self.percentile_ms(0.99),
        );
        println!(
            "{:<44} {:>9.0} msg/s   p50 {p50:>7.2} ms   p90 {p90:>7.2} ms   p99 {p99:>7.2} ms   (n={})",
            self.name,
            self.rate(),
            self.latencies.len(),
        );
    }
}

/// Runs `clients` loops of `op(client, iteration)` for `seconds`, timing each call.
pub async fn drive<F, Fut>(name: &'static str, clients: usize, seconds: u64, op: F) -> Report
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let op = Arc::clone(&op);
        tasks.spawn(async move {
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
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.unwrap_or_default());
    }
    Report {
        name,
        latencies,
        elapsed: started.elapsed(),
    }
}

/// Sends `body` on `id` as `sender`; returns the message's seq.
pub async fn send(
    client: &mut Client,
    id: String,
    sender: v1::Participant,
    body: String,
) -> anyhow::Result<i64> {
    Ok(client
        .send_message(v1::SendMessageRequest {
            conversation_id: id,
            sender: Some(sender),
            body,
            client_message_id: String::new(),
            attachments: Vec::new(),
        })
        .await?
        .into_inner()
        .message
        .map_or(0, |m| m.seq))
}

/// One paced sender: a 100-byte message on `id` every `period` from `first` until `stop`,
/// each in a task of its own, so slow replies do not lower the offered rate. Returns the
/// latencies of the sends that succeeded and the errors.
pub async fn paced_sender(
    client: Client,
    id: String,
    sender: v1::Participant,
    (first, period): (tokio::time::Instant, Duration),
    stop: CancellationToken,
) -> (Vec<Duration>, Vec<String>) {
    let mut ticks = tokio::time::interval_at(first, period);
    // A late tick (a busy runtime) is made up at once: the offered rate holds.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let body = "x".repeat(100);
    let mut in_flight = JoinSet::new();
    let (mut latencies, mut errors) = (Vec::new(), Vec::new());
    let mut record = |done: Result<Result<Duration, String>, tokio::task::JoinError>| match done {
        Ok(Ok(latency)) => latencies.push(latency),
        Ok(Err(error)) => errors.push(error),
        Err(error) => errors.push(error.to_string()),
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {
                let (mut client, id, sender, body) =
                    (client.clone(), id.clone(), sender.clone(), body.clone());
                in_flight.spawn(async move {
                    let t = Instant::now();
                    match send(&mut client, id, sender, body).await {
                        Ok(_) => Ok(t.elapsed()),
                        Err(error) => Err(format!("background send: {error}")),
                    }
                });
            }
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => record(done),
        }
    }
    while let Some(done) = in_flight.join_next().await {
        record(done);
    }
    (latencies, errors)
}

/// Waits for every [`paced_sender`] of `senders` (after their `stop`): all their
/// latencies, and all their errors.
pub async fn join_paced(
    senders: &mut JoinSet<(Vec<Duration>, Vec<String>)>,
) -> anyhow::Result<(Vec<Duration>, Vec<String>)> {
    let (mut latencies, mut errors) = (Vec::new(), Vec::new());
    while let Some(sender) = senders.join_next().await {
        let (sent, failed) = sender?;
        latencies.extend(sent);
        errors.extend(failed);
    }
    Ok((latencies, errors))
}

/// Waits until `received` reaches `expected`, at most 10 s: the last deliveries of a
/// load are still on their way when its senders stop.
pub async fn await_deliveries(received: &AtomicU64, expected: u64) {
    let waited = Instant::now();
    while received.load(Ordering::Relaxed) < expected && waited.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Latencies of probe messages, and the sends that failed.
pub struct Probes {
    pub replies: Vec<Duration>,
    pub deliveries: Vec<Duration>,
    pub errors: Vec<String>,
}

/// Sends `n` messages one by one on `id` as `sender`, each timed until `stream` (a stream
/// of `id` that has delivered everything before) receives it. A send that fails is
/// counted and the next one tried; a stream that fails ends the probes.
pub async fn probe_deliveries(
    client: &mut Client,
    sender: v1::Participant,
    (id, stream): (&str, &mut Streaming<v1::StreamConversationResponse>),
    n: usize,
) -> anyhow::Result<Probes> {
    let (mut replies, mut deliveries) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut errors = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let sent = match send(client, id.to_owned(), sender.clone(), "ping".into()).await {
            Ok(seq) => seq,
            Err(error) => {
                errors.push(format!("probe send: {error}"));
                continue;
            }
        };
        replies.push(t.elapsed());
        loop {
            let Some(event) = stream.message().await? else {
                anyhow::bail!("the probe's stream ended")
            };
            if let Some(Event::Message(m)) = event.event
                && m.seq == sent
            {
                break;
            }
        }
        deliveries.push(t.elapsed());
    }
    Ok(Probes {
        replies,
        deliveries,
        errors,
    })
}

/// Opens a stream of `id` for `viewer` after `after_seq` and reads its first event (the
/// snapshot), so the service has finished opening it; gives up after `timeout`.
pub async fn open_stream(
    mut client: Client,
    id: String,
    viewer: v1::Participant,
    after_seq: i64,
    timeout: Duration,
) -> anyhow::Result<Streaming<v1::StreamConversationResponse>> {
    let open = async {
        let mut stream = client
            .stream_conversation(v1::StreamConversationRequest {
                conversation_id: id,
                viewer: Some(viewer),
                after_seq,
                after_change: None,
            })
            .await?
            .into_inner();
        match stream.message().await? {
            Some(_) => Ok(stream),
            None => anyhow::bail!("stream ended before its first event"),
        }
    };
    tokio::time::timeout(timeout, open).await?
}
