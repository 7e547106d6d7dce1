//! CreateConversation, GetConversation, ListConversations, UpdateCustomer,
//! SetConversationStatus: happy paths, each error code, and idempotency.

use chat_proto::v1::{self, ConversationStatus};
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{bad_field, create, customer, new_provider, provider, reason, spawn_app};

#[tokio::test]
async fn create_then_get_returns_the_conversation() {
    let mut app = spawn_app().await;
    let reply = app
        .client
        .create_conversation(v1::CreateConversationRequest {
            request_id: Uuid::new_v4().to_string(),
            provider_id: "prov-1".into(),
            customer: Some(v1::Customer {
                name: "Ada".into(),
                email: "ada@example.com".into(),
                phone: "+49 30 1234567".into(),
                ..Default::default()
            }),
            origin: "token:t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.created);
    let created = reply.conversation.unwrap();
    let fetched = app
        .client
        .get_conversation(v1::GetConversationRequest {
            conversation_id: created.conversation_id.clone(),
            viewer: None,
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(fetched.provider_id, "prov-1");
    assert_eq!(fetched.status(), ConversationStatus::Active);
    assert_eq!(fetched.head_seq, 0);
    assert_eq!(fetched.origin, "token:t1");
    let c = fetched.customer.unwrap();
    assert_eq!(
        (c.name.as_str(), c.email.as_str(), c.phone.as_str()),
        ("Ada", "ada@example.com", "+49301234567")
    );
    assert!(c.customer_id.is_empty());
}

#[tokio::test]
async fn bad_create_requests_are_invalid_argument_and_write_nothing() {
    let mut app = spawn_app().await;
    let cases = [
        (
            "provider_id",
            v1::CreateConversationRequest {
                provider_id: String::new(),
                ..Default::default()
            },
        ),
        (
            "provider_id",
            v1::CreateConversationRequest {
                provider_id: "a b".into(),
                ..Default::default()
            },
        ),
        (
            "request_id",
            v1::CreateConversationRequest {
                provider_id: "p".into(),
                request_id: "not-a-uuid".into(),
                ..Default::default()
            },
        ),
        (
            "customer.email",
            v1::CreateConversationRequest {
                provider_id: "p".into(),
                customer: Some(v1::Customer {
                    email: "nope".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "customer.phone",
            v1::CreateConversationRequest {
                provider_id: "p".into(),
                customer: Some(v1::Customer {
                    phone: "12".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    ];
    for (field, request) in cases {
        let status = app.client.create_conversation(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert_eq!(bad_field(&status), field);
    }
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 0);
}

#[tokio::test]
async fn twenty_concurrent_identical_creates_make_one_row() {
    let app = spawn_app().await;
    let request_id = Uuid::new_v4().to_string();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut client = app.client.clone();
        let request = v1::CreateConversationRequest {
            request_id: request_id.clone(),
            provider_id: "prov-1".into(),
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move {
            client
                .create_conversation(request)
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        created += usize::from(reply.created);
        ids.insert(reply.conversation.unwrap().conversation_id);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM conversation_events WHERE kind = 1")
            .await,
        1
    );
}

/// Concurrent creates are written together: every key, sent twice at once, gets one
/// conversation (created once), and some of them shared a transaction (their events
/// carry the same transaction id), with a NOTIFY each.
#[tokio::test]
async fn concurrent_creates_share_transactions_and_each_key_gets_one_conversation() {
    let app = spawn_app().await;
    let keys: Vec<String> = (0..100).map(|_| Uuid::new_v4().to_string()).collect();
    let mut tasks = Vec::new();
    for key in keys.iter().chain(&keys) {
        let mut client = app.client.clone();
        let request = v1::CreateConversationRequest {
            request_id: key.clone(),
            provider_id: "prov-batch".into(),
            ..Default::default()
        };
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let reply = client
                .create_conversation(request)
                .await
                .unwrap()
                .into_inner();
            (
                key,
                reply.conversation.unwrap().conversation_id,
                reply.created,
            )
        }));
    }
    let mut answers: std::collections::HashMap<String, (String, usize)> =
        std::collections::HashMap::new();
    for task in tasks {
        let (key, id, created) = task.await.unwrap();
        let entry = answers.entry(key).or_insert_with(|| (id.clone(), 0));
        assert_eq!(entry.0, id, "one key, two conversations");
        entry.1 += usize::from(created);
    }
    assert_eq!(answers.len(), 100);
    assert!(answers.values().all(|(_, created)| *created == 1));
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 100);
    assert_eq!(
        app.count("SELECT count(*) FROM conversation_events WHERE kind = 1")
            .await,
        100
    );
    let transactions = app
        .count("SELECT count(DISTINCT xid::text) FROM conversation_events")
        .await;
    assert!(
        transactions < 100,
        "200 concurrent creates took {transactions} transactions"
    );
}

#[tokio::test]
async fn request_id_reused_for_another_provider_is_refused() {
    let mut app = spawn_app().await;
    let request_id = Uuid::new_v4().to_string();
    for (provider_id, ok) in [("p1", true), ("p2", false)] {
        let reply = app
            .client
            .create_conversation(v1::CreateConversationRequest {
                request_id: request_id.clone(),
                provider_id: provider_id.into(),
                ..Default::default()
            })
            .await;
        assert_eq!(reply.is_ok(), ok);
    }
}

#[tokio::test]
async fn reuse_active_returns_the_customers_open_conversation() {
    let mut app = spawn_app().await;
    let make = |reuse: bool| v1::CreateConversationRequest {
        request_id: Uuid::new_v4().to_string(),
        provider_id: "p1".into(),
        customer: Some(v1::Customer {
            customer_id: "c1".into(),
            ..Default::default()
        }),
        reuse_active: reuse,
        ..Default::default()
    };
    let first = app
        .client
        .create_conversation(make(true))
        .await
        .unwrap()
        .into_inner();
    let second = app
        .client
        .create_conversation(make(true))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(
        first.conversation.unwrap().conversation_id,
        second.conversation.unwrap().conversation_id
    );
    let third = app
        .client
        .create_conversation(make(false))
        .await
        .unwrap()
        .into_inner();
    assert!(third.created, "without reuse_active a new one is made");
}

#[tokio::test]
async fn get_refuses_a_bad_id_an_unknown_conversation_and_a_non_participant() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .get_conversation(v1::GetConversationRequest {
            conversation_id: "x".into(),
            viewer: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&status), "conversation_id");
    let status = app
        .client
        .get_conversation(v1::GetConversationRequest {
            conversation_id: Uuid::new_v4().to_string(),
            viewer: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(reason(&status), "CONVERSATION_NOT_FOUND");
    let conversation = create(&mut app.client, "p1").await;
    let status = app
        .client
        .get_conversation(v1::GetConversationRequest {
            conversation_id: conversation.conversation_id,
            viewer: provider("someone-else"),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "NOT_A_PARTICIPANT");
}

/// The bug of the system this replaces: a conversation linked to a customer must show up
/// in the customer's list, and exactly once in the provider's.
#[tokio::test]
async fn linked_conversation_is_listed_for_customer_and_once_for_provider() {
    let mut app = spawn_app().await;
    let provider_id = new_provider();
    let conversation = create(&mut app.client, &provider_id).await;
    app.client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: conversation.conversation_id.clone(),
            customer_id: Some("cust-7".into()),
            name: Some("Grace".into()),
            email: Some("grace@example.com".into()),
            phone: None,
        })
        .await
        .unwrap();
    let by_customer = app
        .client
        .list_conversations(v1::ListConversationsRequest {
            participant: customer("cust-7"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversations;
    assert_eq!(by_customer.len(), 1);
    assert_eq!(by_customer[0].conversation_id, conversation.conversation_id);
    assert_eq!(
        by_customer[0].customer.as_ref().unwrap().email,
        "grace@example.com"
    );
    let by_provider = app
        .client
        .list_conversations(v1::ListConversationsRequest {
            participant: provider(&provider_id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversations;
    assert_eq!(by_provider.len(), 1);
    assert_eq!(by_provider[0].conversation_id, conversation.conversation_id);
}

#[tokio::test]
async fn update_customer_keeps_unset_fields_and_refuses_relinking() {
    let mut app = spawn_app().await;
    let conversation = create(&mut app.client, "p1").await;
    let id = conversation.conversation_id.clone();
    let update = |customer_id: Option<&str>, name: Option<&str>, phone: Option<&str>| {
        v1::UpdateCustomerRequest {
            conversation_id: id.clone(),
            customer_id: customer_id.map(str::to_owned),
            name: name.map(str::to_owned),
            email: None,
            phone: phone.map(str::to_owned),
        }
    };
    app.client
        .update_customer(update(Some("c1"), Some("Ada"), Some("+4930123456")))
        .await
        .unwrap();
    let after = app
        .client
        .update_customer(update(None, None, Some("+4930999999")))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    let c = after.customer.unwrap();
    assert_eq!(
        (c.customer_id.as_str(), c.name.as_str(), c.phone.as_str()),
        ("c1", "Ada", "+4930999999")
    );

    let status = app
        .client
        .update_customer(update(Some("c2"), Some("Eve"), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "CUSTOMER_ALREADY_LINKED");
    // Same customer again is fine (idempotent link).
    app.client
        .update_customer(update(Some("c1"), None, None))
        .await
        .unwrap();

    let status = app
        .client
        .update_customer(update(None, None, Some("abc")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&status), "phone");
    let mut db = app.db().await;
    let (name, phone): (String, String) =
        sqlx::query_as("SELECT customer_name, customer_phone FROM conversations")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(
        (name.as_str(), phone.as_str()),
        ("Ada", "+4930999999"),
        "refused calls changed nothing"
    );

    let status = app
        .client
        .update_customer(v1::UpdateCustomerRequest {
            conversation_id: Uuid::new_v4().to_string(),
            name: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn close_and_reopen_refusing_a_bad_status_a_non_participant_and_an_unknown_conversation() {
    let mut app = spawn_app().await;
    let conversation = create(&mut app.client, "p1").await;
    let set = |status: ConversationStatus, actor| v1::SetConversationStatusRequest {
        conversation_id: conversation.conversation_id.clone(),
        status: status.into(),
        actor,
    };
    let closed = app
        .client
        .set_conversation_status(set(ConversationStatus::Closed, provider("p1")))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(closed.status(), ConversationStatus::Closed);
    let status = app
        .client
        .set_conversation_status(set(ConversationStatus::Unspecified, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&status), "status");
    let status = app
        .client
        .set_conversation_status(set(ConversationStatus::Active, provider("intruder")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let reopened = app
        .client
        .set_conversation_status(set(ConversationStatus::Active, None))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(reopened.status(), ConversationStatus::Active);
    let status = app
        .client
        .set_conversation_status(v1::SetConversationStatusRequest {
            conversation_id: Uuid::new_v4().to_string(),
            status: ConversationStatus::Closed.into(),
            actor: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn list_requires_an_owner_and_filters_by_status() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .list_conversations(v1::ListConversationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&status), "participant");
    let status = app
        .client
        .list_conversations(v1::ListConversationsRequest {
            participant: customer(""),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let a = create(&mut app.client, "p1").await;
    let _b = create(&mut app.client, "p1").await;
    app.client
        .set_conversation_status(v1::SetConversationStatusRequest {
            conversation_id: a.conversation_id.clone(),
            status: ConversationStatus::Closed.into(),
            actor: None,
        })
        .await
        .unwrap();
    let closed = app
        .client
        .list_conversations(v1::ListConversationsRequest {
            participant: provider("p1"),
            status: ConversationStatus::Closed.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversations;
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].conversation_id, a.conversation_id);
}

/// Every RPC that names a conversation: a malformed id is INVALID_ARGUMENT naming
/// `conversation_id`, an unknown one is NOT_FOUND, and neither writes anything.
#[tokio::test]
async fn every_rpc_refuses_bad_and_unknown_conversation_ids() {
    let app = spawn_app().await;
    for id in ["not-a-uuid".to_owned(), Uuid::new_v4().to_string()] {
        let expected = if id.len() == 36 {
            Code::NotFound
        } else {
            Code::InvalidArgument
        };
        let mut c = app.client.clone();
        let statuses = vec![
            (
                "GetConversation",
                c.get_conversation(v1::GetConversationRequest {
                    conversation_id: id.clone(),
                    viewer: None,
                })
                .await
                .err(),
            ),
            (
                "UpdateCustomer",
                c.update_customer(v1::UpdateCustomerRequest {
                    conversation_id: id.clone(),
                    name: Some("x".into()),
                    ..Default::default()
                })
                .await
                .err(),
            ),
            (
                "SetConversationStatus",
                c.set_conversation_status(v1::SetConversationStatusRequest {
                    conversation_id: id.clone(),
                    status: ConversationStatus::Closed.into(),
                    actor: None,
                })
                .await
                .err(),
            ),
            (
                "SendMessage",
                c.send_message(v1::SendMessageRequest {
                    conversation_id: id.clone(),
                    sender: provider("p1"),
                    body: "x".into(),
                    ..Default::default()
                })
                .await
                .err(),
            ),
            (
                "ListMessages",
                c.list_messages(v1::ListMessagesRequest {
                    conversation_id: id.clone(),
                    viewer: provider("p1"),
                    ..Default::default()
                })
                .await
                .err(),
            ),
            (
                "MarkRead",
                c.mark_read(v1::MarkReadRequest {
                    conversation_id: id.clone(),
                    reader: provider("p1"),
                    seq: 0,
                })
                .await
                .err(),
            ),
            (
                "SendTyping",
                c.send_typing(v1::SendTypingRequest {
                    conversation_id: id.clone(),
                    sender: provider("p1"),
                })
                .await
                .err(),
            ),
            (
                "StreamConversation",
                c.stream_conversation(v1::StreamConversationRequest {
                    conversation_id: id.clone(),
                    viewer: provider("p1"),
                    after_seq: 0,
                    after_change: None,
                })
                .await
                .err(),
            ),
        ];
        for (rpc, status) in statuses {
            let status = status.unwrap_or_else(|| panic!("{rpc} accepted {id}"));
            assert_eq!(status.code(), expected, "{rpc} with {id}");
            if expected == Code::InvalidArgument {
                assert_eq!(bad_field(&status), "conversation_id", "{rpc}");
            } else {
                assert_eq!(reason(&status), "CONVERSATION_NOT_FOUND", "{rpc}");
            }
        }
    }
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 0);
}

#[tokio::test]
async fn a_retry_returns_what_the_first_call_returned_even_when_reuse_would_pick_another() {
    let mut app = spawn_app().await;
    let request = |request_id: &str, reuse: bool| v1::CreateConversationRequest {
        request_id: request_id.into(),
        provider_id: "p1".into(),
        customer: Some(v1::Customer {
            customer_id: "c1".into(),
            ..Default::default()
        }),
        reuse_active: reuse,
        ..Default::default()
    };
    let create = |req: v1::CreateConversationRequest| {
        let mut client = app.client.clone();
        async move {
            let reply = client.create_conversation(req).await.unwrap().into_inner();
            (reply.conversation.unwrap().conversation_id, reply.created)
        }
    };
    let (r1, r2, r3, r4) = (
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
    );
    // R1 (reuse, nothing to reuse) creates X; R2 (new) creates Y, now the newest.
    let (x, created) = create(request(&r1, true)).await;
    assert!(created);
    let (y, created) = create(request(&r2, false)).await;
    assert!(created);
    assert_ne!(x, y);
    // A retry of R1 returns X, although reuse_active would now pick Y.
    assert_eq!(create(request(&r1, true)).await, (x.clone(), false));
    // R3 (reuse) gets Y; after R4 (new) creates Z, a retry of R3 still gets Y.
    assert_eq!(create(request(&r3, true)).await, (y.clone(), false));
    let (z, created) = create(request(&r4, false)).await;
    assert!(created && z != y);
    assert_eq!(create(request(&r3, true)).await, (y.clone(), false));
    // The key is bound to its first request: another provider is refused, reused or not.
    for request_id in [&r1, &r3] {
        let status = app
            .client
            .create_conversation(v1::CreateConversationRequest {
                provider_id: "p2".into(),
                ..request(request_id, true)
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 3);
}

#[tokio::test]
async fn concurrent_retries_of_a_reusing_request_all_get_the_same_answer() {
    let app = spawn_app().await;
    let request = |request_id: String| v1::CreateConversationRequest {
        request_id,
        provider_id: "p1".into(),
        customer: Some(v1::Customer {
            customer_id: "c1".into(),
            ..Default::default()
        }),
        reuse_active: true,
        ..Default::default()
    };
    let existing = app
        .client
        .clone()
        .create_conversation(request(Uuid::new_v4().to_string()))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .conversation_id;
    let request_id = Uuid::new_v4().to_string();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let mut client = app.client.clone();
            let request = request(request_id.clone());
            tokio::spawn(async move { client.create_conversation(request).await })
        })
        .collect();
    for task in tasks {
        let reply = task.await.unwrap().unwrap().into_inner();
        assert!(!reply.created);
        assert_eq!(reply.conversation.unwrap().conversation_id, existing);
    }
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM conversation_requests")
            .await,
        1
    );
}

/// Sequential scans of `conversations` counted so far, once the service's backends have
/// reported: a backend that flushed its counters less than a second ago flushes them
/// next after 10 s idle (PostgreSQL 15's PGSTAT_IDLE_INTERVAL).
async fn conversation_seq_scans(app: &crate::helpers::TestApp) -> i64 {
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    app.count("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'conversations'")
        .await
}

/// `n` concurrent creates for `provider` (so they are written in batches).
async fn create_many(client: &crate::helpers::Client, provider: &str, n: usize) {
    let calls = (0..n).map(|_| {
        let mut client = client.clone();
        async move { create(&mut client, provider).await }
    });
    futures::future::join_all(calls).await;
}

/// CreateConversation's statements are planned for the table as it is: after batches
/// written on a near-empty table (where a scan is the cheapest plan, and PostgreSQL would
/// cache it for the connection's life), 20,000 more rows must not make later batches
/// scan it.
#[tokio::test]
async fn creates_on_a_grown_table_use_its_indexes() {
    let app = spawn_app().await;
    let mut db = app.db().await;
    // No ANALYZE while the test runs: a new plan must not depend on autovacuum's timing.
    sqlx::query("ALTER TABLE conversations SET (autovacuum_enabled = false)")
        .execute(&mut db)
        .await
        .unwrap();
    let provider = crate::helpers::new_provider();
    // More batches per writer connection than the five custom plans PostgreSQL makes
    // before it may cache a generic one.
    for _ in 0..16 {
        create_many(&app.client, &provider, 32).await;
    }
    sqlx::query(
        "INSERT INTO conversations (id, provider_id) \
         SELECT gen_random_uuid(), 'filler' FROM generate_series(1, 20000)",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let before = conversation_seq_scans(&app).await;
    for _ in 0..4 {
        create_many(&app.client, &provider, 32).await;
    }
    let after = conversation_seq_scans(&app).await;
    assert_eq!(
        after - before,
        0,
        "creates scanned the whole table ({before} scans before, {after} after)"
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM conversations WHERE provider_id = '{provider}'"
        ))
        .await,
        20 * 32
    );
}
