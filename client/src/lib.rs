//! A client of conversation-service for Rust BFFs and internal services: the loop every
//! caller would otherwise write. Streams that resume by themselves from the last `seq`
//! (a conversation) or cursor (an inbox) across disconnects, restarts and replica
//! changes, with backoff and jitter, never delivering a message twice or skipping one;
//! sends retried on UNAVAILABLE and DEADLINE_EXCEEDED with the same `client_message_id`;
//! errors that carry the `google.rpc.ErrorInfo` reason; TLS and bearer tokens.
//!
//! ```no_run
//! # async fn demo() -> Result<(), chat_client::Error> {
//! use chat_client::{Client, ClientConfig, v1};
//! use futures::StreamExt;
//!
//! let client = Client::connect(ClientConfig::new("http://127.0.0.1:50051"))?;
//! let viewer = v1::Participant::provider("prov-1");
//! let mut events = client.follow("conversation id", viewer.clone(), 0);
//! client.send(v1::SendMessageRequest {
//!     conversation_id: "conversation id".into(),
//!     sender: Some(viewer),
//!     body: "hello".into(),
//!     ..Default::default()
//! }).await?;
//! while let Some(event) = events.next().await {
//!     println!("{:?}", event?.event);
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod client;
mod config;
mod error;
mod follow;
mod transport;

pub use backoff::BackoffConfig;
pub use chat_proto::v1;
pub use client::Client;
pub use config::{ClientConfig, Credentials, TlsConfig};
pub use error::{Error, FieldViolation, RpcError};
pub use follow::Follow;
pub use transport::{Raw, Transport};
