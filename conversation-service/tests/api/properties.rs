//! Property tests over every request type: random well-formed requests (any text, any
//! number, any enum value, sometimes real ids) never get INTERNAL or UNKNOWN, and a
//! refused request changes no row. Case counts are modest so the suite stays quick.

use chat_proto::v1;
use proptest::{
    prelude::*,
    sample::select,
    test_runner::{Config, TestCaseError, TestRunner},
};
use tonic::Code;

use crate::helpers::{Client, TestApp, create, provider, send, spawn_app_with_flags};

const CASES: u32 = 120;

/// Texts a caller might send: empty, plausible ids, anything at all (NUL, controls,
/// emoji, very long), and the ids that exist.
fn text(known: &[String]) -> impl Strategy<Value = String> + use<> {
    prop_oneof![
        Just(String::new()),
        "[a-zA-Z0-9._:@-]{1,16}",
        any::<String>(),
        "\\PC{0,40}\u{0}?\\PC{0,4}",
        select(known.to_vec()),
    ]
}

fn int32() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0), -3..600, any::<i32>()]
}

fn int64() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0_i64), -3_i64..40, any::<i64>()]
}

fn participant(known: &[String]) -> impl Strategy<Value = Option<v1::Participant>> + use<> {
    proptest::option::weighted(
        0.9,
        (-1..4, text(known), text(known)).prop_map(|(role, id, session_id)| v1::Participant {
            role,
            id,
            session_id,
        }),
    )
}

fn customer(known: &[String]) -> impl Strategy<Value = Option<v1::Customer>> + use<> {
    proptest::option::of(
        (text(known), text(known), text(known), text(known)).prop_map(
            |(customer_id, name, email, phone)| v1::Customer {
                customer_id,
                name,
                email,
                phone,
            },
        ),
    )
}

#[derive(Debug, Clone)]
enum Call {
    Create(v1::CreateConversationRequest),
    Get(v1::GetConversationRequest),
    List(v1::ListConversationsRequest),
    Update(v1::UpdateCustomerRequest),
    SetStatus(v1::SetConversationStatusRequest),
    Send(v1::SendMessageRequest),
    ListMessages(v1::ListMessagesRequest),
    MarkRead(v1::MarkReadRequest),
    Typing(v1::SendTypingRequest),
    Stream(v1::StreamConversationRequest),
    Inbox(v1::StreamInboxRequest),
    Edit(v1::EditMessageRequest),
    Delete(v1::DeleteMessageRequest),
    Search(v1::SearchMessagesRequest),
}

/// Search texts: anything [`text`] gives, websearch operators alone and mixed in (`-word`,
/// quotes, `or`, tsquery's own `&|!():*<->`, which websearch reads as text), nothing but
/// punctuation, and 200 and 201 characters.
fn search_text(known: &[String]) -> impl Strategy<Value = String> + use<> {
    prop_oneof![
        text(known),
        select(vec![
            "hello".to_owned(),
            "HELLO again".to_owned(),
            "\"hello again\"".to_owned(),
            "\"hello".to_owned(),
            "\"".to_owned(),
            "-hello".to_owned(),
            "-hello -again".to_owned(),
            "hello -again".to_owned(),
            "or".to_owned(),
            "hello or".to_owned(),
            "or hello".to_owned(),
            "hello or nothing".to_owned(),
            "-".to_owned(),
            "!?.,;".to_owned(),
            "hello:* & !again | (x) <-> y".to_owned(),
            " ".to_owned(),
            "x".repeat(200),
            "x".repeat(201),
        ]),
        "[a-z \"'():*&|!<>-]{0,30}",
    ]
}

fn attachments(known: &[String]) -> impl Strategy<Value = Vec<v1::Attachment>> + use<> {
    let t = || text(known);
    proptest::collection::vec(
        (t(), t(), int64(), t(), t(), int32(), int32()).prop_map(
            |(uri, content_type, size_bytes, sha256, file_name, width, height)| v1::Attachment {
                uri,
                content_type,
                size_bytes,
                sha256,
                file_name,
                width,
                height,
            },
        ),
        0..12,
    )
}

