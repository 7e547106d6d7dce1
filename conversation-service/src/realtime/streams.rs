//! The logic behind each open stream: replay from the table, then follow wake-ups, and
//! fall back to the table whenever a wake-up was lost (lagging, listener reconnect). It
//! runs inside the stream's response body (see [`Out`]).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::{
    sync::{Semaphore, SemaphorePermit},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use super::{
    feed::{Feed, Shared},
    hub::{Hub, Subscription, Wake},
};
use crate::{
    domain::{ConversationId, Participant, Role, Status as ConversationStatus},
    error::Error,
    store::{
        ChangeRow, ConversationRow, Erasure, InboxCursor, InboxItem, MessageRow, Store,
        UnreadSummary, expired_after,
    },
};

/// Messages read per query while catching up.
const CATCH_UP_PAGE: i64 = 256;
/// Inbox items read per query.
const INBOX_PAGE: i64 = 256;
/// The least time between two `UnreadSummaryChanged` of one inbox stream: a burst of
/// sends reads `unread_counts` a few times a second per stream, not once per message.
pub const SUMMARY_EVERY: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct StreamContext {
    pub store: Store,
    /// Where streams count their reads of the table.
    pub hub: Arc<Hub>,
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

/// One item between a stream's logic and its HTTP/2 stream, boxed: a channel allocates
/// its slots 32 at a time whatever its capacity, and an unboxed item (a snapshot holds a
/// whole conversation) would make that about 15 KiB per idle stream; a future holding one
/// would be as large as the largest. An error is made a status in the logic, so an
/// internal one is logged inside the RPC's span.
pub type Item<T> = Box<Result<T, Status>>;

/// Where a stream's logic hands its items to the response body, one at a time. The logic
/// is no task of its own: the body polls it whenever the client can take more
/// (`grpc::outbound`), so an open stream costs neither a task nor a queue, and a stream
/// whose client is behind waits in [`Out::put`] with its state as it is.
pub struct Out<T>(Arc<Mutex<Option<Item<T>>>>);

impl<T> Out<T> {
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }

    /// The item handed over, if any (the body's side).
    pub fn take(&self) -> Option<Item<T>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Hands `item` over; ready once the body has taken it.
    fn put(&self, item: Item<T>) -> Put<'_, T> {
        Put {
            out: self,
            item: Some(item),
        }
    }
}

impl<T> Default for Out<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Out<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

/// [`Out::put`]'s future. It needs no waker: only the body polls the logic, and the body
/// takes the item as soon as the logic returns, then polls it again when it wants more.
struct Put<'a, T> {
    out: &'a Out<T>,
    item: Option<Item<T>>,
}

impl<T> Future for Put<'_, T> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        let mut slot = self.out.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return Poll::Pending;
        }
        match self.item.take() {
            Some(item) => {
                *slot = Some(item);
                Poll::Pending
            }
            None => Poll::Ready(()),
        }
    }
}

/// What a conversation stream delivers, as domain values: the gRPC side turns each into
/// its response as it sends it.
#[derive(Debug)]
pub struct ConversationDelivery {
    pub event: ConversationEvent,
    /// Read from the table (a replay or a resync) rather than announced live.
    pub replayed: bool,
}

#[derive(Debug)]
pub enum ConversationEvent {
    Snapshot(Viewed),
    /// Shared by every stream of the conversation in this process.
    Message(Arc<MessageRow>),
    ReadReceipt {
        conversation_id: Uuid,
        reader: Participant,
        seq: i64,
    },
    Typing {
        conversation_id: Uuid,
        sender: Participant,
    },
    StatusChanged {
        conversation_id: Uuid,
        status: ConversationStatus,
    },
    CustomerUpdated(Viewed),
    /// The provider or the linked customer came online or went offline.
    PresenceChanged {
        participant: Participant,
        online: bool,
    },
    CustomerErased(Erasure),
    Heartbeat(DateTime<Utc>),
    /// A message was edited or deleted (the message as it is now).
    Changed(ChangeRow),
    /// Every change up to this position was delivered (after the replay of changes).
    ChangePosition(i64),
}

/// A conversation as `viewer` sees it (its unread count is the viewer's).
#[derive(Debug)]
pub struct Viewed {
    pub conversation: ConversationRow,
    pub viewer: Role,
}

