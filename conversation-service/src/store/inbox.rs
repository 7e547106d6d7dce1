//! What touches one participant across its conversations, read by snapshot windows.
//!
//! Ids and timestamps are taken before commit, so "after id X" can skip a row whose
//! transaction commits late. A cursor is instead a `pg_snapshot`: the window after it is
//! every row whose transaction is visible in a newer snapshot and was not visible in the
//! cursor's. Each transaction falls in exactly one window, whatever its commit order.
//! Within a window items come in commit order (`pos`, see the migration) and a page ends
//! at a keyset position, never an OFFSET: conversations joining the owner's set between
//! two pages cannot shift or repeat what follows.

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::{
    changes::ChangeRow,
    handle::Store,
    records::{ConversationRow, Erasure, EventKind, MessageRow},
};
use crate::{
    domain::{Participant, Role, Status},
    error::{Error, Result},
};

/// A `pg_snapshot` as PostgreSQL prints it, `xmin:xmax:xip,...`, held only when it is
/// one PostgreSQL itself would accept (`pg_snapshot` input rules, stricter where they
/// are lax): 0 < xmin <= xmax, the in-progress ids strictly ascending (no duplicates),
/// each in [xmin, xmax), digits only. So a forged cursor is INVALID_ARGUMENT here and
/// never reaches the database as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Snapshot {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl Snapshot {
    pub fn parse(text: &str) -> Option<Self> {
        fn number(text: &str) -> Option<u64> {
            if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            text.parse().ok()
        }
        let mut parts = text.split(':');
        let xmin = number(parts.next()?)?;
        let xmax = number(parts.next()?)?;
        let xip_text = parts.next()?;
        if parts.next().is_some() || xmin == 0 || xmin > xmax {
            return None;
        }
        let mut xip: Vec<u64> = Vec::new();
        if !xip_text.is_empty() {
            for part in xip_text.split(',') {
                let xid = number(part)?;
                if xid < xmin || xid >= xmax || xip.last().is_some_and(|last| *last >= xid) {
                    return None;
                }
                xip.push(xid);
            }
        }
        Some(Self { xmin, xmax, xip })
    }

    /// Whether everything visible in `self` is visible in `later` too (it was taken no
    /// earlier).
    fn precedes_or_equals(&self, later: &Self) -> bool {
        self.xmin <= later.xmin && self.xmax <= later.xmax
    }

    fn xip_text(&self) -> Vec<String> {
        self.xip.iter().map(u64::to_string).collect()
    }
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:", self.xmin, self.xmax)?;
        for (i, xid) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{xid}")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for Snapshot {
    type Error = &'static str;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text).ok_or("not a snapshot")
    }
}

impl From<Snapshot> for String {
    fn from(snapshot: Snapshot) -> Self {
        snapshot.to_string()
    }
}

/// An inbox item's place in its window: `(pos, part, conversation_id, key)`, where part
/// 0 is a conversation event (key: its id) and part 1 a message (key: its seq).
pub type ItemKey = (i64, i16, Uuid, i64);

/// Where an inbox stream stands. Opaque to callers (base64url JSON, short field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxCursor {
    /// Everything committed as of this snapshot was delivered.
    #[serde(rename = "p")]
    delivered: Snapshot,
    /// While a window is being delivered: its end...
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    window_end: Option<Snapshot>,
    /// ...and the last item of it delivered.
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    after: Option<ItemKey>,
}

impl InboxCursor {
    pub fn at(snapshot: Snapshot) -> Self {
        Self {
            delivered: snapshot,
            window_end: None,
            after: None,
        }
    }

