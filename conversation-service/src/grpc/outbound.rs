//! What a server stream sends: the deliveries of its task, turned into responses as they
//! leave, until the server shuts down.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use crate::realtime::{presence::PresenceGuard, streams::Item};

/// A stream task's items as responses. When the server shuts down: UNAVAILABLE at once,
/// ahead of anything still buffered, so a client that is behind still learns to resume
/// (it resumes from the last item it got) instead of seeing a clean end after a partial
/// delivery.
pub struct Outbound<T, R> {
    items: ReceiverStream<Item<T>>,
    respond: fn(T) -> R,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    resume_from: &'static str,
    ended: bool,
    /// Counts the stream's participant as present while the client holds it open.
    _presence: Option<PresenceGuard>,
}

impl<T, R> Outbound<T, R> {
    pub fn new(
        items: mpsc::Receiver<Item<T>>,
        respond: fn(T) -> R,
        shutdown: &CancellationToken,
        resume_from: &'static str,
    ) -> Self {
        Self {
            items: ReceiverStream::new(items),
            respond,
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
            resume_from,
            ended: false,
            _presence: None,
        }
    }

    /// Keeps `presence` for as long as the stream is open.
    #[must_use]
    pub fn holding(mut self, presence: Option<PresenceGuard>) -> Self {
        self._presence = presence;
        self
    }
}

impl<T, R> Stream for Outbound<T, R> {
    type Item = Result<R, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.shutdown.as_mut().poll(cx).is_ready() {
            self.ended = true;
            let message = format!("server shutting down; resume from {}", self.resume_from);
            return Poll::Ready(Some(Err(Status::unavailable(message))));
        }
        let respond = self.respond;
        self.items
            .poll_next_unpin(cx)
            .map(|item| item.map(|item| (*item).map(respond)))
    }
}
