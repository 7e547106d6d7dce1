//! The client of conversation-service: the two calls the outbox makes, each with a
//! deadline, and the probe health uses. The channel connects lazily, so token-service
//! starts and serves while conversation-service is down. Every call goes through
//! `chat_common::rpc::ClientLayer`: it carries the caller's trace (`traceparent`) and is
//! counted in `grpc_client_*`.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use chat_common::rpc::{ClientLayer, ClientService};
use chat_proto::v1::{
    CreateConversationRequest, Customer, EraseCustomerConversationsRequest,
    ExportCustomerConversationsRequest, ExportCustomerConversationsResponse, UpdateCustomerRequest,
    conversation_privacy_service_client::ConversationPrivacyServiceClient,
    conversation_service_client::ConversationServiceClient,
};
use tonic::{
    Code, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tower::Layer;

use crate::{
    config::ClientSecurity,
    domain::{ConversationId, ConversationsErased, CustomerId, ErasureCall},
    error::{Error, Refusal},
    store::{Done, OutboxCall},
};

/// conversation-service's readiness in its health service (`""` is only its liveness);
/// token-service reports what it sees of it under the same name.
pub const READINESS: &str = "chat.v1.ConversationService";

/// A replica that does not accept a connection within this is treated as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pings on idle connections, so a dead replica is noticed before a call waits on it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Replies up to tonic's default limit are always accepted, whatever our own request
/// limit is.
const MIN_REPLY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub struct Conversations {
    connection: Arc<RwLock<Arc<Connection>>>,
    credentials: Arc<Credentials>,
    /// Counts the calls and carries their trace (wraps whichever connection is current).
    layer: ClientLayer,
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

fn endpoint(url: &str) -> Result<Endpoint, Error> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|e| config_error(format!("URL {url:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Only what waiting cannot change is permanent; anything else (down, overloaded, a
/// misconfigured credential, a version skew) is retried until an operator fixes it.
pub(crate) fn classify(status: Status) -> CallError {
    // A refusal of token-service itself (its certificate, token or grants) is fixed by
    // configuration, not by the request: keep the call queued until it is, and say so.
    let refused_caller = status.code() == Code::Unauthenticated
        || (status.code() == Code::PermissionDenied
            && tonic_types::StatusExt::get_details_error_info(&status)
                .is_some_and(|info| info.reason == "METHOD_NOT_GRANTED"));
    if refused_caller {
        tracing::error!(code = ?status.code(), message = status.message(),
            "conversation-service does not accept token-service as a caller; check the client \
             certificate / token and its CALLERS_FILE");
        return CallError::Transient(status);
    }
    match status.code() {
        Code::FailedPrecondition
        | Code::InvalidArgument
        | Code::NotFound
        | Code::PermissionDenied => CallError::Permanent(Refusal::from_status(&status)),
        _ => CallError::Transient(status),
    }
}

fn ids(conversation_ids: &[ConversationId]) -> Vec<String> {
    conversation_ids
        .iter()
        .map(|id| id.as_str().to_owned())
        .collect()
}

/// What a connection to conversation-service is made of; re-read when the files change.
struct Credentials {
    /// One per replica; several are balanced per call.
    endpoints: Vec<Endpoint>,
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    token_file: Option<PathBuf>,
}

/// The channel and bearer token in use; swapped whole on a rotation (calls in flight keep
/// the old channel).
struct Connection {
    channel: Channel,
    /// `Bearer <token>`, sent with every call when configured.
    authorization: Option<MetadataValue<Ascii>>,
}

fn config_error(message: String) -> Error {
    Error::Internal(format!("conversation-service: {message}"))
}

impl Credentials {
    fn files(&self) -> Vec<PathBuf> {
        let identity = self
            .identity
            .iter()
            .flat_map(|(c, k)| [c.clone(), k.clone()]);
        self.ca
            .iter()
            .cloned()
            .chain(identity)
            .chain(self.token_file.iter().cloned())
            .collect()
    }

    fn connect(&self) -> Result<Connection, Error> {
        let mut endpoints = self.endpoints.clone();
        if let Some(ca) = &self.ca {
            let identity = self
                .identity
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path()));
            let tls = chat_common::tls::client_tls(ca, identity)
                .map_err(|e| config_error(e.to_string()))?;
            endpoints = endpoints
                .into_iter()
                .map(|endpoint| endpoint.tls_config(tls.clone()))
                .collect::<Result<_, _>>()
                .map_err(|e| config_error(format!("TLS: {e}")))?;
        }
        let channel = match endpoints.as_slice() {
            [] => return Err(config_error("no URL given".to_owned())),
            [one] => one.connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        let authorization = self
            .token_file
            .as_deref()
            .map(|path| {
                let token = std::fs::read_to_string(path)
                    .map_err(|e| config_error(format!("reading {}: {e}", path.display())))?;
                MetadataValue::try_from(format!("Bearer {}", token.trim()))
                    .map_err(|_| config_error(format!("{}: not a printable token", path.display())))
            })
            .transpose()?;
        Ok(Connection {
            channel,
            authorization,
        })
    }
}

impl Conversations {
    /// `urls`: one URL, or several separated by commas (replicas), balanced per call.
    /// `https://` URLs get TLS verified against `CONVERSATION_SERVICE_CA` (and, when
    /// given, present the client certificate); without a CA it is an error, never
    /// plaintext. TLS settings with `http://` URLs are an error too, and so is a mix.
    pub fn new(
        urls: &str,
        max_message_bytes: usize,
        security: &ClientSecurity,
    ) -> Result<Self, Error> {
        let urls: Vec<&str> = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect();
        let endpoints = urls
            .iter()
            .map(|url| endpoint(url))
            .collect::<Result<Vec<_>, _>>()?;
        let https = urls.iter().all(|url| url.starts_with("https://"));
        if !https && urls.iter().any(|url| url.starts_with("https://")) {
            return Err(config_error(format!(
                "{urls:?} mixes https:// and plaintext URLs"
            )));
        }
        let url = urls.join(",");
        if urls.is_empty() {
            return Err(config_error("no URL given".to_owned()));
        }
        let identity = security
            .conversation_service_client_cert
            .clone()
            .zip(security.conversation_service_client_key.clone());
        match (https, &security.conversation_service_ca) {
            (true, None) => {
                return Err(config_error(format!(
                    "{url} is https:// but CONVERSATION_SERVICE_CA is not set: \
                     its certificate could not be verified"
                )));
            }
            (false, ca) if ca.is_some() || identity.is_some() => {
                return Err(config_error(format!(
                    "TLS settings are given but {url} is not https://"
                )));
            }
            _ => {}
        }
        let credentials = Credentials {
            endpoints,
            ca: security.conversation_service_ca.clone(),
            identity,
            token_file: security.conversation_service_token_file.clone(),
        };
        let connection = credentials.connect()?;
        Ok(Self {
            connection: Arc::new(RwLock::new(Arc::new(connection))),
            credentials: Arc::new(credentials),
            layer: ClientLayer::new(chat_proto::FILE_DESCRIPTOR_SET),
            max_message_bytes,
        })
    }

    fn current(&self) -> Arc<Connection> {
        match self.connection.read() {
            Ok(connection) => Arc::clone(&connection),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the CA, client certificate and token (on SIGHUP or when they change,
    /// every `interval`), so they rotate without a restart. A failed read keeps the
    /// connection in use.
    pub fn watch(
        &self,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        chat_common::tls::watch_files(this.credentials.files(), interval, stop, move || match this
            .credentials
            .connect()
        {
            Ok(connection) => {
                if let Ok(mut current) = this.connection.write() {
                    *current = Arc::new(connection);
                }
                tracing::info!("conversation-service client credentials reloaded");
            }
            Err(error) => tracing::error!(%error,
                    "conversation-service client credentials not reloaded; keeping the previous ones"),
        })
    }

    fn client(&self) -> ConversationServiceClient<ClientService<Channel>> {
        ConversationServiceClient::new(self.layer.layer(self.current().channel.clone()))
            .max_decoding_message_size(self.max_message_bytes.max(MIN_REPLY_BYTES))
    }

    fn privacy_client(&self) -> ConversationPrivacyServiceClient<ClientService<Channel>> {
        ConversationPrivacyServiceClient::new(self.layer.layer(self.current().channel.clone()))
            .max_decoding_message_size(self.max_message_bytes.max(MIN_REPLY_BYTES))
    }

    /// Asks conversation-service to erase its part of a customer, with `timeout` as the
    /// deadline.
    pub async fn erase_customer(
        &self,
        call: &ErasureCall,
        timeout: Duration,
    ) -> Result<ConversationsErased, CallError> {
        let request = EraseCustomerConversationsRequest {
            request_id: call.request_id.to_string(),
            customer_id: call.customer_id.as_str().to_owned(),
            conversation_ids: ids(&call.conversation_ids),
        };
        let mut client = self.privacy_client();
        let attempt = client.erase_customer_conversations(self.request(request, timeout));
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                Ok(ConversationsErased {
                    conversations: reply.conversations_erased,
                    messages: reply.messages_erased,
                })
            }
            Ok(Err(status)) => Err(classify(status)),
            Err(_) => Err(CallError::Transient(Status::deadline_exceeded(
                "conversation-service did not answer in time",
            ))),
        }
    }

    /// conversation-service's part of a customer's export, as it streams it; `timeout`
    /// bounds the whole stream.
    pub async fn export_customer(
        &self,
        customer_id: &CustomerId,
        conversation_ids: &[ConversationId],
        timeout: Duration,
    ) -> Result<tonic::Streaming<ExportCustomerConversationsResponse>, Status> {
        let request = ExportCustomerConversationsRequest {
            customer_id: customer_id.as_str().to_owned(),
            conversation_ids: ids(conversation_ids),
        };
        let mut client = self.privacy_client();
        let opened = client.export_customer_conversations(self.request(request, timeout));
        match tokio::time::timeout(timeout, opened).await {
            Ok(reply) => reply.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(
                "conversation-service did not answer in time",
            )),
        }
    }

    /// A request with the bearer token, if any, and `timeout` as its deadline.
    fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.current().authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request.set_timeout(timeout);
        request
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
                    // The session id is the request id: conversation-service binds the
                    // anonymous visitor to it.
                    let request = CreateConversationRequest {
                        request_id: request_id.to_string(),
                        session_id: request_id.to_string(),
                        provider_id: provider_id.as_str().to_owned(),
                        customer: Some(Customer {
                            customer_id: customer_id
                                .as_ref()
                                .map(|c| c.as_str().to_owned())
                                .unwrap_or_default(),
                            ..Customer::default()
                        }),
                        reuse_active: *reuse_active,
                        origin: origin.clone(),
                    };
                    self.create_conversation(request, timeout).await
                }
                OutboxCall::UpdateCustomer {
                    conversation_id,
                    customer_id,
                    contact,
                } => {
                    let request = UpdateCustomerRequest {
                        conversation_id: conversation_id
                            .as_ref()
                            .map(|id| id.as_str().to_owned())
                            .ok_or(CallError::NotReady)?,
                        customer_id: Some(customer_id.as_str().to_owned()),
                        name: contact.name.clone(),
                        email: contact.email.clone(),
                        phone: contact.phone.clone(),
                    };
                    self.update_customer(request, timeout).await
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

    async fn create_conversation(
        &self,
        request: CreateConversationRequest,
        timeout: Duration,
    ) -> Result<Done, CallError> {
        let reply = self
            .client()
            .create_conversation(self.request(request, timeout))
            .await
            .map_err(classify)?;
        let conversation = reply.into_inner().conversation.ok_or_else(|| {
            CallError::Transient(Status::internal(
                "CreateConversation returned no conversation",
            ))
        })?;
        Ok(Done::ConversationCreated {
            conversation_id: ConversationId::created(conversation.conversation_id),
        })
    }

    async fn update_customer(
        &self,
        request: UpdateCustomerRequest,
        timeout: Duration,
    ) -> Result<Done, CallError> {
        self.client()
            .update_customer(self.request(request, timeout))
            .await
            .map_err(classify)?;
        Ok(Done::CustomerUpdated)
    }

    /// Whether conversation-service is ready: its readiness check (its service name;
    /// `""` is only its liveness) says SERVING.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        let request = self.request(
            HealthCheckRequest {
                service: READINESS.to_owned(),
            },
            timeout,
        );
        let mut client = HealthClient::new(self.layer.layer(self.current().channel.clone()));
        let check = client.check(request);
        matches!(
            tokio::time::timeout(timeout, check).await,
            Ok(Ok(reply)) if reply.get_ref().status == ServingStatus::Serving as i32
        )
    }
}
