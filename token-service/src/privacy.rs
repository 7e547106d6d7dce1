//! Erasing a customer across both stores. token-service erases its own part in one
//! transaction that also queues conversation-service's (`erasures`, an outbox of its
//! own), then makes that call at once; if it fails, a background worker makes it until it
//! succeeds, after a crash or a restart too. Both parts are idempotent, so a call repeated
//! after a crash erases nothing twice.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    conversations::{CallError, Conversations},
    domain::{CustomerId, Erasure, RequestId, now},
    error::Error,
    outbox::{Outbox, OutboxSettings, to_chrono},
    store::{ErasureAttempt, ErasureJob, Store},
};

#[derive(Clone)]
pub struct Erasures {
    store: Store,
    conversations: Conversations,
    settings: OutboxSettings,
    wake: Arc<Notify>,
}

impl Erasures {
    /// Erasures ride on the outbox's store, client and timings; they have their own queue
    /// (`erasures`) and worker.
    pub fn new(outbox: &Outbox) -> Self {
        let (store, conversations, settings) = outbox.parts();
        Self {
            store,
            conversations,
            settings,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Erases `customer_id` (or returns the erasure `request_id` made before), making
    /// conversation-service's part once before answering.
    pub async fn erase(
        &self,
        request_id: RequestId,
        customer_id: CustomerId,
    ) -> Result<Erasure, Error> {
        let erasure = self
            .store
            .erase_customer(request_id, customer_id, now())
            .await?;
        // The erased rows are zeroed in the new page versions; the old ones sit in the
        // WAL until it is checkpointed and truncated.
        if let Err(error) = self.store.checkpoint().await {
            tracing::warn!(%error, "WAL not truncated after an erasure; the next one retries");
        }
        if erasure.complete_time.is_some() {
            return Ok(erasure);
        }
        match self.store.claim_erasure(request_id).await? {
            Some(job) => Ok(self.attempt(job).await?.unwrap_or(erasure)),
            // Its sessions have a call in flight, or the worker is making it right now.
            None => {
                self.wake.notify_one();
                Ok(erasure)
            }
        }
    }

    /// One attempt at conversation-service's part: the erasure once done, `None` when it
    /// stays queued.
    async fn attempt(&self, job: ErasureJob) -> Result<Option<Erasure>, Error> {
        let call = &job.call;
        let attempt = match self
            .conversations
            .erase_customer(call, self.settings.call_timeout)
            .await
        {
            Ok(erased) => {
                tracing::info!(request_id = %call.request_id, conversations = erased.conversations,
                    messages = erased.messages, "erasure complete");
                ErasureAttempt::Done(erased)
            }
            Err(error) => {
                let delay = match &error {
                    // Never given up: the erasure is owed. A refusal needs a fix in
                    // conversation-service, so it is retried at the slowest pace.
                    CallError::Permanent(refusal) => {
                        tracing::error!(request_id = %call.request_id, %refusal,
                            "conversation-service refused an erasure; will keep retrying");
                        self.settings.retry_max
                    }
                    _ => {
                        tracing::info!(request_id = %call.request_id, attempts = call.attempts + 1,
                            %error, "erasure queued for retry");
                        self.settings.backoff(call.attempts)
                    }
                };
                ErasureAttempt::RetryAt(now() + to_chrono(delay), error.to_string())
            }
        };
        let erasure = self.store.settle_erasure(&job, attempt, now()).await?;
        Ok(erasure.complete_time.is_some().then_some(erasure))
    }

    /// The background worker: makes due erasures until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            self.run_due().await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll) => {}
            }
        }
        tracing::debug!("erasure worker stopped");
    }

    async fn run_due(&self) {
        let due = match self.store.due_erasures(now(), self.settings.batch).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot read the erasures");
                return;
            }
        };
        for request_id in due {
            let outcome = match self.store.claim_erasure(request_id).await {
                Ok(Some(job)) => self.attempt(job).await.map(drop),
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            };
            if let Err(error) = outcome {
                tracing::warn!(%request_id, %error, "could not make a queued erasure");
            }
        }
    }
}
