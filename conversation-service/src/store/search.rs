//! SearchMessages: full-text search over the messages of a participant's conversations
//! (migration `20261206120000_message_search`: a GIN index on
//! `to_tsvector('simple', body)`; the queries here must use that very expression), newest
//! first (migration `20261206140000_message_search_order`: messages by `created_at`).

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{
    handle::Store,
    records::MessageRow,
    walk::{self, Walked},
};
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

/// What a search learns before it reads messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchStart {
    /// Whether the query holds a word the index can look for: not only punctuation or
    /// stop characters (no lexeme) and not only exclusions (`-word`, which a GIN index
    /// could only answer by reading all of it).
    pub searchable: bool,
    /// No message of the owner's is this new (`None`: it has no conversation). A message
    /// is never newer than its conversation's last activity, which is in the minute of
    /// `inbox_at` (migration `20261206091000_inbox_order`), so this is the end of that
    /// minute for the owner's newest `inbox_at`: one probe of the owner's inbox index.
    pub until: Option<DateTime<Utc>>,
}

impl Store {
    /// [`SearchStart`] of `owner`'s search for `query`, in one statement. `querytree` says
    /// whether there is a word to look for: '' (none) and 'T' (only exclusions) are not.
    pub async fn search_start(
        &self,
        owner: &Participant,
        query: &SearchQuery,
    ) -> Result<SearchStart> {
        let sql = format!(
            "SELECT querytree(websearch_to_tsquery('simple', $1)), \
               (SELECT chat_activity_minute(max(inbox_at)) + interval '1 minute' \
                  FROM conversations WHERE {} = $2)",
            owner_column(owner)
        );
        let (tree, until): (String, Option<DateTime<Utc>>) =
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(&query.0)
                .bind(owner.id())
                .fetch_one(&self.pool)
                .await
                .map_err(|e| Error::db("read a search query", e))?;
        Ok(SearchStart {
            searchable: !tree.is_empty() && tree != "T",
            until,
        })
    }

    /// Up to `limit` messages of `owner`'s conversations (or of `conversation` alone)
    /// that match `query`, newest first, after `after`. First the owner's newest
    /// messages, walked in order and tested one by one ([`SearchStep::Newest`]): a word
    /// found often enough fills the page there, at a cost bounded by the page, and an
    /// owner with fewer messages than the walk's bound is done there. Only a walk that
    /// reached its bound without filling the page is followed by every match (the GIN
    /// index or the owner's messages, [`SearchStep::Matches`]). `until` is
    /// [`SearchStart::until`].
    pub async fn search_messages(
        &self,
        search: &Search<'_>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<SearchRow>> {
        let Some(until) = until else {
            return Ok(Vec::new());
        };
        let newest: Vec<Walked<SearchRow>> = self
            .search_step(SearchStep::Newest { until }, search)
            .await?;
        match walk::page(newest, search.walk(), search.limit) {
            Some(page) => Ok(page),
            None => self.search_step(SearchStep::Matches, search).await,
        }
    }

    async fn search_step<T>(&self, step: SearchStep, search: &Search<'_>) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        search_sql(step, "", search)
            .build_query_as()
            // Planned for its values each time (an unnamed statement): the owner's size
            // decides whether its newest messages are found by a walk through everyone's
            // or among its own, and how many messages hold the words whether every match
            // comes from the GIN index or from the owner's messages; a plan kept for any
            // values would take one path for all.
            .persistent(false)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("search messages", e))
    }
}

/// One page of a search: whose messages, which words, from where.
#[derive(Debug, Clone, Copy)]
pub struct Search<'a> {
    pub owner: &'a Participant,
    pub query: &'a SearchQuery,
    /// This conversation's messages only.
    pub conversation: Option<ConversationId>,
    /// The page starts after this key.
    pub after: Option<SearchKey>,
    /// How many hits to read (the page and one more, to tell whether another follows).
    pub limit: i64,
}

impl Search<'_> {
    /// How many of the owner's newest messages [`SearchStep::Newest`] reads at most.
    fn walk(&self) -> i64 {
        self.limit.saturating_mul(WALK_PER_HIT)
    }
}

