//! Reading conversations: one, several, or a participant's list.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{
    handle::Store,
    records::{CONVERSATION_SELECT, ConversationRow},
    walk::{self, Walked},
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
    ///
    /// With a `customer_query`, see [`ListStep`]: the owner's newest conversations are
    /// walked first, and every match is read only if that walk stopped at its bound short
    /// of a page.
    pub async fn list_conversations(
        &self,
        owner: &Participant,
        filter: &ConversationFilter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<ConversationRow>> {
        let mut list = List {
            owner,
            filter,
            after,
            limit,
            settled: None,
        };
        if filter.customer_query.is_none() {
            return list_sql(ListStep::Walk, "", &list)
                .build_query_as()
                .fetch_all(&self.pool)
                .await
                .map_err(|e| Error::db("list conversations", e));
        }
        list.settled = Some(self.inbox_settled_through().await?);
        let walked: Vec<Walked<ConversationRow>> = self.list_step(ListStep::Walk, &list).await?;
        match walk::page(walked, CUSTOMER_WALK, limit) {
            Some(page) => Ok(page),
            None => self.list_step(ListStep::Matches, &list).await,
        }
    }

    /// `inbox_settled.through`: conversations whose `inbox_at` is older are settled. The
    /// table's value only moves forward, and a value read earlier stays a correct bound:
    /// a conversation settled since is still in order among those sorted by
    /// `last_activity_at`.
    pub async fn inbox_settled_through(&self) -> Result<DateTime<Utc>> {
        sqlx::query_scalar("SELECT through FROM inbox_settled")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::db("read the settled inbox order", e))
    }

    async fn list_step<T>(&self, step: ListStep, list: &List<'_>) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        list_sql(step, "", list)
            .build_query_as()
            // Planned for its values each time (an unnamed statement): how many of the
            // owner's conversations match the text decides between the windows index and
            // the owner's own list, and a plan kept for any text would take one for all.
            .persistent(false)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| Error::db("list conversations", e))
    }
}

/// One page of ListConversations: whose list, which filters, from where.
#[derive(Debug, Clone, Copy)]
pub struct List<'a> {
    pub owner: &'a Participant,
    pub filter: &'a ConversationFilter,
    /// The page starts after this `(last_activity_at, id)`.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// How many conversations to read (the page and one more).
    pub limit: i64,
    /// [`Store::inbox_settled_through`], read before the statement, or `None` to read it
    /// in the statement. As a value the planner knows that nearly all of an owner's
    /// conversations are settled: with a subquery it guesses a third, and for an owner
    /// of a few thousand it would rather read and sort all of them than walk the index
    /// for [`CUSTOMER_WALK`].
    pub settled: Option<DateTime<Utc>>,
}

/// The statements of a ListConversations page.
///
/// Without a customer_query only [`ListStep::Walk`] runs, and it is the page: the filters
/// are tested on the owner's order until the page is full. With one, that walk could read
/// all of a big owner's conversations: the planner expects a text to match the owner's
/// customers as often as everyone's (`Lovelace`, in 1/8 of all names, in none of a
/// 100,000-conversation owner's, read all 100,000), so the walk is bounded and the
/// provider's windows of the text in the index answer what the walk does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStep {
    /// The owner's order after the page key. With a customer_query, at most
    /// [`CUSTOMER_WALK`] conversations of it, each tested, until the page is full; the
    /// walk's last conversation is returned too (its place tells a walk cut at its bound
    /// from one that read the whole list).
    Walk,
    /// Every match of the customer_query among the owner's conversations, read whole
    /// (a MATERIALIZED CTE, so the planner picks the provider's windows of the text in
    /// `conversations_customer_grams_idx` or the owner's list,
    /// never a walk that could not stop early) and once for both parts of the order,
    /// then paged with the same keys as the walk.
    Matches,
}

/// How many of the owner's conversations [`ListStep::Walk`] tests for a customer_query:
/// a text in at least 1 in 20 of them fills a page of 50 there.
pub const CUSTOMER_WALK: i64 = 1_000;

/// The two parts of the owner's order (migration `20261206091000_inbox_order`): the
/// conversations active since `inbox_settled.through` by `last_activity_at`, then the
/// settled ones by `inbox_at`, which is their last activity.
const PARTS: [(&str, &str); 2] = [(">=", "last_activity_at"), ("<", "inbox_at")];

