//! ListConversations' filters: unread_only, customer_query, active_after, and page tokens
//! bound to them.

use chat_proto::v1;
use tonic::Code;

use crate::helpers::{
    Client, bad_field, create, customer, new_provider, provider, send, spawn_app,
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