    /// Whether this cursor stands inside a window (which ends before the present).
    pub fn is_within_window(&self) -> bool {
        self.window_end.is_some()
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Any cursor this service did not make (malformed, forged, inconsistent) is
    /// INVALID_ARGUMENT.
    pub fn decode(field: &'static str, text: &str) -> Result<Self> {
        let bad = || Error::invalid(field, "is not an inbox cursor");
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        let cursor: Self = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        let consistent = match (&cursor.window_end, &cursor.after) {
            (Some(end), after) => {
                cursor.delivered.precedes_or_equals(end)
                    && after.is_none_or(|(pos, part, _, key)| {
                        pos > 0 && (0..=1).contains(&part) && key >= 0
                    })
            }
            (None, None) => true,
            (None, Some(_)) => false,
        };
        if !consistent {
            return Err(bad());
        }
        Ok(cursor)
    }
}

/// One inbox event, with the conversation's state as it is when read.
#[derive(Debug, Clone)]
pub enum InboxItem {
    Created(ConversationRow),
    CustomerUpdated(ConversationRow),
    /// Its customer was erased; the erasure as the row holds it now (a later erasure of
    /// the same conversation covers an earlier one).
    CustomerErased(Erasure),
    StatusChanged {
        conversation_id: Uuid,
        status: Status,
    },
    Message(MessageRow),
    /// A message was edited or deleted (the message as it is now).
    Changed(ChangeRow),
}

/// A page of a window: each item with the cursor that resumes right after it.
pub struct InboxWindow {
    pub items: Vec<(InboxItem, InboxCursor)>,
    /// Resume point after the page.
    pub next: InboxCursor,
    /// Whether the window has more items than this page.
    pub more: bool,
}

#[derive(sqlx::FromRow)]
struct Key {
    pos: i64,
    part: i16,
    conversation_id: Uuid,
    key: i64,
    /// `None` for a message.
    kind: Option<EventKind>,
    status: Option<Status>,
}

impl Key {
    fn item_key(&self) -> ItemKey {
        (self.pos, self.part, self.conversation_id, self.key)
    }
}

/// The window query for an owner column: rows of the owner's conversations whose
/// transaction was not visible in `$2` (it started at or after its xmax, or was in
/// progress then: `$3`, its xip) and is visible in `$4`, after the keyset `$5..$8`,
/// in commit order. Reading "not visible in $2" as those two index ranges keeps a wake
/// cheap even when a long transaction holds `$2`'s xmin far back.
#[must_use]
pub fn window_sql(role: Role) -> String {
    let owner = match role {
        Role::Provider => "c.provider_id",
        Role::Customer => "c.customer_id",
    };
    let window = |alias: &str| {
        format!(
            "({alias}.xid >= pg_snapshot_xmax($2::text::pg_snapshot) \
               OR {alias}.xid = ANY($3::text[]::xid8[])) \
             AND {alias}.xid < pg_snapshot_xmax($4::text::pg_snapshot) \
             AND pg_visible_in_snapshot({alias}.xid, $4::text::pg_snapshot)"
        )
    };
    format!(
        "SELECT pos, part, conversation_id, key, kind, status FROM (\
           SELECT e.pos, 0::smallint AS part, e.conversation_id, e.id AS key, e.kind, e.status \
           FROM conversation_events e JOIN conversations c ON c.id = e.conversation_id \
           WHERE {owner} = $1 AND {events} \
           UNION ALL \
           SELECT m.pos, 1::smallint, m.conversation_id, m.seq, NULL::smallint, NULL::smallint \
           FROM messages m JOIN conversations c ON c.id = m.conversation_id \
           WHERE {owner} = $1 AND {messages} \
           UNION ALL \
           SELECT x.pos, 2::smallint, x.conversation_id, x.change_seq, NULL::smallint, \
             NULL::smallint \
           FROM message_changes x JOIN conversations c ON c.id = x.conversation_id \
           WHERE {owner} = $1 AND {changes}\
         ) w WHERE (pos, part, conversation_id, key) > ($5, $6, $7, $8) \
         ORDER BY pos, part, conversation_id, key LIMIT $9",
        events = window("e"),
        messages = window("m"),
        changes = window("x"),
    )
}

impl Store {
    /// The snapshot a new inbox stream starts from ("from now on").
    pub async fn current_snapshot(&self) -> Result<Snapshot> {
        let (snapshot,): (String,) = sqlx::query_as("SELECT pg_current_snapshot()::text")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::db("current snapshot", e))?;
        Snapshot::parse(&snapshot).ok_or_else(|| Error::Internal {
            context: "current snapshot",
            source: format!("PostgreSQL printed a snapshot this service cannot read: {snapshot}")
                .into(),
        })
    }