/// What an inbox stream delivers: an item (or a heartbeat) and the cursor that resumes
/// after it, encoded.
#[derive(Debug)]
pub struct InboxDelivery {
    pub event: InboxEvent,
    pub cursor: String,
    pub replayed: bool,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "sent boxed whole (`Item`)")]
pub enum InboxEvent {
    /// An item of `viewer`'s inbox.
    Item {
        item: InboxItem,
        viewer: Role,
    },
    /// A counterpart (a customer of the provider's conversations, a provider of the
    /// customer's) came online or went offline.
    PresenceChanged {
        participant: Participant,
        online: bool,
    },
    /// The owner's unread summary, when it differs from the last one this stream saw.
    Summary(UnreadSummary),
    Heartbeat(DateTime<Utc>),
}

/// Why a stream's logic stopped early: the server is shutting down, or the client was
/// told why. (When the client leaves, the logic is dropped with the response body.)
struct Stop;

/// Sends one item, unless the client left or the server is shutting down. Boxed by the
/// caller: a future that holds an item unboxed is as large as the largest item.
async fn emit<T>(out: &Out<T>, item: Item<T>, shutdown: &CancellationToken) -> Result<(), Stop> {
    tokio::select! {
        () = out.put(item) => Ok(()),
        () = shutdown.cancelled() => Err(Stop),
    }
}

/// StreamConversation's logic. `conversation` was read after `subscription` was taken, so
/// nothing committed in between is missed.
pub fn conversation_stream(
    ctx: StreamContext,
    mut subscription: Subscription,
    conversation: ConversationRow,
    viewer: Participant,
    (after_seq, after_change): (i64, Option<i64>),
    out: Out<ConversationDelivery>,
) -> impl Future<Output = ()> {
    let mut stream = ConversationStream {
        ctx,
        out,
        id: conversation.id.0,
        viewer,
        last: after_seq,
        last_change: conversation.change_seq,
        reflected: HashMap::new(),
        shown: Shown::default(),
        presence: None,
    };
    // The future keeps room only for following wake-ups: the row is boxed until the
    // opening reads are done, and they (as everything a wake-up does) are a boxed future
    // of their own, so a stream is not the size of the largest read it ever makes.
    let conversation = Box::new(conversation);
    async move {
        let opening = {
            // Moved here so that the box is freed when the row leaves it, not when the
            // stream ends (a box moved out of lives as long as its variable).
            let conversation = conversation;
            stream.open(*conversation, after_change)
        };
        let opened = Box::pin(opening).await;
        if opened.is_ok() {
            let _ = stream.follow(&mut subscription).await;
        }
    }
}

struct ConversationStream {
    ctx: StreamContext,
    out: Out<ConversationDelivery>,
    id: uuid::Uuid,
    viewer: Participant,
    /// Highest seq delivered.
    last: i64,
    /// Every change up to this position is delivered or shows in a message delivered
    /// after it was made.
    last_change: i64,
    /// Messages read from the table showing a change after `last_change` (seq → their
    /// `last_change`): those changes are not sent again as events. Only a change that
    /// commits between a stream's snapshot and its read of the message lands here.
    reflected: HashMap<i64, i64>,
    shown: Shown,
    /// Routes the participants' presence changes here.
    presence: Option<super::hub::PresenceWatch>,
}

/// The state this stream last showed (snapshot or event). A wake-up only ever moves it
/// forward, so nothing older than a snapshot follows it: wake-ups queued before a resync
/// are dropped, receipts never go back, and a status change is read from the table.
#[derive(Default)]
struct Shown {
    status: Option<ConversationStatus>,
    provider_read: i64,
    customer_read: i64,
    /// The last erasure announced (CustomerErased), so each is announced once.
    erased_at: Option<DateTime<Utc>>,
}

