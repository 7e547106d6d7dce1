//! Routes wake-ups from the one LISTEN connection to the streams of this process.
//! Each stream has a bounded queue; when it is full the stream is marked lagging and
//! catches up from the table instead, so a slow consumer never grows memory.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use tokio::sync::Notify;
use uuid::Uuid;

use super::feed::{Feed, ReadCounts};
use crate::{
    domain::{Participant, Role, Status},
    error::{Error, Result},
    store::{Carried, Notice},
};

/// What a stream is woken for. Conversation streams get all kinds; inbox streams only
/// need to know that something touched them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    Messages {
        head: i64,
    },
    Read {
        reader: Participant,
        seq: i64,
    },
    Typing {
        sender: Participant,
    },
    Status(Status),
    Customer,
    /// A message was edited or deleted; the conversation's change position is now
    /// `change_seq`.
    Changed {
        change_seq: i64,
    },
    /// A participant of the conversation came online or went offline (any replica).
    Presence {
        participant: Participant,
        online: bool,
    },
    /// The customer side was erased (details and the customer's message bodies).
    CustomerErased,
    /// Something in one of an inbox owner's conversations changed (a conversation was
    /// created or linked, a message, a status): the inbox reads its next window.
    InboxTouched,
    /// A read position of an inbox owner moved: its unread summary may have changed, and
    /// nothing else in its inbox did.
    Summary,
    /// The listener reconnected: whatever was sent meanwhile must be read from the table.
    Resync,
}

/// One stream's bounded queue of wake-ups, shared by its hub entry and its subscription.
/// It holds no buffer until a wake-up arrives: most streams are idle, and a channel would
/// allocate a block of slots for each of them up front.
#[derive(Default)]
struct Wakes {
    queue: Mutex<VecDeque<Wake>>,
    /// A wake-up found the queue full since the stream last looked.
    lagged: AtomicBool,
    /// Signalled after each wake-up queued.
    queued: Notify,
}

/// What a queue keeps when it empties: enough for a few wake-ups at a time without
/// allocating each time, without holding on to what a burst needed.
const WAKES_KEPT: usize = 8;

impl Wakes {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Wake>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `wake`, or marks the stream lagging when `capacity` are queued already.
    fn offer(&self, wake: Wake, capacity: usize) {
        let mut queue = self.lock();
        if queue.len() >= capacity {
            drop(queue);
            if !self.lagged.swap(true, Ordering::AcqRel) {
                crate::metrics::stream_lagged();
            }
            return;
        }
        queue.push_back(wake);
        drop(queue);
        self.queued.notify_one();
    }

    fn pop(&self) -> Option<Wake> {
        let mut queue = self.lock();
        let wake = queue.pop_front();
        if queue.is_empty() && queue.capacity() > WAKES_KEPT {
            queue.shrink_to(WAKES_KEPT);
        }
        wake
    }
}

/// The streams of one key, and (for a conversation) the feed they share.
#[derive(Default)]
struct Group {
    entries: HashMap<u64, Arc<Wakes>>,
    feed: Arc<Feed>,
}

type Subscribers<K> = Mutex<HashMap<K, Group>>;

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Conversation(Uuid),
    Inbox(Role, String),
}

pub struct Hub {
    subscribers: Subscribers<Key>,
    next_id: AtomicU64,
    open: AtomicUsize,
    max_streams: usize,
    queue: usize,
    listening: AtomicBool,
    reads: ReadCounts,
    /// Signalled on every notice and resync: the event feed's sequencer waits on it.
    activity: tokio::sync::Notify,
    /// Who has an open stream on this replica.
    presence: Arc<super::presence::Presence>,
    /// For each participant, the conversations whose streams here want its presence
    /// changes (with how many registrations each).
    presence_watch: Mutex<HashMap<(Role, String), HashMap<Uuid, usize>>>,
    /// The customers with an inbox stream here (with how many): a provider's presence
    /// change is offered to them without scanning every stream.
    customer_inboxes: Mutex<HashMap<String, usize>>,
}

