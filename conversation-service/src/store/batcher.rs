//! The queue of SendMessage. NOTIFY takes a global lock from pre-commit to the WAL
//! flush, so one transaction (and one NOTIFY) per message caps throughput; concurrent
//! sends are instead queued and written together: one transaction per batch, each caller
//! answered once its message is committed. What a batch does is decided in `plan.rs`,
//! written in `send.rs`; this module only collects batches and answers callers.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};

use super::{
    handle::Store,
    send::{BatchError, Sent},
    turns::{Linger, Turns},
};
use crate::{
    domain::NewMessage,
    error::{Error, Result},
};

type Job = (NewMessage, oneshot::Sender<Result<Sent>>);

/// A batch under a quarter of the last one (of 8 or more) waits up to 1 ms for half of
/// it: senders with one call in flight each otherwise alternate full batches and tiny
/// ones, and settle on two of about half with it (docs/performance.md).
const LINGER: Linger = Linger {
    after: 8,
    for_at_most: std::time::Duration::from_millis(1),
};

/// Handle to the writer tasks; cheap to clone.
#[derive(Clone)]
pub struct SendQueue {
    jobs: mpsc::Sender<Job>,
}

impl SendQueue {
    /// Starts `writers` tasks, each writing up to `batch_max` queued messages per
    /// transaction, taking turns ([`Turns`]). They run on a thread of their own, so a
    /// writer waiting on the database is woken at once rather than behind the calls
    /// queued on the service's runtime. They stop once every handle is dropped and the
    /// queue is drained.
    ///
    /// # Errors
    /// When the thread or its runtime cannot be started.
    pub fn start(store: Store, writers: usize, batch_max: usize) -> std::io::Result<Self> {
        let (jobs, turns) =
            Turns::<Job>::channel(batch_max * writers.max(1) * 4, batch_max, Some(LINGER));
        let writers: Vec<_> = (0..writers.max(1))
            .map(move |_| {
                let (store, turns) = (store.clone(), turns.clone());
                async move {
                    while let Some((mut batch, turn)) = turns.next().await {
                        // A caller that left (deadline, cancel) is not written for: a
                        // blind retry of it must not duplicate.
                        batch.retain(|(_, reply)| !reply.is_closed());
                        if !batch.is_empty() {
                            let (size, started) = (batch.len(), std::time::Instant::now());
                            write_and_answer(&store, batch, false).await;
                            crate::metrics::send_batch(size, started.elapsed());
                        }
                        drop(turn);
                    }
                }
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("send-writers".into())
            .spawn(move || runtime.block_on(futures::future::join_all(writers)))?;
        Ok(Self { jobs })
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

/// Writes a batch. When it fails as a whole because a row lock was not granted in time
/// (a conversation locked elsewhere), each conversation's messages are written again in a
/// transaction of their own, all at once, each waiting longer for its lock (`patient`):
/// only the locked conversation's callers wait for it. When it fails for a reason that
/// may concern only some messages (a row the database refuses), each message is written
/// alone.
async fn write_and_answer(store: &Store, batch: Vec<Job>, patient: bool) {
    let (messages, replies): (Vec<NewMessage>, Vec<_>) = batch.into_iter().unzip();
    let result = store
        .write_messages(&messages, |i| replies[i].is_closed(), patient)
        .await;
    match &result {
        Err(BatchError::Busy) if !patient => {
            tracing::debug!(size = messages.len(), "batch busy; writing by conversation");
            let mut groups: HashMap<_, Vec<Job>> = HashMap::new();
            for job in messages.into_iter().zip(replies) {
                groups.entry(job.0.conversation_id.0).or_default().push(job);
            }
            let writes = groups
                .into_values()
                .map(|group| Box::pin(write_and_answer(store, group, true)));
            futures::future::join_all(writes).await;
        }
        // The database is gone: writing singly would only wait longer.
        Err(BatchError::Failed(error))
            if messages.len() > 1 && !matches!(error, Error::Unavailable(_)) =>
        {
            tracing::debug!(size = messages.len(), "batch failed; writing singly");
            write_singly(store, messages.into_iter().zip(replies).collect()).await;
        }
        _ => answer(replies, result),
    }
}

async fn write_singly(store: &Store, jobs: Vec<Job>) {
    for (message, reply) in jobs {
        if reply.is_closed() {
            continue;
        }
        let result = store
            .write_messages(std::slice::from_ref(&message), |_| reply.is_closed(), true)
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
