//! The task behind each open stream: replay from the table, then follow wake-ups, and
//! fall back to the table whenever a wake-up was lost (lagging, listener reconnect).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use chat_proto::v1::{
    self, stream_conversation_response::Event as ConversationEvent,
    stream_inbox_response::Event as InboxEvent,
};
use futures::{Stream, StreamExt};
use tokio::{
    sync::{Semaphore, SemaphorePermit, mpsc},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use super::{
    Wake,
    feed::{Feed, Shared},
    hub::Subscription,
};
use crate::{
    domain::{ConversationId, Participant, Role},
    error::Error,
    grpc::convert,
    store::{ConversationRow, InboxCursor, InboxItem, Store},
};

/// Messages read per query while catching up.
const CATCH_UP_PAGE: i64 = 256;
/// Inbox items read per query.
const INBOX_PAGE: i64 = 256;

#[derive(Clone)]
pub struct StreamContext {
    pub store: Store,
    /// Where streams count their reads of the table.
    pub hub: Arc<super::Hub>,
    pub heartbeat: Duration,
    pub shutdown: CancellationToken,
    /// Catch-up reads (after a listener reconnect or a lag) in flight at once, process
    /// wide: thousands of streams resyncing together must leave the pool to unary calls.
    pub catch_up: Arc<Semaphore>,
}

impl StreamContext {
    /// Waits for a catch-up slot (`None` if pacing is closed, which it never is).
    async fn paced(&self) -> Option<SemaphorePermit<'_>> {
        self.catch_up.acquire().await.ok()
    }
}

/// One item between a stream task and its HTTP/2 stream, boxed: the channel allocates
/// its slots 32 at a time whatever its capacity, and an unboxed response (a snapshot
/// holds a whole conversation) would make that about 15 KiB per idle stream.
pub type Item<T> = Box<Result<T, Status>>;

/// What a server stream sends: the items of its task, until the server shuts down; then
/// UNAVAILABLE at once, ahead of anything still buffered, so a client that is behind
/// still learns to resume (it resumes from the last item it got) instead of seeing a
/// clean end after a partial delivery.
pub struct Outbound<T> {
    items: ReceiverStream<Item<T>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    resume_from: &'static str,
    ended: bool,
}

impl<T> Outbound<T> {
    pub fn new(
        items: mpsc::Receiver<Item<T>>,
        shutdown: &CancellationToken,
        resume_from: &'static str,
    ) -> Self {
        Self {
            items: ReceiverStream::new(items),
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
            resume_from,
            ended: false,
        }
    }
}

impl<T> Stream for Outbound<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.shutdown.as_mut().poll(cx).is_ready() {
            self.ended = true;
            let message = format!("server shutting down; resume from {}", self.resume_from);
            return Poll::Ready(Some(Err(Status::unavailable(message))));
        }
        self.items
            .poll_next_unpin(cx)
            .map(|item| item.map(|item| *item))
    }
}

/// Why a stream task stopped early: the client left, or it was told why.
struct Stop;

/// Sends one item, unless the client left or the server is shutting down.
async fn emit<T>(
    out: &mpsc::Sender<Item<T>>,
    item: Result<T, Status>,
    shutdown: &CancellationToken,
) -> Result<(), Stop> {
    tokio::select! {
        sent = out.send(Box::new(item)) => sent.map_err(|_| Stop),
        () = shutdown.cancelled() => Err(Stop),
    }
}

fn heartbeat() -> v1::Heartbeat {
    v1::Heartbeat {
        time: Some(convert::timestamp(chrono::Utc::now())),
    }
}

/// StreamConversation's task. `conversation` was read after `subscription` was taken, so
/// nothing committed in between is missed.
pub async fn conversation_stream(
    ctx: StreamContext,
    mut subscription: Subscription,
    conversation: ConversationRow,
    viewer: Participant,
    after_seq: i64,
    out: mpsc::Sender<Item<v1::StreamConversationResponse>>,
) {
    let mut stream = ConversationStream {
        ctx,
        out,
        id: conversation.id,
        viewer,
        last: after_seq,
        shown: Shown::default(),
    };
    let _ = stream.run(&mut subscription, conversation).await;
}

