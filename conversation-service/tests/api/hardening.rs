//! Bad input as an attacker or a buggy client sends it: NUL bytes in every text field,
//! forged page tokens. Always INVALID_ARGUMENT naming the field, never INTERNAL, and
//! nothing written.

use chat_common::seal::SealKey;
use chat_proto::v1;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::helpers::{
    bad_field, create, customer, new_provider, provider, send, spawn_app, spawn_app_with,
    spawn_app_with_flags,
};

const NUL: &str = "a\u{0}b";

fn with_nul(participant: Option<v1::Participant>) -> Option<v1::Participant> {
    participant.map(|p| v1::Participant {
        id: format!("{}\u{0}", p.id),
        ..p
    })
}

fn refused(result: Result<impl Sized, Status>, field: &str) {
    let Err(status) = result else {
        panic!("{field}: a NUL byte was accepted");
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    assert_eq!(bad_field(&status), field, "{status:?}");
}

#[tokio::test]
async fn a_nul_byte_in_any_text_field_is_invalid_argument_naming_it_and_writes_nothing() {
    let mut app = spawn_app().await;
    let prov = new_provider();
    let conversation = create(&mut app.client, &prov).await;
    let id = conversation.conversation_id.clone();
    let c = &mut app.client;
    let create_with = |f: &dyn Fn(&mut v1::CreateConversationRequest)| {
        let mut request = v1::CreateConversationRequest {
            request_id: Uuid::new_v4().to_string(),
            provider_id: prov.clone(),
            customer: Some(v1::Customer::default()),
            ..Default::default()
        };
        f(&mut request);
        request
    };
    let cases: Vec<(&str, v1::CreateConversationRequest)> = vec![
        ("request_id", create_with(&|r| r.request_id = NUL.into())),
        ("provider_id", create_with(&|r| r.provider_id = NUL.into())),
        ("origin", create_with(&|r| r.origin = NUL.into())),
        ("session_id", create_with(&|r| r.session_id = NUL.into())),
        (
            "customer.customer_id",
            create_with(&|r| r.customer.as_mut().unwrap().customer_id = NUL.into()),
        ),
        (
            "customer.name",
            create_with(&|r| r.customer.as_mut().unwrap().name = NUL.into()),
        ),
        (
            "customer.email",
            create_with(&|r| r.customer.as_mut().unwrap().email = "a\u{0}@b.co".into()),
        ),
        (
            "customer.phone",
            create_with(&|r| r.customer.as_mut().unwrap().phone = "+1234567\u{0}8".into()),
        ),
    ];
    for (field, request) in cases {
        refused(c.create_conversation(request).await, field);
    }

    refused(
        c.get_conversation(v1::GetConversationRequest {
            conversation_id: format!("{id}\u{0}"),
            viewer: None,
        })
        .await,
        "conversation_id",
    );
    refused(
        c.get_conversation(v1::GetConversationRequest {
            conversation_id: id.clone(),
            viewer: with_nul(provider(&prov)),
        })
        .await,
        "viewer",
    );
    refused(
        c.list_conversations(v1::ListConversationsRequest {
            participant: with_nul(provider(&prov)),
            ..Default::default()
        })
        .await,
        "participant",
    );
    refused(
        c.list_conversations(v1::ListConversationsRequest {
            participant: provider(&prov),
            page_token: NUL.into(),
            ..Default::default()
        })
        .await,
        "page_token",
    );
    let update = || v1::UpdateCustomerRequest {
        conversation_id: id.clone(),
        ..Default::default()
    };
    for (field, request) in [
        (
            "conversation_id",
            v1::UpdateCustomerRequest {
                conversation_id: NUL.into(),
                ..update()
            },
        ),
        (
            "customer_id",
            v1::UpdateCustomerRequest {
                customer_id: Some(NUL.into()),
                ..update()
            },
        ),
        (
            "name",
            v1::UpdateCustomerRequest {
                name: Some(NUL.into()),
                ..update()
            },
        ),
        (
            "email",
            v1::UpdateCustomerRequest {
                email: Some("a\u{0}@b.co".into()),
                ..update()
            },
        ),
        (
            "phone",
            v1::UpdateCustomerRequest {
                phone: Some("+1234567\u{0}8".into()),
                ..update()
            },
        ),
    ] {
        refused(c.update_customer(request).await, field);
    }
    refused(
        c.set_conversation_status(v1::SetConversationStatusRequest {
            conversation_id: id.clone(),
            status: v1::ConversationStatus::Closed.into(),
            actor: with_nul(provider(&prov)),
        })
        .await,
        "actor",
    );
    let message = || v1::SendMessageRequest {
        conversation_id: id.clone(),
        sender: provider(&prov),
        body: "hello".into(),
        client_message_id: String::new(),
        attachments: Vec::new(),
    };
    for (field, request) in [
        (
            "conversation_id",
            v1::SendMessageRequest {
                conversation_id: NUL.into(),
                ..message()
            },
        ),
        (
            "sender",
            v1::SendMessageRequest {
                sender: with_nul(customer("c1")),
                ..message()
            },
        ),
        (
            "sender.session_id",
            v1::SendMessageRequest {
                sender: customer("").map(|p| v1::Participant {
                    session_id: format!("{}\u{0}", p.session_id),
                    ..p
                }),
                ..message()
            },
        ),
        (
            "body",
            v1::SendMessageRequest {
                body: "hello\u{0}world".into(),
                ..message()
            },
        ),
        (
            "client_message_id",
            v1::SendMessageRequest {
                client_message_id: NUL.into(),
                ..message()
            },
        ),
    ] {
        refused(c.send_message(request).await, field);
    }
    refused(
        c.list_messages(v1::ListMessagesRequest {
            conversation_id: id.clone(),
            viewer: provider(&prov),
            page_token: NUL.into(),
            ..Default::default()
        })
        .await,
        "page_token",
    );
    refused(
        c.mark_read(v1::MarkReadRequest {
            conversation_id: id.clone(),
            reader: with_nul(provider(&prov)),
            seq: 0,
        })
        .await,
        "reader",
    );
    refused(
        c.send_typing(v1::SendTypingRequest {
            conversation_id: id.clone(),
            sender: with_nul(provider(&prov)),
        })
        .await,
        "sender",
    );
    refused(
        c.stream_conversation(v1::StreamConversationRequest {
            conversation_id: id.clone(),
            viewer: with_nul(provider(&prov)),
            after_seq: 0,
            after_change: None,
        })
        .await,
        "viewer",
    );
    refused(
        c.stream_inbox(v1::StreamInboxRequest {
            participant: with_nul(provider(&prov)),
            cursor: String::new(),
        })
        .await,
        "participant",
    );
    refused(
        c.stream_inbox(v1::StreamInboxRequest {
            participant: provider(&prov),
            cursor: NUL.into(),
        })
        .await,
        "cursor",
    );

    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 0);
    let row = app
        .client
        .get_conversation(v1::GetConversationRequest {
            conversation_id: id.clone(),
            viewer: None,
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(row.status, v1::ConversationStatus::Active as i32);
    assert_eq!(row.customer, conversation.customer);
    // Newlines and tabs stay allowed in bodies, exactly as sent.
    let sent = send(
        &mut app.client,
        &id,
        provider(&prov),
        "line one\n\tline two",
    )
    .await
    .unwrap();
    assert_eq!(sent.body, "line one\n\tline two");
}

async fn list_with_token(client: &mut crate::helpers::Client, prov: &str, token: String) -> Status {
    client
        .list_conversations(v1::ListConversationsRequest {
            participant: provider(prov),
            page_size: 1,
            page_token: token,
            ..Default::default()
        })
        .await
        .unwrap_err()
}

#[tokio::test]
async fn forged_page_tokens_are_invalid_argument_even_with_impossible_dates() {
    const KEY: &str = "a test key of 32 bytes, not real";
    let mut app = spawn_app_with_flags(&["--page-token-key", KEY]).await;
    let prov = new_provider();
    create(&mut app.client, &prov).await;
    create(&mut app.client, &prov).await;
    let query = format!("Provider/{prov}/None");
    let forged_key = format!("[\"-5000-01-01T00:00:00Z\",\"{}\"]", Uuid::nil());
    // As the unkeyed format of before would have carried it, and sealed with a wrong key.
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let unkeyed = URL_SAFE_NO_PAD.encode(format!("{{\"q\":\"0000\",\"k\":{forged_key}}}"));
    let wrong_key = SealKey::random()
        .unwrap()
        .seal(&query, forged_key.as_bytes());
    // Even sealed with the service's own key (a leaked key), the date is checked before SQL.
    let (own, _) = SealKey::configured_or_random(Some(KEY)).unwrap();
    let sealed = own.seal(&query, forged_key.as_bytes());
    for token in [unkeyed, wrong_key, sealed] {
        let status = list_with_token(&mut app.client, &prov, token).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(bad_field(&status), "page_token");
    }
    // A real token of this key works on another replica given the same key.
    let first = app
        .client
        .list_conversations(v1::ListConversationsRequest {
            participant: provider(&prov),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut other = spawn_app_with(&app.database_url, &["--page-token-key", KEY]).await;
    let second = other
        .client
        .list_conversations(v1::ListConversationsRequest {
            participant: provider(&prov),
            page_size: 1,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.conversations.len(), 1);
    assert_ne!(
        second.conversations[0].conversation_id,
        first.conversations[0].conversation_id
    );
}

#[tokio::test]
async fn a_session_id_is_checked_whoever_presents_it_and_named_as_its_field() {
    let mut app = spawn_app().await;
    let prov = new_provider();
    let id = create(&mut app.client, &prov).await.conversation_id;
    let c = &mut app.client;
    let with_session = |p: Option<v1::Participant>, session: &str| {
        p.map(|p| v1::Participant {
            session_id: session.into(),
            ..p
        })
    };
    let long = "x".repeat(60_000);
    for bad in [NUL, "'; DROP TABLE messages; --", long.as_str()] {
        let acting = || with_session(provider(&prov), bad);
        refused(send(c, &id, acting(), "hi").await, "sender.session_id");
        refused(
            c.get_conversation(v1::GetConversationRequest {
                conversation_id: id.clone(),
                viewer: acting(),
            })
            .await,
            "viewer.session_id",
        );
        refused(
            c.list_conversations(v1::ListConversationsRequest {
                participant: acting(),
                ..Default::default()
            })
            .await,
            "participant.session_id",
        );
        refused(
            c.stream_inbox(v1::StreamInboxRequest {
                participant: acting(),
                ..Default::default()
            })
            .await,
            "participant.session_id",
        );
    }
    // The anonymous customer's malformed session names the session field, not `sender`.
    refused(
        send(c, &id, with_session(customer(""), "not-a-uuid"), "hi").await,
        "sender.session_id",
    );
    let history = c
        .list_messages(v1::ListMessagesRequest {
            conversation_id: id.clone(),
            viewer: provider(&prov),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(history.messages.is_empty(), "nothing was written");
}