    /// Up to `limit` items after `cursor` for `owner`: windows in commit order, and
    /// within a window by `(pos, ...)`, the order the writers committed in.
    pub async fn inbox_window(
        &self,
        owner: &Participant,
        cursor: &InboxCursor,
        limit: i64,
    ) -> Result<InboxWindow> {
        let current = self.current_snapshot().await?;
        let newest = cursor.window_end.as_ref().unwrap_or(&cursor.delivered);
        if !newest.precedes_or_equals(&current) {
            return Err(Error::CursorOutOfRange {
                field: "cursor",
                message: "is newer than this database".into(),
            });
        }
        let end = cursor.window_end.clone().unwrap_or(current);
        let keys = self.window_keys(owner, cursor, &end, limit).await?;
        let (conversations, mut messages) = self.window_rows(&keys).await?;
        let mut changes = self.window_changes(&keys).await?;
        let more = i64::try_from(keys.len()).unwrap_or(i64::MAX) >= limit;
        let within = |key: &Key| InboxCursor {
            delivered: cursor.delivered.clone(),
            window_end: Some(end.clone()),
            after: Some(key.item_key()),
        };
        let next = match keys.last() {
            Some(last) if more => within(last),
            _ => InboxCursor::at(end.clone()),
        };
        let count = keys.len();
        let mut items = Vec::with_capacity(count);
        for (index, key) in keys.into_iter().enumerate() {
            let item_cursor = if index + 1 == count {
                next.clone()
            } else {
                within(&key)
            };
            let item = if key.part == CHANGE_PART {
                changes
                    .remove(&(key.conversation_id, key.key))
                    .map(InboxItem::Changed)
            } else {
                window_item(&key, &conversations, &mut messages)?
            };
            if let Some(item) = item {
                items.push((item, item_cursor));
            }
        }
        Ok(InboxWindow { items, next, more })
    }

    /// The keys of the window's items after the cursor, in order, at most `limit`.
    async fn window_keys(
        &self,
        owner: &Participant,
        cursor: &InboxCursor,
        end: &Snapshot,
        limit: i64,
    ) -> Result<Vec<Key>> {
        let (pos, part, after_conversation, key) =
            cursor
                .after
                .unwrap_or((i64::MIN, i16::MIN, Uuid::nil(), i64::MIN));
        sqlx::query_as(AssertSqlSafe(window_sql(owner.role())))
            .bind(owner.id())
            .bind(cursor.delivered.to_string())
            .bind(cursor.delivered.xip_text())
            .bind(end.to_string())
            .bind(pos)
            .bind(part)
            .bind(after_conversation)
            .bind(key)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("read inbox window", e))
    }

    /// The conversations and messages the window's keys name.
    async fn window_rows(&self, keys: &[Key]) -> Result<(Conversations, Messages)> {
        let conversation_ids: Vec<Uuid> = keys
            .iter()
            .filter(|k| {
                matches!(
                    k.kind,
                    Some(
                        EventKind::Created | EventKind::CustomerUpdated | EventKind::CustomerErased
                    )
                )
            })
            .map(|k| k.conversation_id)
            .collect();
        let conversations = if conversation_ids.is_empty() {
            HashMap::new()
        } else {
            self.get_conversations(&conversation_ids)
                .await?
                .into_iter()
                .map(|c| (c.id.0, c))
                .collect()
        };
        let message_keys: Vec<(Uuid, i64)> = keys
            .iter()
            .filter(|k| k.part == 1)
            .map(|k| (k.conversation_id, k.key))
            .collect();
        let messages = if message_keys.is_empty() {
            HashMap::new()
        } else {
            self.messages_by_key(&message_keys)
                .await?
                .into_iter()
                .map(|m| ((m.conversation_id.0, m.seq), m))
                .collect()
        };
        Ok((conversations, messages))
    }
}

/// The window part of message changes (0: conversation events, 1: messages).
const CHANGE_PART: i16 = 2;