/// The two statements of a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchStep {
    /// The owner's newest messages after the page key, at most [`WALK_PER_HIT`] per hit
    /// asked for, tested newest first until the page is full. For a big owner they come
    /// from `messages_created_at_idx` (all messages newest first from `until` down, each
    /// kept if its conversation is the owner's), for a small one from its conversations'
    /// messages: the planner picks, for the owner's size, the cheaper way to read that
    /// many. The bound keeps a word that is rare for the owner from walking the whole
    /// table, which a walk left to the planner would do: it cannot tell a rare word from
    /// one in 0.5% of messages (a word outside the index's most common elements gets that
    /// default) and takes the owner's share of the matches to be its share of the
    /// conversations.
    Newest {
        /// [`SearchStart::until`]: an owner whose activity is all old starts the walk
        /// there, not at everyone's newest messages. A value, not a subquery, so the
        /// planner knows how many messages are older.
        until: DateTime<Utc>,
    },
    /// Every match of the owner's after the page key, then the newest of them: read
    /// whole, so the planner picks the GIN index (a rare word) or the owner's messages (a
    /// small owner), never a walk that could not stop early.
    Matches,
}

/// How many of the owner's newest messages [`SearchStep::Newest`] tests per hit asked for:
/// a word in at least 1% of them fills the page there.
pub const WALK_PER_HIT: i64 = 100;

/// How many words ts_headline's excerpt holds at most: a body of that many words or fewer
/// comes back whole.
const EXCERPT_WORDS: usize = 20;

fn owner_column(owner: &Participant) -> &'static str {
    match owner.role() {
        Role::Provider => "provider_id",
        Role::Customer => "customer_id",
    }
}

/// SearchMessages' statement for `step` after `prefix` (`EXPLAIN` in the plan test), its
/// values bound.
pub fn search_sql(step: SearchStep, prefix: &str, search: &Search<'_>) -> QueryBuilder<Postgres> {
    let owner_column = owner_column(search.owner);
    let mut sql = QueryBuilder::<Postgres>::new(prefix);
    match step {
        SearchStep::Newest { until } => {
            // The inner LIMIT bounds the walk; the outer one stops it at a full page. The
            // inner query's order carries through the filter, so neither needs a sort. The
            // outer ORDER BY also makes the planner cost the inner query for all of its
            // LIMIT, which is what a rare word reads: it walks only an owner for whom
            // that is cheaper than reading all of its messages, and a common word then
            // stops well before. The walk's last message is kept, hit or not, to tell a
            // walk that stopped at its bound from one that read every message.
            sql.push(format!("SELECT hits.*, {HEADLINE} FROM (SELECT m.*, "));
            push_match(&mut sql, search.query);
            // Numbered above the walk's LIMIT, not beside the walk, so that the walk is
            // planned as it is alone (beside it, the window function made a parallel walk
            // look cheaper).
            sql.push(format!(
                " AS matched FROM (SELECT s.*, row_number() OVER (ORDER BY s.created_at DESC, \
                   s.conversation_id DESC, s.seq DESC) AS walked FROM (SELECT {COLUMNS} {FROM} \
                   WHERE c.{owner_column} = "
            ))
            .push_bind(search.owner.id().to_owned())
            .push(" AND m.created_at < ")
            .push_bind(until);
            push_position(&mut sql, search);
            sql.push(format!(" ORDER BY {NEWEST_FIRST} LIMIT "))
                .push_bind(search.walk())
                .push(") s) m WHERE ");
            push_match(&mut sql, search.query);
            sql.push(" OR m.walked = ")
                .push_bind(search.walk())
                .push(format!(" ORDER BY {NEWEST_FIRST} LIMIT "))
                .push_bind(search.limit)
                .push(") hits");
        }
        SearchStep::Matches => {
            sql.push(format!(
                "WITH matched AS MATERIALIZED (SELECT {COLUMNS} {FROM} WHERE "
            ));
            push_match(&mut sql, search.query);
            sql.push(format!(" AND c.{owner_column} = "))
                .push_bind(search.owner.id().to_owned());
            push_position(&mut sql, search);
            sql.push(format!(
                ") SELECT hits.*, {HEADLINE} FROM (SELECT * FROM matched m \
                   ORDER BY {NEWEST_FIRST} LIMIT "
            ))
            .push_bind(search.limit)
            .push(") hits");
        }
    }
    sql.push(" CROSS JOIN (SELECT websearch_to_tsquery('simple'::regconfig, ")
        .push_bind(search.query.0.clone())
        .push(") AS q) q");
    // The marks are taken out of the body first, so every mark in the excerpt is
    // ts_headline's.
    let marks: String = [HIGHLIGHT_START, HIGHLIGHT_STOP].iter().collect();
    sql.push(", (SELECT ")
        .push_bind(marks)
        .push("::text AS marks, ");
    let selectors = format!("StartSel={HIGHLIGHT_START}, StopSel={HIGHLIGHT_STOP}");
    // A body of at most EXCERPT_WORDS words comes back whole, highlighted: fragments
    // (MaxFragments) are cut around the matches and drop the words before the first even
    // when all of them would fit. A longer body gets a fragment or two around the
    // matches. The gRPC side cuts either to SNIPPET_CHARS.
    sql.push_bind(format!("{selectors}, HighlightAll=true"))
        .push("::text AS whole, ")
        .push_bind(format!(
            "{selectors}, MaxWords={EXCERPT_WORDS}, MinWords=8, MaxFragments=2, \
             FragmentDelimiter=\" … \""
        ))
        .push(format!(
            "::text AS fragments, {EXCERPT_WORDS} AS words) o ORDER BY {HITS_NEWEST_FIRST}"
        ));
    sql
}