fn call(known: &[String]) -> impl Strategy<Value = Call> + use<> {
    let t = || text(known);
    let p = || participant(known);
    let maybe = || proptest::option::of(text(known));
    prop_oneof![
        (t(), t(), customer(known), any::<bool>(), t(), t()).prop_map(
            |(request_id, provider_id, customer, reuse_active, origin, session_id)| {
                Call::Create(v1::CreateConversationRequest {
                    request_id,
                    provider_id,
                    customer,
                    reuse_active,
                    origin,
                    session_id,
                })
            }
        ),
        (t(), p()).prop_map(
            |(conversation_id, viewer)| Call::Get(v1::GetConversationRequest {
                conversation_id,
                viewer
            })
        ),
        (
            (p(), -1..4, int32(), t()),
            (
                any::<bool>(),
                t(),
                proptest::option::of((any::<i64>(), any::<i32>()))
            )
        )
            .prop_map(
                |(
                    (participant, status, page_size, page_token),
                    (unread_only, customer_query, active_after),
                )| {
                    Call::List(v1::ListConversationsRequest {
                        participant,
                        status,
                        page_size,
                        page_token,
                        unread_only,
                        customer_query,
                        active_after: active_after
                            .map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                    })
                }
            ),
        (t(), maybe(), maybe(), maybe(), maybe()).prop_map(
            |(conversation_id, customer_id, name, email, phone)| {
                Call::Update(v1::UpdateCustomerRequest {
                    conversation_id,
                    customer_id,
                    name,
                    email,
                    phone,
                })
            }
        ),
        (t(), -1..4, p()).prop_map(|(conversation_id, status, actor)| Call::SetStatus(
            v1::SetConversationStatusRequest {
                conversation_id,
                status,
                actor
            }
        )),
        (t(), p(), t(), t(), attachments(known)).prop_map(
            |(conversation_id, sender, body, client_message_id, attachments)| {
                Call::Send(v1::SendMessageRequest {
                    conversation_id,
                    sender,
                    body,
                    client_message_id,
                    attachments,
                })
            }
        ),
        (t(), t(), p(), t(), t()).prop_map(
            |(conversation_id, message_id, editor, body, request_id)| {
                Call::Edit(v1::EditMessageRequest {
                    conversation_id,
                    message_id,
                    editor,
                    body,
                    request_id,
                })
            }
        ),
        (t(), t(), p(), t()).prop_map(|(conversation_id, message_id, actor, request_id)| {
            Call::Delete(v1::DeleteMessageRequest {
                conversation_id,
                message_id,
                actor,
                request_id,
            })
        }),
        (t(), p(), -1..4, int64(), int32(), t()).prop_map(
            |(conversation_id, viewer, direction, cursor_seq, page_size, page_token)| {
                Call::ListMessages(v1::ListMessagesRequest {
                    conversation_id,
                    viewer,
                    direction,
                    cursor_seq,
                    page_size,
                    page_token,
                })
            }
        ),
        (t(), p(), int64()).prop_map(|(conversation_id, reader, seq)| Call::MarkRead(
            v1::MarkReadRequest {
                conversation_id,
                reader,
                seq
            }
        )),
        (t(), p()).prop_map(
            |(conversation_id, sender)| Call::Typing(v1::SendTypingRequest {
                conversation_id,
                sender
            })
        ),
        (t(), p(), int64(), proptest::option::of(int64())).prop_map(
            |(conversation_id, viewer, after_seq, after_change)| Call::Stream(
                v1::StreamConversationRequest {
                    conversation_id,
                    viewer,
                    after_seq,
                    after_change,
                }
            )
        ),
        (p(), t()).prop_map(|(participant, cursor)| Call::Inbox(v1::StreamInboxRequest {
            participant,
            cursor
        })),
        (
            // Mostly a participant with messages and no conversation or token, so that
            // searches also succeed; random ones too.
            prop_oneof![
                2 => Just(provider("prov-prop")),
                1 => Just(crate::helpers::customer("cust-prop")),
                2 => p(),
            ],
            search_text(known),
            prop_oneof![3 => Just(String::new()), 1 => t()],
            int32(),
            prop_oneof![3 => Just(String::new()), 1 => t()],
        )
            .prop_map(
                |(participant, query, conversation_id, page_size, page_token)| Call::Search(
                    v1::SearchMessagesRequest {
                        participant,
                        query,
                        conversation_id,
                        page_size,
                        page_token,
                    }
                )
            ),
    ]
}

