//! The two steps of a customer's session that reach conversation-service, each one call
//! for its handler: redeeming a link (a use consumed, a session opened, its conversation
//! created) and identifying the customer (the customer linked to that conversation).
//!
//! Each runs the same protocol: the store records the step and queues its call in one
//! transaction, the call is made at once, and its outcome is recorded. What the call
//! cannot finish in time (conversation-service down or slow) the outbox worker finishes
//! later, and the caller hears PENDING.

use tracing::{Instrument, Span, field};

use crate::{
    domain::{ContactDetails, CustomerId, SecretHash, Session, now},
    error::Error,
    limiter::Reservation,
    outbox::Outbox,
    store::{Redemption, Store},
};

#[derive(Clone)]
pub struct Sessions {
    store: Store,
    outbox: Outbox,
}

impl Sessions {
    pub fn new(store: Store, outbox: Outbox) -> Self {
        Self { store, outbox }
    }

    /// RedeemToken: consumes one use of the link and opens a session, then creates its
    /// conversation. `guess` is settled by the lookup alone (an unknown link is a failed
    /// guess), before the call to conversation-service is made.
    pub async fn redeem(
        &self,
        redemption: Redemption,
        mut guess: Reservation,
    ) -> Result<Session, Error> {
        let redeemed = guess.settle(self.store.redeem(redemption, now()).await)?;
        drop(guess);
        let span = Span::current();
        span.record("token_id", field::display(redeemed.session.token_id));
        span.record("session_id", field::display(redeemed.session.session_id));
        span.record("replayed", redeemed.replayed);
        let mut session = redeemed.session;
        if let Some(job) = redeemed.job {
            let outbox = self.outbox.clone();
            if let Some(created) = detached(async move { outbox.create_now(job).await }).await? {
                session = created;
            }
        }
        if let Some(id) = &session.conversation_id {
            span.record("conversation_id", id.as_str());
        }
        Ok(session)
    }

    /// IdentifySession: links the session to `customer_id`, then tells its conversation.
    /// A refusal by conversation-service reaches the caller, and the session stays as it
    /// was.
    pub async fn identify(
        &self,
        secret: SecretHash,
        customer_id: CustomerId,
        contact: ContactDetails,
    ) -> Result<Session, Error> {
        let identified = self
            .store
            .identify(secret, customer_id, contact, now())
            .await?;
        record_session(&identified.session);
        let Some(job) = identified.job else {
            return Ok(identified.session);
        };
        let outbox = self.outbox.clone();
        let previous = identified.previous_customer;
        let linked = detached(async move { outbox.link_now(job, previous).await }).await?;
        Ok(linked.unwrap_or(identified.session))
    }
}

/// Makes a queued call now on its own task, so a client that hangs up does not cut it
/// short; the outbox worker finishes it if this does not.
async fn detached<F>(call: F) -> Result<Option<Session>, Error>
where
    F: Future<Output = Result<Option<Session>, Error>> + Send + 'static,
{
    tokio::spawn(call.instrument(Span::current()))
        .await
        .map_err(|e| Error::Internal(format!("outbox call task: {e}")))?
}

/// Records the session's ids on the RPC's span (declared by `chat_common::rpc::ServerLayer`).
pub fn record_session(session: &Session) {
    let span = Span::current();
    span.record("session_id", field::display(session.session_id));
    span.record("token_id", field::display(session.token_id));
    span.record("provider_id", session.provider_id.as_str());
    if let Some(id) = &session.conversation_id {
        span.record("conversation_id", id.as_str());
    }
}