impl Shown {
    fn of(conversation: &ConversationRow) -> Self {
        Self {
            status: Some(conversation.status),
            provider_read: conversation.provider_read_seq,
            customer_read: conversation.customer_read_seq,
            erased_at: conversation.erased_at,
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
    /// Not an async fn, so that the event is boxed before the future holds it.
    fn send(
        &self,
        event: ConversationEvent,
        replayed: bool,
    ) -> impl Future<Output = Result<(), Stop>> + '_ {
        let delivery = Box::new(Ok(ConversationDelivery { event, replayed }));
        emit(&self.out, delivery, &self.ctx.shutdown)
    }

    async fn fail(&self, error: Error) -> Stop {
        let _ = emit(&self.out, Box::new(Err(error.into())), &self.ctx.shutdown).await;
        Stop
    }

    fn viewed(&self, conversation: ConversationRow) -> Viewed {
        Viewed {
            conversation,
            viewer: self.viewer.role(),
        }
    }

    /// The conversation's last erasure, unless this stream announced it already.
    fn unannounced_erasure(&self, conversation: &ConversationRow) -> Option<Erasure> {
        conversation
            .erasure()
            .filter(|erasure| Some(erasure.at) != self.shown.erased_at)
    }

    /// The conversation as this stream's viewer sees it, and then its erasure, when its
    /// customer was erased since this stream last said so (always on a stream's first
    /// snapshot: the client may hold a copy from before), so a client drops what it
    /// cached from before it.
    async fn snapshot(
        &mut self,
        conversation: ConversationRow,
        replayed: bool,
    ) -> Result<(), Stop> {
        let erasure = self.unannounced_erasure(&conversation);
        self.shown = Shown::of(&conversation);
        let viewed = self.viewed(conversation);
        self.send(ConversationEvent::Snapshot(viewed), replayed)
            .await?;
        if let Some(erasure) = erasure {
            self.send(ConversationEvent::CustomerErased(erasure), true)
                .await?;
        }
        Ok(())
    }

    /// Watches the presence of `conversation`'s provider and linked customer (the
    /// anonymous visitor has no id to be known by).
    fn watch_participants(&mut self, conversation: &ConversationRow) {
        let mut participants = vec![(Role::Provider, conversation.provider_id.clone())];
        if let Some(customer) = &conversation.customer_id {
            participants.push((Role::Customer, customer.clone()));
        }
        // The new watch first, so a change in between reaches one of the two.
        let watch = self.ctx.hub.watch_presence(self.id, participants);
        self.presence = Some(watch);
    }

    /// The snapshot, then what the client missed: the messages after its `after_seq` and
    /// the changes after its `after_change`.
    async fn open(
        &mut self,
        conversation: ConversationRow,
        after_change: Option<i64>,
    ) -> Result<(), Stop> {
        self.watch_participants(&conversation);
        let head = conversation.head_seq;
        let changes = conversation.change_seq;
        let after_seq = self.last;
        self.snapshot(conversation, true).await?;
        // The replay ends at the head the snapshot saw; anything newer woke this
        // subscription (taken before the snapshot) and is delivered live.
        self.deliver_up_to(head, true).await?;
        // Messages after after_seq were read as they are now; the changes the client
        // missed are those to the messages it already had. A client that sent no
        // after_change (older than edits) gets changes from now on only.
        if let Some(after_change) = after_change {
            self.deliver_changes((after_change, changes), after_seq, true)
                .await?;
            self.send(ConversationEvent::ChangePosition(changes), true)
                .await?;
        }
        Ok(())
    }

    /// Follows wake-ups (and sends heartbeats) until the client leaves or the server
    /// shuts down.
    async fn follow(&mut self, subscription: &mut Subscription) -> Result<(), Stop> {
        let feed = Arc::clone(&subscription.feed);
        let period = self.ctx.heartbeat;
        let mut next_heartbeat = Instant::now() + period;
        loop {
            if subscription.take_lagged() {
                Box::pin(self.resync(subscription)).await?;
            }
            let wake = tokio::select! {
                // The UNAVAILABLE that ends the stream comes from `Outbound`.
                () = self.ctx.shutdown.cancelled() => return Err(Stop),
                () = tokio::time::sleep_until(next_heartbeat) => {
                    self.send(ConversationEvent::Heartbeat(Utc::now()), false).await?;
                    next_heartbeat = Instant::now() + period;
                    continue;
                }
                wake = subscription.recv() => wake,
            };
            if Box::pin(self.on_wake(wake, subscription, &feed)).await? {
                next_heartbeat = Instant::now() + period;
            }
        }
    }

    /// Delivers what a wake-up says changed; `false` when it showed nothing new (the
    /// heartbeat is then still due when it was).
    async fn on_wake(
        &mut self,
        wake: Wake,
        subscription: &mut Subscription,
        feed: &Feed,
    ) -> Result<bool, Stop> {
        match wake {
            Wake::Messages { head } => self.deliver_live(feed, head).await?,
            Wake::Read { reader, seq } => {
                let shown = self.shown.read_mut(reader.role());
                if seq <= *shown {
                    return Ok(false);
                }
                *shown = seq;
                let receipt = ConversationEvent::ReadReceipt {
                    conversation_id: self.id,
                    reader,
                    seq,
                };
                self.send(receipt, false).await?;
            }
            Wake::Typing { sender } => {
                if sender != self.viewer {
                    let typing = ConversationEvent::Typing {
                        conversation_id: self.id,
                        sender,
                    };
                    self.send(typing, false).await?;
                }
            }
            Wake::Status(_) => {
                // The notice may be older than what this stream showed last (a snapshot
                // after a resync): the table says what is true now.
                let status = self.current().await?.status;
                if Some(status) == self.shown.status {
                    return Ok(false);
                }
                self.shown.status = Some(status);
                let changed = ConversationEvent::StatusChanged {
                    conversation_id: self.id,
                    status,
                };
                self.send(changed, false).await?;
            }
            Wake::Presence {
                participant,
                online,
            } => {
                let changed = ConversationEvent::PresenceChanged {
                    participant,
                    online,
                };
                self.send(changed, false).await?;
            }
            Wake::Customer | Wake::CustomerErased => {
                let conversation = self.current().await?;
                // The row may already show a later change than the wake-up says: an
                // erasure not yet announced is, whichever wake-up finds it first.
                let erasure = self.unannounced_erasure(&conversation);
                if erasure.is_none() && wake == Wake::CustomerErased {
                    return Ok(false);
                }
                self.shown = Shown::of(&conversation);
                self.watch_participants(&conversation);
                if let Some(erasure) = erasure {
                    self.send(ConversationEvent::CustomerErased(erasure), false)
                        .await?;
                }
                if wake == Wake::Customer {
                    let updated = ConversationEvent::CustomerUpdated(self.viewed(conversation));
                    self.send(updated, false).await?;
                }
            }
            Wake::Changed { change_seq } => {
                if change_seq <= self.last_change {
                    return Ok(false);
                }
                // Notices come in commit order: the message changed was announced
                // before its change, so it is at or below `last` now.
                let from = self.last_change;
                self.deliver_changes((from, change_seq), self.last, false)
                    .await?;
            }
            Wake::Resync => self.resync(subscription).await?,
            Wake::InboxTouched | Wake::Summary => {}
        }
        Ok(true)
    }

    /// The conversation as it is now, as the viewer sees it.
    /// The viewer must still be a participant: an anonymous visitor stops being one once
    /// a customer is linked, and its stream ends with PERMISSION_DENIED (CUSTOMER_LINKED).
    async fn current(&self) -> Result<ConversationRow, Stop> {
        match self
            .ctx
            .store
            .get_conversation(ConversationId(self.id))
            .await
        {
            Ok(conversation) if conversation.admits(&self.viewer) => Ok(conversation),
            Ok(_) => Err(self.fail(Error::CustomerLinked).await),
            Err(error) => Err(self.fail(error).await),
        }
    }

    /// After lost wake-ups: a fresh snapshot (status, customer, read positions), then
    /// every message after the last one delivered up to the snapshot's head (anything
    /// newer committed after the wake-ups were drained, so its wake-up is queued).
    async fn resync(&mut self, subscription: &mut Subscription) -> Result<(), Stop> {
        // Whatever was queued so far is covered by the snapshot read below.
        while subscription.try_recv().is_some() {}
        subscription.take_lagged();
        let permit = self.ctx.paced().await;
        let conversation = self.current().await?;
        drop(permit);
        let (had, changes) = (self.last, conversation.change_seq);
        let head = conversation.head_seq;
        self.snapshot(conversation, true).await?;
        self.deliver_up_to(head, true).await?;
        // Messages read just now show their changes; those the stream had may not.
        if changes > self.last_change {
            let from = self.last_change;
            self.deliver_changes((from, changes), had, true).await?;
        }
        Ok(())
    }

    /// Delivers the changes in `(after, up_to]` to messages with `seq <= max_seq`, in
    /// change order, a page at a time; afterwards `last_change` is `up_to`.
    async fn deliver_changes(
        &mut self,
        (mut after, up_to): (i64, i64),
        max_seq: i64,
        replayed: bool,
    ) -> Result<(), Stop> {
        while after < up_to {
            let permit = if replayed {
                self.ctx.paced().await
            } else {
                None
            };
            let page = self
                .ctx
                .store
                .changes_between(self.id, (after, up_to), max_seq, CATCH_UP_PAGE)
                .await;
            drop(permit);
            let page = match page {
                Ok(page) => page,
                Err(error) => return Err(self.fail(error).await),
            };
            let full = i64::try_from(page.len()).unwrap_or(i64::MAX) >= CATCH_UP_PAGE;
            for change in page {
                after = change.change_seq;
                let shown = self
                    .reflected
                    .get(&change.message.seq)
                    .is_some_and(|reflected| *reflected >= change.change_seq);
                if !shown {
                    self.send(ConversationEvent::Changed(change), replayed)
                        .await?;
                }
            }
            if !full {
                break;
            }
        }
        self.last_change = self.last_change.max(up_to);
        let last_change = self.last_change;
        self.reflected
            .retain(|_, reflected| *reflected > last_change);
        Ok(())
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
                Err(error) => {
                    let _ = emit(&self.out, Box::new(Err(error.into())), &self.ctx.shutdown).await;
                    return Err(Stop);
                }
            };
            // Retention deleted what this stream was about to send (it ran after the
            // stream opened): end it as the open would have, never skip.
            if let Some(oldest_seq) = expired_after(self.last, head, page.first().map(|m| m.seq)) {
                let expired = Error::MessagesExpired {
                    field: "after_seq",
                    oldest_seq,
                };
                return Err(self.fail(expired).await);
            }
            let full = i64::try_from(page.len()).unwrap_or(i64::MAX) >= CATCH_UP_PAGE;
            for message in page {
                self.last = message.seq;
                if message.last_change > self.last_change {
                    self.reflected.insert(message.seq, message.last_change);
                }
                self.send(ConversationEvent::Message(Arc::new(message)), replayed)
                    .await?;
            }
            if !full {
                break;
            }
        }
        Ok(())
    }
}

