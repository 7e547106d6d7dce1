//! Drives the outbox: the RPC that queued a call makes it at once (retrying with backoff
//! for a bounded time), and a background worker finishes whatever is left: after
//! conversation-service was down, after a crash, after a restart. Every call is idempotent
//! (CreateConversation by the session id, UpdateCustomer by its content), and a session's
//! calls never overlap: each is made only with its session's turn (see `store::turns`),
//! so contact details given later are never overwritten by older ones.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::future::join_all;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    conversations::{CallError, Conversations},
    domain::{ConversationId, CustomerId, CustomerLink, Session, now},
    error::Error,
    store::{Done, OutboxCall, OutboxJob, Store},
};

/// The first pause between two attempts inside an RPC; it doubles after each.
const FIRST_INLINE_RETRY: Duration = Duration::from_millis(50);
/// Backoff stops doubling here (`retry_max` caps it long before), so it cannot overflow.
const MAX_DOUBLINGS: u32 = 16;
/// A call that keeps failing is logged at its first failure and every this many after.
const LOG_EVERY_NTH_FAILURE: u32 = 10;

#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// Deadline of one call.
    pub call_timeout: Duration,
    /// How long an RPC keeps trying before leaving its call to the worker.
    pub inline_wait: Duration,
    pub retry: Duration,
    pub retry_max: Duration,
    pub poll: Duration,
    pub batch: u32,
}

#[derive(Clone)]
pub struct Outbox {
    store: Store,
    conversations: Conversations,
    settings: OutboxSettings,
    wake: Arc<Notify>,
    /// Health's last word on conversation-service: while it is down an RPC makes one
    /// attempt instead of waiting out `inline_wait`.
    reachable: Arc<AtomicBool>,
}

impl OutboxSettings {
    /// Delay before attempt `attempts + 1`: doubling from `retry`, capped at `retry_max`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.min(MAX_DOUBLINGS));
        self.retry.saturating_mul(factor).min(self.retry_max)
    }
}

