//! ListConversations' order where the index cannot give it alone: conversations active
//! since the inbox order was last settled, whose `inbox_at` may lag their last activity
//! within its minute, and the settling that makes them index-ordered.

use std::time::Duration;

use conversation_service::store::{PoolSettings, SETTLE_CHUNK_SQL, Store};

use crate::helpers::{create, new_provider, provider, rows_read, send, spawn_app};

/// Seconds after 12:00:00 on a past day; two share an instant, so their ids decide.
const OFFSETS: [f64; 8] = [59.999, 0.0, 60.0, 125.0, 59.5, -3600.0, 60.5, 60.5];

/// Unsettled conversations (their minute not yet settled, `inbox_at` at the start of it,
/// as after several sends within one minute) come in the exact order of their last
/// activity on every page; settling gives each `inbox_at = last_activity_at`, moves
/// `through` past them, and the order stays the same.
#[tokio::test]
async fn unsettled_conversations_are_in_exact_order_before_and_after_settling() {
    let mut app = spawn_app().await;
    let owner = new_provider();
    let mut db = app.db().await;
    sqlx::query("UPDATE inbox_settled SET through = timestamptz '2026-11-27 10:00:00+00'")
        .execute(&mut db)
        .await
        .unwrap();
    let mut expected = Vec::new();
    for offset in OFFSETS {
        let id = create(&mut app.client, &owner).await.conversation_id;
        sqlx::query(
            "UPDATE conversations SET last_activity_at = \
             timestamptz '2026-11-27 12:00:00+00' + make_interval(secs => $2) \
             WHERE id = $1::uuid",
        )
        .bind(&id)
        .bind(offset)
        .execute(&mut db)
        .await
        .unwrap();
        expected.push((offset, id));
    }
    sqlx::query("UPDATE conversations SET inbox_at = chat_activity_minute(last_activity_at)")
        .execute(&mut db)
        .await
        .unwrap();
    let expected = newest_first(expected);
    assert_eq!(pages(&mut app.client, &owner, 2).await, expected);

    let unsettled = "SELECT count(*) FROM conversations WHERE inbox_at <> last_activity_at";
    let lagging = app.count(unsettled).await;
    assert!(lagging >= 5, "{lagging}");
    let store = store(&app.database_url);
    assert_eq!(
        store.settle_inbox_order().await.unwrap(),
        u64::try_from(lagging).unwrap()
    );
    assert_eq!(app.count(unsettled).await, 0);
    let past = app
        .count(
            "SELECT count(*) FROM inbox_settled \
             WHERE through >= chat_activity_minute(now() - interval '1 minute')",
        )
        .await;
    assert_eq!(past, 1, "through moved up to the minutes that closed");
    assert_eq!(store.settle_inbox_order().await.unwrap(), 0, "nothing left");
    assert_eq!(pages(&mut app.client, &owner, 2).await, expected);
    assert_eq!(pages(&mut app.client, &owner, 3).await, expected);
    store.close().await;
}

/// More lagging conversations than one settling statement changes, several sharing an
/// `inbox_at` (one SendMessage batch's time), one of them held by a writer: the chunks
/// settle every other without waiting for it, `through` stays until that one is settled
/// too, and the next run settles it. The service's own settling task may run meanwhile;
/// what is checked holds either way.
#[tokio::test]
async fn settling_goes_in_chunks_and_passes_over_a_conversation_a_writer_holds() {
    let app = spawn_app().await;
    let mut db = app.db().await;
    let before = "2026-11-27 10:00:00+00";
    sqlx::query("UPDATE inbox_settled SET through = $1::timestamptz")
        .bind(before)
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO conversations (id, provider_id, head_seq, created_at, last_activity_at, \
                                    inbox_at) \
         SELECT md5('settle-' || i)::uuid, 'prov-settle', 0, t.first, \
                t.first + (1 + i) * interval '1 ms', t.first \
           FROM generate_series(1, 350) AS i, \
                LATERAL (SELECT timestamptz '2026-11-27 12:00:00+00' \
                                + (i % 3) * interval '1 minute' \
                                + (i % 2) * interval '1 second' AS first) AS t",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let unsettled = "SELECT count(*) FROM conversations WHERE inbox_at <> last_activity_at";
    assert_eq!(app.count(unsettled).await, 350);

    let mut writer = app.db().await;
    let mut held = sqlx::Connection::begin(&mut writer).await.unwrap();
    sqlx::query("SELECT 1 FROM conversations WHERE id = md5('settle-200')::uuid FOR UPDATE")
        .execute(&mut *held)
        .await
        .unwrap();
    let store = store(&app.database_url);
    assert!(
        store.settle_inbox_order().await.is_err(),
        "the last statement waits for the held row only as long as its lock timeout"
    );
    let lagging: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM conversations WHERE inbox_at <> last_activity_at")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let (held_id,): (uuid::Uuid,) = sqlx::query_as("SELECT md5('settle-200')::uuid")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(lagging, vec![held_id], "all but the held one settled");
    let stayed = format!("SELECT count(*) FROM inbox_settled WHERE through = '{before}'");
    assert_eq!(
        app.count(&stayed).await,
        1,
        "through waits for the held one"
    );

    held.rollback().await.unwrap();
    store.settle_inbox_order().await.unwrap();
    assert_eq!(app.count(unsettled).await, 0);
    assert_eq!(app.count(&stayed).await, 0, "through moved");
    store.close().await;
}

