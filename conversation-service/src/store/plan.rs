//! What a SendMessage batch does, decided without the database: given the locked
//! conversation rows, the messages already stored under the batch's idempotency keys and
//! the batch, each message is refused, answered with an existing message, or inserted
//! with the next seq. The SQL step (`send.rs`) only reads the inputs and carries this out.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::records::MessageRow;
use crate::{
    domain::{ConversationId, NewMessage, Role, Status},
    error::Error,
};

/// A conversation row a batch is planned on: as locked (`FOR UPDATE`), as read without a
/// lock, or as this replica last wrote it (`rows.rs`); the write checks the latter two.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Locked {
    pub id: Uuid,
    pub provider_id: String,
    pub customer_id: Option<String>,
    pub status: Status,
    pub head_seq: i64,
}

/// An idempotency key: scoped to the conversation and the sender's side.
pub type ClientKey = (Uuid, Role, String);

/// The fate of one message of the batch.
#[derive(Debug)]
pub enum Decision {
    Refused(Error),
    /// An idempotent retry: this message is already stored (or inserted earlier in the
    /// same batch).
    Existing(MessageRow),
    Insert(MessageRow),
    /// Its caller has gone (deadline passed, cancelled): not written, so a blind retry
    /// cannot duplicate it.
    Abandoned,
}

/// The head and the senders' read positions a batch leaves on one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch {
    /// The head the batch was planned on (the row's `head_seq` when read).
    pub base: i64,
    pub head: i64,
    pub provider_read: i64,
    pub customer_read: i64,
    pub provider_id: String,
    pub customer_id: Option<String>,
}

#[derive(Debug)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// Conversations that get new messages, by id (the order rows are updated in).
    pub touched: BTreeMap<Uuid, Touch>,
}

impl Plan {
    pub fn inserts(&self) -> impl Iterator<Item = &MessageRow> {
        self.decisions.iter().filter_map(|d| match d {
            Decision::Insert(row) => Some(row),
            _ => None,
        })
    }
}