struct ConversationStream {
    ctx: StreamContext,
    out: mpsc::Sender<Item<v1::StreamConversationResponse>>,
    id: uuid::Uuid,
    viewer: Participant,
    /// Highest seq delivered.
    last: i64,
    shown: Shown,
}

/// The state this stream last showed (snapshot or event). A wake-up only ever moves it
/// forward, so nothing older than a snapshot follows it: wake-ups queued before a resync
/// are dropped, receipts never go back, and a status change is read from the table.
#[derive(Default)]
struct Shown {
    status: i32,
    provider_read: i64,
    customer_read: i64,
}

impl Shown {
    fn of(conversation: &v1::Conversation) -> Self {
        Self {
            status: conversation.status,
            provider_read: conversation.provider_read_seq,
            customer_read: conversation.customer_read_seq,
        }
    }

    fn read_mut(&mut self, role: Role) -> &mut i64 {
        match role {
            Role::Provider => &mut self.provider_read,
            Role::Customer => &mut self.customer_read,
        }
    }
}

impl ConversationStream {
    async fn send(&self, event: ConversationEvent, replayed: bool) -> Result<(), Stop> {
        let response = v1::StreamConversationResponse {
            event: Some(event),
            replayed,
        };
        emit(&self.out, Ok(response), &self.ctx.shutdown).await
    }

    async fn fail(&self, error: Error) -> Stop {
        let _ = emit(&self.out, Err(error.into()), &self.ctx.shutdown).await;
        Stop
    }

    async fn run(
        &mut self,
        subscription: &mut Subscription,
        conversation: ConversationRow,
    ) -> Result<(), Stop> {
        let conversation_now = convert::conversation(&conversation, Some(self.viewer.role()));
        self.shown = Shown::of(&conversation_now);
        let snapshot = v1::ConversationSnapshot {
            conversation: Some(conversation_now),
        };
        self.send(ConversationEvent::Snapshot(snapshot), true)
            .await?;
        // The replay ends at the head the snapshot saw; anything newer woke this
        // subscription (taken before the snapshot) and is delivered live.
        self.deliver_up_to(conversation.head_seq, true).await?;
        let feed = Arc::clone(&subscription.feed);
        let period = self.ctx.heartbeat;
        let mut next_heartbeat = Instant::now() + period;
        loop {
            if subscription.take_lagged() {
                self.resync(subscription).await?;
            }
            let wake = tokio::select! {
                // The UNAVAILABLE that ends the stream comes from `Outbound`.
                () = self.ctx.shutdown.cancelled() => return Err(Stop),
                () = self.out.closed() => return Err(Stop),
                () = tokio::time::sleep_until(next_heartbeat) => {
                    self.send(ConversationEvent::Heartbeat(heartbeat()), false).await?;
                    next_heartbeat = Instant::now() + period;
                    continue;
                }
                wake = subscription.wakes.recv() => wake.ok_or(Stop)?,
            };
            match wake {
                Wake::Messages { head } => self.deliver_live(&feed, head).await?,
                Wake::Read { reader, seq } => {
                    let shown = self.shown.read_mut(reader.role());
                    if seq <= *shown {
                        continue;
                    }
                    *shown = seq;
                    let receipt = v1::ReadReceipt {
                        conversation_id: self.id.to_string(),
                        reader: Some(convert::participant(&reader)),
                        read_seq: seq,
                    };
                    self.send(ConversationEvent::ReadReceipt(receipt), false)
                        .await?;
                }
                Wake::Typing { sender } => {
                    if sender != self.viewer {
                        let typing = v1::Typing {
                            conversation_id: self.id.to_string(),
                            sender: Some(convert::participant(&sender)),
                        };
                        self.send(ConversationEvent::Typing(typing), false).await?;
                    }
                }
                Wake::Status(_) => {
                    // The notice may be older than what this stream showed last (a
                    // snapshot after a resync): the table says what is true now.
                    let status = self.current().await?.status;
                    if status == self.shown.status {
                        continue;
                    }
                    self.shown.status = status;
                    let changed = v1::StatusChanged {
                        conversation_id: self.id.to_string(),
                        status,
                    };
                    self.send(ConversationEvent::StatusChanged(changed), false)
                        .await?;
                }
                Wake::Customer => {
                    let conversation = self.current().await?;
                    self.shown = Shown::of(&conversation);
                    let updated = v1::CustomerUpdated {
                        conversation: Some(conversation),
                    };
                    self.send(ConversationEvent::CustomerUpdated(updated), false)
                        .await?;
                }
                Wake::Resync => self.resync(subscription).await?,
                Wake::InboxTouched => {}
            }
            next_heartbeat = Instant::now() + period;
        }
    }

