//! ListConversations' filters: unread_only, customer_query, active_after, and page tokens
//! bound to them.

use chat_proto::v1;
use conversation_service::{
    domain::{ConversationFilter, Participant, Role},
    store::{CUSTOMER_WALK, List, ListStep, list_sql},
};
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{
    Client, TestApp, bad_field, create, customer, new_provider, provider, rows_read, send,
    spawn_app,
};

fn request(owner: &str) -> v1::ListConversationsRequest {
    v1::ListConversationsRequest {
        participant: provider(owner),
        page_size: 50,
        ..Default::default()
    }
}

async fn ids(client: &mut Client, request: v1::ListConversationsRequest) -> Vec<String> {
    client
        .list_conversations(request)
        .await
        .unwrap()
        .into_inner()
        .conversations
        .into_iter()
        .map(|c| c.conversation_id)
        .collect()
}

async fn linked(
    client: &mut Client,
    owner: &str,
    customer_id: &str,
    name: &str,
    email: &str,
    phone: &str,
) -> String {
    let id = create(client, owner).await.conversation_id;
    client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: id.clone(),
            customer_id: Some(customer_id.into()),
            name: Some(name.into()),
            email: Some(email.into()),
            phone: Some(phone.into()),
        })
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn filters_narrow_the_list_and_bind_their_page_tokens() {
    let mut app = spawn_app().await;
    let owner = new_provider();
    let mut db = app.db().await;
    let c = &mut app.client;
    let ada = linked(
        c,
        &owner,
        &format!("a-{owner}"),
        "Ada Lovelace",
        "ada@example.com",
        "+44 20 1111",
    )
    .await;
    let grace = linked(
        c,
        &owner,
        &format!("g-{owner}"),
        "Grace Hopper",
        "grace@example.org",
        "+1 555 0100",
    )
    .await;
    let anonymous = create(c, &owner).await.conversation_id;
    let alan = linked(
        c,
        &owner,
        &format!("t-{owner}"),
        "Alan 50%_Turing",
        "alan@example.com",
        "+44 20 5555",
    )
    .await;
    send(c, &ada, customer(&format!("a-{owner}")), "hello")
        .await
        .unwrap();
    send(c, &alan, customer(&format!("t-{owner}")), "hi")
        .await
        .unwrap();
    send(c, &grace, provider(&owner), "from the provider")
        .await
        .unwrap();

    let everything = ids(c, request(&owner)).await;
    assert_eq!(
        everything,
        vec![grace.clone(), alan.clone(), ada.clone(), anonymous.clone()]
    );
    let unread = v1::ListConversationsRequest {
        unread_only: true,
        ..request(&owner)
    };
    assert_eq!(
        ids(c, unread.clone()).await,
        vec![alan.clone(), ada.clone()]
    );

    for (text, expected) in [
        ("LOVELACE", vec![ada.clone()]),
        ("5555", vec![alan.clone()]),
        ("example.com", vec![alan.clone(), ada.clone()]),
        ("50%_t", vec![alan.clone()]),
        ("0%_", vec![alan.clone()]),
        ("%%%", vec![]),
    ] {
        let query = v1::ListConversationsRequest {
            customer_query: text.into(),
            ..request(&owner)
        };
        assert_eq!(ids(c, query).await, expected, "{text}");
    }

    sqlx::query(
        "UPDATE conversations SET last_activity_at = timestamptz '2020-01-01 00:00:00+00', \
         inbox_at = timestamptz '2020-01-01 00:00:00+00' WHERE id = $1::uuid",
    )
    .bind(&ada)
    .execute(&mut db)
    .await
    .unwrap();
    let recent = v1::ListConversationsRequest {
        active_after: Some(prost_types::Timestamp {
            seconds: 1_609_459_200,
            nanos: 0,
        }),
        ..request(&owner)
    };
    assert_eq!(
        ids(c, recent).await,
        vec![grace.clone(), alan.clone(), anonymous.clone()]
    );

    // A token is bound to its filters.
    let first = c
        .list_conversations(v1::ListConversationsRequest {
            page_size: 1,
            ..unread.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let rest = ids(
        c,
        v1::ListConversationsRequest {
            page_token: first.next_page_token.clone(),
            ..unread
        },
    )
    .await;
    assert_eq!(rest, vec![ada.clone()]);
    for other in [
        v1::ListConversationsRequest {
            page_token: first.next_page_token.clone(),
            ..request(&owner)
        },
        v1::ListConversationsRequest {
            page_token: first.next_page_token.clone(),
            unread_only: true,
            customer_query: "example".into(),
            ..request(&owner)
        },
    ] {
        let status = c.list_conversations(other).await.unwrap_err();
        assert_eq!(
            (status.code(), bad_field(&status).as_str()),
            (Code::InvalidArgument, "page_token")
        );
    }
}

#[tokio::test]
async fn bad_filters_are_invalid_arguments() {
    let mut app = spawn_app().await;
    let owner = new_provider();
    for (request, field) in [
        (
            v1::ListConversationsRequest {
                customer_query: "ab".into(),
                ..request(&owner)
            },
            "customer_query",
        ),
        (
            v1::ListConversationsRequest {
                customer_query: "x".repeat(101),
                ..request(&owner)
            },
            "customer_query",
        ),
        (
            v1::ListConversationsRequest {
                active_after: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..request(&owner)
            },
            "active_after",
        ),
        (
            v1::ListConversationsRequest {
                active_after: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..request(&owner)
            },
            "active_after",
        ),
    ] {
        let status = app.client.list_conversations(request).await.unwrap_err();
        assert_eq!(
            (status.code(), bad_field(&status).as_str()),
            (Code::InvalidArgument, field)
        );
    }
}

/// 32,000 conversations without messages: `prov-big` owns 4,000 (a few Lovelaces, most of
/// them among the 41 active since the inbox order's last settling; 1 in 5 a Hopper; no
/// Thompson), the rest are 100 small owners' (a third Lovelaces, 1 in 7 Thompsons).
/// Activity times repeat every 5,000 conversations, so the order meets ties. Fewer, and
/// the planner rightly reads and sorts all of `prov-big`'s rather than walk an index.
const LOAD: &str = "
INSERT INTO conversations (id, provider_id, head_seq, created_at, last_activity_at, inbox_at,
                           customer_name, customer_email, customer_phone)
SELECT md5('c' || i)::uuid,
       CASE WHEN i % 8 = 0 THEN 'prov-big' ELSE 'prov-small-' || (i % 100) END,
       0, t.last - interval '1 day', t.last, t.last,
       CASE WHEN i % 8 <> 0 AND i % 3 = 0 THEN 'Ada Lovelace ' || i
            WHEN i % 8 <> 0 AND i % 7 = 0 THEN 'Ken Thompson ' || i
            WHEN i % 8 <> 0 THEN 'Edsger Dijkstra ' || i
            WHEN i IN (16000, 24000) THEN 'Zoë Ørsted-İnce'
            WHEN i IN (8000, 20008, 31992) OR i % 97 = 0 THEN 'Ada Lovelace'
            WHEN i % 5 = 1 THEN 'Grace Hopper ' || i
            ELSE 'Alan Turing ' || i END,
       'customer' || i || '@example.com', '+44 ' || i
  FROM generate_series(1, 32000) AS i,
       -- A few are active in the future: after the settled part, for the whole test.
       LATERAL (SELECT CASE WHEN i % 97 = 0 THEN timestamptz '2099-01-01 00:00:00+00'
                            ELSE timestamptz '2026-12-01 00:00:00+00' END
                       - ((i * 7) % 5000) * interval '1 second' AS last) AS t;
ANALYZE conversations;
";

/// A customer_query of a big owner reads at most a bounded walk of its list, then (when
/// that walk found less than a page) the matches of the provider's windows of the text, never the whole list;
/// every page holds what a full read and sort would, in order, ties included.
#[tokio::test]
async fn a_customer_query_reads_a_bounded_walk_then_the_matches_and_pages_stay_exact() {
    let mut app = spawn_app().await;
    let mut db = app.db().await;
    sqlx::raw_sql(LOAD).execute(&mut db).await.unwrap();

    for (owner, text) in [
        // Rare: the walk finds the recent ones, the matches the rest.
        ("prov-big", "Lovelace"),
        // Common: every page comes from the walk.
        ("prov-big", "Hopper"),
        ("prov-big", "Thompson"),
        ("prov-small-8", "Lovelace"),
        ("prov-small-8", "Thompson"),
        ("prov-small-8", "example.com"),
        // Rare, found by the provider's windows of the text: case, digits, across the
        // name and the email, letters of more than one byte.
        ("prov-big", "lOvElAcE"),
        ("prov-big", "customer24"),
        ("prov-big", "lovelace customer8000@"),
        ("prov-big", "ØRSTED-i"),
        ("prov-big", "zoë"),
        ("prov-big", "@example.co"),
    ] {
        for page_size in [7, 50] {
            let mut request = v1::ListConversationsRequest {
                customer_query: text.into(),
                page_size,
                ..request(owner)
            };
            let mut got = Vec::new();
            loop {
                let page = app
                    .client
                    .list_conversations(request.clone())
                    .await
                    .unwrap()
                    .into_inner();
                got.extend(page.conversations.into_iter().map(|c| c.conversation_id));
                if page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            let want: Vec<String> = sqlx::query_scalar::<_, Uuid>(
                "SELECT id FROM conversations WHERE provider_id = $1 \
                 AND (customer_name || ' ' || customer_email || ' ' || customer_phone) \
                     ILIKE '%' || $2 || '%' \
                 ORDER BY last_activity_at DESC, id DESC",
            )
            .bind(owner)
            .bind(text)
            .fetch_all(&mut db)
            .await
            .unwrap()
            .into_iter()
            .map(|id| id.to_string())
            .collect();
            assert_eq!(got, want, "{owner} {text} {page_size}");
        }
    }

    // No match in a big owner's list: the walk stops at its bound, and the matches come
    // from the provider's windows of the text, not from the owner's 4,000.
    let (through,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT through FROM inbox_settled")
            .fetch_one(&mut db)
            .await
            .unwrap();
    let walk = explain(&app, ListStep::Walk, "prov-big", "Thompson", through).await;
    let read = rows_read(&walk, "conversations");
    assert!(
        read <= 2 * CUSTOMER_WALK as u64,
        "the walk read {read} rows: {walk}"
    );
    let matches = explain(&app, ListStep::Matches, "prov-big", "Thompson", through).await;
    let read = rows_read(&matches, "conversations");
    assert!(read < 100, "the matches read {read} rows: {matches}");
    assert!(
        matches
            .to_string()
            .contains("conversations_customer_grams_idx"),
        "the matches do not come from the provider's windows of the text: {matches}"
    );
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` of one step of `owner`'s first page of 50 for `text`,
/// as the service runs it.
async fn explain(
    app: &TestApp,
    step: ListStep,
    owner: &str,
    text: &str,
    settled: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    let owner = Participant::stored(Role::Provider, owner.to_owned());
    let filter = ConversationFilter::parse(&v1::ListConversationsRequest {
        customer_query: text.into(),
        ..Default::default()
    })
    .unwrap();
    let list = List {
        owner: &owner,
        filter: &filter,
        after: None,
        limit: 51,
        settled: Some(settled),
    };
    let mut db = app.db().await;
    let mut sql = list_sql(step, "EXPLAIN (ANALYZE, FORMAT JSON) ", &list);
    let (plan,): (serde_json::Value,) = sql.build_query_as().fetch_one(&mut db).await.unwrap();
    plan
}
