//! SearchMessages: who sees which hits, their order and pages, the excerpt, refusals, and
//! which path serves which search.

use std::time::Duration;

use chat_common::testing::status::{assert_invalid, assert_refused};
use chat_proto::v1::{self, conversation_privacy_service_client::ConversationPrivacyServiceClient};
use conversation_service::{
    domain::{ConversationId, Participant, Role, SearchQuery},
    store::{PoolSettings, Search, SearchStep, Store, search_sql},
};
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{Client, TestApp, create, customer, new_provider, provider, send, spawn_app};

fn request(participant: Option<v1::Participant>, query: &str) -> v1::SearchMessagesRequest {
    v1::SearchMessagesRequest {
        participant,
        query: query.into(),
        ..Default::default()
    }
}

async fn search(
    client: &mut Client,
    request: v1::SearchMessagesRequest,
) -> Result<v1::SearchMessagesResponse, tonic::Status> {
    client
        .search_messages(request)
        .await
        .map(tonic::Response::into_inner)
}

/// The bodies of a page's hits, in order.
fn bodies(page: &v1::SearchMessagesResponse) -> Vec<String> {
    page.hits
        .iter()
        .map(|h| h.message.as_ref().unwrap().body.clone())
        .collect()
}

/// Every page of a search, page by page, as bodies.
async fn walk(client: &mut Client, mut request: v1::SearchMessagesRequest) -> Vec<String> {
    let mut all = Vec::new();
    loop {
        let page = search(client, request.clone()).await.unwrap();
        assert!(page.hits.len() <= usize::try_from(request.page_size).unwrap());
        all.extend(bodies(&page));
        if page.next_page_token.is_empty() {
            return all;
        }
        request.page_token = page.next_page_token;
    }
}

async fn link(client: &mut Client, id: &str, customer_id: &str) {
    client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: id.into(),
            customer_id: Some(customer_id.into()),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_participant_finds_its_own_messages_newest_first_with_a_highlighted_excerpt() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let c = &mut client;
    let (owner, other) = (new_provider(), new_provider());
    let cust = format!("cust-{}", Uuid::new_v4().simple());
    let first = create(c, &owner).await.conversation_id;
    let second = create(c, &owner).await.conversation_id;
    let foreign = create(c, &other).await.conversation_id;
    link(c, &second, &cust).await;
    send(c, &first, provider(&owner), "The BOILER is leaking again")
        .await
        .unwrap();
    send(c, &second, customer(&cust), "my boiler makes a noise")
        .await
        .unwrap();
    send(c, &second, provider(&owner), "nothing to see here")
        .await
        .unwrap();
    send(c, &foreign, provider(&other), "another boiler elsewhere")
        .await
        .unwrap();
    send(c, &first, customer(""), "boiler fixed, thanks")
        .await
        .unwrap();

    let page = search(c, request(provider(&owner), "boiler"))
        .await
        .unwrap();
    assert_eq!(
        bodies(&page),
        [
            "boiler fixed, thanks",
            "my boiler makes a noise",
            "The BOILER is leaking again"
        ],
        "the provider's own conversations only, newest first"
    );
    assert!(page.next_page_token.is_empty());
    let excerpt = &page.hits[2].snippet;
    let highlighted: Vec<&str> = excerpt
        .iter()
        .filter(|p| p.highlighted)
        .map(|p| p.text.as_str())
        .collect();
    assert_eq!(highlighted, ["BOILER"], "{excerpt:?}");
    let whole: String = excerpt.iter().map(|p| p.text.as_str()).collect();
    assert!(
        whole.contains("BOILER is leaking") && "The BOILER is leaking again".contains(&whole),
        "an excerpt of the body: {whole:?}"
    );

    let page = search(c, request(customer(&cust), "boiler")).await.unwrap();
    assert_eq!(
        bodies(&page),
        ["my boiler makes a noise"],
        "a customer sees only the conversations it is linked to"
    );

    let mut one = request(provider(&owner), "boiler");
    one.conversation_id = first.clone();
    assert_eq!(
        bodies(&search(c, one).await.unwrap()),
        ["boiler fixed, thanks", "The BOILER is leaking again"]
    );
    // Several words: all of them; a phrase: in a row.
    let page = search(c, request(provider(&owner), "boiler leaking"))
        .await
        .unwrap();
    assert_eq!(bodies(&page), ["The BOILER is leaking again"]);
    let page = search(c, request(provider(&owner), "\"leaking boiler\""))
        .await
        .unwrap();
    assert!(page.hits.is_empty());
    let page = search(c, request(provider(&other), "leaking"))
        .await
        .unwrap();
    assert!(
        page.hits.is_empty(),
        "another provider's messages never match"
    );
}

