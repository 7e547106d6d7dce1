//! What a server stream sends: the deliveries of its logic, turned into responses as they
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

use crate::realtime::{
    presence::PresenceGuard,
    streams::{Item, Out},
};

/// A stream's items as responses. When the server shuts down: UNAVAILABLE at once,
/// ahead of anything not sent yet, so a client that is behind still learns to resume
/// (it resumes from the last item it got) instead of seeing a clean end after a partial
/// delivery.
pub struct Outbound<T, R> {
    items: Source<T>,
    respond: fn(T) -> R,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    resume_from: &'static str,
    ended: bool,
    /// Counts the stream's participant as present while the client holds it open.
    _presence: Option<PresenceGuard>,
}

type Logic = Pin<Box<dyn Future<Output = ()> + Send>>;

enum Source<T> {
    /// A task of its own sends the items.
    Channel(ReceiverStream<Item<T>>),
    /// The stream's logic, polled here as the client takes items: it hands them over
    /// through `out` one at a time. `None` once it returned.
    Logic { logic: Option<Logic>, out: Out<T> },
}

impl<T> Source<T> {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item<T>>> {
        match self {
            Self::Channel(items) => items.poll_next_unpin(cx),
            Self::Logic { logic, out } => {
                if let Some(running) = logic
                    && running.as_mut().poll(cx).is_ready()
                {
                    *logic = None;
                }
                match (out.take(), logic) {
                    (Some(item), _) => Poll::Ready(Some(item)),
                    (None, None) => Poll::Ready(None),
                    (None, Some(_)) => Poll::Pending,
                }
            }
        }
    }
}

impl<T, R> Outbound<T, R> {
    /// The items a task sends on `items`.
    pub fn new(
        items: mpsc::Receiver<Item<T>>,
        respond: fn(T) -> R,
        shutdown: &CancellationToken,
        resume_from: &'static str,
    ) -> Self {
        Self::from_source(
            Source::Channel(ReceiverStream::new(items)),
            respond,
            shutdown,
            resume_from,
        )
    }

    /// The items `logic` hands to `out`; `logic` runs as the response body is polled.
    pub fn run(
        logic: Logic,
        out: Out<T>,
        respond: fn(T) -> R,
        shutdown: &CancellationToken,
        resume_from: &'static str,
    ) -> Self {
        let items = Source::Logic {
            logic: Some(logic),
            out,
        };
        Self::from_source(items, respond, shutdown, resume_from)
    }

    fn from_source(
        items: Source<T>,
        respond: fn(T) -> R,
        shutdown: &CancellationToken,
        resume_from: &'static str,
    ) -> Self {
        Self {
            items,
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
            .poll_next(cx)
            .map(|item| item.map(|item| (*item).map(respond)))
    }
}
