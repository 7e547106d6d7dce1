//! At most one read per wake-up per conversation in this process, however many streams
//! watch it, and none when the wake-up carried the messages. The streams of one
//! conversation share a [`Feed`]: the listener puts the messages a notice carried in its
//! short tail of recent messages; otherwise the first stream woken reads them from the
//! table (under the feed's lock) and the others find them in the tail. A stream further
//! behind than the tail reads on its own.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::Mutex;
use uuid::Uuid;

use crate::{
    error::Result,
    store::{Carried, MessageRow, Store},
};

/// Messages kept per conversation, and their body bytes: enough for every stream of a
/// conversation to take what one wake-up brought, small enough that ten thousand watched
/// conversations stay within a few hundred MiB even when all of them are busy.
const TAIL_MESSAGES: usize = 64;
const TAIL_BYTES: usize = 64 * 1024;

/// Reads of `messages` by the streams of one process: `shared` ones made once for all the
/// streams of a conversation, `own` ones a single stream made to catch up.
#[derive(Default)]
pub struct ReadCounts {
    shared: AtomicU64,
    own: AtomicU64,
}

impl ReadCounts {
    pub fn count(&self, shared: bool) {
        let counter = if shared { &self.shared } else { &self.own };
        counter.fetch_add(1, Ordering::Relaxed);
        crate::metrics::stream_message_read(shared);
    }

    /// (shared, own) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.shared.load(Ordering::Relaxed),
            self.own.load(Ordering::Relaxed),
        )
    }
}

/// The shared recent messages of one conversation.
#[derive(Default)]
pub struct Feed {
    tail: Mutex<Tail>,
}

/// Messages with `from < seq <= from + messages.len()`, contiguous (seqs have no gaps).
#[derive(Default)]
struct Tail {
    from: i64,
    messages: VecDeque<Arc<MessageRow>>,
    bytes: usize,
}

/// What a held message counts against [`TAIL_BYTES`]: its body and its attachments'
/// references (up to ten URIs of 2 KiB each).
fn held_bytes(message: &MessageRow) -> usize {
    message.body.len()
        + message
            .attachments()
            .iter()
            .map(|a| a.uri.len() + a.content_type.len() + a.sha256.len() + a.file_name.len())
            .sum::<usize>()
}

impl Tail {
    fn head(&self) -> i64 {
        self.from + i64::try_from(self.messages.len()).unwrap_or(i64::MAX)
    }

    fn push(&mut self, message: MessageRow) {
        self.bytes += held_bytes(&message);
        self.messages.push_back(Arc::new(message));
        while self.messages.len() > TAIL_MESSAGES
            || (self.bytes > TAIL_BYTES && self.messages.len() > 1)
        {
            if let Some(old) = self.messages.pop_front() {
                self.bytes -= held_bytes(&old);
                self.from += 1;
            }
        }
    }

    /// The tail's messages with `after < seq <= up_to`, if it holds all of them.
    fn between(&self, after: i64, up_to: i64) -> Option<Vec<Arc<MessageRow>>> {
        if after < self.from || up_to > self.head() {
            return None;
        }
        let skip = usize::try_from(after - self.from).ok()?;
        let take = usize::try_from(up_to - after).ok()?;
        Some(
            self.messages
                .iter()
                .skip(skip)
                .take(take)
                .cloned()
                .collect(),
        )
    }
}

/// What [`Feed::between`] found.
pub enum Shared {
    /// Every message asked for, oldest first.
    Messages(Vec<Arc<MessageRow>>),
    /// The stream is behind the shared tail (or the gap is too wide to share): it reads
    /// the table itself.
    Behind,
}

