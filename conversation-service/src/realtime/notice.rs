//! The NOTIFY payload: which conversations and participants to wake. It carries no
//! message content; streams read the tables, which are the truth.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A conversation whose head moved, with whose inboxes care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touched {
    /// Conversation id.
    pub c: Uuid,
    /// Its head seq after the write.
    pub s: i64,
    /// Provider id.
    pub p: String,
    /// Linked customer id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Notice {
    /// New messages (one notice per batch transaction, chunked under 8000 bytes).
    #[serde(rename = "m")]
    Messages { m: Vec<Touched> },
    /// A read position moved.
    #[serde(rename = "r")]
    Read {
        c: Uuid,
        role: i16,
        id: String,
        seq: i64,
    },
    /// Someone is typing (never stored).
    #[serde(rename = "t")]
    Typing { c: Uuid, role: i16, id: String },
    /// A status change.
    #[serde(rename = "s")]
    Status {
        c: Uuid,
        status: i16,
        p: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        u: Option<String>,
    },
    /// Customer linked or details changed. `u` is the customer now linked.
    #[serde(rename = "u")]
    Customer {
        c: Uuid,
        p: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        u: Option<String>,
    },
    /// A new conversation.
    #[serde(rename = "n")]
    Created {
        c: Uuid,
        p: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        u: Option<String>,
    },
}

impl Notice {
    pub fn encode(&self) -> String {
        // Plain data always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(payload: &str) -> Option<Self> {
        serde_json::from_str(payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let notice = Notice::Messages {
            m: vec![Touched {
                c: Uuid::nil(),
                s: 7,
                p: "p1".into(),
                u: None,
            }],
        };
        assert_eq!(Notice::decode(&notice.encode()), Some(notice));
        assert_eq!(Notice::decode("{\"k\":\"zz\"}"), None);
    }
}