/// Takes one registration of `key` away, forgetting it at zero.
fn count_down<K: Eq + std::hash::Hash>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

/// A conversation stream's interest in its participants' presence; dropping it ends it.
pub struct PresenceWatch {
    hub: Arc<Hub>,
    conversation: Uuid,
    participants: Vec<(Role, String)>,
}

impl Drop for PresenceWatch {
    fn drop(&mut self) {
        let mut watch = self
            .hub
            .presence_watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for participant in &self.participants {
            if let Some(conversations) = watch.get_mut(participant) {
                count_down(conversations, &self.conversation);
                if conversations.is_empty() {
                    watch.remove(participant);
                }
            }
        }
    }
}

/// A stream's registration; dropping it unregisters and frees its slot at once.
pub struct Subscription {
    hub: Arc<Hub>,
    key: Key,
    id: u64,
    wakes: Arc<Wakes>,
    /// Shared by every stream of the same conversation in this process.
    pub feed: Arc<Feed>,
}

impl Subscription {
    /// Whether wake-ups were dropped since the last call (the stream must catch up).
    pub fn take_lagged(&self) -> bool {
        let lagged = self.wakes.lagged.swap(false, Ordering::AcqRel);
        if lagged {
            crate::metrics::streams_resynced("lagged", 1);
        }
        lagged
    }

    /// The next wake-up, oldest first. Cancel-safe: a wake-up is taken only when returned.
    pub async fn recv(&self) -> Wake {
        loop {
            if let Some(wake) = self.wakes.pop() {
                return wake;
            }
            // A wake-up queued after the pop above left a permit, so this returns.
            self.wakes.queued.notified().await;
        }
    }

    /// The next wake-up if one is queued.
    pub fn try_recv(&self) -> Option<Wake> {
        self.wakes.pop()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self
            .hub
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(group) = map.get_mut(&self.key) {
            group.entries.remove(&self.id);
            if group.entries.is_empty() {
                map.remove(&self.key);
            }
        }
        drop(map);
        if let Key::Inbox(Role::Customer, customer) = &self.key {
            let mut customers = self
                .hub
                .customer_inboxes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            count_down(&mut customers, customer);
        }
        self.hub.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hub {
    pub fn new(max_streams: usize, queue: usize) -> Arc<Self> {
        Arc::new(Self {
            subscribers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            max_streams,
            queue: queue.max(1),
            listening: AtomicBool::new(false),
            reads: ReadCounts::default(),
            activity: tokio::sync::Notify::new(),
            presence: super::presence::Presence::new(),
            presence_watch: Mutex::default(),
            customer_inboxes: Mutex::default(),
        })
    }

    /// Routes presence changes of `participants` to `conversation`'s streams here until
    /// the returned guard drops.
    pub fn watch_presence(
        self: &Arc<Self>,
        conversation: Uuid,
        participants: Vec<(Role, String)>,
    ) -> PresenceWatch {
        let mut watch = self
            .presence_watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for participant in &participants {
            *watch
                .entry(participant.clone())
                .or_default()
                .entry(conversation)
                .or_default() += 1;
        }
        PresenceWatch {
            hub: Arc::clone(self),
            conversation,
            participants,
        }
    }

    /// Streams open in this process.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Open streams by kind: (conversation streams, inbox streams).
    pub fn open_by_kind(&self) -> (usize, usize) {
        let map = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.iter().fold((0, 0), |(c, i), (key, group)| match key {
            Key::Conversation(_) => (c + group.entries.len(), i),
            Key::Inbox(..) => (c, i + group.entries.len()),
        })
    }

    /// Reads of `messages` by this process's streams so far: (shared, own).
    pub fn message_reads(&self) -> (u64, u64) {
        self.reads.get()
    }

    pub(crate) fn reads(&self) -> &ReadCounts {
        &self.reads
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    pub(crate) fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Release);
    }

    pub fn subscribe_conversation(self: &Arc<Self>, id: Uuid) -> Result<Subscription> {
        self.subscribe(Key::Conversation(id))
    }

    pub fn subscribe_inbox(self: &Arc<Self>, owner: &Participant) -> Result<Subscription> {
        let subscription = self.subscribe(Key::Inbox(owner.role(), owner.id().to_owned()))?;
        if owner.role() == Role::Customer {
            *self
                .customer_inboxes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(owner.id().to_owned())
                .or_default() += 1;
        }
        Ok(subscription)
    }

    fn subscribe(self: &Arc<Self>, key: Key) -> Result<Subscription> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_streams {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::TooManyStreams {
                max: self.max_streams,
            });
        }
        let wakes = Arc::new(Wakes::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut map = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let group = map.entry(key.clone()).or_default();
        group.entries.insert(id, Arc::clone(&wakes));
        let feed = Arc::clone(&group.feed);
        drop(map);
        Ok(Subscription {
            hub: Arc::clone(self),
            key,
            id,
            wakes,
            feed,
        })
    }

