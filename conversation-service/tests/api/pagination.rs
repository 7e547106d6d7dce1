//! AIP-158 pagination of ListConversations.

use std::collections::HashSet;

use chat_proto::v1;
use tonic::Code;

use sqlx::{Connection, PgConnection};

use crate::helpers::{
    bad_field, create, fresh_database, new_provider, provider, spawn_app, spawn_app_with,
};

#[tokio::test]
async fn walks_every_conversation_once_while_new_ones_arrive() {
    let mut app = spawn_app().await;
    let owner = new_provider();
    let mut existing = HashSet::new();
    for _ in 0..23 {
        existing.insert(create(&mut app.client, &owner).await.conversation_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut previous_activity = None;
    loop {
        let page = provider_page(&mut app.client, &owner, 5, token).await;
        assert!(page.conversations.len() <= 5);
        for c in &page.conversations {
            let activity = c.last_activity_time.map(|t| (t.seconds, t.nanos));
            if let Some(previous) = previous_activity {
                assert!(activity <= Some(previous), "newest activity first");
            }
            previous_activity = activity;
            seen.push(c.conversation_id.clone());
        }
        // New conversations arrive between pages; they sort before the cursor.
        create(&mut app.client, &owner).await;
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no conversation twice");
    assert!(
        existing.is_subset(&unique),
        "every conversation that existed was seen"
    );
}

#[tokio::test]
async fn tokens_are_bound_to_their_query_and_sizes_are_checked() {
    let mut app = spawn_app().await;
    for _ in 0..3 {
        create(&mut app.client, "p1").await;
    }
    let first = app
        .client
        .list_conversations(v1::ListConversationsRequest {
            participant: provider("p1"),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.conversations.len(), 1);
    assert!(!first.next_page_token.is_empty());
    let status = app
        .client
        .list_conversations(v1::ListConversationsRequest {
            participant: provider("p2"),
            page_size: 1,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), bad_field(&status).as_str()),
        (Code::InvalidArgument, "page_token")
    );
    let status = app
        .client
        .list_conversations(v1::ListConversationsRequest {
            participant: provider("p1"),
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = app
        .client
        .list_conversations(v1::ListConversationsRequest {
            participant: provider("p1"),
            page_size: -5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), bad_field(&status).as_str()),
        (Code::InvalidArgument, "page_size")
    );
    let all = app
        .client
        .list_conversations(v1::ListConversationsRequest {
            participant: provider("p1"),
            page_size: 100_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        all.conversations.len(),
        3,
        "above the maximum is lowered, not refused"
    );
    assert!(all.next_page_token.is_empty());
}

/// Settled conversations (last active before `inbox_settled.through`) come in the index's
/// `inbox_at` order. Pages of 2 must give the exact order across minute boundaries and
/// between conversations of the same instant (`inbox_order.rs` checks the unsettled ones).
#[tokio::test]
async fn pages_follow_the_exact_activity_time_within_and_across_minutes() {
    let mut app = spawn_app().await;
    let owner = new_provider();
    // Seconds after 12:00:00; two share an instant, so their ids decide.
    let offsets: [f64; 8] = [59.999, 0.0, 60.0, 125.0, 59.5, -3600.0, 60.5, 60.5];
    let mut db = app.db().await;
    let mut expected = Vec::new();
    for offset in offsets {
        let id = create(&mut app.client, &owner).await.conversation_id;
        sqlx::query(
            "UPDATE conversations SET last_activity_at = \
             timestamptz '2026-11-27 12:00:00+00' + make_interval(secs => $2), \
             inbox_at = timestamptz '2026-11-27 12:00:00+00' + make_interval(secs => $2) \
             WHERE id = $1::uuid",
        )
        .bind(&id)
        .bind(offset)
        .execute(&mut db)
        .await
        .unwrap();
        expected.push((offset, id));
    }
    let expected = newest_first(expected);

    assert_eq!(
        all_provider_pages(&mut app.client, &owner, 2).await,
        expected
    );
}

/// A database written before `activity_minute` existed: the migrations compute the inbox
/// order for the rows they find, and the service lists them in the order of their
/// activity.
#[tokio::test]
async fn conversations_stored_before_the_activity_minute_keep_their_order() {
    let database = fresh_database().await;
    let url = database.url().to_owned();
    let mut db = PgConnection::connect(&url).await.unwrap();
    // The last migration before 20261127010000_hot_activity.
    sqlx::migrate!("../migrations/conversation")
        .run_to(20261126230000, &mut db)
        .await
        .unwrap();
    let owner = new_provider();
    let offsets: [f64; 6] = [30.0, -86400.0, 61.0, 59.0, 3600.5, 0.0];
    let mut expected = Vec::new();
    for offset in offsets {
        let id: String = sqlx::query_scalar(
            "INSERT INTO conversations (id, provider_id, last_activity_at) \
             VALUES (gen_random_uuid(), $1, \
               timestamptz '2026-11-20 08:00:00+00' + make_interval(secs => $2)) \
             RETURNING id::text",
        )
        .bind(&owner)
        .bind(offset)
        .fetch_one(&mut db)
        .await
        .unwrap();
        expected.push((offset, id));
    }
    db.close().await.unwrap();
    let expected = newest_first(expected);

    // Starting the service applies the rest.
    let mut app = spawn_app_with(&url, &[]).await;
    let stale = app
        .count(
            "SELECT count(*) FROM conversations \
             WHERE inbox_at IS DISTINCT FROM last_activity_at",
        )
        .await;
    assert_eq!(stale, 0);
    assert_eq!(
        all_provider_pages(&mut app.client, &owner, 4).await,
        expected
    );
}

/// The ids of `(activity offset, id)` pairs in the inbox order: latest activity first,
/// then the greater id.
fn newest_first(mut conversations: Vec<(f64, String)>) -> Vec<String> {
    conversations.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    conversations.into_iter().map(|(_, id)| id).collect()
}

/// One page of `owner`'s conversations as the provider sees them.
async fn provider_page(
    client: &mut crate::helpers::Client,
    owner: &str,
    page_size: i32,
    page_token: String,
) -> v1::ListConversationsResponse {
    client
        .list_conversations(v1::ListConversationsRequest {
            participant: provider(owner),
            page_size,
            page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// The ids of every page of `owner`'s conversations, `page_size` at a time, in order.
async fn all_provider_pages(
    client: &mut crate::helpers::Client,
    owner: &str,
    page_size: i32,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = provider_page(client, owner, page_size, token).await;
        seen.extend(page.conversations.into_iter().map(|c| c.conversation_id));
        token = page.next_page_token;
        if token.is_empty() {
            return seen;
        }
    }
}
