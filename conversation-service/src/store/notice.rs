//! The NOTIFY payload, written by the store in the same transaction as the rows it
//! names, read by the realtime listener. It carries no message content and only says
//! "look": streams read the tables, which are the truth. Field names are long in code and
//! one letter on the wire (payloads must stay under PostgreSQL's 8000 bytes).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The channel every replica LISTENs on.
pub const CHANNEL: &str = "chat_events";

/// A conversation whose head moved, with whose inboxes care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touched {
    #[serde(rename = "c")]
    pub conversation_id: Uuid,
    /// Its head seq after the write.
    #[serde(rename = "s")]
    pub head_seq: i64,
    #[serde(rename = "p")]
    pub provider_id: String,
    /// The linked customer, if any.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Notice {
    /// New messages (one notice per batch transaction, chunked under 8000 bytes).
    #[serde(rename = "m")]
    Messages {
        #[serde(rename = "m")]
        touched: Vec<Touched>,
    },
    /// A read position moved.
    #[serde(rename = "r")]
    Read {
        #[serde(rename = "c")]
        conversation_id: Uuid,
        role: i16,
        #[serde(rename = "id")]
        reader_id: String,
        seq: i64,
    },
    /// Someone is typing (never stored).
    #[serde(rename = "t")]
    Typing {
        #[serde(rename = "c")]
        conversation_id: Uuid,
        role: i16,
        #[serde(rename = "id")]
        sender_id: String,
    },
    /// A status change.
    #[serde(rename = "s")]
    Status {
        #[serde(rename = "c")]
        conversation_id: Uuid,
        status: i16,
        #[serde(rename = "p")]
        provider_id: String,
        #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
        customer_id: Option<String>,
    },
    /// Customer linked or details changed; `customer_id` is the customer now linked.
    #[serde(rename = "u")]
    Customer {
        #[serde(rename = "c")]
        conversation_id: Uuid,
        #[serde(rename = "p")]
        provider_id: String,
        #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
        customer_id: Option<String>,
    },
    /// A new conversation.
    #[serde(rename = "n")]
    Created {
        #[serde(rename = "c")]
        conversation_id: Uuid,
        #[serde(rename = "p")]
        provider_id: String,
        #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
        customer_id: Option<String>,
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
            touched: vec![Touched {
                conversation_id: Uuid::nil(),
                head_seq: 7,
                provider_id: "p1".into(),
                customer_id: None,
            }],
        };
        assert_eq!(Notice::decode(&notice.encode()), Some(notice));
        assert_eq!(Notice::decode("{\"k\":\"zz\"}"), None);
    }

    /// Replicas of the previous release read and write the same bytes.
    #[test]
    fn the_wire_keeps_its_short_names() {
        let nil = "00000000-0000-0000-0000-000000000000";
        let messages = format!(r#"{{"k":"m","m":[{{"c":"{nil}","s":7,"p":"p1","u":"c1"}}]}}"#);
        let read = format!(r#"{{"k":"r","c":"{nil}","role":2,"id":"c1","seq":3}}"#);
        let status = format!(r#"{{"k":"s","c":"{nil}","status":2,"p":"p1"}}"#);
        for wire in [messages, read, status] {
            let notice = Notice::decode(&wire).unwrap();
            assert_eq!(notice.encode(), wire);
        }
    }
}