#[tokio::test]
async fn pages_follow_each_other_without_repeats_or_gaps() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let c = &mut client;
    let owner = new_provider();
    let ids = [
        create(c, &owner).await.conversation_id,
        create(c, &owner).await.conversation_id,
        create(c, &owner).await.conversation_id,
    ];
    let mut sent = Vec::new();
    for n in 0..23 {
        let body = format!("invoice number {n}");
        send(c, &ids[n % 3], provider(&owner), &body).await.unwrap();
        sent.push(body);
        if n % 4 == 0 {
            send(c, &ids[n % 3], provider(&owner), "unrelated")
                .await
                .unwrap();
        }
    }
    // Concurrent senders put several messages in one batch, with one created_at: the
    // order must still be total.
    let mut batch = Vec::new();
    for n in 23..30 {
        let mut client = c.clone();
        let id = ids[n % 3].clone();
        let owner = owner.clone();
        batch.push(tokio::spawn(async move {
            let body = format!("invoice number {n}");
            send(&mut client, &id, provider(&owner), &body)
                .await
                .unwrap();
            body
        }));
    }
    for task in batch {
        sent.push(task.await.unwrap());
    }

    let mut walked = request(provider(&owner), "invoice");
    walked.page_size = 4;
    let all = walk(c, walked.clone()).await;
    let mut expected = sent.clone();
    expected.sort();
    let mut got = all.clone();
    got.sort();
    assert_eq!(got, expected, "every hit once");

    // Newest first: the order of (create_time, conversation, seq) descending.
    let page = search(
        c,
        v1::SearchMessagesRequest {
            page_size: 100,
            ..walked.clone()
        },
    )
    .await
    .unwrap();
    let keys: Vec<(i64, i32, String, i64)> = page
        .hits
        .iter()
        .map(|h| {
            let m = h.message.as_ref().unwrap();
            let t = m.create_time.unwrap();
            (t.seconds, t.nanos, m.conversation_id.clone(), m.seq)
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(keys, sorted);
    assert_eq!(bodies(&page), all, "pages walk the one order");

    // A message sent during a walk is newer than every page: it shifts nothing.
    let first = search(c, walked.clone()).await.unwrap();
    send(c, &ids[0], provider(&owner), "invoice latecomer")
        .await
        .unwrap();
    let mut rest = walked.clone();
    rest.page_token = first.next_page_token.clone();
    let mut resumed = bodies(&first);
    resumed.extend(walk(c, rest).await);
    assert_eq!(resumed, all);
}

/// The excerpt as text, and its highlighted parts.
fn excerpt(hit: &v1::SearchHit) -> (String, Vec<String>) {
    let text = hit.snippet.iter().map(|p| p.text.as_str()).collect();
    let highlighted = hit
        .snippet
        .iter()
        .filter(|p| p.highlighted)
        .map(|p| p.text.clone())
        .collect();
    (text, highlighted)
}

/// A body of up to 20 words (ts_headline's MaxWords) comes back whole, its matches
/// highlighted, wherever they are; a longer one as fragments around them.
#[tokio::test]
async fn a_short_body_is_its_own_excerpt_and_a_long_one_is_cut_around_the_matches() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let c = &mut client;
    let owner = new_provider();
    let id = create(c, &owner).await.conversation_id;
    let words = |n: usize| (1..=n).map(|i| format!("w{i}")).collect::<Vec<_>>();
    // Twenty words as ts_headline counts them: punctuation is none, a hyphenated word is
    // its parts (two), not also the whole its parser returns before them.
    let mut short = words(17);
    short[3] = "self-made,".into();
    short.push("the".into());
    short.push("boiler!".into());
    let short = short.join(" ");
    let twenty = format!("{} zymurgy", words(19).join(" "));
    let mut long = words(60);
    long[45] = "zymurgy".into();
    let long = long.join(" ");
    for body in [&short, &twenty, &long] {
        send(c, &id, provider(&owner), body).await.unwrap();
    }

    let page = search(c, request(provider(&owner), "boiler"))
        .await
        .unwrap();
    assert_eq!(
        excerpt(&page.hits[0]),
        (short.clone(), vec!["boiler".into()])
    );

    let page = search(c, request(provider(&owner), "zymurgy"))
        .await
        .unwrap();
    assert_eq!(bodies(&page), [long.as_str(), twenty.as_str()]);
    assert_eq!(
        excerpt(&page.hits[1]),
        (twenty.clone(), vec!["zymurgy".into()])
    );
    let (text, highlighted) = excerpt(&page.hits[0]);
    assert_eq!(highlighted, ["zymurgy"]);
    assert!(
        !text.starts_with("w1 ") && text.contains("zymurgy") && text.len() < long.len(),
        "a long body's excerpt is the part around its match: {text:?}"
    );
}

