//! conversation-service: conversations, messages and read state in PostgreSQL, delivered
//! in real time over server-streaming gRPC, across replicas through LISTEN/NOTIFY.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod realtime;
pub mod startup;
pub mod store;
pub mod telemetry;
