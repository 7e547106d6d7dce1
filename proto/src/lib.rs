//! The `chat.v1` contract shared by token-service, conversation-service and their tests.

pub mod chat {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("chat.v1");
    }
}

pub use chat::v1;

pub mod codec;
pub mod rules;

/// Encoded `FileDescriptorSet` of every `chat.v1` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chat_descriptor");
