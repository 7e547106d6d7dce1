//! Resuming streams: one task per `Follow` opens the stream, passes events on through a
//! bounded channel, and on a failure that is an outage (not an answer) opens it again
//! from the last position delivered, after a jittered backoff. The task ends when the
//! `Follow` is dropped or the service answers with a refusal.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use chat_proto::v1::{self, stream_conversation_response::Event as ConversationEvent};
use futures::Stream;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tonic::{Code, Streaming};

use crate::backoff::Backoff;
use crate::config::ClientConfig;
use crate::error::Error;
use crate::transport::{Raw, Transport};

/// Events of a followed conversation or inbox. A `Stream`; dropping it stops following.
pub struct Follow<E> {
    events: mpsc::Receiver<Result<E, Error>>,
    reconnects: Arc<AtomicU64>,
}

impl<E: Send + 'static> Follow<E> {
    pub(crate) fn spawn<T, P>(raw: Raw<T>, config: Arc<ClientConfig>, position: P) -> Self
    where
        P: Position<T, Event = E>,
        T: Transport,
    {
        // Small: the consumer's pace sets the stream's; the service buffers no more than
        // its own bounded queue either.
        let (tx, events) = mpsc::channel(16);
        let reconnects = Arc::new(AtomicU64::new(0));
        tokio::spawn(follow(raw, config, position, tx, Arc::clone(&reconnects)));
        Self { events, reconnects }
    }

    /// How many times the stream was reopened so far (for logs and metrics).
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
}

impl<E> Stream for Follow<E> {
    type Item = Result<E, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

/// What to do with an event.
pub(crate) enum Verdict {
    Deliver,
    Skip,
    Reopen,
}

/// Where a stream stands and how to reopen it from there.
pub(crate) trait Position<T>: Send + 'static {
    type Event: Send + 'static;
    fn open(
        &self,
        raw: Raw<T>,
    ) -> BoxFuture<'static, Result<Streaming<Self::Event>, tonic::Status>>;
    /// Decides an event's fate and moves the position past it if it is delivered.
    fn judge(&mut self, event: &Self::Event) -> Verdict;
}

pub(crate) struct ConversationPosition {
    conversation_id: String,
    viewer: v1::Participant,
    last_seq: i64,
}

impl ConversationPosition {
    pub(crate) fn new(conversation_id: String, viewer: v1::Participant, after_seq: i64) -> Self {
        Self {
            conversation_id,
            viewer,
            last_seq: after_seq,
        }
    }
}

impl<T: Transport> Position<T> for ConversationPosition {
    type Event = v1::StreamConversationResponse;

    fn open(
        &self,
        mut raw: Raw<T>,
    ) -> BoxFuture<'static, Result<Streaming<Self::Event>, tonic::Status>> {
        let request = v1::StreamConversationRequest {
            conversation_id: self.conversation_id.clone(),
            viewer: Some(self.viewer.clone()),
            after_seq: self.last_seq,
            // Follows messages only; edits and deletions come live (see docs/design.md).
            after_change: None,
        };
        Box::pin(async move {
            raw.stream_conversation(request)
                .await
                .map(tonic::Response::into_inner)
        })
    }

    fn judge(&mut self, event: &Self::Event) -> Verdict {
        match &event.event {
            Some(ConversationEvent::Heartbeat(_)) => Verdict::Skip,
            Some(ConversationEvent::Message(message)) => {
                if message.seq <= self.last_seq {
                    // Delivered before a reconnect.
                    Verdict::Skip
                } else if message.seq != self.last_seq + 1 {
                    // The service promises no gaps; should one ever show, reopening from
                    // the last seq delivered fills it rather than passing it on.
                    Verdict::Reopen
                } else {
                    self.last_seq = message.seq;
                    Verdict::Deliver
                }
            }
            _ => Verdict::Deliver,
        }
    }
}

pub(crate) struct InboxPosition {
    participant: v1::Participant,
    cursor: String,
}

