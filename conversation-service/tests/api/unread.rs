//! GetUnreadSummary: a participant's unread messages and conversations with unread ones,
//! kept as they change and compared with a count from the tables.

use chat_proto::v1;
use tonic::Code;

use crate::helpers::{
    Client, TestApp, bad_field, create, customer, new_provider, provider, send, spawn_app,
};

async fn summary(client: &mut Client, who: Option<v1::Participant>) -> (i64, i64) {
    let reply = client
        .get_unread_summary(v1::GetUnreadSummaryRequest { participant: who })
        .await
        .unwrap()
        .into_inner();
    (reply.unread_messages, reply.unread_conversations)
}

async fn mark_read(client: &mut Client, id: &str, reader: Option<v1::Participant>, seq: i64) {
    client
        .mark_read(v1::MarkReadRequest {
            conversation_id: id.into(),
            reader,
            seq,
        })
        .await
        .unwrap();
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

/// The summary a count over the conversations gives: `(unread messages, conversations
/// with any)` of the provider (`role` 1) or customer (2) `id`.
async fn counted(app: &TestApp, role: i16, id: &str) -> (i64, i64) {
    let (owner, read) = match role {
        1 => ("provider_id", "provider_read_seq"),
        _ => ("customer_id", "customer_read_seq"),
    };
    let sql = format!(
        "SELECT coalesce(sum(greatest(head_seq - {read}, 0)), 0)::bigint, \
         count(*) FILTER (WHERE head_seq > {read}) FROM conversations WHERE {owner} = $1"
    );
    let mut db = app.db().await;
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_one(&mut db)
        .await
        .unwrap()
}

#[tokio::test]
async fn unread_follows_sends_reads_and_linking() {
    let mut app = spawn_app().await;
    let owner = new_provider();
    let customer_id = format!("cust-{owner}");
    let id = create(&mut app.client, &owner).await.conversation_id;
    for body in ["a", "b", "c"] {
        send(&mut app.client, &id, provider(&owner), body)
            .await
            .unwrap();
    }
    send(&mut app.client, &id, customer(""), "from the visitor")
        .await
        .unwrap();
    assert_eq!(summary(&mut app.client, provider(&owner)).await, (1, 1));
    assert_eq!(
        summary(&mut app.client, customer(&customer_id)).await,
        (0, 0)
    );
    // The visitor sent seq 4, so it has read everything before it.
    send(&mut app.client, &id, provider(&owner), "d")
        .await
        .unwrap();
    link(&mut app.client, &id, &customer_id).await;
    assert_eq!(
        summary(&mut app.client, customer(&customer_id)).await,
        (1, 1),
        "what the visitor left unread is the linked customer's"
    );
    send(&mut app.client, &id, provider(&owner), "e")
        .await
        .unwrap();
    assert_eq!(
        summary(&mut app.client, customer(&customer_id)).await,
        (2, 1)
    );
    mark_read(&mut app.client, &id, customer(&customer_id), 5).await;
    assert_eq!(
        summary(&mut app.client, customer(&customer_id)).await,
        (1, 1)
    );
    mark_read(&mut app.client, &id, customer(&customer_id), 6).await;
    assert_eq!(
        summary(&mut app.client, customer(&customer_id)).await,
        (0, 0)
    );
    mark_read(&mut app.client, &id, provider(&owner), 4).await;
    assert_eq!(summary(&mut app.client, provider(&owner)).await, (0, 0));
    for role in [1, 2] {
        let who = if role == 1 { &owner } else { &customer_id };
        let expected = if role == 1 {
            summary(&mut app.client, provider(&owner)).await
        } else {
            summary(&mut app.client, customer(&customer_id)).await
        };
        assert_eq!(counted(&app, role, who).await, expected);
    }
}

/// Both sides send and mark read concurrently on several conversations (batched writes,
/// replanned ones, MarkRead between them); afterwards every summary equals the count
/// from the tables.
#[tokio::test]
async fn unread_is_exact_under_racing_sends_and_mark_reads() {
    let mut app = spawn_app().await;
    let owner = new_provider();
    let mut conversations = Vec::new();
    for i in 0..6 {
        let id = create(&mut app.client, &owner).await.conversation_id;
        let customer_id = format!("cust-{i}-{owner}");
        link(&mut app.client, &id, &customer_id).await;
        conversations.push((id, customer_id));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8_usize {
        let mut client = app.client.clone();
        let conversations = conversations.clone();
        let owner = owner.clone();
        tasks.spawn(async move {
            for step in 0..30_usize {
                let (id, customer_id) = &conversations[(worker + step) % conversations.len()];
                let provider_side = (worker + step) % 2 == 0;
                let who = if provider_side {
                    provider(&owner)
                } else {
                    customer(customer_id)
                };
                if step % 3 == 2 {
                    let head = client
                        .get_conversation(v1::GetConversationRequest {
                            conversation_id: id.clone(),
                            viewer: None,
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .conversation
                        .unwrap()
                        .head_seq;
                    // Part of what arrived: read positions move forward in steps.
                    if head > 0 {
                        mark_read(&mut client, id, who, head / 2 + 1).await;
                    }
                } else {
                    send(&mut client, id, who, "race").await.unwrap();
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let provider_summary = summary(&mut app.client, provider(&owner)).await;
    assert!(provider_summary.0 > 0, "{provider_summary:?}");
    assert_eq!(counted(&app, 1, &owner).await, provider_summary);
    for (_, customer_id) in &conversations {
        assert_eq!(
            counted(&app, 2, customer_id).await,
            summary(&mut app.client, customer(customer_id)).await,
            "{customer_id}"
        );
    }
}

#[tokio::test]
async fn a_summary_needs_a_participant() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .get_unread_summary(v1::GetUnreadSummaryRequest { participant: None })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), bad_field(&status).as_str()),
        (Code::InvalidArgument, "participant")
    );
}
