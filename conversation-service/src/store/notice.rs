//! The NOTIFY payload, written by the store in the same transaction as the rows it
//! names, read by the realtime listener. It says "look": streams read the tables, which
//! are the truth. For new messages it also carries the messages themselves when they fit
//! (so live delivery needs no read back); a stream that cannot use them reads the table.
//! Field names are long in code and one letter on the wire (payloads must stay under
//! PostgreSQL's 8000 bytes). Unknown fields are ignored, so replicas of the previous
//! release read these payloads too.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use sqlx::{Postgres, Transaction};

use super::records::MessageRow;
use crate::{
    domain::{Attachment, ConversationId, Role, Status},
    error::{Error, Result},
};

/// The channel every replica LISTENs on.
pub const CHANNEL: &str = "chat_events";

/// How a [`Notice::Messages`] payload begins: the tag first, then its list.
const MESSAGES_PREFIX: &str = r#"{"k":"m","m":"#;

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
    /// The messages the write added, oldest first, ending at `head_seq`; empty when they
    /// did not fit the payload.
    #[serde(rename = "n", default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Carried>,
}

/// A message as a notice carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    #[serde(rename = "s")]
    pub seq: i64,
    #[serde(rename = "i")]
    pub id: Uuid,
    #[serde(rename = "r")]
    pub sender_role: Role,
    #[serde(rename = "a")]
    pub sender_id: String,
    #[serde(rename = "b")]
    pub body: String,
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
    /// `created_at` in microseconds since the epoch (what PostgreSQL stores).
    #[serde(rename = "t")]
    pub created_micros: i64,
    #[serde(rename = "f", default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

impl Carried {
    pub fn of(row: &MessageRow) -> Self {
        Self {
            seq: row.seq,
            id: row.id,
            sender_role: row.sender_role,
            sender_id: row.sender_id.clone(),
            body: row.body.clone(),
            client_message_id: row.client_message_id.clone(),
            created_micros: row.created_at.timestamp_micros(),
            attachments: row.attachments().to_vec(),
        }
    }

    /// The stored row this was made from (`None` for an impossible timestamp).
    pub fn into_row(self, conversation_id: Uuid) -> Option<MessageRow> {
        Some(MessageRow {
            conversation_id: ConversationId(conversation_id),
            created_at: DateTime::<Utc>::from_timestamp_micros(self.created_micros)?,
            seq: self.seq,
            id: self.id,
            sender_role: self.sender_role,
            sender_id: self.sender_id,
            body: self.body,
            client_message_id: self.client_message_id,
            // A carried message is one just sent: never edited or deleted.
            edited_at: None,
            edit_count: 0,
            deleted: false,
            attachments: (!self.attachments.is_empty())
                .then_some(sqlx::types::Json(self.attachments)),
            last_change: 0,
        })
    }
}

/// One participant's presence as a notice carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceNote {
    #[serde(rename = "r")]
    pub role: Role,
    #[serde(rename = "a")]
    pub id: String,
    #[serde(rename = "o")]
    pub online: bool,
    /// For a customer: the providers of its most recent conversations, whose inboxes
    /// show its presence.
    #[serde(rename = "w", default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
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
        role: Role,
        #[serde(rename = "id")]
        reader_id: String,
        seq: i64,
    },
    /// Someone is typing (never stored).
    #[serde(rename = "t")]
    Typing {
        #[serde(rename = "c")]
        conversation_id: Uuid,
        role: Role,
        #[serde(rename = "id")]
        sender_id: String,
    },
    /// A status change.
    #[serde(rename = "s")]
    Status {
        #[serde(rename = "c")]
        conversation_id: Uuid,
        status: Status,
        #[serde(rename = "p")]
        provider_id: String,
        #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
        customer_id: Option<String>,
    },
    /// Customer linked or details changed; `customer_id` is the customer now linked.
    /// `erased`: the change was an erasure (a replica of the previous release ignores
    /// the field and shows it as an update).
    #[serde(rename = "u")]
    Customer {
        #[serde(rename = "c")]
        conversation_id: Uuid,
        #[serde(rename = "p")]
        provider_id: String,
        #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
        customer_id: Option<String>,
        #[serde(rename = "e", default, skip_serializing_if = "std::ops::Not::not")]
        erased: bool,
    },
    /// A message was edited or deleted: `change_seq` is the conversation's change
    /// position after it. Streams read the change rows from the table.
    #[serde(rename = "e")]
    Changed {
        #[serde(rename = "c")]
        conversation_id: Uuid,
        #[serde(rename = "x")]
        change_seq: i64,
        /// The message is gone: feeds drop what they hold of this conversation.
        #[serde(rename = "d", default)]
        deleted: bool,
        #[serde(rename = "p")]
        provider_id: String,
        #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
        customer_id: Option<String>,
    },
    /// Participants whose presence changed (announced once, by whichever replica saw it).
    #[serde(rename = "p")]
    Presence {
        #[serde(rename = "c")]
        changes: Vec<PresenceNote>,
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

    /// The payload of a [`Notice::Messages`] whose touched conversations are already
    /// encoded (each as [`Touched`]'s JSON): what `encode` would write, without encoding
    /// them again.
    pub fn messages_payload(touched: &[String]) -> String {
        format!("{MESSAGES_PREFIX}[{}]}}", touched.join(","))
    }

    pub fn decode(payload: &str) -> Option<Self> {
        // An internally tagged enum is parsed twice (into serde's buffer to find the tag,
        // then into the variant), which for a batch's messages was the larger part of the
        // listener's work. A payload exactly as `messages_payload` writes it is parsed
        // once, straight into its list; anything else (and any trailing field) takes the
        // general path.
        if let Some(list) = payload
            .strip_prefix(MESSAGES_PREFIX)
            .and_then(|rest| rest.strip_suffix('}'))
            && let Ok(touched) = serde_json::from_str(list)
        {
            return Some(Self::Messages { touched });
        }
        serde_json::from_str(payload).ok()
    }
}