#[tokio::test]
async fn erased_and_deleted_messages_do_not_match() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let c = &mut client;
    let owner = new_provider();
    let cust = format!("cust-{}", Uuid::new_v4().simple());
    let id = create(c, &owner).await.conversation_id;
    link(c, &id, &cust).await;
    send(c, &id, customer(&cust), "secret plumbing question")
        .await
        .unwrap();
    send(c, &id, provider(&owner), "plumbing answer")
        .await
        .unwrap();
    let kept = create(c, &owner).await.conversation_id;
    send(c, &kept, provider(&owner), "plumbing retained soon")
        .await
        .unwrap();
    let page = search(c, request(provider(&owner), "plumbing"))
        .await
        .unwrap();
    assert_eq!(page.hits.len(), 3);

    let mut privacy = ConversationPrivacyServiceClient::connect(format!("http://{}", app.addr))
        .await
        .unwrap();
    privacy
        .erase_customer_conversations(v1::EraseCustomerConversationsRequest {
            request_id: Uuid::new_v4().to_string(),
            customer_id: cust.clone(),
            conversation_ids: Vec::new(),
        })
        .await
        .unwrap();
    // What retention does to a closed conversation's old messages.
    let mut db = app.db().await;
    sqlx::query("DELETE FROM messages WHERE conversation_id = $1::uuid")
        .bind(&kept)
        .execute(&mut db)
        .await
        .unwrap();

    let page = search(c, request(provider(&owner), "plumbing"))
        .await
        .unwrap();
    assert_eq!(bodies(&page), ["plumbing answer"]);
    let page = search(c, request(provider(&owner), "secret"))
        .await
        .unwrap();
    assert!(page.hits.is_empty(), "an erased body matches nothing");
}

#[tokio::test]
async fn bad_searches_are_refused_with_a_reason_and_change_nothing() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let c = &mut client;
    let owner = new_provider();
    let other = new_provider();
    let id = create(c, &owner).await.conversation_id;
    let foreign = create(c, &other).await.conversation_id;
    for n in 0..5 {
        send(c, &id, provider(&owner), &format!("quote {n}"))
            .await
            .unwrap();
    }
    let before = crate::properties::rows(&app).await;

    for text in ["", "   \t ", &"x".repeat(201), "quote\u{0}", "a\u{7}b"] {
        assert_invalid(search(c, request(provider(&owner), text)).await, "query");
    }
    for text in ["...", "-quote", "!? --", "-quote -other"] {
        assert_invalid(search(c, request(provider(&owner), text)).await, "query");
    }
    assert_invalid(search(c, request(None, "quote")).await, "participant");
    assert_invalid(
        search(c, request(customer(""), "quote")).await,
        "participant",
    );
    let mut negative = request(provider(&owner), "quote");
    negative.page_size = -1;
    assert_invalid(search(c, negative).await, "page_size");
    let mut bad_id = request(provider(&owner), "quote");
    bad_id.conversation_id = "not-a-uuid".into();
    assert_invalid(search(c, bad_id).await, "conversation_id");

    let mut unknown = request(provider(&owner), "quote");
    unknown.conversation_id = Uuid::new_v4().to_string();
    assert_refused(
        search(c, unknown).await,
        Code::NotFound,
        "CONVERSATION_NOT_FOUND",
    );
    let mut theirs = request(provider(&owner), "quote");
    theirs.conversation_id = foreign.clone();
    assert_refused(
        search(c, theirs).await,
        Code::PermissionDenied,
        "NOT_A_PARTICIPANT",
    );

    // A page token is bound to its participant, its words and its conversation.
    let mut first = request(provider(&owner), "quote");
    first.page_size = 2;
    let token = search(c, first.clone()).await.unwrap().next_page_token;
    assert!(!token.is_empty());
    for other_query in [
        v1::SearchMessagesRequest {
            query: "quote 1".into(),
            ..first.clone()
        },
        v1::SearchMessagesRequest {
            conversation_id: id.clone(),
            ..first.clone()
        },
        v1::SearchMessagesRequest {
            participant: provider(&other),
            ..first.clone()
        },
        v1::SearchMessagesRequest {
            page_token: format!("{token}x"),
            ..first.clone()
        },
    ] {
        let reused = v1::SearchMessagesRequest {
            page_token: if other_query.page_token.is_empty() {
                token.clone()
            } else {
                other_query.page_token.clone()
            },
            ..other_query
        };
        assert_invalid(search(c, reused).await, "page_token");
    }
    let next = v1::SearchMessagesRequest {
        page_token: token,
        ..first
    };
    assert_eq!(search(c, next).await.unwrap().hits.len(), 2);

    assert_eq!(crate::properties::rows(&app).await, before);
}