/// A settling chunk reads the range of `inbox_at` it settles, not the index from its
/// oldest entry: among 20,000 conversations settled long ago, a chunk of the 150 lagging
/// ones in a closed minute reads about its 100 rows. (Its bounds once came from a joined
/// row, and each chunk walked the whole index: a million rows on the loaded database.)
#[tokio::test]
async fn a_settling_chunk_reads_only_the_range_it_settles() {
    let app = spawn_app().await;
    let mut db = app.db().await;
    sqlx::raw_sql(
        "INSERT INTO conversations (id, provider_id, head_seq, created_at, last_activity_at, \
                                    inbox_at) \
         SELECT md5('old-' || i)::uuid, 'prov-old', 0, t.at, t.at, t.at \
           FROM generate_series(1, 20000) AS i, \
                LATERAL (SELECT timestamptz '2025-01-01 00:00:00+00' \
                                + i * interval '1 minute' AS at) AS t; \
         INSERT INTO conversations (id, provider_id, head_seq, created_at, last_activity_at, \
                                    inbox_at) \
         SELECT md5('lagging-' || i)::uuid, 'prov-old', 0, t.first, \
                t.first + (1 + i) * interval '1 ms', t.first \
           FROM generate_series(1, 150) AS i, \
                LATERAL (SELECT timestamptz '2026-11-27 12:00:00+00' AS first) AS t; \
         ANALYZE conversations;",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let mut tx = sqlx::Connection::begin(&mut db).await.unwrap();
    let (plan,): (serde_json::Value,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {SETTLE_CHUNK_SQL}"
    )))
    .bind(chrono::DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z").unwrap())
    .bind(chrono::DateTime::parse_from_rfc3339("2026-11-27T12:01:00Z").unwrap())
    .bind(100_i64)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let read = rows_read(&plan, "conversations");
    assert!(
        (100..=300).contains(&read),
        "a chunk of 100 read {read} rows of conversations: {plan}"
    );
}

/// Live sends within a minute move a conversation to the top without rewriting its
/// indexed `inbox_at` (the update stays HOT); the list is still in the order of the
/// sends.
#[tokio::test]
async fn sends_within_a_minute_reorder_the_list_exactly_and_stay_hot() {
    let mut app = spawn_app().await;
    let owner = new_provider();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(create(&mut app.client, &owner).await.conversation_id);
    }
    let (a, b, c) = (&ids[0], &ids[1], &ids[2]);
    for id in [a, b, c, a, b] {
        send(&mut app.client, id, provider(&owner), "hi")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        pages(&mut app.client, &owner, 1).await,
        vec![b.clone(), a.clone(), c.clone()]
    );
    // inbox_at moves only with the minute of the last activity.
    let same_minute = app
        .count(
            "SELECT count(*) FROM conversations \
             WHERE chat_activity_minute(inbox_at) = chat_activity_minute(last_activity_at) \
               AND inbox_at <= last_activity_at",
        )
        .await;
    assert_eq!(same_minute, 3);
    // And the updates were HOT: at most one per conversation (a minute boundary crossed
    // during the test) wrote an index. The statistics arrive within a second or so.
    let (updates, hot) = chat_common::testing::status::eventually(Duration::from_secs(15), || {
        let app = &app;
        async move {
            let mut db = app.db().await;
            let (updates, hot): (i64, i64) = sqlx::query_as(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
                 WHERE relname = 'conversations'",
            )
            .fetch_one(&mut db)
            .await
            .ok()?;
            (updates >= 5).then_some((updates, hot))
        }
    })
    .await;
    assert!(hot >= updates - 3, "{hot} of {updates} updates were HOT");
}

fn store(url: &str) -> Store {
    Store::connect(&PoolSettings {
        options: url.parse().unwrap(),
        size: 2,
        acquire_timeout: Duration::from_secs(10),
        send_writers: 1,
    })
}

fn newest_first(mut conversations: Vec<(f64, String)>) -> Vec<String> {
    conversations.sort_by(|x, y| x.0.total_cmp(&y.0).reverse().then_with(|| y.1.cmp(&x.1)));
    conversations.into_iter().map(|(_, id)| id).collect()
}

async fn pages(client: &mut crate::helpers::Client, owner: &str, size: i32) -> Vec<String> {
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_conversations(chat_proto::v1::ListConversationsRequest {
                participant: provider(owner),
                page_size: size,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.conversations.into_iter().map(|c| c.conversation_id));
        token = page.next_page_token;
        if token.is_empty() {
            return seen;
        }
    }
}