/// ListConversations' statement for `step` after `prefix` (`EXPLAIN` in tests), its values
/// bound.
pub fn list_sql(step: ListStep, prefix: &str, list: &List<'_>) -> QueryBuilder<Postgres> {
    let mut query = QueryBuilder::<Postgres>::new(prefix);
    let owner = list.owner;
    let filter = list.filter;
    let owner_column = match owner.role() {
        Role::Provider => "provider_id",
        Role::Customer => "customer_id",
    };
    match (step, &filter.customer_query) {
        (ListStep::Walk, None) => {
            query.push(conversation_columns!()).push(" FROM (");
            push_parts(
                &mut query,
                list,
                "conversations",
                list.limit,
                |query, key| {
                    query.push(format_args!(" AND c.{owner_column} = "));
                    query.push_bind(owner.id().to_owned());
                    push_filter(query, owner.role(), filter);
                    push_active_after(query, filter, key);
                },
            );
            query.push(") c").push(last_message_join!());
        }
        (ListStep::Walk, Some(_)) => {
            // Each part's LIMIT bounds the walk; the numbering finds its end among both.
            // The filters are tested on the walked rows only (active_after aside: it
            // bounds the index scan, so it cuts the walk rather than lengthen it).
            query
                .push(conversation_columns!())
                .push(", c.matched, c.walked FROM (SELECT c.*, COALESCE(true");
            push_filter(&mut query, owner.role(), filter);
            query.push(
                ", false) AS matched, row_number() OVER \
                 (ORDER BY c.last_activity_at DESC, c.id DESC) AS walked FROM (",
            );
            push_parts(
                &mut query,
                list,
                "conversations",
                CUSTOMER_WALK,
                |query, key| {
                    query.push(format_args!(" AND c.{owner_column} = "));
                    query.push_bind(owner.id().to_owned());
                    push_active_after(query, filter, key);
                },
            );
            query
                .push(") c ORDER BY c.last_activity_at DESC, c.id DESC LIMIT ")
                .push_bind(CUSTOMER_WALK)
                .push(") c")
                .push(last_message_join!())
                .push(" WHERE c.matched OR c.walked = ")
                .push_bind(CUSTOMER_WALK);
        }
        (ListStep::Matches, _) => {
            query.push(format_args!(
                "WITH matched AS MATERIALIZED (SELECT c.id, c.last_activity_at, c.inbox_at \
                 FROM conversations c WHERE c.{owner_column} = "
            ));
            query.push_bind(owner.id().to_owned());
            push_filter(&mut query, owner.role(), filter);
            if let (Role::Provider, Some(text)) = (owner.role(), &filter.customer_query) {
                // The expression of conversations_customer_grams_idx (migration
                // `20261206150000_customer_search_grams`): the provider's conversations
                // that hold every three-character window of the text, tested by the
                // ILIKE above. Not in the walk, where the ILIKE alone is cheaper.
                query
                    .push(
                        " AND chat_grams(c.provider_id, chat_customer_text(c.customer_name, \
                         c.customer_email, c.customer_phone)) @> chat_grams(",
                    )
                    .push_bind(owner.id().to_owned())
                    .push(", ")
                    .push_bind(text.text().to_owned())
                    .push(")");
            }
            query
                .push(") ")
                .push(conversation_columns!())
                .push(" FROM (");
            push_parts(&mut query, list, "matched", list.limit, |query, key| {
                push_active_after(query, filter, key);
            });
            query
                .push(") p JOIN conversations c ON c.id = p.id")
                .push(last_message_join!());
        }
    }
    query
        .push(" ORDER BY c.last_activity_at DESC, c.id DESC LIMIT ")
        .push_bind(list.limit);
    query
}

/// Both parts of the owner's order from `table` (as `c`), each after the page key and cut
/// at `limit`, with `conditions` (given the part's order key), as a UNION ALL.
fn push_parts(
    query: &mut QueryBuilder<Postgres>,
    list: &List<'_>,
    table: &str,
    limit: i64,
    conditions: impl Fn(&mut QueryBuilder<Postgres>, &str),
) {
    for (i, (part, key)) in PARTS.into_iter().enumerate() {
        if i > 0 {
            query.push(" UNION ALL ");
        }
        query.push(format_args!(
            "(SELECT c.* FROM {table} c WHERE c.inbox_at {part} "
        ));
        match list.settled {
            Some(through) => {
                query.push_bind(through);
            }
            // A scalar subquery, so the index scan can seek with it.
            None => {
                query.push("(SELECT through FROM inbox_settled)");
            }
        }
        conditions(query, key);
        if let Some((time, id)) = list.after {
            query
                .push(format_args!(" AND (c.{key}, c.id) < ("))
                .push_bind(time)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        query
            .push(format_args!(" ORDER BY c.{key} DESC, c.id DESC LIMIT "))
            .push_bind(limit)
            .push(")");
    }
}

/// The filters' conditions on a conversation but `active_after`.
fn push_filter(query: &mut QueryBuilder<Postgres>, role: Role, filter: &ConversationFilter) {
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
        // What decides a match; a provider's Matches step adds the index's condition.
        query
            .push(
                " AND chat_customer_text(c.customer_name, c.customer_email, c.customer_phone) \
                 ILIKE ",
            )
            .push_bind(text.pattern());
    }
}

/// `active_after` on a part ordered by `key`, whose values are the last activity there,
/// so it bounds the index scan of settled ones.
fn push_active_after(query: &mut QueryBuilder<Postgres>, filter: &ConversationFilter, key: &str) {
    if let Some(time) = filter.active_after {
        query.push(format_args!(" AND c.{key} > ")).push_bind(time);
    }
}
