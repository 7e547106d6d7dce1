//! What a client runs over, named once for the client and its follows.

use chat_proto::v1::conversation_service_client::ConversationServiceClient;
use tonic::body::Body;
use tonic::codegen::{Service, StdError, http};
use tonic::service::interceptor::InterceptedService;

use crate::config::Credentials;

/// What a `Client` can run over: a `Channel`, or a `Channel` wrapped in tower layers.
/// A stand-in for a trait alias (not stable Rust): the bounds, then the blanket impl that
/// gives it to every type meeting them.
pub trait Transport:
    Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error: Into<StdError> + Send + Sync,
        Future: Send,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Transport for T where
    T: Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error: Into<StdError> + Send + Sync,
            Future: Send,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The generated client with the caller's credentials on every call.
pub type Raw<T> = ConversationServiceClient<InterceptedService<T, Credentials>>;
