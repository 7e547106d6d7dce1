//! Routes wake-ups from the one LISTEN connection to the streams of this process.
//! Each stream has a bounded queue; when it is full the stream is marked lagging and
//! catches up from the table instead, so a slow consumer never grows memory.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use tokio::sync::mpsc;
use uuid::Uuid;

use super::Notice;
use crate::{
    domain::{Participant, Role, Status},
    error::{Error, Result},
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
    Created,
    /// The listener reconnected: whatever was sent meanwhile must be read from the table.
    Resync,
}

struct Entry {
    wakes: mpsc::Sender<Wake>,
    lagged: Arc<AtomicBool>,
}

type Subscribers<K> = Mutex<HashMap<K, HashMap<u64, Entry>>>;

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
}

/// A stream's registration; dropping it unregisters and frees its slot at once.
pub struct Subscription {
    hub: Arc<Hub>,
    key: Key,
    id: u64,
    pub wakes: mpsc::Receiver<Wake>,
    lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// Whether wake-ups were dropped since the last call (the stream must catch up).
    pub fn take_lagged(&self) -> bool {
        let lagged = self.lagged.swap(false, Ordering::AcqRel);
        if lagged {
            crate::metrics::streams_resynced("lagged", 1);
        }
        lagged
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self
            .hub
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entries) = map.get_mut(&self.key) {
            entries.remove(&self.id);
            if entries.is_empty() {
                map.remove(&self.key);
            }
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
        })
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
        map.iter().fold((0, 0), |(c, i), (key, entries)| match key {
            Key::Conversation(_) => (c + entries.len(), i),
            Key::Inbox(..) => (c, i + entries.len()),
        })
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
        self.subscribe(Key::Inbox(owner.role, owner.id.clone()))
    }

    fn subscribe(self: &Arc<Self>, key: Key) -> Result<Subscription> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_streams {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::ResourceExhausted {
                reason: "TOO_MANY_STREAMS",
                message: format!("this replica serves at most {} streams", self.max_streams),
            });
        }
        let (tx, wakes) = mpsc::channel(self.queue);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .insert(
                id,
                Entry {
                    wakes: tx,
                    lagged: Arc::clone(&lagged),
                },
            );
        Ok(Subscription {
            hub: Arc::clone(self),
            key,
            id,
            wakes,
            lagged,
        })
    }

    /// Routes one notice to the streams that want it.
    pub fn dispatch(&self, notice: Notice) {
        let mut deliveries: Vec<(Key, Wake)> = Vec::new();
        let mut inboxes: HashSet<Key> = HashSet::new();
        let mut touch_inboxes = |p: &str, u: Option<&str>| {
            inboxes.insert(Key::Inbox(Role::Provider, p.to_owned()));
            if let Some(u) = u {
                inboxes.insert(Key::Inbox(Role::Customer, u.to_owned()));
            }
        };
        match notice {
            Notice::Messages { m } => {
                for touched in m {
                    touch_inboxes(&touched.p, touched.u.as_deref());
                    deliveries.push((
                        Key::Conversation(touched.c),
                        Wake::Messages { head: touched.s },
                    ));
                }
            }
            Notice::Read { c, role, id, seq } => deliveries.push((
                Key::Conversation(c),
                Wake::Read {
                    reader: Participant {
                        role: Role::from_i16(role),
                        id,
                    },
                    seq,
                },
            )),
            Notice::Typing { c, role, id } => deliveries.push((
                Key::Conversation(c),
                Wake::Typing {
                    sender: Participant {
                        role: Role::from_i16(role),
                        id,
                    },
                },
            )),
            Notice::Status { c, status, p, u } => {
                touch_inboxes(&p, u.as_deref());
                deliveries.push((Key::Conversation(c), Wake::Status(Status::from_i16(status))));
            }
            Notice::Customer { c, p, u } => {
                touch_inboxes(&p, u.as_deref());
                deliveries.push((Key::Conversation(c), Wake::Customer));
            }
            Notice::Created { p, u, .. } => touch_inboxes(&p, u.as_deref()),
        }
        let map = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (key, wake) in deliveries {
            if let Some(entries) = map.get(&key) {
                for entry in entries.values() {
                    offer(entry, wake.clone());
                }
            }
        }
        for key in inboxes {
            if let Some(entries) = map.get(&key) {
                for entry in entries.values() {
                    offer(entry, Wake::Created);
                }
            }
        }
    }

    /// After the listener reconnects: every stream catches up from the table.
    pub fn resync_all(&self) {
        let map = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for entry in map.values().flat_map(HashMap::values) {
            offer(entry, Wake::Resync);
        }
        crate::metrics::streams_resynced("listener", map.values().map(|e| e.len() as u64).sum());
    }
}

fn offer(entry: &Entry, wake: Wake) {
    if let Err(mpsc::error::TrySendError::Full(_)) = entry.wakes.try_send(wake)
        && !entry.lagged.swap(true, Ordering::AcqRel)
    {
        crate::metrics::stream_lagged();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::Touched;

    fn messages(c: Uuid, s: i64) -> Notice {
        Notice::Messages {
            m: vec![Touched {
                c,
                s,
                p: "p1".into(),
                u: None,
            }],
        }
    }

    #[test]
    fn full_queue_marks_lagging_instead_of_growing() {
        let hub = Hub::new(10, 2);
        let id = Uuid::now_v7();
        let mut sub = hub.subscribe_conversation(id).unwrap();
        for s in 1..=5 {
            hub.dispatch(messages(id, s));
        }
        assert!(sub.take_lagged());
        assert!(!sub.take_lagged());
        assert_eq!(sub.wakes.try_recv().ok(), Some(Wake::Messages { head: 1 }));
        assert_eq!(sub.wakes.try_recv().ok(), Some(Wake::Messages { head: 2 }));
        assert!(sub.wakes.try_recv().is_err());
    }

    #[test]
    fn limit_and_release() {
        let hub = Hub::new(2, 4);
        let a = hub.subscribe_conversation(Uuid::now_v7()).unwrap();
        let _b = hub
            .subscribe_inbox(&Participant {
                role: Role::Provider,
                id: "p".into(),
            })
            .unwrap();
        assert!(hub.subscribe_conversation(Uuid::now_v7()).is_err());
        drop(a);
        assert_eq!(hub.open_streams(), 1);
        assert!(hub.subscribe_conversation(Uuid::now_v7()).is_ok());
    }

    #[test]
    fn inbox_gets_messages_of_its_provider_only() {
        let hub = Hub::new(10, 8);
        let mut mine = hub
            .subscribe_inbox(&Participant {
                role: Role::Provider,
                id: "p1".into(),
            })
            .unwrap();
        let mut other = hub
            .subscribe_inbox(&Participant {
                role: Role::Provider,
                id: "p2".into(),
            })
            .unwrap();
        hub.dispatch(messages(Uuid::now_v7(), 1));
        assert!(mine.wakes.try_recv().is_ok());
        assert!(other.wakes.try_recv().is_err());
    }
}
