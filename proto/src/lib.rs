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

impl v1::Participant {
    /// A provider, named by its id.
    pub fn provider(id: impl Into<String>) -> Self {
        Self {
            role: v1::Role::Provider.into(),
            id: id.into(),
            session_id: String::new(),
        }
    }

    /// A known customer, named by its id.
    pub fn customer(id: impl Into<String>) -> Self {
        Self {
            role: v1::Role::Customer.into(),
            id: id.into(),
            session_id: String::new(),
        }
    }

    /// An anonymous visitor: a customer with no id yet, known by its session.
    pub fn anonymous(session_id: impl Into<String>) -> Self {
        Self {
            role: v1::Role::Customer.into(),
            id: String::new(),
            session_id: session_id.into(),
        }
    }
}