    /// The conversation as it is now, as the viewer sees it.
    /// The viewer must still be a participant: an anonymous visitor stops being one once
    /// a customer is linked, and its stream ends with PERMISSION_DENIED (CUSTOMER_LINKED).
    async fn current(&self) -> Result<v1::Conversation, Stop> {
        match self
            .ctx
            .store
            .get_conversation(ConversationId(self.id))
            .await
        {
            Ok(conversation) if conversation.admits(&self.viewer) => Ok(convert::conversation(
                &conversation,
                Some(self.viewer.role()),
            )),
            Ok(_) => Err(self.fail(Error::customer_linked()).await),
            Err(error) => Err(self.fail(error).await),
        }
    }

    /// After lost wake-ups: a fresh snapshot (status, customer, read positions), then
    /// every message after the last one delivered.
    async fn resync(&mut self, subscription: &mut Subscription) -> Result<(), Stop> {
        // Whatever was queued so far is covered by the snapshot read below.
        while subscription.wakes.try_recv().is_ok() {}
        subscription.take_lagged();
        let permit = self.ctx.paced().await;
        let conversation = self.current().await?;
        drop(permit);
        self.shown = Shown::of(&conversation);
        let snapshot = v1::ConversationSnapshot {
            conversation: Some(conversation),
        };
        self.send(ConversationEvent::Snapshot(snapshot), true)
            .await?;
        self.deliver_up_to(i64::MAX, true).await
    }

    /// Delivers what a wake-up announced, from the feed shared with the other streams of
    /// this conversation (one read of the table for all of them), or from the table if
    /// this stream is behind the feed.
    async fn deliver_live(&mut self, feed: &Feed, head: i64) -> Result<(), Stop> {
        let reads = self.ctx.hub.reads();
        match feed
            .between(&self.ctx.store, self.id, self.last, head, reads)
            .await
        {
            Ok(Shared::Messages(messages)) => {
                for message in messages {
                    self.last = message.seq;
                    let message = v1::Message::clone(&message);
                    self.send(ConversationEvent::Message(message), false)
                        .await?;
                }
                Ok(())
            }
            Ok(Shared::Behind) => self.deliver_up_to(head, false).await,
            Err(error) => Err(self.fail(error).await),
        }
    }

    /// Delivers stored messages with `last < seq <= head`, a page at a time.
    /// Reads from the table (`replayed`) are paced; the permit is held for the read
    /// only, never while a slow client is sent to.
    async fn deliver_up_to(&mut self, head: i64, replayed: bool) -> Result<(), Stop> {
        while self.last < head {
            let permit = if replayed {
                self.ctx.paced().await
            } else {
                None
            };
            self.ctx.hub.reads().count(false);
            let page = self
                .ctx
                .store
                .messages_between(self.id, self.last, head, CATCH_UP_PAGE)
                .await;
            drop(permit);
            let page = match page {
                Ok(page) => page,
                Err(error) => return Err(self.fail(error).await),
            };
            let full = i64::try_from(page.len()).unwrap_or(i64::MAX) >= CATCH_UP_PAGE;
            for message in page {
                self.last = message.seq;
                self.send(
                    ConversationEvent::Message(convert::message(&message)),
                    replayed,
                )
                .await?;
            }
            if !full {
                break;
            }
        }
        Ok(())
    }
}