impl Feed {
    /// Drops the tail: the conversation's customer side changed (an erasure blanks the
    /// bodies of the customer's messages), so no stream may be served the old copies.
    /// The streams read what they need from the table again. When a stream holds the
    /// tail right now, it is dropped as soon as that stream lets go.
    pub fn forget(self: &Arc<Self>) {
        match self.tail.try_lock() {
            Ok(mut tail) => *tail = Tail::default(),
            Err(_) => {
                let feed = Arc::clone(self);
                tokio::spawn(async move { *feed.tail.lock().await = Tail::default() });
            }
        }
    }

    /// Adds messages a notice carried (contiguous seqs, oldest first). Best effort: when
    /// a stream is reading meanwhile, or the messages do not follow the tail, the tail
    /// starts over at them or keeps what it has, and the streams read what they miss.
    pub fn offer(&self, conversation_id: Uuid, messages: Vec<Carried>) {
        let Some(first) = messages.first() else {
            return;
        };
        let Ok(mut tail) = self.tail.try_lock() else {
            return;
        };
        let before = first.seq - 1;
        if tail.messages.is_empty() || tail.head() < before {
            *tail = Tail {
                from: before,
                ..Tail::default()
            };
        }
        for message in messages {
            if message.seq != tail.head() + 1 {
                continue;
            }
            let Some(row) = message.into_row(conversation_id) else {
                return;
            };
            tail.push(row);
        }
    }