impl Store {
    /// The changes the window's keys name, each with its message as it is now.
    async fn window_changes(&self, keys: &[Key]) -> Result<HashMap<(Uuid, i64), ChangeRow>> {
        let change_keys: Vec<(Uuid, i64)> = keys
            .iter()
            .filter(|k| k.part == CHANGE_PART)
            .map(|k| (k.conversation_id, k.key))
            .collect();
        if change_keys.is_empty() {
            return Ok(HashMap::new());
        }
        Ok(self
            .changes_by_key(&change_keys)
            .await?
            .into_iter()
            .map(|c| ((c.message.conversation_id.0, c.change_seq), c))
            .collect())
    }
}

type Conversations = HashMap<Uuid, ConversationRow>;
type Messages = HashMap<(Uuid, i64), MessageRow>;

/// The item a window key names (`None` when its row is gone); a status change without
/// its status is refused, never shown as some status.
fn window_item(
    key: &Key,
    conversations: &Conversations,
    messages: &mut Messages,
) -> Result<Option<InboxItem>> {
    Ok(match (key.kind, key.status) {
        (None, _) => messages
            .remove(&(key.conversation_id, key.key))
            .map(InboxItem::Message),
        (Some(EventKind::Created), _) => conversations
            .get(&key.conversation_id)
            .cloned()
            .map(InboxItem::Created),
        (Some(EventKind::CustomerUpdated), _) => conversations
            .get(&key.conversation_id)
            .cloned()
            .map(InboxItem::CustomerUpdated),
        (Some(EventKind::CustomerErased), _) => conversations
            .get(&key.conversation_id)
            .and_then(ConversationRow::erasure)
            .map(InboxItem::CustomerErased),
        (Some(EventKind::StatusChanged), Some(status)) => Some(InboxItem::StatusChanged {
            conversation_id: key.conversation_id,
            status,
        }),
        (Some(EventKind::StatusChanged), None) => {
            return Err(Error::Internal {
                context: "read inbox window",
                source: "a status change without its status".into(),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forged(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json.as_bytes())
    }

    #[test]
    fn cursor_round_trips() {
        let snapshot = Snapshot::parse("100:105:101,103").unwrap();
        assert_eq!(snapshot.to_string(), "100:105:101,103");
        let cursor = InboxCursor {
            delivered: snapshot.clone(),
            window_end: Snapshot::parse("104:110:"),
            after: Some((7, 1, Uuid::nil(), 3)),
        };
        assert_eq!(
            InboxCursor::decode("c", &cursor.encode()).ok(),
            Some(cursor)
        );
        let at = InboxCursor::at(snapshot);
        assert_eq!(InboxCursor::decode("c", &at.encode()).ok(), Some(at));
    }

    #[test]
    fn snapshots_follow_postgres_input_rules() {
        for good in ["1:1:", "5:10:", "5:10:5", "5:10:6,8,9", "3:3:"] {
            assert!(Snapshot::parse(good).is_some(), "{good}");
        }
        for bad in [
            "0:0:",
            "0:5:",
            "9:2:",
            "5:10:8,6",
            "5:10:6,6",
            "5:10:4",
            "5:10:10",
            "5:10:6,",
            "5:10",
            "5:10:6:7",
            "+5:10:",
            " 5:10:",
            "5:1e3:",
            "5:10:x",
            "",
            "99999999999999999999999:1:",
        ] {
            assert!(Snapshot::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn forged_cursors_are_refused() {
        for json in [
            r#"{"p":"0:0:"}"#,
            r#"{"p":"5:10:8,6"}"#,
            r#"{"p":"1:2:","n":"0:5:"}"#,
            r#"{"p":"1:2:3; DROP TABLE messages"}"#,
            r#"{"p":"9:12:","n":"5:8:"}"#,
            r#"{"p":"1:2:","k":[1,1,"00000000-0000-0000-0000-000000000000",1]}"#,
            r#"{"p":"1:2:","n":"1:3:","k":[1,7,"00000000-0000-0000-0000-000000000000",1]}"#,
            r#"{"p":5}"#,
            "nope",
        ] {
            assert!(InboxCursor::decode("c", &forged(json)).is_err(), "{json}");
        }
        assert!(InboxCursor::decode("c", "***").is_err());
    }
}
