//! The queue of SendMessage. NOTIFY takes a global lock from pre-commit to the WAL
//! flush, so one transaction (and one NOTIFY) per message caps throughput; concurrent
//! sends are instead queued and written together: one transaction per batch, each caller
//! answered once its message is committed. What a batch does is decided in `plan.rs`,
//! written in `send.rs`; this module only collects batches and answers callers.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::{
    Store,
    plan::NewMessage,
    send::{BatchError, Sent},
};
use crate::error::{Error, Result};

type Job = (NewMessage, oneshot::Sender<Result<Sent>>);

/// Handle to the writer tasks; cheap to clone.
#[derive(Clone)]
pub struct SendQueue {
    jobs: mpsc::Sender<Job>,
}

impl SendQueue {
    /// Starts `writers` tasks, each writing up to `batch_max` queued messages per
    /// transaction. They stop once every handle is dropped and the queue is drained.
    pub fn start(store: Store, writers: usize, batch_max: usize) -> Self {
        let batch_max = batch_max.max(1);
        let (jobs, receiver) = mpsc::channel::<Job>(batch_max * writers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..writers.max(1) {
            let store = store.clone();
            let receiver = Arc::clone(&receiver);
            tokio::spawn(async move {
                loop {
                    let mut batch = Vec::new();
                    {
                        // Whoever holds the receiver collects the next batch; the others
                        // wait here while it is written, so batches grow under load.
                        let mut receiver = receiver.lock().await;
                        let Some(first) = receiver.recv().await else {
                            return;
                        };
                        batch.push(first);
                        while batch.len() < batch_max {
                            match receiver.try_recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => break,
                            }
                        }
                    }
                    // A caller that left (deadline, cancel) is not written for: a blind
                    // retry of it must not duplicate.
                    batch.retain(|(_, reply)| !reply.is_closed());
                    if !batch.is_empty() {
                        let (size, started) = (batch.len(), std::time::Instant::now());
                        write_and_answer(&store, batch).await;
                        crate::metrics::send_batch(size, started.elapsed());
                    }
                }
            });
        }
        Self { jobs }
    }

    /// Appends one message; resolves once it is committed (or found, for a retry).
    pub async fn send(&self, message: NewMessage) -> Result<Sent> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send((message, reply))
            .await
            .map_err(|_| Error::Unavailable("the service is shutting down".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the message writer stopped".into()))?
    }
}

/// Writes a batch; when it fails as a whole for a reason that may concern only some of
/// its messages (a locked conversation, a row the database refuses), writes each alone
/// so neighbours are not failed with it.
async fn write_and_answer(store: &Store, batch: Vec<Job>) {
    let (messages, replies): (Vec<NewMessage>, Vec<_>) = batch.into_iter().unzip();
    let result = store
        .write_messages(&messages, |i| replies[i].is_closed())
        .await;
    let single_retry = messages.len() > 1
        && match &result {
            Err(BatchError::Busy) => true,
            // The database is gone: writing singly would only wait longer.
            Err(BatchError::Failed(error)) => !matches!(error, Error::Unavailable(_)),
            Ok(_) => false,
        };
    if !single_retry {
        answer(replies, result);
        return;
    }
    tracing::debug!(size = messages.len(), "batch failed; writing singly");
    for (message, reply) in messages.into_iter().zip(replies) {
        if reply.is_closed() {
            continue;
        }
        let result = store
            .write_messages(std::slice::from_ref(&message), |_| reply.is_closed())
            .await;
        answer(vec![reply], result);
    }
}

fn answer(
    replies: Vec<oneshot::Sender<Result<Sent>>>,
    result: Result<Vec<Option<Result<Sent>>>, BatchError>,
) {
    match result {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                if let Some(result) = result {
                    let _ = reply.send(result);
                }
            }
        }
        Err(error) => {
            let error = Error::from(error);
            if let [_] = replies.as_slice() {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(error));
                }
                return;
            }
            for reply in replies {
                let _ = reply.send(Err(copy(&error)));
            }
        }
    }
}

/// A batch error for each of its callers (database errors are not Clone; the first
/// copy keeps the detail for the log, the caller only ever sees the code).
fn copy(error: &Error) -> Error {
    match error {
        Error::Unavailable(message) => Error::Unavailable(message.clone()),
        other => Error::Internal {
            context: "send messages",
            source: other.to_string().into(),
        },
    }
}