pub fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Outbox {
    pub fn new(store: Store, conversations: Conversations, settings: OutboxSettings) -> Self {
        Self {
            store,
            conversations,
            settings,
            wake: Arc::new(Notify::new()),
            reachable: Arc::new(AtomicBool::new(true)),
        }
    }

    /// What the outbox works with, for another queue of calls to conversation-service
    /// (the erasures).
    pub fn parts(&self) -> (Store, Conversations, OutboxSettings) {
        (
            self.store.clone(),
            self.conversations.clone(),
            self.settings.clone(),
        )
    }

    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }

    /// Asks the worker to look at the queue now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Makes a call this caller holds, retrying transient failures until `inline_wait`
    /// has passed. Returns what it achieved, or the error that left it queued.
    async fn call_inline(&self, job: &OutboxJob) -> Result<Done, CallError> {
        // Known down: one attempt (it may be back already), then answer PENDING at once.
        let wait = if self.reachable.load(Ordering::Relaxed) {
            self.settings.inline_wait
        } else {
            self.settings.inline_wait.min(self.settings.call_timeout)
        };
        let deadline = Instant::now() + wait;
        let mut delay = FIRST_INLINE_RETRY;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CallError::Transient(tonic::Status::unavailable(
                    "inline wait elapsed",
                )));
            }
            let timeout = self.settings.call_timeout.min(remaining);
            match self.conversations.call(&job.call, timeout).await {
                Err(CallError::Transient(status)) => {
                    tracing::debug!(job_id = job.job_id.get(), code = ?status.code(), "conversation-service call failed; retrying");
                    if Instant::now() + delay >= deadline || !self.reachable.load(Ordering::Relaxed)
                    {
                        return Err(CallError::Transient(status));
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                outcome => return outcome,
            }
        }
    }

    /// Records a call's effect; a call queued behind it may run now.
    async fn finish(&self, job: OutboxJob, done: Done) -> Result<Session, Error> {
        let session = self.store.complete(&job, done).await?;
        // The session's turn ends before the worker looks for its next call. Only a
        // session with a call still queued (an UpdateCustomer: it has a customer) wakes
        // the worker: a wake per redemption would scan the queue once per redemption.
        drop(job);
        if session.link == CustomerLink::Pending {
            self.wake();
        }
        Ok(session)
    }

    /// Makes a queued CreateConversation now. `None`: left queued for the worker.
    pub async fn create_now(&self, job: OutboxJob) -> Result<Option<Session>, Error> {
        match self.call_inline(&job).await {
            Ok(done) => self.finish(job, done).await.map(Some),
            Err(error) => {
                self.settle_failure(&job, error).await?;
                Ok(None)
            }
        }
    }

    /// Makes a queued UpdateCustomer now. A refusal for good reaches the caller instead
    /// of the queue: the call is withdrawn and the session gets `previous` back, so it
    /// stays as it was. `None`: left queued for the worker.
    pub async fn link_now(
        &self,
        job: OutboxJob,
        previous: Option<CustomerId>,
    ) -> Result<Option<Session>, Error> {
        match self.call_inline(&job).await {
            Ok(done) => self.finish(job, done).await.map(Some),
            Err(CallError::Permanent(refusal)) => {
                tracing::info!(job_id = job.job_id.get(), session_id = %job.session_id, %refusal,
                    "conversation-service refused UpdateCustomer; the session is left as it was");
                self.store
                    .withdraw_link(job.job_id, job.session_id, previous)
                    .await?;
                drop(job);
                self.wake();
                Err(Error::Refused(refusal))
            }
            Err(error) => {
                self.settle_failure(&job, error).await?;
                Ok(None)
            }
        }
    }

    /// Records a failed call: retried later, or given up when it can never succeed.
    async fn settle_failure(&self, job: &OutboxJob, error: CallError) -> Result<(), Error> {
        let next = now() + to_chrono(self.settings.backoff(job.attempts));
        match (&job.call, &error) {
            (OutboxCall::UpdateCustomer { .. }, CallError::Permanent(refusal)) => {
                // Nobody waits for this answer any more: it shows on GetSession
                // (CUSTOMER_LINK_STATE_FAILED) and stays in the outbox for operators.
                tracing::warn!(job_id = job.job_id.get(), session_id = %job.session_id, %refusal,
                    "conversation-service refused a queued UpdateCustomer; giving up");
                self.store.give_up(job.job_id, now(), refusal).await
            }
            (OutboxCall::CreateConversation { .. }, CallError::Permanent(refusal)) => {
                // Never dropped: a session must end up with its conversation.
                tracing::error!(job_id = job.job_id.get(), session_id = %job.session_id, %refusal,
                    "conversation-service refused CreateConversation; will keep retrying");
                let next = now() + to_chrono(self.settings.retry_max);
                self.store
                    .retry_later(job.job_id, next, error.to_string())
                    .await
            }
            _ => {
                // The first failure and every tenth are worth a line; the rest is noise.
                if job.attempts.is_multiple_of(LOG_EVERY_NTH_FAILURE) {
                    tracing::info!(job_id = job.job_id.get(), session_id = %job.session_id, attempts = job.attempts + 1,
                        error = %error, "conversation-service call queued for retry");
                } else {
                    tracing::debug!(job_id = job.job_id.get(), attempts = job.attempts + 1, error = %error,
                        "conversation-service call still failing");
                }
                self.store
                    .retry_later(job.job_id, next, error.to_string())
                    .await
            }
        }
    }

    /// One attempt of a call claimed by the worker.
    async fn attempt(&self, job: OutboxJob) {
        let outcome = match self
            .conversations
            .call(&job.call, self.settings.call_timeout)
            .await
        {
            Ok(done) => self.store.complete(&job, done).await.map(|session| {
                tracing::info!(job_id = job.job_id.get(), session_id = %session.session_id,
                    conversation_id = ?session.conversation_id.as_ref().map(ConversationId::as_str), "queued call completed");
                true
            }),
            Err(error) => self.settle_failure(&job, error).await.map(|()| false),
        };
        let job_id = job.job_id.get();
        // The session's turn ends here; a completed call may have a successor due now.
        drop(job);
        match outcome {
            Ok(true) => self.wake(),
            Ok(false) => {}
            // The call stays queued and is tried again.
            Err(e) => {
                tracing::warn!(job_id, error = %e, "could not record an outbox call's outcome");
            }
        }
    }

    /// The background worker: runs due calls until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll) => {}
            }
            loop {
                let jobs = match self.store.claim_due(now(), self.settings.batch).await {
                    Ok(jobs) => jobs,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the outbox");
                        break;
                    }
                };
                let full = jobs.len() >= self.settings.batch as usize;
                join_all(jobs.into_iter().map(|job| self.attempt(job))).await;
                if !full || shutdown.is_cancelled() {
                    break;
                }
            }
        }
        tracing::debug!("outbox worker stopped");
    }

    /// conversation-service came back: everything waiting for a retry is due now.
    pub async fn retry_all_now(&self) {
        match self.store.reschedule_all(now()).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    calls = n,
                    "conversation-service reachable; retrying queued calls now"
                );
                self.wake();
            }
            Err(e) => tracing::warn!(error = %e, "cannot reschedule the outbox"),
        }
    }
}
