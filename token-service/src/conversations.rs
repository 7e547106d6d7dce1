//! The client of conversation-service: the two calls the outbox makes, each with a
//! deadline, and the probe health uses. The channel connects lazily, so token-service
//! starts and serves while conversation-service is down.

use std::time::Duration;

use chat_proto::v1::{
    CreateConversationRequest, Customer, UpdateCustomerRequest,
    conversation_service_client::ConversationServiceClient,
};
use tonic::{
    Code, Status,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    error::{Error, Refusal},
    store::{Done, OutboxCall},
};

#[derive(Clone)]
pub struct Conversations {
    channel: Channel,
    max_message_bytes: usize,
}

/// Why a call did not succeed.
#[derive(Debug)]
pub enum CallError {
    /// Worth retrying: conversation-service down, overloaded, or too slow.
    Transient(Status),
    /// Refused for good (bad input, a precondition that will not change by waiting).
    Permanent(Refusal),
    /// The call cannot be made yet (its conversation does not exist yet).
    NotReady,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transient(s) => write!(f, "{:?}: {}", s.code(), s.message()),
            Self::Permanent(refusal) => refusal.fmt(f),
            Self::NotReady => f.write_str("conversation not created yet"),
        }
    }
}

/// Only what waiting cannot change is permanent; anything else (down, overloaded, a
/// misconfigured credential, a version skew) is retried until an operator fixes it.
fn classify(status: Status) -> CallError {
    match status.code() {
        Code::FailedPrecondition
        | Code::InvalidArgument
        | Code::NotFound
        | Code::PermissionDenied => CallError::Permanent(Refusal::from_status(&status)),
        _ => CallError::Transient(status),
    }
}

impl Conversations {
    pub fn new(url: &str, max_message_bytes: usize) -> Result<Self, Error> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| Error::Internal(format!("conversation-service URL {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        Ok(Self {
            channel: endpoint.connect_lazy(),
            max_message_bytes,
        })
    }

    fn client(&self) -> ConversationServiceClient<Channel> {
        ConversationServiceClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_message_bytes.max(4 * 1024 * 1024))
    }

    /// Makes one queued call with `timeout` as its deadline.
    pub async fn call(&self, call: &OutboxCall, timeout: Duration) -> Result<Done, CallError> {
        let attempt = async {
            match call {
                OutboxCall::CreateConversation {
                    request_id,
                    provider_id,
                    customer_id,
                    reuse_active,
                    origin,
                } => {
                    let mut request = tonic::Request::new(CreateConversationRequest {
                        request_id: request_id.clone(),
                        provider_id: provider_id.clone(),
                        customer: Some(Customer {
                            customer_id: customer_id.clone().unwrap_or_default(),
                            ..Customer::default()
                        }),
                        reuse_active: *reuse_active,
                        origin: origin.clone(),
                    });
                    request.set_timeout(timeout);
                    let reply = self
                        .client()
                        .create_conversation(request)
                        .await
                        .map_err(classify)?;
                    let conversation = reply.into_inner().conversation.ok_or_else(|| {
                        CallError::Transient(Status::internal(
                            "CreateConversation returned no conversation",
                        ))
                    })?;
                    Ok(Done::ConversationCreated {
                        conversation_id: conversation.conversation_id,
                    })
                }
                OutboxCall::UpdateCustomer {
                    conversation_id,
                    customer_id,
                    contact,
                } => {
                    let conversation_id = conversation_id.clone().ok_or(CallError::NotReady)?;
                    let mut request = tonic::Request::new(UpdateCustomerRequest {
                        conversation_id,
                        customer_id: Some(customer_id.clone()),
                        name: contact.name.clone(),
                        email: contact.email.clone(),
                        phone: contact.phone.clone(),
                    });
                    request.set_timeout(timeout);
                    self.client()
                        .update_customer(request)
                        .await
                        .map_err(classify)?;
                    Ok(Done::CustomerUpdated)
                }
            }
        };
        // The grpc-timeout header bounds the server; this bounds connecting and waiting.
        match tokio::time::timeout(timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(CallError::Transient(Status::deadline_exceeded(
                "conversation-service did not answer in time",
            ))),
        }
    }

    /// Whether conversation-service answers its health check with SERVING.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(timeout);
        let mut client = HealthClient::new(self.channel.clone());
        let check = client.check(request);
        matches!(
            tokio::time::timeout(timeout, check).await,
            Ok(Ok(reply)) if reply.get_ref().status == ServingStatus::Serving as i32
        )
    }
}
