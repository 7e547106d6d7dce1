//! The event feed on this replica: the sequencer task that closes windows (after notices,
//! paced, and on a timer in case one was missed), pruning past the retention, and the
//! task of each StreamEvents stream.
//!
//! A feed stream always reads pages from the tables and waits for this replica's
//! sequencer to report a newer window: it holds one page at most, so a slow consumer
//! costs bounded memory and simply reads the tables from where it is.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Hub, streams::Item};
use crate::{
    domain::{FeedFilter, FeedPosition},
    error::Error,
    store::{FeedEvent, Store},
};

/// How often the sequencer runs without a notice: what a missed notice can delay.
const SEQUENCE_FALLBACK: Duration = Duration::from_secs(1);
/// The least time between two windows of this replica. Notices under load arrive every
/// millisecond or so; closing a window for each would cost a transaction per batch of
/// sends and a feed row per millisecond. This bounds both, at the price of this much
/// extra feed latency (docs/design.md, "Event feed").
const SEQUENCE_PACE: Duration = Duration::from_millis(25);
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(500);
/// Events read per page by a stream.
const STREAM_PAGE: i64 = 256;

/// What the feed needs to run on this replica.
#[derive(Clone)]
pub struct FeedContext {
    pub store: Store,
    /// The newest position this replica's sequencer saw.
    pub head: watch::Receiver<FeedPosition>,
    pub heartbeat: Duration,
    pub shutdown: CancellationToken,
}

/// Runs until `stop`: closes a window after notices (coalesced, at most one per
/// [`SEQUENCE_PACE`]), and at least every [`SEQUENCE_FALLBACK`]; prunes windows older
/// than `retention` in batches.
pub async fn run_sequencer(
    store: Store,
    hub: Arc<Hub>,
    head: watch::Sender<FeedPosition>,
    retention: Duration,
    stop: CancellationToken,
) {
    // Often enough that an expired event outlives its retention by a small fraction.
    let prune_every = (retention / 8).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut next_prune = tokio::time::Instant::now();
    loop {
        let started = tokio::time::Instant::now();
        let mut busy = false;
        match store.sequence_feed().await {
            Ok((position, skipped)) => {
                busy = skipped;
                head.send_if_modified(|known| {
                    let newer = position > *known;
                    if newer {
                        *known = position;
                    }
                    newer
                });
            }
            Err(Error::Unavailable(_)) => {}
            Err(error) => tracing::error!(%error, "cannot sequence the event feed"),
        }
        if tokio::time::Instant::now() >= next_prune {
            prune(&store, retention).await;
            next_prune = tokio::time::Instant::now() + prune_every;
        }
        // Another replica was closing a window: its result is read on the next turn,
        // without waiting for another notice.
        if !busy {
            tokio::select! {
                () = stop.cancelled() => return,
                () = hub.activity().notified() => {}
                () = tokio::time::sleep(SEQUENCE_FALLBACK) => {}
            }
        }
        // Notices that arrive meanwhile coalesce into the one permit `notified` keeps.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(started + SEQUENCE_PACE) => {}
        }
    }
}

/// Sends unread reminders until `stop`: one scan (by whichever replica gets the turn)
/// every quarter of the delay, at least every 5 s.
pub async fn run_reminders(store: Store, delay: Duration, stop: CancellationToken) {
    let every = (delay / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match store.scan_reminders(delay).await {
            Ok(sent) if sent > 0 => tracing::debug!(sent, "unread reminders sent"),
            Ok(_) | Err(Error::Unavailable(_)) => {}
            Err(error) => tracing::error!(%error, "cannot scan unread reminders"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Deletes what is past the retention, a batch at a time, until nothing is.
async fn prune(store: &Store, retention: Duration) {
    loop {
        match store.prune_feed(retention).await {
            Ok(0) => return,
            Ok(deleted) => tracing::debug!(deleted, "pruned feed events"),
            Err(error) => {
                tracing::warn!(%error, "cannot prune the event feed");
                tokio::time::sleep(RETRY_AFTER_ERROR).await;
                return;
            }
        }
    }
}

/// What a feed stream sends.
#[derive(Debug)]
pub enum FeedDelivery {
    Event(Box<FeedEvent>),
    Heartbeat,
}

/// One StreamEvents stream: every event after `after` that `filter` admits, in feed
/// order, then live ones, until the client goes away or the server stops.
pub async fn feed_stream(
    ctx: FeedContext,
    mut after: FeedPosition,
    filter: FeedFilter,
    tx: mpsc::Sender<Item<FeedDelivery>>,
) {
    let mut head = ctx.head.clone();
    loop {
        let page = match ctx
            .store
            .feed_page("after", after, STREAM_PAGE, &filter)
            .await
        {
            Ok(page) => page,
            Err(error) => {
                let _ = tx.send(Box::new(Err(error.into()))).await;
                return;
            }
        };
        for event in page.events {
            if tx
                .send(Box::new(Ok(FeedDelivery::Event(Box::new(event)))))
                .await
                .is_err()
            {
                return;
            }
        }
        after = page.next;
        if page.full {
            continue;
        }
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            () = tx.closed() => return,
            newer = async { head.wait_for(|known| *known > after).await.map(|_| ()) } => {
                if newer.is_err() {
                    // The sequencer stopped: the server is stopping.
                    return;
                }
            }
            () = tokio::time::sleep(ctx.heartbeat) => {
                if tx.send(Box::new(Ok(FeedDelivery::Heartbeat))).await.is_err() {
                    return;
                }
            }
        }
    }
}