    /// Something was written (a notice arrived) or may have been missed (a resync).
    /// One waiter; wake-ups while it works coalesce into one.
    pub fn activity(&self) -> &tokio::sync::Notify {
        &self.activity
    }

    pub fn presence(&self) -> &Arc<super::presence::Presence> {
        &self.presence
    }

    /// Routes one notice to the streams that want it.
    pub fn dispatch(&self, notice: Notice) {
        self.activity.notify_one();
        if let Notice::Presence { changes } = notice {
            self.dispatch_presence(changes);
            return;
        }
        let Routes {
            deliveries,
            carried,
            forgotten,
            inboxes,
            summary,
        } = route(notice);
        let map = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for id in forgotten {
            if let Some(group) = map.get(&Key::Conversation(id)) {
                group.feed.forget();
            }
        }
        // The messages first, so the streams woken next find them in their feed.
        for (id, messages) in carried {
            if let Some(group) = map.get(&Key::Conversation(id)) {
                group.feed.offer(id, messages);
            }
        }
        for (key, wake) in deliveries {
            if let Some(group) = map.get(&key) {
                for wakes in group.entries.values() {
                    wakes.offer(wake.clone(), self.queue);
                }
            }
        }
        for key in inboxes {
            if let Some(group) = map.get(&key) {
                for wakes in group.entries.values() {
                    wakes.offer(Wake::InboxTouched, self.queue);
                }
            }
        }
        if let Some(key) = summary
            && let Some(group) = map.get(&key)
        {
            for wakes in group.entries.values() {
                wakes.offer(Wake::Summary, self.queue);
            }
        }
    }

    fn dispatch_presence(&self, changes: Vec<crate::store::PresenceNote>) {
        let mut deliveries = Vec::new();
        {
            let watch = self
                .presence_watch
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for change in &changes {
                let key = (change.role, change.id.clone());
                let wake = Wake::Presence {
                    participant: Participant::stored(change.role, change.id.clone()),
                    online: change.online,
                };
                // The inboxes of the providers it talks to (a customer's change).
                for provider in &change.providers {
                    let inbox = Key::Inbox(Role::Provider, provider.clone());
                    deliveries.push((inbox, wake.clone()));
                }
                for conversation in watch.get(&key).into_iter().flat_map(HashMap::keys) {
                    deliveries.push((Key::Conversation(*conversation), wake.clone()));
                }
            }
        }
        // A provider's change goes to every customer inbox here, which keeps it if the
        // customer has a conversation with that provider (a customer has few; a provider
        // may have too many customers to name in a notice).
        let provider_wakes: Vec<Wake> = changes
            .iter()
            .filter(|c| c.role == Role::Provider)
            .map(|c| Wake::Presence {
                participant: Participant::stored(Role::Provider, c.id.clone()),
                online: c.online,
            })
            .collect();
        if !provider_wakes.is_empty() {
            let customers = self
                .customer_inboxes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for customer in customers.keys() {
                let inbox = Key::Inbox(Role::Customer, customer.clone());
                deliveries.extend(provider_wakes.iter().map(|w| (inbox.clone(), w.clone())));
            }
        }
        let map = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (key, wake) in deliveries {
            if let Some(group) = map.get(&key) {
                for wakes in group.entries.values() {
                    wakes.offer(wake.clone(), self.queue);
                }
            }
        }
    }