/// StreamInbox's task, from `cursor` (taken after `subscription`).
pub async fn inbox_stream(
    ctx: StreamContext,
    mut subscription: Subscription,
    owner: Participant,
    cursor: InboxCursor,
    resumed: bool,
    out: mpsc::Sender<Item<v1::StreamInboxResponse>>,
) {
    let mut stream = InboxStream {
        ctx,
        out,
        owner,
        cursor,
    };
    let _ = stream.run(&mut subscription, resumed).await;
}

struct InboxStream {
    ctx: StreamContext,
    out: mpsc::Sender<Item<v1::StreamInboxResponse>>,
    owner: Participant,
    cursor: InboxCursor,
}

impl InboxStream {
    async fn run(&mut self, subscription: &mut Subscription, resumed: bool) -> Result<(), Stop> {
        if resumed {
            self.deliver(true).await?;
        }
        let period = self.ctx.heartbeat;
        let mut next_heartbeat = Instant::now() + period;
        loop {
            if subscription.take_lagged() {
                self.deliver(true).await?;
            }
            let wake = tokio::select! {
                // The UNAVAILABLE that ends the stream comes from `Outbound`.
                () = self.ctx.shutdown.cancelled() => return Err(Stop),
                () = self.out.closed() => return Err(Stop),
                () = tokio::time::sleep_until(next_heartbeat) => {
                    let response = v1::StreamInboxResponse {
                        event: Some(InboxEvent::Heartbeat(heartbeat())),
                        cursor: self.cursor.encode(),
                        replayed: false,
                    };
                    emit(&self.out, Ok(response), &self.ctx.shutdown).await?;
                    next_heartbeat = Instant::now() + period;
                    continue;
                }
                wake = subscription.wakes.recv() => wake.ok_or(Stop)?,
            };
            // One read of the table answers every wake-up queued so far.
            let mut replayed = wake == Wake::Resync;
            while let Ok(more) = subscription.wakes.try_recv() {
                replayed |= more == Wake::Resync;
            }
            self.deliver(replayed).await?;
            next_heartbeat = Instant::now() + period;
        }
    }

    /// Delivers every window item after the cursor, advancing it item by item.
    /// A cursor in the middle of an older window finishes that window, then reads on up to
    /// the present.
    async fn deliver(&mut self, replayed: bool) -> Result<(), Stop> {
        loop {
            let within = self.cursor.is_within_window();
            let permit = if replayed {
                self.ctx.paced().await
            } else {
                None
            };
            let window = self
                .ctx
                .store
                .inbox_window(&self.owner, &self.cursor, INBOX_PAGE)
                .await;
            drop(permit);
            let window = match window {
                Ok(window) => window,
                Err(error) => {
                    let _ = emit(&self.out, Err(error.into()), &self.ctx.shutdown).await;
                    return Err(Stop);
                }
            };
            let viewer = Some(self.owner.role());
            for (item, cursor) in window.items {
                let event = match item {
                    InboxItem::Created(c) => {
                        InboxEvent::ConversationCreated(v1::ConversationCreated {
                            conversation: Some(convert::conversation(&c, viewer)),
                        })
                    }
                    InboxItem::CustomerUpdated(c) => {
                        InboxEvent::CustomerUpdated(v1::CustomerUpdated {
                            conversation: Some(convert::conversation(&c, viewer)),
                        })
                    }
                    InboxItem::StatusChanged {
                        conversation_id,
                        status,
                    } => InboxEvent::StatusChanged(v1::StatusChanged {
                        conversation_id: conversation_id.to_string(),
                        status: convert::status(status).into(),
                    }),
                    InboxItem::Message(m) => InboxEvent::Message(convert::message(&m)),
                };
                let response = v1::StreamInboxResponse {
                    event: Some(event),
                    cursor: cursor.encode(),
                    replayed,
                };
                emit(&self.out, Ok(response), &self.ctx.shutdown).await?;
                self.cursor = cursor;
            }
            self.cursor = window.next;
            if !window.more && !within {
                return Ok(());
            }
        }
    }
}