/// The outcome of one call: `Err` only with the refusal's code.
async fn run(client: &mut Client, call: Call) -> Result<(), Code> {
    let code = |s: tonic::Status| s.code();
    match call {
        Call::Create(r) => client.create_conversation(r).await.map(drop).map_err(code),
        Call::Get(r) => client.get_conversation(r).await.map(drop).map_err(code),
        Call::List(r) => client.list_conversations(r).await.map(drop).map_err(code),
        Call::Update(r) => client.update_customer(r).await.map(drop).map_err(code),
        Call::SetStatus(r) => client
            .set_conversation_status(r)
            .await
            .map(drop)
            .map_err(code),
        Call::Send(r) => client.send_message(r).await.map(drop).map_err(code),
        Call::ListMessages(r) => client.list_messages(r).await.map(drop).map_err(code),
        Call::MarkRead(r) => client.mark_read(r).await.map(drop).map_err(code),
        Call::Typing(r) => client.send_typing(r).await.map(drop).map_err(code),
        Call::Edit(r) => client.edit_message(r).await.map(drop).map_err(code),
        Call::Delete(r) => client.delete_message(r).await.map(drop).map_err(code),
        Call::Search(r) => client.search_messages(r).await.map(drop).map_err(code),
        Call::Stream(r) => {
            let mut stream = client
                .stream_conversation(r)
                .await
                .map_err(code)?
                .into_inner();
            first_event(stream.message()).await
        }
        Call::Inbox(r) => {
            let mut stream = client.stream_inbox(r).await.map_err(code)?.into_inner();
            first_event(stream.message()).await
        }
    }
}

/// The first event of an opened stream, or its error; a quiet stream is fine.
async fn first_event<T>(
    next: impl Future<Output = Result<Option<T>, tonic::Status>>,
) -> Result<(), Code> {
    match tokio::time::timeout(std::time::Duration::from_millis(300), next).await {
        Ok(Err(status)) => Err(status.code()),
        _ => Ok(()),
    }
}

/// Every row of every table (whatever the migrations made), as text, without what
/// background tasks write over whatever the calls before did: the event feed's windows
/// (the sequencer closes them), presence (each replica's beat renews, drops and announces
/// the participants whose streams earlier calls opened) and the inbox order's settling
/// (`inbox_settled`, and conversations' `inbox_at` set to their last activity once its
/// minute has passed). No request writes these alone: one that moved `inbox_at` also
/// moved `last_activity_at`.
pub async fn rows(app: &TestApp) -> String {
    let mut db = app.db().await;
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%' \
           AND table_name NOT IN ('feed_windows', 'feed_state', 'inbox_settled', 'presence', \
                                  'presence_events', 'presence_state') ORDER BY 1",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let mut all = String::new();
    for (table,) in tables {
        let sql = format!(
            "SELECT coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '') \
             FROM (SELECT to_jsonb(t) - 'inbox_at' AS r FROM \"{table}\" t) s"
        );
        let (text,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut db)
            .await
            .unwrap();
        all.push_str(&table);
        all.push_str(&text);
    }
    all
}

#[test]
fn random_well_formed_requests_never_get_internal_and_refusals_write_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (app, known) = runtime.block_on(async {
        let mut app =
            spawn_app_with_flags(&["--attachment-uri-prefixes", "https://files.example/"]).await;
        let conversation = create(&mut app.client, "prov-prop").await;
        let id = conversation.conversation_id;
        let message = send(&mut app.client, &id, provider("prov-prop"), "hello")
            .await
            .unwrap();
        send(&mut app.client, &id, provider("prov-prop"), "hello again")
            .await
            .unwrap();
        // A real page token: the second page of prov-prop's "hello".
        let search_token = app
            .client
            .search_messages(v1::SearchMessagesRequest {
                participant: provider("prov-prop"),
                query: "hello".into(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .next_page_token;
        assert!(!search_token.is_empty());
        let known = vec![
            id,
            message.message_id,
            search_token,
            "https://files.example/a.png".to_owned(),
            "image/png".to_owned(),
            "prov-prop".to_owned(),
            "cust-prop".to_owned(),
            uuid::Uuid::new_v4().to_string(),
            "a@b.co".to_owned(),
            "+15551234567".to_owned(),
        ];
        (app, known)
    });
    let mut runner = TestRunner::new(Config {
        // PROPTEST_CASES=2000 for a longer run.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CASES),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&call(&known), |call| {
            runtime.block_on(async {
                let before = rows(&app).await;
                let described = format!("{call:?}");
                let mut client = app.client.clone();
                match run(&mut client, call).await {
                    Ok(()) => Ok(()),
                    Err(code @ (Code::Internal | Code::Unknown)) => {
                        Err(TestCaseError::fail(format!("{code:?} for {described}")))
                    }
                    Err(code) => {
                        let after = rows(&app).await;
                        prop_assert_eq!(
                            before,
                            after,
                            "{:?} refusal wrote rows: {}",
                            code,
                            described
                        );
                        Ok(())
                    }
                }
            })
        })
        .unwrap();
    drop(app);
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
}
