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

use crate::helpers::{Client, TestApp, create, provider, send, spawn_app};

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
        (t(), p(), t(), t()).prop_map(|(conversation_id, sender, body, client_message_id)| {
            Call::Send(v1::SendMessageRequest {
                conversation_id,
                sender,
                body,
                client_message_id,
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
        (t(), p(), int64()).prop_map(|(conversation_id, viewer, after_seq)| Call::Stream(
            v1::StreamConversationRequest {
                conversation_id,
                viewer,
                after_seq
            }
        )),
        (p(), t()).prop_map(|(participant, cursor)| Call::Inbox(v1::StreamInboxRequest {
            participant,
            cursor
        })),
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

/// Every row of every table (whatever the migrations made), as text.
pub async fn rows(app: &TestApp) -> String {
    let mut db = app.db().await;
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%' ORDER BY 1",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let mut all = String::new();
    for (table,) in tables {
        let sql = format!(
            "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM \"{table}\" t"
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
        let mut app = spawn_app().await;
        let conversation = create(&mut app.client, "prov-prop").await;
        let id = conversation.conversation_id;
        send(&mut app.client, &id, provider("prov-prop"), "hello")
            .await
            .unwrap();
        let known = vec![
            id,
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