/// Queues a NOTIFY in the transaction: delivered at commit, dropped on rollback.
pub(crate) async fn notify(tx: &mut Transaction<'_, Postgres>, notice: &Notice) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(notice.encode())
        .execute(&mut **tx)
        .await
        .map_err(|e| Error::db("notify", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let row = MessageRow {
            conversation_id: ConversationId(Uuid::now_v7()),
            seq: 7,
            id: Uuid::now_v7(),
            sender_role: Role::Customer,
            sender_id: String::new(),
            body: "quote \" and newline \n and ünïcode".into(),
            client_message_id: Some("k1".into()),
            created_at: DateTime::<Utc>::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            edited_at: None,
            edit_count: 0,
            deleted: false,
            attachments: None,
            last_change: 0,
        };
        let notice = Notice::Messages {
            touched: vec![Touched {
                conversation_id: row.conversation_id.0,
                head_seq: 7,
                provider_id: "p1".into(),
                customer_id: None,
                messages: vec![Carried::of(&row)],
            }],
        };
        let decoded = Notice::decode(&notice.encode());
        assert_eq!(decoded, Some(notice));
        let Some(Notice::Messages { touched }) = decoded else {
            unreachable!()
        };
        assert_eq!(
            touched[0].messages[0]
                .clone()
                .into_row(row.conversation_id.0),
            Some(row)
        );
        assert_eq!(Notice::decode("{\"k\":\"zz\"}"), None);
    }

    #[test]
    fn a_payload_joined_from_encoded_items_is_what_encode_writes() {
        let touched: Vec<Touched> = (1..=3)
            .map(|seq| Touched {
                conversation_id: Uuid::now_v7(),
                head_seq: seq,
                provider_id: "p1".into(),
                customer_id: Some("c1".into()),
                messages: Vec::new(),
            })
            .collect();
        let items: Vec<String> = touched
            .iter()
            .map(|t| serde_json::to_string(t).unwrap())
            .collect();
        assert_eq!(
            Notice::messages_payload(&items),
            Notice::Messages { touched }.encode()
        );
    }

    /// The list parsed on its own gives what the general path gives; a payload with
    /// anything more, or spaced differently, still decodes (by the general path).
    #[test]
    fn a_messages_payload_decodes_alike_on_both_paths() {
        let nil = "00000000-0000-0000-0000-000000000000";
        let item = format!(
            r#"{{"c":"{nil}","s":7,"p":"p1","u":"c1","n":[{{"s":7,"i":"{nil}","r":2,"a":"c1","b":"hi }}","t":1764000000123456}}]}}"#
        );
        let payload = Notice::messages_payload(&[item.clone(), item.clone()]);
        let general: Option<Notice> = serde_json::from_str(&payload).ok();
        assert!(general.is_some());
        assert_eq!(Notice::decode(&payload), general);
        for variant in [
            format!(r#"{{"k":"m","m":[{item}],"z":1}}"#),
            format!(r#"{{ "k":"m","m":[{item}]}}"#),
            format!(r#"{{"m":[{item}],"k":"m"}}"#),
        ] {
            let Some(Notice::Messages { touched }) = Notice::decode(&variant) else {
                panic!("not decoded: {variant}");
            };
            assert_eq!(touched.len(), 1);
            assert_eq!(touched[0].messages[0].body, "hi }");
        }
        assert_eq!(Notice::decode(r#"{"k":"m","m":[{"c":"x"}]}"#), None);
    }

    /// Replicas of the previous release read and write the same bytes.
    #[test]
    fn the_wire_keeps_its_short_names() {
        let nil = "00000000-0000-0000-0000-000000000000";
        let messages = format!(r#"{{"k":"m","m":[{{"c":"{nil}","s":7,"p":"p1","u":"c1"}}]}}"#);
        let read = format!(r#"{{"k":"r","c":"{nil}","role":2,"id":"c1","seq":3}}"#);
        let status = format!(r#"{{"k":"s","c":"{nil}","status":2,"p":"p1"}}"#);
        let changed = format!(r#"{{"k":"e","c":"{nil}","x":4,"d":true,"p":"p1","u":"c1"}}"#);
        let customer = format!(r#"{{"k":"u","c":"{nil}","p":"p1","u":"c1"}}"#);
        let erased = format!(r#"{{"k":"u","c":"{nil}","p":"p1","u":"c1","e":true}}"#);
        for wire in [messages, read, status, changed, customer, erased] {
            let notice = Notice::decode(&wire).unwrap();
            assert_eq!(notice.encode(), wire);
        }
        // A customer notice without `e` (the previous release's) is an update.
        let update = Notice::decode(&format!(r#"{{"k":"u","c":"{nil}","p":"p1"}}"#));
        assert!(matches!(
            update,
            Some(Notice::Customer { erased: false, .. })
        ));
    }
}