    /// After the listener reconnects: every stream catches up from the table.
    pub fn resync_all(&self) {
        self.activity.notify_one();
        let map = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for wakes in map.values().flat_map(|group| group.entries.values()) {
            wakes.offer(Wake::Resync, self.queue);
        }
        let streams = map.values().map(|group| group.entries.len() as u64).sum();
        crate::metrics::streams_resynced("listener", streams);
    }
}

/// Who a notice wakes, and the messages it carried for their feeds.
#[derive(Default)]
struct Routes {
    deliveries: Vec<(Key, Wake)>,
    carried: Vec<(Uuid, Vec<Carried>)>,
    /// Conversations whose feed must drop what it holds (their customer side changed).
    forgotten: Vec<Uuid>,
    inboxes: HashSet<Key>,
    /// The inbox whose owner read (only its unread summary changed).
    summary: Option<Key>,
}

fn route(notice: Notice) -> Routes {
    let mut routes = Routes::default();
    // The one conversation a notice other than new messages wakes.
    let woken = match notice {
        Notice::Messages { touched } => {
            for t in touched {
                routes.touch_inboxes(&t.provider_id, t.customer_id.as_deref());
                if !t.messages.is_empty() {
                    routes.carried.push((t.conversation_id, t.messages));
                }
                let wake = Wake::Messages { head: t.head_seq };
                routes
                    .deliveries
                    .push((Key::Conversation(t.conversation_id), wake));
            }
            None
        }
        Notice::Read {
            conversation_id,
            role,
            reader_id,
            seq,
        } => {
            // The anonymous visitor has no inbox.
            if !reader_id.is_empty() {
                routes.summary = Some(Key::Inbox(role, reader_id.clone()));
            }
            let reader = Participant::stored(role, reader_id);
            Some((conversation_id, Wake::Read { reader, seq }))
        }
        Notice::Typing {
            conversation_id,
            role,
            sender_id,
        } => {
            let sender = Participant::stored(role, sender_id);
            Some((conversation_id, Wake::Typing { sender }))
        }
        Notice::Status {
            conversation_id,
            status,
            provider_id,
            customer_id,
        } => {
            routes.touch_inboxes(&provider_id, customer_id.as_deref());
            Some((conversation_id, Wake::Status(status)))
        }
        Notice::Customer {
            conversation_id,
            provider_id,
            customer_id,
            erased,
        } => {
            routes.touch_inboxes(&provider_id, customer_id.as_deref());
            routes.forgotten.push(conversation_id);
            let wake = if erased {
                Wake::CustomerErased
            } else {
                Wake::Customer
            };
            Some((conversation_id, wake))
        }
        Notice::Changed {
            conversation_id,
            change_seq,
            deleted,
            provider_id,
            customer_id,
        } => {
            routes.touch_inboxes(&provider_id, customer_id.as_deref());
            // A deleted message's text must not outlive it in a feed.
            if deleted {
                routes.forgotten.push(conversation_id);
            }
            Some((conversation_id, Wake::Changed { change_seq }))
        }
        Notice::Created {
            provider_id,
            customer_id,
            ..
        } => {
            routes.touch_inboxes(&provider_id, customer_id.as_deref());
            None
        }
        // Routed by `dispatch_presence`, which knows who watches whom.
        Notice::Presence { .. } => None,
    };
    if let Some((id, wake)) = woken {
        routes.deliveries.push((Key::Conversation(id), wake));
    }
    routes
}

