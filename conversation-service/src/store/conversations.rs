//! Reading conversations: one, several, or a participant's list.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{
    handle::Store,
    records::{CONVERSATION_SELECT, ConversationRow},
};
use crate::{
    domain::{ConversationFilter, ConversationId, Participant, Role},
    error::{Error, Result},
};

impl Store {
    pub async fn get_conversation(&self, id: ConversationId) -> Result<ConversationRow> {
        let sql = format!("{CONVERSATION_SELECT} WHERE c.id = $1");
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| Error::db("get conversation", e))?
            .ok_or(Error::ConversationNotFound)
    }

    pub async fn get_conversations(&self, ids: &[Uuid]) -> Result<Vec<ConversationRow>> {
        let sql = format!("{CONVERSATION_SELECT} WHERE c.id = ANY($1)");
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("get conversations", e))
    }

    /// A page of `owner`'s conversations, newest activity first, after the key
    /// `(last_activity_at, id)` of the previous page.
    ///
    /// Two index range scans of the owner's `inbox_at` order (migration
    /// `20261206091000_inbox_order`), each cut at the page key and the page size: the
    /// settled conversations, whose `inbox_at` is their exact last activity, come in index
    /// order with no sort; the few active since `inbox_settled.through` are sorted by
    /// `last_activity_at`. Neither grows with how many conversations share a minute.
    pub async fn list_conversations(
        &self,
        owner: &Participant,
        filter: &ConversationFilter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<ConversationRow>> {
        let mut query = QueryBuilder::<Postgres>::new(conversation_columns!());
        query.push(" FROM (");
        for (i, (region, key)) in [(">=", "c.last_activity_at"), ("<", "c.inbox_at")]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                query.push(" UNION ALL ");
            }
            query.push("(SELECT c.* FROM conversations c");
            query.push(match owner.role() {
                Role::Provider => " WHERE c.provider_id = ",
                Role::Customer => " WHERE c.customer_id = ",
            });
            query.push_bind(owner.id());
            // A scalar subquery, so the index scan can seek with it.
            query.push(format_args!(
                " AND c.inbox_at {region} (SELECT through FROM inbox_settled)"
            ));
            push_filter(&mut query, owner.role(), filter, key);
            if let Some((time, id)) = after {
                query
                    .push(format_args!(" AND ({key}, c.id) < ("))
                    .push_bind(time)
                    .push(", ")
                    .push_bind(id)
                    .push(")");
            }
            query
                .push(format_args!(" ORDER BY {key} DESC, c.id DESC LIMIT "))
                .push_bind(limit)
                .push(")");
        }
        query
            .push(") c")
            .push(last_message_join!())
            .push(" ORDER BY c.last_activity_at DESC, c.id DESC LIMIT ")
            .push_bind(limit);
        // A text search is planned for its text each time: a plan kept for any text
        // would walk the owner's whole index and test each row (the trigram index is
        // the better path for all but the commonest text).
        query
            .build_query_as()
            .persistent(filter.customer_query.is_none())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("list conversations", e))
    }
}

/// The filters' conditions on one part of the list, ordered by `key` (whose values are
/// the last activity there, so `active_after` bounds the index scan of settled ones).
fn push_filter(
    query: &mut QueryBuilder<Postgres>,
    role: Role,
    filter: &ConversationFilter,
    key: &str,
) {
    if let Some(status) = filter.status {
        query.push(" AND c.status = ").push_bind(status);
    }
    if filter.unread_only {
        // Not indexable: head and read positions are what every send updates (HOT).
        query.push(match role {
            Role::Provider => " AND c.head_seq > c.provider_read_seq",
            Role::Customer => " AND c.head_seq > c.customer_read_seq",
        });
    }
    if let Some(text) = &filter.customer_query {
        // The expression of conversations_provider_customer_text_idx (trigrams).
        query
            .push(
                " AND chat_customer_text(c.customer_name, c.customer_email, c.customer_phone) \
                 ILIKE ",
            )
            .push_bind(text.pattern());
    }
    if let Some(time) = filter.active_after {
        query.push(format_args!(" AND {key} > ")).push_bind(time);
    }
}