/// Two thousand conversations, ten messages each, written directly: half of them
/// `prov-big`'s, the rest spread over 100 small providers (`prov-small-0`..). A quarter of
/// all messages say "boiler"; three of prov-big's say "zymurgy". Created times interleave
/// the conversations and about four messages share each second, as a batch's do.
const LOAD: &str = "
INSERT INTO conversations (id, provider_id, head_seq, created_at, last_activity_at, inbox_at)
SELECT md5('c' || i)::uuid,
       CASE WHEN i % 2 = 0 THEN 'prov-big' ELSE 'prov-small-' || (i % 100) END,
       10, t.last - interval '1 day', t.last, t.last
  FROM generate_series(1, 2000) AS i,
       LATERAL (SELECT max(timestamptz '2026-12-01 00:00:00+00'
                           - ((i * 7 + s * 13) % 5000) * interval '1 second') AS last
                  FROM generate_series(1, 10) AS s) AS t;
INSERT INTO messages (conversation_id, seq, id, sender_role, sender_id, body, created_at)
SELECT md5('c' || i)::uuid, s, md5('m' || i || '-' || s)::uuid, 1,
       CASE WHEN i % 2 = 0 THEN 'prov-big' ELSE 'prov-small-' || (i % 100) END,
       CASE WHEN (i = 1000 AND s IN (2, 5)) OR (i = 1998 AND s = 9) THEN 'a rare word: zymurgy'
            WHEN (i + s) % 4 = 0 THEN 'the boiler ' || w ELSE w END,
       timestamptz '2026-12-01 00:00:00+00' - ((i * 7 + s * 13) % 5000) * interval '1 second'
  FROM generate_series(1, 2000) AS i, generate_series(1, 10) AS s,
       LATERAL (SELECT (ARRAY['is fixed', 'needs a look', 'can wait', 'was paid',
                              'is dripping'])[1 + (i * s) % 5] || ' ref ' || (i * 10 + s) AS w) AS x;
ANALYZE conversations;
ANALYZE messages;
";

/// The ids SearchMessages must return for `owner` and `word`, in order, from a plain
/// query that reads and sorts every match.
async fn expected(app: &TestApp, owner: &str, word: &str) -> Vec<String> {
    let mut db = app.db().await;
    sqlx::query_scalar::<_, Uuid>(
        "SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id \
         WHERE c.provider_id = $1 AND to_tsvector('simple', m.body) @@ to_tsquery('simple', $2) \
         ORDER BY m.created_at DESC, m.conversation_id DESC, m.seq DESC",
    )
    .bind(owner)
    .bind(word)
    .fetch_all(&mut db)
    .await
    .unwrap()
    .into_iter()
    .map(|id| id.to_string())
    .collect()
}

/// Every page of a search, as message ids.
async fn walk_ids(client: &mut Client, mut request: v1::SearchMessagesRequest) -> Vec<String> {
    let mut all = Vec::new();
    loop {
        let page = search(client, request.clone()).await.unwrap();
        all.extend(
            page.hits
                .iter()
                .map(|h| h.message.as_ref().unwrap().message_id.clone()),
        );
        if page.next_page_token.is_empty() {
            return all;
        }
        request.page_token = page.next_page_token;
    }
}

