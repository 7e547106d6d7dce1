//! SearchMessages: full-text search over the messages of a participant's conversations
//! (migration `20261206120000_message_search`: a GIN index on
//! `to_tsvector('simple', body)`; the queries here must use that very expression).

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{handle::Store, records::MessageRow};
use crate::{
    domain::{ConversationId, HIGHLIGHT_START, HIGHLIGHT_STOP, Participant, Role, SearchQuery},
    error::{Error, Result},
};

/// A search page's position: the last hit's `(created_at, conversation_id, seq)`.
pub type SearchKey = (DateTime<Utc>, Uuid, i64);

/// One hit: the message and `ts_headline`'s excerpt of it (highlights between
/// [`HIGHLIGHT_START`] and [`HIGHLIGHT_STOP`]).
#[derive(Debug, sqlx::FromRow)]
pub struct SearchRow {
    #[sqlx(flatten)]
    pub message: MessageRow,
    pub headline: String,
}

impl SearchRow {
    pub fn key(&self) -> SearchKey {
        (
            self.message.created_at,
            self.message.conversation_id.0,
            self.message.seq,
        )
    }
}

impl Store {
    /// Whether `query` holds a word the index can look for: not only punctuation or
    /// stop characters (no lexeme) and not only exclusions (`-word`, which a GIN index
    /// could only answer by reading all of it). `querytree` says both: '' and 'T'.
    pub async fn is_searchable(&self, query: &SearchQuery) -> Result<bool> {
        let (tree,): (String,) =
            sqlx::query_as("SELECT querytree(websearch_to_tsquery('simple', $1))")
                .bind(&query.0)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| Error::db("read a search query", e))?;
        Ok(!tree.is_empty() && tree != "T")
    }

    /// Up to `limit` messages of `owner`'s conversations (or of `conversation` alone)
    /// that match `query`, newest first, after `after`. Only the page's rows get an
    /// excerpt: `ts_headline` parses the whole body, so it runs outside the LIMIT.
    pub async fn search_messages(
        &self,
        owner: &Participant,
        query: &SearchQuery,
        conversation: Option<ConversationId>,
        after: Option<SearchKey>,
        limit: i64,
    ) -> Result<Vec<SearchRow>> {
        search_sql("", owner, query, conversation, after, limit)
            .build_query_as()
            // Planned for its words each time, as ListConversations' customer_query is:
            // how many messages hold a word decides between the GIN index and reading a
            // small owner's or one conversation's messages, and a plan kept for any words
            // would pick one path for all.
            .persistent(false)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("search messages", e))
    }
}

/// SearchMessages' statement after `prefix` (`EXPLAIN` in the plan test), its values bound.
pub fn search_sql(
    prefix: &str,
    owner: &Participant,
    query: &SearchQuery,
    conversation: Option<ConversationId>,
    after: Option<SearchKey>,
    limit: i64,
) -> QueryBuilder<Postgres> {
    let mut sql = QueryBuilder::<Postgres>::new(prefix);
    sql.push("WITH q AS MATERIALIZED (SELECT websearch_to_tsquery('simple', ")
        .push_bind(query.0.clone())
        .push(
            ") AS q), \
             hits AS ( \
               SELECT m.conversation_id, m.seq, m.id, m.sender_role, m.sender_id, m.body, \
                      m.client_message_id, m.created_at \
                 FROM q, messages m JOIN conversations c ON c.id = m.conversation_id \
                WHERE to_tsvector('simple'::regconfig, m.body) @@ q.q",
        );
    sql.push(match owner.role() {
        Role::Provider => " AND c.provider_id = ",
        Role::Customer => " AND c.customer_id = ",
    });
    sql.push_bind(owner.id().to_owned());
    if let Some(id) = conversation {
        sql.push(" AND m.conversation_id = ").push_bind(id.0);
    }
    if let Some((at, id, seq)) = after {
        sql.push(" AND (m.created_at, m.conversation_id, m.seq) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(", ")
            .push_bind(seq)
            .push(")");
    }
    sql.push(" ORDER BY m.created_at DESC, m.conversation_id DESC, m.seq DESC LIMIT ")
        .push_bind(limit);
    // The marks are taken out of the body first, so every mark in the excerpt is
    // ts_headline's. A fragment or two around the matches; the gRPC side cuts it to
    // SNIPPET_CHARS.
    let marks: String = [HIGHLIGHT_START, HIGHLIGHT_STOP].iter().collect();
    let options = format!(
        "StartSel={HIGHLIGHT_START}, StopSel={HIGHLIGHT_STOP}, MaxWords=20, MinWords=8, \
             MaxFragments=2, FragmentDelimiter=\" … \""
    );
    sql.push(") SELECT hits.*, ts_headline('simple', translate(hits.body, ")
        .push_bind(marks)
        .push(", '  '), q.q, ")
        .push_bind(options)
        .push(
            ") AS headline FROM hits, q \
                 ORDER BY hits.created_at DESC, hits.conversation_id DESC, hits.seq DESC",
        );
    sql
}