impl Routes {
    /// The inboxes of a conversation's provider and linked customer.
    fn touch_inboxes(&mut self, provider_id: &str, customer_id: Option<&str>) {
        let provider = Key::Inbox(Role::Provider, provider_id.to_owned());
        self.inboxes.insert(provider);
        if let Some(customer_id) = customer_id {
            let customer = Key::Inbox(Role::Customer, customer_id.to_owned());
            self.inboxes.insert(customer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Touched;

    fn messages(c: Uuid, s: i64) -> Notice {
        Notice::Messages {
            touched: vec![Touched {
                conversation_id: c,
                head_seq: s,
                provider_id: "p1".into(),
                customer_id: None,
                messages: Vec::new(),
            }],
        }
    }

    #[test]
    fn full_queue_marks_lagging_instead_of_growing() {
        let hub = Hub::new(10, 2);
        let id = Uuid::now_v7();
        let sub = hub.subscribe_conversation(id).unwrap();
        for s in 1..=5 {
            hub.dispatch(messages(id, s));
        }
        assert!(sub.take_lagged());
        assert!(!sub.take_lagged());
        assert_eq!(sub.try_recv(), Some(Wake::Messages { head: 1 }));
        assert_eq!(sub.try_recv(), Some(Wake::Messages { head: 2 }));
        assert!(sub.try_recv().is_none());
    }

    #[test]
    fn a_change_wakes_its_conversation_and_inboxes_and_a_deletion_empties_the_feed() {
        let hub = Hub::new(10, 8);
        let id = Uuid::now_v7();
        let sub = hub.subscribe_conversation(id).unwrap();
        let inbox = hub
            .subscribe_inbox(&Participant::stored(Role::Provider, "p1".into()))
            .unwrap();
        let routes = route(Notice::Changed {
            conversation_id: id,
            change_seq: 3,
            deleted: true,
            provider_id: "p1".into(),
            customer_id: None,
        });
        assert_eq!(routes.forgotten, vec![id]);
        hub.dispatch(Notice::Changed {
            conversation_id: id,
            change_seq: 3,
            deleted: false,
            provider_id: "p1".into(),
            customer_id: None,
        });
        assert_eq!(sub.try_recv(), Some(Wake::Changed { change_seq: 3 }));
        assert_eq!(inbox.try_recv(), Some(Wake::InboxTouched));
    }

    #[test]
    fn limit_and_release() {
        let hub = Hub::new(2, 4);
        let a = hub.subscribe_conversation(Uuid::now_v7()).unwrap();
        let _b = hub
            .subscribe_inbox(&Participant::stored(Role::Provider, "p".into()))
            .unwrap();
        assert!(hub.subscribe_conversation(Uuid::now_v7()).is_err());
        drop(a);
        assert_eq!(hub.open_streams(), 1);
        assert!(hub.subscribe_conversation(Uuid::now_v7()).is_ok());
    }

    #[test]
    fn inbox_gets_messages_of_its_provider_only() {
        let hub = Hub::new(10, 8);
        let mine = hub
            .subscribe_inbox(&Participant::stored(Role::Provider, "p1".into()))
            .unwrap();
        let other = hub
            .subscribe_inbox(&Participant::stored(Role::Provider, "p2".into()))
            .unwrap();
        hub.dispatch(messages(Uuid::now_v7(), 1));
        assert!(mine.try_recv().is_some());
        assert!(other.try_recv().is_none());
    }

    #[test]
    fn a_read_wakes_the_readers_inbox_for_its_summary_only() {
        let hub = Hub::new(10, 8);
        let reader = hub
            .subscribe_inbox(&Participant::stored(Role::Customer, "c1".into()))
            .unwrap();
        let provider = hub
            .subscribe_inbox(&Participant::stored(Role::Provider, "p1".into()))
            .unwrap();
        let read = |id: &str| Notice::Read {
            conversation_id: Uuid::now_v7(),
            role: Role::Customer,
            reader_id: id.into(),
            seq: 3,
        };
        hub.dispatch(read("c1"));
        hub.dispatch(read(""));
        assert_eq!(reader.try_recv(), Some(Wake::Summary));
        assert!(reader.try_recv().is_none());
        assert!(provider.try_recv().is_none());
    }
}