/// A common word of a big owner is found by walking messages newest first and stopping at
/// the page (`messages_created_at_idx`), a rare one through the GIN index, a small owner's
/// in its own conversations; every page holds what a full read and sort would, in order,
/// ties within a second included.
#[tokio::test]
async fn each_search_takes_the_path_that_stops_soonest_and_pages_stay_exact() {
    let mut app = spawn_app().await;
    let mut db = app.db().await;
    sqlx::raw_sql(LOAD).execute(&mut db).await.unwrap();

    for (owner, word) in [
        ("prov-big", "boiler"),
        ("prov-big", "zymurgy"),
        ("prov-small-7", "boiler"),
    ] {
        let mut request = request(provider(owner), word);
        request.page_size = 20;
        let got = walk_ids(&mut app.client, request).await;
        let want = expected(&app, owner, word).await;
        assert!(!want.is_empty());
        assert_eq!(got, want, "{owner} {word}");
    }

    // The first page of a common word reads a page's worth of messages, not the table.
    let plan = explain(&app, true, "prov-big", "boiler", None).await;
    let walked = rows_read(&plan, "messages_created_at_idx")
        .unwrap_or_else(|| panic!("a common word does not walk messages by time: {plan}"));
    assert!(walked < 1_000, "walked {walked} of 20,000 messages: {plan}");
    // A rare word's matches come from the GIN index.
    let plan = explain(&app, false, "prov-big", "zymurgy", None).await;
    assert!(
        rows_read(&plan, "messages_body_search_idx").is_some(),
        "a rare word does not use the GIN index: {plan}"
    );
    // A small owner's newest messages come from its conversations, not from a walk
    // through everyone's.
    let plan = explain(&app, true, "prov-small-7", "boiler", None).await;
    assert!(
        rows_read(&plan, "messages_created_at_idx").is_none(),
        "a small owner walks every message: {plan}"
    );
    // One conversation: its messages only.
    let (id,): (Uuid,) = sqlx::query_as("SELECT md5('c2')::uuid")
        .fetch_one(&mut db)
        .await
        .unwrap();
    for newest in [true, false] {
        let plan = explain(&app, newest, "prov-big", "boiler", Some(ConversationId(id))).await;
        assert!(
            !plan.to_string().contains("\"Seq Scan\"")
                && rows_read(&plan, "messages_created_at_idx").is_none(),
            "a search in one conversation reads others: {plan}"
        );
    }
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` of one step of the first page, as the service runs it.
async fn explain(
    app: &TestApp,
    newest: bool,
    owner: &str,
    word: &str,
    conversation: Option<ConversationId>,
) -> serde_json::Value {
    let owner = Participant::stored(Role::Provider, owner.to_owned());
    let query = SearchQuery(word.into());
    let store = Store::connect(&PoolSettings {
        options: app.database_url.parse().unwrap(),
        size: 1,
        acquire_timeout: Duration::from_secs(10),
        send_writers: 1,
    });
    let start = store.search_start(&owner, &query).await.unwrap();
    let step = if newest {
        SearchStep::Newest {
            until: start.until.unwrap(),
        }
    } else {
        SearchStep::Matches
    };
    let search = Search {
        owner: &owner,
        query: &query,
        conversation,
        after: None,
        limit: 21,
    };
    let mut sql = search_sql(step, "EXPLAIN (ANALYZE, FORMAT JSON) ", &search);
    let (plan,): (serde_json::Value,) = sql.build_query_as().fetch_one(store.pool()).await.unwrap();
    store.close().await;
    plan
}

/// The rows an EXPLAIN ANALYZE plan read through `index`, if it used it.
fn rows_read(plan: &serde_json::Value, index: &str) -> Option<u64> {
    match plan {
        serde_json::Value::Object(node) => {
            if node.get("Index Name").and_then(|n| n.as_str()) == Some(index) {
                let rows = node["Actual Rows"].as_u64().unwrap();
                let loops = node["Actual Loops"].as_u64().unwrap();
                return Some(rows * loops);
            }
            node.values().find_map(|v| rows_read(v, index))
        }
        serde_json::Value::Array(items) => items.iter().find_map(|v| rows_read(v, index)),
        _ => None,
    }
}

/// The service's query sessions plan serially and compile nothing, even when
/// `DATABASE_URL` asks otherwise: a search's walk is made to stop early, and a parallel
/// plan or a JIT compilation costs more than the walk (store/pools.rs).
#[tokio::test]
async fn query_sessions_plan_serially_and_compile_nothing_whatever_the_url_says() {
    let app = spawn_app().await;
    let url = format!(
        "{}?options=-c%20jit%3Don%20-c%20max_parallel_workers_per_gather%3D4",
        app.database_url
    );
    let store = Store::connect(&PoolSettings {
        options: url.parse().unwrap(),
        size: 1,
        acquire_timeout: Duration::from_secs(10),
        send_writers: 1,
    });
    let (jit, workers): (String, String) = sqlx::query_as(
        "SELECT current_setting('jit'), current_setting('max_parallel_workers_per_gather')",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((jit.as_str(), workers.as_str()), ("off", "0"));
    store.close().await;
}