/// A message as [`SearchRow`] reads it, of `messages m` ([`FROM`]).
const COLUMNS: &str = "m.conversation_id, m.seq, m.id, m.sender_role, m.sender_id, m.body, \
       m.client_message_id, m.created_at, m.edited_at, m.edit_count, \
       m.deleted_at IS NOT NULL AS deleted, m.attachments, m.last_change";
/// Messages with their conversation, whose owner the search is for.
const FROM: &str = "FROM messages m JOIN conversations c ON c.id = m.conversation_id";

const NEWEST_FIRST: &str = "m.created_at DESC, m.conversation_id DESC, m.seq DESC";
const HITS_NEWEST_FIRST: &str = "hits.created_at DESC, hits.conversation_id DESC, hits.seq DESC";

/// The excerpt of `hits.body`, for the page's rows only (ts_headline parses the whole
/// body). ts_headline's words are the parser's tokens but spaces, tags, and URLs and
/// hyphenated words (whose parts are tokens of their own): the `NONWORDTOKEN` types of
/// PostgreSQL's wparser_def.c (5 url, 12 blank, 13 tag, 15–17 hyphenated words).
const HEADLINE: &str = "ts_headline('simple'::regconfig, translate(hits.body, o.marks, '  '), q.q, \
       CASE WHEN (SELECT count(*) FROM ts_parse('default', hits.body) t \
                  WHERE t.tokid NOT IN (5, 12, 13, 15, 16, 17)) <= o.words \
            THEN o.whole ELSE o.fragments END) AS headline";

/// The text search condition, in the very expression of the GIN index. The query is a
/// value the planner sees (`websearch_to_tsquery` is immutable, the statement is planned
/// for its values), so it estimates the rows from the index's statistics of each word.
fn push_match(sql: &mut QueryBuilder<Postgres>, query: &SearchQuery) {
    sql.push(
        "to_tsvector('simple'::regconfig, m.body) @@ websearch_to_tsquery('simple'::regconfig, ",
    )
    .push_bind(query.0.clone())
    .push(")");
}

/// One conversation only, and the page key.
fn push_position(sql: &mut QueryBuilder<Postgres>, search: &Search<'_>) {
    if let Some(id) = search.conversation {
        sql.push(" AND m.conversation_id = ").push_bind(id.0);
    }
    if let Some((at, id, seq)) = search.after {
        sql.push(" AND (m.created_at, m.conversation_id, m.seq) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(", ")
            .push_bind(seq)
            .push(")");
    }
}