impl InboxPosition {
    pub(crate) fn new(participant: v1::Participant, cursor: String) -> Self {
        Self {
            participant,
            cursor,
        }
    }
}

impl<T: Transport> Position<T> for InboxPosition {
    type Event = v1::StreamInboxResponse;

    fn open(
        &self,
        mut raw: Raw<T>,
    ) -> BoxFuture<'static, Result<Streaming<Self::Event>, tonic::Status>> {
        let request = v1::StreamInboxRequest {
            participant: Some(self.participant.clone()),
            cursor: self.cursor.clone(),
        };
        Box::pin(async move {
            raw.stream_inbox(request)
                .await
                .map(tonic::Response::into_inner)
        })
    }

    fn judge(&mut self, event: &Self::Event) -> Verdict {
        // Windows after a cursor are disjoint (docs/design.md), so the cursor alone keeps
        // events from repeating.
        if !event.cursor.is_empty() {
            self.cursor.clone_from(&event.cursor);
        }
        Verdict::Deliver
    }
}

/// Codes after which reopening can succeed: the replica or the way to it went away
/// (UNAVAILABLE, also what a server sends as it shuts down), a proxy cut the stream
/// (INTERNAL, UNKNOWN: an HTTP/2 reset without a gRPC status), the open-stream limit
/// (RESOURCE_EXHAUSTED). Anything else answers the request itself and ends the stream.
fn resumable(error: &Error) -> bool {
    matches!(
        error.code(),
        Some(
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Internal
                | Code::Unknown
                | Code::Aborted
                | Code::ResourceExhausted
        )
    )
}

enum End {
    /// The `Follow` was dropped.
    ConsumerGone,
    Failed(Error),
}

async fn follow<T: Transport, P: Position<T>>(
    raw: Raw<T>,
    config: Arc<ClientConfig>,
    mut position: P,
    tx: mpsc::Sender<Result<P::Event, Error>>,
    reconnects: Arc<AtomicU64>,
) {
    let mut backoff = Backoff::new(config.backoff);
    loop {
        let error = match run_once(&raw, &config, &mut position, &tx, &mut backoff).await {
            End::ConsumerGone => return,
            End::Failed(error) => error,
        };
        if !resumable(&error) {
            let _ = tx.send(Err(error)).await;
            return;
        }
        let delay = backoff.next_delay();
        reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%error, ?delay, "stream lost; reopening from the last position delivered");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = tx.closed() => return,
        }
    }
}

/// One stream, from opening to its end.
async fn run_once<T: Transport, P: Position<T>>(
    raw: &Raw<T>,
    config: &ClientConfig,
    position: &mut P,
    tx: &mpsc::Sender<Result<P::Event, Error>>,
    backoff: &mut Backoff,
) -> End {
    let idle = config.idle_timeout;
    let opened = tokio::select! {
        opened = tokio::time::timeout(idle, position.open(raw.clone())) => opened,
        () = tx.closed() => return End::ConsumerGone,
    };
    let mut stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(status)) => return End::Failed(status.into()),
        Err(_) => return End::Failed(Error::unavailable("the stream did not open in time")),
    };
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(idle, stream.message()) => next,
            () = tx.closed() => return End::ConsumerGone,
        };
        let event = match next {
            Ok(Ok(Some(event))) => event,
            Ok(Ok(None)) => return End::Failed(Error::unavailable("the stream ended")),
            Ok(Err(status)) => return End::Failed(status.into()),
            Err(_) => {
                return End::Failed(Error::unavailable(
                    "no event, not even a heartbeat, within the idle timeout",
                ));
            }
        };
        backoff.reset();
        match position.judge(&event) {
            Verdict::Deliver => {
                if tx.send(Ok(event)).await.is_err() {
                    return End::ConsumerGone;
                }
            }
            Verdict::Skip => {}
            Verdict::Reopen => return End::Failed(Error::unavailable("a gap in seq; reopening")),
        }
    }
}