/// Decides every message of `batch` (`gone[i]`: the caller of message i has left).
/// Checks, in order: the conversation exists, the sender belongs to it, the sender's
/// key was used before (same body: the original; other body: CLIENT_MESSAGE_ID_REUSED),
/// the conversation is open. A retry is answered even after the conversation closed.
pub fn plan(
    batch: &[NewMessage],
    gone: &[bool],
    locked: &HashMap<Uuid, Locked>,
    existing: &HashMap<ClientKey, MessageRow>,
    now: DateTime<Utc>,
    mut new_id: impl FnMut() -> Uuid,
) -> Plan {
    let mut heads: HashMap<Uuid, i64> = HashMap::new();
    let mut inserted: HashMap<ClientKey, MessageRow> = HashMap::new();
    let mut touched: BTreeMap<Uuid, Touch> = BTreeMap::new();
    let mut decisions = Vec::with_capacity(batch.len());
    for (index, message) in batch.iter().enumerate() {
        let id = message.conversation_id.0;
        let decision = 'decide: {
            if gone.get(index).copied().unwrap_or(false) {
                break 'decide Decision::Abandoned;
            }
            let Some(conversation) = locked.get(&id) else {
                break 'decide Decision::Refused(Error::ConversationNotFound);
            };
            if !message.sender.belongs_to(
                &conversation.provider_id,
                conversation.customer_id.as_deref(),
            ) {
                break 'decide Decision::Refused(Error::NotParticipant);
            }
            let key = message
                .client_message_id
                .as_ref()
                .map(|k| (id, message.sender.role(), k.clone()));
            if let Some(key) = &key
                && let Some(found) = existing.get(key).or_else(|| inserted.get(key))
            {
                // An edited or deleted message no longer shows the body it was sent
                // with: a retry of its send is answered with it as it is now.
                let same = (found.body == message.body
                    && found.attachments() == message.attachments.as_slice())
                    || found.edit_count > 0
                    || found.deleted;
                break 'decide if same {
                    Decision::Existing(found.clone())
                } else {
                    Decision::Refused(Error::ClientMessageIdReused)
                };
            }
            if conversation.status == Status::Closed {
                break 'decide Decision::Refused(Error::ConversationClosed);
            }
            let head = heads.entry(id).or_insert(conversation.head_seq);
            *head += 1;
            let seq = *head;
            let touch = touched.entry(id).or_insert_with(|| Touch {
                base: conversation.head_seq,
                head: seq,
                provider_read: 0,
                customer_read: 0,
                provider_id: conversation.provider_id.clone(),
                customer_id: conversation.customer_id.clone(),
            });
            touch.head = seq;
            match message.sender.role() {
                Role::Provider => touch.provider_read = seq,
                Role::Customer => touch.customer_read = seq,
            }
            let row = MessageRow {
                conversation_id: ConversationId(id),
                seq,
                id: new_id(),
                sender_role: message.sender.role(),
                sender_id: message.sender.id().to_owned(),
                body: message.body.clone(),
                client_message_id: message.client_message_id.clone(),
                created_at: now,
                edited_at: None,
                edit_count: 0,
                deleted: false,
                attachments: (!message.attachments.is_empty())
                    .then(|| sqlx::types::Json(message.attachments.clone())),
                last_change: 0,
            };
            if let Some(key) = key {
                inserted.insert(key, row.clone());
            }
            Decision::Insert(row)
        };
        decisions.push(decision);
    }
    Plan { decisions, touched }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_common::error::ServiceError;

    use crate::domain::Participant;

    fn conversation(id: Uuid, head: i64, customer: Option<&str>, status: Status) -> Locked {
        Locked {
            id,
            provider_id: "p1".into(),
            customer_id: customer.map(str::to_owned),
            status,
            head_seq: head,
        }
    }

    fn message(id: Uuid, role: Role, sender: &str, body: &str, key: Option<&str>) -> NewMessage {
        NewMessage {
            conversation_id: ConversationId(id),
            sender: Participant::stored(role, sender.into()),
            body: body.into(),
            client_message_id: key.map(str::to_owned),
            attachments: Vec::new(),
        }
    }

    fn run(
        batch: &[NewMessage],
        locked: &[Locked],
        existing: &[MessageRow],
    ) -> (Vec<Decision>, BTreeMap<Uuid, Touch>) {
        let locked = locked.iter().map(|c| (c.id, c.clone())).collect();
        let existing = existing
            .iter()
            .map(|m| {
                let key = (
                    m.conversation_id.0,
                    m.sender_role,
                    m.client_message_id.clone().unwrap_or_default(),
                );
                (key, m.clone())
            })
            .collect();
        let plan = plan(
            batch,
            &vec![false; batch.len()],
            &locked,
            &existing,
            Utc::now(),
            Uuid::now_v7,
        );
        (plan.decisions, plan.touched)
    }

    fn seq(decision: &Decision) -> Option<i64> {
        match decision {
            Decision::Insert(row) => Some(row.seq),
            _ => None,
        }
    }

    fn reason(decision: &Decision) -> Option<&str> {
        match decision {
            Decision::Refused(Error::ConversationNotFound) => Some("NOT_FOUND"),
            Decision::Refused(error) => Some(error.reason()),
            _ => None,
        }
    }

    #[test]
    fn seqs_follow_each_head_and_senders_read_their_own() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let batch = [
            message(a, Role::Provider, "p1", "1", None),
            message(b, Role::Customer, "", "2", None),
            message(a, Role::Customer, "", "3", None),
        ];
        let (decisions, touched) = run(
            &batch,
            &[
                conversation(a, 7, None, Status::Active),
                conversation(b, 0, None, Status::Active),
            ],
            &[],
        );
        let seqs: Vec<_> = decisions.iter().map(seq).collect();
        assert_eq!(seqs, [Some(8), Some(1), Some(9)]);
        assert_eq!(
            (
                touched[&a].head,
                touched[&a].provider_read,
                touched[&a].customer_read
            ),
            (9, 8, 9)
        );
        assert_eq!((touched[&b].head, touched[&b].provider_read), (1, 0));
    }

    #[test]
    fn refusals_take_no_seq() {
        let (a, closed, missing) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let batch = [
            message(missing, Role::Provider, "p1", "x", None),
            message(a, Role::Provider, "p2", "x", None),
            message(a, Role::Customer, "", "x", None),
            message(closed, Role::Provider, "p1", "x", None),
            message(a, Role::Provider, "p1", "x", None),
        ];
        let (decisions, touched) = run(
            &batch,
            &[
                conversation(a, 0, Some("c1"), Status::Active),
                conversation(closed, 3, None, Status::Closed),
            ],
            &[],
        );
        let reasons: Vec<_> = decisions.iter().map(reason).collect();
        assert_eq!(
            reasons,
            [
                Some("NOT_FOUND"),
                Some("NOT_A_PARTICIPANT"),
                Some("NOT_A_PARTICIPANT"),
                Some("CONVERSATION_CLOSED"),
                None
            ]
        );
        assert_eq!(seq(&decisions[4]), Some(1));
        assert!(!touched.contains_key(&closed));
    }

    #[test]
    fn keys_belong_to_their_sender() {
        let a = Uuid::now_v7();
        let batch = [
            message(a, Role::Provider, "p1", "from provider", Some("1")),
            message(a, Role::Customer, "", "from customer", Some("1")),
        ];
        let (decisions, _) = run(&batch, &[conversation(a, 0, None, Status::Active)], &[]);
        assert_eq!(
            decisions.iter().map(seq).collect::<Vec<_>>(),
            [Some(1), Some(2)]
        );
    }

    #[test]
    fn a_retry_gets_the_original_and_a_reused_key_is_refused() {
        let a = Uuid::now_v7();
        let stored = MessageRow {
            conversation_id: ConversationId(a),
            seq: 1,
            id: Uuid::now_v7(),
            sender_role: Role::Provider,
            sender_id: "p1".into(),
            body: "hello".into(),
            client_message_id: Some("k".into()),
            created_at: Utc::now(),
            edited_at: None,
            edit_count: 0,
            deleted: false,
            attachments: None,
            last_change: 0,
        };
        let batch = [
            message(a, Role::Provider, "p1", "hello", Some("k")),
            message(a, Role::Provider, "p1", "changed", Some("k")),
            message(a, Role::Provider, "p1", "new", Some("k2")),
            message(a, Role::Provider, "p1", "new", Some("k2")),
            message(a, Role::Provider, "p1", "other", Some("k2")),
        ];
        // Closed: retries are still answered, new messages are not.
        let (decisions, touched) = run(
            &batch,
            &[conversation(a, 1, None, Status::Closed)],
            std::slice::from_ref(&stored),
        );
        assert!(matches!(&decisions[0], Decision::Existing(row) if row.id == stored.id));
        assert_eq!(reason(&decisions[1]), Some("CLIENT_MESSAGE_ID_REUSED"));
        assert_eq!(reason(&decisions[2]), Some("CONVERSATION_CLOSED"));
        assert!(touched.is_empty());

        let (decisions, _) = run(
            &batch,
            &[conversation(a, 1, None, Status::Active)],
            &[stored],
        );
        assert_eq!(seq(&decisions[2]), Some(2));
        let first = match &decisions[2] {
            Decision::Insert(row) => row.id,
            other => panic!("{other:?}"),
        };
        assert!(matches!(&decisions[3], Decision::Existing(row) if row.id == first));
        assert_eq!(reason(&decisions[4]), Some("CLIENT_MESSAGE_ID_REUSED"));
    }

    #[test]
    fn abandoned_messages_are_not_written() {
        let a = Uuid::now_v7();
        let batch = [
            message(a, Role::Provider, "p1", "1", None),
            message(a, Role::Provider, "p1", "2", None),
        ];
        let locked = [(a, conversation(a, 0, None, Status::Active))]
            .into_iter()
            .collect();
        let plan = plan(
            &batch,
            &[true, false],
            &locked,
            &HashMap::new(),
            Utc::now(),
            Uuid::now_v7,
        );
        assert!(matches!(plan.decisions[0], Decision::Abandoned));
        assert_eq!(seq(&plan.decisions[1]), Some(1));
    }
}
