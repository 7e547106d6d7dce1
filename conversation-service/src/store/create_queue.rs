//! The write path of CreateConversation. Each create is a transaction with a NOTIFY, and
//! NOTIFY holds a global lock from pre-commit to the WAL flush, so one transaction per
//! create caps near the database's fsync rate. Concurrent creates are instead queued and
//! written together (`create::create_batch`): one transaction and one NOTIFY
//! statement per batch, each caller answered once its conversation is committed.

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::{create::create_batch, records::ConversationRow, turns::Turns};
use crate::{
    domain::NewConversation,
    error::{Error, Result},
};

/// Most creates per transaction.
const BATCH_MAX: usize = 128;
/// Transactions in flight: while one commits, the next batch gathers.
pub(super) const WRITERS: usize = 2;

/// The conversation and whether this call created it (false: a retry or a reuse).
pub type Created = (ConversationRow, bool);
type Job = (NewConversation, oneshot::Sender<Result<Created>>);

/// Handle to the writer tasks; cheap to clone. The writers hold only the pool, so they
/// stop once every handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct CreateQueue {
    jobs: mpsc::Sender<Job>,
}

impl CreateQueue {
    /// Starts the writer tasks (within a Tokio runtime).
    pub fn start(pool: PgPool) -> Self {
        let (jobs, turns) = Turns::<Job>::channel(BATCH_MAX * WRITERS * 4, BATCH_MAX, None);
        for _ in 0..WRITERS {
            let pool = pool.clone();
            let turns = turns.clone();
            tokio::spawn(async move {
                while let Some((batch, turn)) = turns.next().await {
                    write_and_answer(&pool, batch).await;
                    drop(turn);
                }
            });
        }
        Self { jobs }
    }

    pub async fn create(&self, new: NewConversation) -> Result<Created> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send((new, reply))
            .await
            .map_err(|_| Error::Unavailable("the service is shutting down".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the conversation writer stopped".into()))?
    }
}

async fn write_and_answer(pool: &PgPool, batch: Vec<Job>) {
    let (news, replies): (Vec<NewConversation>, Vec<_>) = batch.into_iter().unzip();
    let failed = match create_batch(pool, &news).await {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
            return;
        }
        Err(error) => error,
    };
    if news.len() == 1 || matches!(failed, Error::Unavailable(_)) {
        // Alone already, or the database is gone: writing singly would only wait longer.
        let message = failed.to_string();
        let mut failed = Some(failed);
        for reply in replies {
            let error = failed
                .take()
                .unwrap_or_else(|| Error::Unavailable(message.clone()));
            let _ = reply.send(Err(error));
        }
        return;
    }
    // One bad apple (or a deadlock with another replica's batch) must not fail its
    // neighbours: write each alone.
    tracing::debug!(error = %failed, size = news.len(), "create batch failed; writing singly");
    for (new, reply) in news.into_iter().zip(replies) {
        let result = create_batch(pool, std::slice::from_ref(&new))
            .await
            .and_then(|mut results| results.pop().unwrap_or(Err(Error::ConversationNotFound)));
        let _ = reply.send(result);
    }
}