/// StreamInbox's logic, from `cursor` and the owner's unread `summary` (both read after
/// `subscription` was taken, so every change after them wakes it).
pub fn inbox_stream(
    ctx: StreamContext,
    mut subscription: Subscription,
    owner: Participant,
    cursor: InboxCursor,
    summary: UnreadSummary,
    resumed: bool,
    out: Out<InboxDelivery>,
) -> impl Future<Output = ()> {
    // Built before the future, which would otherwise keep its arguments' copies.
    let mut stream = InboxStream {
        ctx,
        out,
        owner,
        cursor,
        summary: Summary {
            shown: summary,
            due: false,
            next: Instant::now(),
        },
    };
    async move {
        let _ = stream.run(&mut subscription, resumed).await;
    }
}

struct InboxStream {
    ctx: StreamContext,
    out: Out<InboxDelivery>,
    owner: Participant,
    cursor: InboxCursor,
    summary: Summary,
}

/// When the stream reads the owner's unread summary again. Each wake that may have changed
/// it makes it due; it is read after the inbox items that wake brought, and at most once
/// per [`SUMMARY_EVERY`], so a burst is coalesced into a few reads whose last one is
/// exact (a change committed after a read wakes the stream again: NOTIFY follows commit).
struct Summary {
    /// The last summary sent (or read when the stream opened).
    shown: UnreadSummary,
    due: bool,
    /// Not read again before then.
    next: Instant,
}

