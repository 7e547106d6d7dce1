//! Reading conversations: one, several, or a participant's list.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{
    handle::Store,
    records::{CONVERSATION_SELECT, ConversationRow},
};
use crate::{
    domain::{ConversationId, Participant, Role, Status},
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
    pub async fn list_conversations(
        &self,
        owner: &Participant,
        status: Option<Status>,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<ConversationRow>> {
        let mut query = QueryBuilder::<Postgres>::new(CONVERSATION_SELECT);
        query.push(match owner.role() {
            Role::Provider => " WHERE c.provider_id = ",
            Role::Customer => " WHERE c.customer_id = ",
        });
        query.push_bind(owner.id());
        if let Some(status) = status {
            query.push(" AND c.status = ").push_bind(status);
        }
        if let Some((time, id)) = after {
            // The first condition is the one the index can seek with; the second is the
            // page key itself.
            query
                .push(" AND c.activity_minute <= chat_activity_minute(")
                .push_bind(time)
                .push(") AND (c.last_activity_at, c.id) < (")
                .push_bind(time)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        // activity_minute is chat_activity_minute(last_activity_at) (migration
        // 20261127010000_hot_activity), so this is newest activity first: the index gives
        // the minutes in order and only the conversations of one minute are sorted.
        query
            .push(" ORDER BY c.activity_minute DESC, c.last_activity_at DESC, c.id DESC LIMIT ")
            .push_bind(limit);
        query
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("list conversations", e))
    }
}