    /// Messages of conversation `id` with `after < seq <= up_to`, where `up_to` is a
    /// committed head (from a wake-up). At most one stream reads the table at a time; the
    /// others wait for it and take its result.
    pub async fn between(
        &self,
        store: &Store,
        id: Uuid,
        after: i64,
        up_to: i64,
        reads: &ReadCounts,
    ) -> Result<Shared> {
        if up_to <= after {
            return Ok(Shared::Messages(Vec::new()));
        }
        let mut tail = self.tail.lock().await;
        if let Some(found) = tail.between(after, up_to) {
            return Ok(Shared::Messages(found));
        }
        if tail.messages.is_empty() || after > tail.head() {
            // Nothing shared yet, or everything shared is older than this stream: start
            // the tail where this stream stands.
            *tail = Tail {
                from: after,
                ..Tail::default()
            };
        }
        let head = tail.head();
        let missing = up_to - head;
        if after < tail.from || missing > i64::try_from(TAIL_MESSAGES).unwrap_or(i64::MAX) {
            return Ok(Shared::Behind);
        }
        reads.count(true);
        let rows = store.messages_between(id, head, up_to, missing).await?;
        for row in rows {
            if row.seq != tail.head() + 1 {
                // Not contiguous (cannot happen while seqs are gapless): share nothing.
                *tail = Tail::default();
                return Ok(Shared::Behind);
            }
            tail.push(row);
        }
        Ok(tail
            .between(after, up_to)
            .map_or(Shared::Behind, Shared::Messages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    fn message(seq: i64, body: usize) -> MessageRow {
        MessageRow {
            conversation_id: crate::domain::ConversationId(Uuid::nil()),
            seq,
            id: Uuid::nil(),
            sender_role: Role::Provider,
            sender_id: "p1".into(),
            body: "x".repeat(body),
            client_message_id: None,
            created_at: chrono::DateTime::UNIX_EPOCH,
            edited_at: None,
            edit_count: 0,
            deleted: false,
            attachments: None,
            last_change: 0,
        }
    }

    fn seqs(found: Option<Vec<Arc<MessageRow>>>) -> Option<Vec<i64>> {
        found.map(|m| m.iter().map(|m| m.seq).collect())
    }

    #[test]
    fn the_tail_answers_only_what_it_holds_whole() {
        let mut tail = Tail {
            from: 10,
            ..Tail::default()
        };
        for seq in 11..=15 {
            tail.push(message(seq, 1));
        }
        assert_eq!(seqs(tail.between(10, 15)), Some(vec![11, 12, 13, 14, 15]));
        assert_eq!(seqs(tail.between(12, 14)), Some(vec![13, 14]));
        assert_eq!(seqs(tail.between(9, 12)), None, "older than the tail");
        assert_eq!(seqs(tail.between(14, 16)), None, "newer than the tail");
    }

    #[tokio::test]
    async fn a_forgotten_feed_holds_no_message() {
        let feed = Arc::new(Feed::default());
        {
            let mut tail = feed.tail.lock().await;
            tail.push(message(1, 5));
            assert_eq!(seqs(tail.between(0, 1)), Some(vec![1]));
        }
        feed.forget();
        let tail = feed.tail.lock().await;
        assert!(tail.messages.is_empty() && tail.bytes == 0);
        assert_eq!(seqs(tail.between(0, 1)), None);
    }

    #[tokio::test]
    async fn a_feed_forgotten_while_a_stream_holds_it_is_emptied_when_it_lets_go() {
        let feed = Arc::new(Feed::default());
        let mut held = feed.tail.lock().await;
        held.push(message(1, 5));
        feed.forget();
        drop(held);
        tokio::task::yield_now().await;
        let tail = feed.tail.lock().await;
        assert!(
            tail.messages.is_empty(),
            "the old copy outlived the erasure"
        );
    }

    #[test]
    fn the_tail_is_bounded_by_count_and_bytes() {
        let mut tail = Tail::default();
        for seq in 1..=100 {
            tail.push(message(seq, 10));
        }
        assert_eq!(tail.messages.len(), TAIL_MESSAGES);
        assert_eq!(tail.head(), 100);
        assert_eq!(tail.from, 100 - TAIL_MESSAGES as i64);

        let mut tail = Tail::default();
        for seq in 1..=10 {
            tail.push(message(seq, 20 * 1024));
        }
        assert!(tail.bytes <= TAIL_BYTES);
        assert_eq!(tail.head(), 10);
        // One message larger than the budget is still kept, alone.
        tail.push(message(11, 100 * 1024));
        assert_eq!(seqs(tail.between(10, 11)), Some(vec![11]));
    }

    fn carried(seqs: std::ops::RangeInclusive<i64>) -> Vec<Carried> {
        seqs.map(|seq| Carried {
            seq,
            id: Uuid::now_v7(),
            sender_role: Role::Provider,
            sender_id: "p1".into(),
            body: format!("m{seq}"),
            client_message_id: None,
            created_micros: 1_764_000_000_000_000,
            attachments: Vec::new(),
        })
        .collect()
    }

    fn held(feed: &Feed, after: i64, up_to: i64) -> Option<Vec<i64>> {
        let tail = feed.tail.try_lock().ok()?;
        seqs(tail.between(after, up_to))
    }

    #[test]
    fn offered_messages_extend_the_tail_or_start_it_over_after_a_gap() {
        let feed = Feed::default();
        let id = Uuid::now_v7();
        feed.offer(id, carried(4..=5));
        assert_eq!(held(&feed, 3, 5), Some(vec![4, 5]));
        // What the tail already holds is skipped, what follows is added.
        feed.offer(id, carried(5..=7));
        assert_eq!(held(&feed, 3, 7), Some(vec![4, 5, 6, 7]));
        // A gap (8 was never offered): the tail starts over at 9; a stream at 7 reads 8.
        feed.offer(id, carried(9..=9));
        assert_eq!(held(&feed, 7, 9), None);
        assert_eq!(held(&feed, 8, 9), Some(vec![9]));
        // A carried message that cannot be a row (an impossible time) is not shared: the
        // streams read it from the table.
        let mut bad = carried(10..=10);
        bad[0].created_micros = i64::MAX;
        feed.offer(id, bad);
        assert_eq!(held(&feed, 9, 10), None);
        assert_eq!(held(&feed, 8, 9), Some(vec![9]));
        // Bodies and ids come through.
        let tail = feed.tail.try_lock().unwrap();
        let message = tail.messages.back().unwrap();
        assert_eq!((message.seq, message.body.as_str()), (9, "m9"));
        assert_eq!(message.conversation_id.0, id);
    }
}
