//! `Client`: the generated ConversationService client, plus `send` with idempotent
//! retries and the resuming `follow` / `follow_inbox`.

use std::sync::Arc;

use chat_proto::v1::{
    self, SendMessageRequest, SendMessageResponse,
    conversation_service_client::ConversationServiceClient,
};
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::config::ClientConfig;
use crate::error::Error;
use crate::follow::{ConversationPosition, Follow, InboxPosition};
use crate::transport::{Raw, Transport};

/// Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct Client<T = Channel> {
    raw: Raw<T>,
    config: Arc<ClientConfig>,
}

impl Client<Channel> {
    /// A client of the service at `config.url`; it connects on first use.
    pub fn connect(config: ClientConfig) -> Result<Self, Error> {
        let channel = config.channel()?;
        Self::with_service(channel, config)
    }
}

impl<T: Transport> Client<T> {
    /// A client over any gRPC transport (a `Channel` wrapped in tower layers, say);
    /// `config.url` and `config.tls` are then the transport's business.
    pub fn with_service(service: T, config: ClientConfig) -> Result<Self, Error> {
        let raw = ConversationServiceClient::with_interceptor(service, config.credentials()?);
        Ok(Self {
            raw,
            config: Arc::new(config),
        })
    }

    /// The generated client, for every call this layer does not wrap.
    pub fn conversations(&self) -> Raw<T> {
        self.raw.clone()
    }

    /// SendMessage, retried on UNAVAILABLE and DEADLINE_EXCEEDED (and a connection that
    /// died mid-call, which tonic reports as UNKNOWN) with the same
    /// `client_message_id` (one is made when the request has none): a retry of a send
    /// that was written returns the original message (`created == false`) instead of
    /// writing a second one.
    pub async fn send(
        &self,
        mut request: SendMessageRequest,
    ) -> Result<SendMessageResponse, Error> {
        if request.client_message_id.is_empty() {
            request.client_message_id = uuid::Uuid::new_v4().to_string();
        }
        let mut backoff = Backoff::new(self.config.backoff);
        let mut attempt = 1;
        loop {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(self.config.request_timeout);
            match self.raw.clone().send_message(call).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) => {
                    let error = Error::from(status);
                    if !error.is_transient() || attempt >= self.config.send_attempts {
                        return Err(error);
                    }
                    tracing::debug!(attempt, %error, "SendMessage failed; retrying with the same client_message_id");
                }
            }
            attempt += 1;
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Follows one conversation from after `after_seq` (0: its whole history; a
    /// GetConversation's `head_seq`: from now on): a snapshot (again after every
    /// reconnect, so a status change or a link missed while away is seen), every message
    /// exactly once in `seq` order, then receipts, typing and status changes. Heartbeats
    /// keep the idle timer alive and are not passed on. Ends with an error only when the
    /// service answers about the request itself (NOT_FOUND, PERMISSION_DENIED, ...).
    /// Dropping the `Follow` closes the stream.
    pub fn follow(
        &self,
        conversation_id: impl Into<String>,
        viewer: v1::Participant,
        after_seq: i64,
    ) -> Follow<v1::StreamConversationResponse> {
        let position = ConversationPosition::new(conversation_id.into(), viewer, after_seq);
        Follow::spawn(self.raw.clone(), Arc::clone(&self.config), position)
    }

    /// Follows everything that touches `participant`, from after `cursor` (empty: from
    /// now on), resuming from the cursor of the last event received. Until the first
    /// event (a heartbeat at the latest) a reconnect starts from "now" again: the service
    /// sends no cursor before its first event. Heartbeats are passed on (their cursor is
    /// the one to store).
    pub fn follow_inbox(
        &self,
        participant: v1::Participant,
        cursor: impl Into<String>,
    ) -> Follow<v1::StreamInboxResponse> {
        let position = InboxPosition::new(participant, cursor.into());
        Follow::spawn(self.raw.clone(), Arc::clone(&self.config), position)
    }
}