impl InboxStream {
    /// Reads and delivers are boxed: the future then keeps room only for waiting, not for
    /// the largest read it ever makes (most streams are idle most of the time).
    async fn run(&mut self, subscription: &mut Subscription, resumed: bool) -> Result<(), Stop> {
        if resumed {
            Box::pin(self.deliver(true)).await?;
        }
        let period = self.ctx.heartbeat;
        let mut next_heartbeat = Instant::now() + period;
        loop {
            if subscription.take_lagged() {
                Box::pin(self.deliver(true)).await?;
                self.summary.due = true;
            }
            let summary_at = self.summary.next;
            let wake = tokio::select! {
                // The UNAVAILABLE that ends the stream comes from `Outbound`.
                () = self.ctx.shutdown.cancelled() => return Err(Stop),
                () = tokio::time::sleep_until(next_heartbeat) => {
                    let heartbeat = InboxDelivery {
                        event: InboxEvent::Heartbeat(Utc::now()),
                        cursor: self.cursor.encode(),
                        replayed: false,
                    };
                    emit(&self.out, Box::new(Ok(heartbeat)), &self.ctx.shutdown).await?;
                    next_heartbeat = Instant::now() + period;
                    continue;
                }
                () = tokio::time::sleep_until(summary_at), if self.summary.due => {
                    if Box::pin(self.send_summary()).await? {
                        next_heartbeat = Instant::now() + period;
                    }
                    continue;
                }
                wake = subscription.recv() => wake,
            };
            // One read of the table answers every wake-up queued so far; presence
            // changes are not in the table's order and go out after it.
            let (mut items, mut replayed, mut other) = (false, false, false);
            let mut presence = Vec::new();
            let mut next = Some(wake);
            while let Some(wake) = next {
                match wake {
                    Wake::Presence {
                        participant,
                        online,
                    } => presence.push((participant, online)),
                    Wake::Summary => other = true,
                    wake => {
                        items = true;
                        replayed |= wake == Wake::Resync;
                    }
                }
                next = subscription.try_recv();
            }
            // Whatever woke it (an item, a read, a resync) may have moved the summary.
            if items || other {
                self.summary.due = true;
            }
            if items {
                Box::pin(self.deliver(replayed)).await?;
                next_heartbeat = Instant::now() + period;
            }
            for (participant, online) in presence {
                Box::pin(self.presence_changed(participant, online)).await?;
                next_heartbeat = Instant::now() + period;
            }
        }
    }

