//! What touches one participant across its conversations, read by snapshot windows.
//!
//! Ids and timestamps are taken before commit, so "after id X" can skip a row whose
//! transaction commits late. A cursor is instead a `pg_snapshot`: the window after it is
//! every row whose transaction is visible in a newer snapshot and was not visible in the
//! cursor's. Each transaction falls in exactly one window, whatever its commit order.

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::{
    ConversationRow, MessageRow, Store,
    conversations::{EVENT_CREATED, EVENT_CUSTOMER},
};
use crate::{
    domain::{Participant, Role, Status},
    error::{Error, Result},
};

/// Where an inbox stream stands. Opaque to callers (base64url JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxCursor {
    /// Everything committed as of this snapshot was delivered.
    p: String,
    /// While a window is being delivered: its end, and how many of its items were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    s: i64,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// `xmin:xmax:xip,...` as PostgreSQL prints a `pg_snapshot`; returns (xmin, xmax).
fn snapshot_bounds(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.split(':');
    let xmin: u64 = parts.next()?.parse().ok()?;
    let xmax: u64 = parts.next()?.parse().ok()?;
    let xip = parts.next()?;
    if parts.next().is_some()
        || xmin > xmax
        || !xip
            .split(',')
            .filter(|x| !x.is_empty())
            .all(|x| x.parse::<u64>().is_ok())
    {
        return None;
    }
    Some((xmin, xmax))
}

impl InboxCursor {
    pub fn at(snapshot: String) -> Self {
        Self {
            p: snapshot,
            n: None,
            s: 0,
        }
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(field: &'static str, text: &str) -> Result<Self> {
        let bad = || Error::invalid(field, "is not an inbox cursor");
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        let cursor: Self = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        snapshot_bounds(&cursor.p).ok_or_else(bad)?;
        if let Some(next) = &cursor.n {
            snapshot_bounds(next).ok_or_else(bad)?;
        }
        if cursor.s < 0 {
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
    StatusChanged {
        conversation_id: Uuid,
        status: Status,
    },
    Message(MessageRow),
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
    kind: i16,
    status: Option<i16>,
    conversation_id: Uuid,
    seq: i64,
}

impl Store {
    /// The snapshot a new inbox stream starts from ("from now on").
    pub async fn current_snapshot(&self) -> Result<String> {
        let (snapshot,): (String,) = sqlx::query_as("SELECT pg_current_snapshot()::text")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::db("current snapshot", e))?;
        Ok(snapshot)
    }

    /// Up to `limit` items after `cursor` for `owner`, oldest window first; within a
    /// window, conversation events first, then messages by conversation and seq.
    pub async fn inbox_window(
        &self,
        owner: &Participant,
        cursor: &InboxCursor,
        limit: i64,
    ) -> Result<InboxWindow> {
        let now = match &cursor.n {
            Some(next) => next.clone(),
            None => self.current_snapshot().await?,
        };
        let prev_xmin = snapshot_bounds(&cursor.p).map_or(0, |b| b.0);
        let now_xmax = snapshot_bounds(&now).map_or(0, |b| b.1);
        if prev_xmin > now_xmax {
            return Err(Error::OutOfRange {
                field: "cursor",
                message: "is newer than this database".into(),
            });
        }
        let owner_column = match owner.role {
            Role::Provider => "c.provider_id",
            Role::Customer => "c.customer_id",
        };
        let window = |alias: &str| {
            format!(
                "{alias}.xid >= pg_snapshot_xmin($2::pg_snapshot) \
                 AND NOT pg_visible_in_snapshot({alias}.xid, $2::pg_snapshot) \
                 AND pg_visible_in_snapshot({alias}.xid, $3::pg_snapshot)"
            )
        };
        let sql = format!(
            "SELECT kind, status, conversation_id, seq FROM (\
               SELECT 0 AS part, e.id AS ev, e.kind, e.status, e.conversation_id, 0::bigint AS seq \
               FROM conversation_events e JOIN conversations c ON c.id = e.conversation_id \
               WHERE {owner_column} = $1 AND {events} \
               UNION ALL \
               SELECT 1, 0, 0::smallint, NULL::smallint, m.conversation_id, m.seq \
               FROM messages m JOIN conversations c ON c.id = m.conversation_id \
               WHERE {owner_column} = $1 AND {messages}\
             ) w ORDER BY part, ev, conversation_id, seq LIMIT $4 OFFSET $5",
            events = window("e"),
            messages = window("m"),
        );
        let keys: Vec<Key> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(&owner.id)
            .bind(&cursor.p)
            .bind(&now)
            .bind(limit)
            .bind(cursor.s)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("read inbox window", e))?;

        let conversation_ids: Vec<Uuid> = keys
            .iter()
            .filter(|k| k.kind == EVENT_CREATED || k.kind == EVENT_CUSTOMER)
            .map(|k| k.conversation_id)
            .collect();
        let conversations: HashMap<Uuid, ConversationRow> = if conversation_ids.is_empty() {
            HashMap::new()
        } else {
            self.get_conversations(&conversation_ids)
                .await?
                .into_iter()
                .map(|c| (c.id, c))
                .collect()
        };
        let message_keys: Vec<(Uuid, i64)> = keys
            .iter()
            .filter(|k| k.kind == 0)
            .map(|k| (k.conversation_id, k.seq))
            .collect();
        let mut messages: HashMap<(Uuid, i64), MessageRow> = if message_keys.is_empty() {
            HashMap::new()
        } else {
            self.messages_by_key(&message_keys)
                .await?
                .into_iter()
                .map(|m| ((m.conversation_id, m.seq), m))
                .collect()
        };

        let more = i64::try_from(keys.len()).unwrap_or(i64::MAX) >= limit;
        let next = if more {
            InboxCursor {
                p: cursor.p.clone(),
                n: Some(now.clone()),
                s: cursor.s + limit,
            }
        } else {
            InboxCursor::at(now.clone())
        };
        let count = keys.len();
        let mut items = Vec::with_capacity(count);
        for (index, key) in keys.into_iter().enumerate() {
            let item_cursor = if index + 1 == count {
                next.clone()
            } else {
                InboxCursor {
                    p: cursor.p.clone(),
                    n: Some(now.clone()),
                    s: cursor.s + i64::try_from(index + 1).unwrap_or(i64::MAX),
                }
            };
            let item = match key.kind {
                0 => messages
                    .remove(&(key.conversation_id, key.seq))
                    .map(InboxItem::Message),
                EVENT_CREATED => conversations
                    .get(&key.conversation_id)
                    .cloned()
                    .map(InboxItem::Created),
                EVENT_CUSTOMER => conversations
                    .get(&key.conversation_id)
                    .cloned()
                    .map(InboxItem::CustomerUpdated),
                _ => Some(InboxItem::StatusChanged {
                    conversation_id: key.conversation_id,
                    status: Status::from_i16(key.status.unwrap_or(1)),
                }),
            };
            if let Some(item) = item {
                items.push((item, item_cursor));
            }
        }
        Ok(InboxWindow { items, next, more })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = InboxCursor::at("100:105:101,103".into());
        assert_eq!(
            InboxCursor::decode("c", &cursor.encode()).ok(),
            Some(cursor)
        );
        assert!(InboxCursor::decode("c", "nope").is_err());
        let forged = URL_SAFE_NO_PAD.encode(br#"{"p":"1:2:3; DROP TABLE messages"}"#);
        assert!(InboxCursor::decode("c", &forged).is_err());
        let backwards = URL_SAFE_NO_PAD.encode(br#"{"p":"9:2:"}"#);
        assert!(InboxCursor::decode("c", &backwards).is_err());
    }
}