    /// Shows a counterpart's presence change. A provider's inbox is sent only its
    /// customers' (the notice names their providers); a customer's inbox is offered every
    /// provider's and keeps those it has a conversation with.
    async fn presence_changed(&self, participant: Participant, online: bool) -> Result<(), Stop> {
        if self.owner.role() == Role::Customer {
            let talks = self
                .ctx
                .store
                .customer_talks_to(self.owner.id(), participant.id())
                .await;
            match talks {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(error) => {
                    let _ = emit(&self.out, Box::new(Err(error.into())), &self.ctx.shutdown).await;
                    return Err(Stop);
                }
            }
        }
        let delivery = InboxDelivery {
            event: InboxEvent::PresenceChanged {
                participant,
                online,
            },
            cursor: self.cursor.encode(),
            replayed: false,
        };
        emit(&self.out, Box::new(Ok(delivery)), &self.ctx.shutdown).await
    }

    /// Reads the owner's unread summary and sends it if it changed; `true` when sent.
    async fn send_summary(&mut self) -> Result<bool, Stop> {
        self.summary.due = false;
        self.summary.next = Instant::now() + SUMMARY_EVERY;
        let summary = match self.ctx.store.unread_summary(&self.owner).await {
            Ok(summary) => summary,
            Err(error) => {
                let _ = emit(&self.out, Box::new(Err(error.into())), &self.ctx.shutdown).await;
                return Err(Stop);
            }
        };
        if summary == self.summary.shown {
            return Ok(false);
        }
        self.summary.shown = summary;
        let delivery = InboxDelivery {
            event: InboxEvent::Summary(summary),
            cursor: self.cursor.encode(),
            replayed: false,
        };
        emit(&self.out, Box::new(Ok(delivery)), &self.ctx.shutdown).await?;
        Ok(true)
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
                    let _ = emit(&self.out, Box::new(Err(error.into())), &self.ctx.shutdown).await;
                    return Err(Stop);
                }
            };
            let viewer = self.owner.role();
            for (item, cursor) in window.items {
                let delivery = InboxDelivery {
                    event: InboxEvent::Item { item, viewer },
                    cursor: cursor.encode(),
                    replayed,
                };
                emit(&self.out, Box::new(Ok(delivery)), &self.ctx.shutdown).await?;
                self.cursor = cursor;
            }
            self.cursor = window.next;
            if !window.more && !within {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, D, E, F, Fut>(_: impl FnOnce(A, B, C, D, E, F) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    fn future_size_7<A, B, C, D, E, F, G, Fut>(
        _: impl FnOnce(A, B, C, D, E, F, G) -> Fut,
    ) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// A stream's logic lives as long as its stream, idle or not: what it does on a
    /// wake-up must not make every stream larger (a test build's sizes, larger than a
    /// release build's).
    #[test]
    fn stream_logic_keeps_room_only_for_waiting() {
        let conversation = future_size(conversation_stream);
        let inbox = future_size_7(inbox_stream);
        assert!(
            conversation <= 1280,
            "conversation stream: {conversation} bytes"
        );
        assert!(inbox <= 1280, "inbox stream: {inbox} bytes");
    }
}
