//! Property tests over every TokenService request type: random well-formed requests
//! (any text, any number, sometimes real ids and secrets) never get INTERNAL or UNKNOWN,
//! and a refused request changes no row. Case counts are modest so the suite stays quick.

use chat_proto::v1::*;
use proptest::{
    prelude::*,
    sample::select,
    test_runner::{Config, TestCaseError, TestRunner},
};
use tonic::{Code, Request};

use crate::helpers::{NOWHERE, TestApp, spawn_app_with, temp_db_path};

const CASES: u32 = 120;

fn text(known: &[String]) -> impl Strategy<Value = String> + use<> {
    prop_oneof![
        Just(String::new()),
        "[a-zA-Z0-9._:@-]{1,16}",
        any::<String>(),
        "\\PC{0,40}\u{0}?\\PC{0,4}",
        // Well formed but unknown secrets, of both lengths (with and without the time).
        "(ctk|cse)_[A-Za-z0-9_-]{43}",
        "(ctk|cse)_[A-Za-z0-9_-]{51}",
        select(known.to_vec()),
    ]
}

fn int32() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0), -3..300, any::<i32>()]
}

#[derive(Debug, Clone)]
enum Call {
    Issue(IssueTokenRequest),
    List(ListTokensRequest),
    Revoke(RevokeTokenRequest),
    Check(CheckTokenRequest),
    Redeem(RedeemTokenRequest),
    GetSession(GetSessionRequest),
    Identify(IdentifySessionRequest),
    End(EndSessionRequest),
}

fn call(known: &[String]) -> impl Strategy<Value = Call> + use<> {
    let t = || text(known);
    let maybe = || proptest::option::of(text(known));
    let ttl = proptest::option::of(
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
    );
    prop_oneof![
        (t(), t(), ttl, int32()).prop_map(|(provider_id, label, ttl, max_uses)| {
            Call::Issue(IssueTokenRequest {
                provider_id,
                label,
                ttl,
                max_uses,
            })
        }),
        (t(), int32(), t()).prop_map(|(provider_id, page_size, page_token)| {
            Call::List(ListTokensRequest {
                provider_id,
                page_size,
                page_token,
            })
        }),
        (t(), t()).prop_map(|(provider_id, token_id)| Call::Revoke(RevokeTokenRequest {
            provider_id,
            token_id
        })),
        (t(), t()).prop_map(|(provider_id, secret)| Call::Check(CheckTokenRequest {
            provider_id,
            secret
        })),
        (t(), t(), t(), t(), any::<bool>()).prop_map(
            |(request_id, provider_id, secret, customer_id, new_conversation)| {
                Call::Redeem(RedeemTokenRequest {
                    request_id,
                    provider_id,
                    secret,
                    customer_id,
                    new_conversation,
                })
            }
        ),
        t().prop_map(|session_secret| Call::GetSession(GetSessionRequest { session_secret })),
        (t(), t(), maybe(), maybe(), maybe()).prop_map(
            |(session_secret, customer_id, name, email, phone)| {
                Call::Identify(IdentifySessionRequest {
                    session_secret,
                    customer_id,
                    name,
                    email,
                    phone,
                })
            }
        ),
        t().prop_map(|session_secret| Call::End(EndSessionRequest { session_secret })),
    ]
}

/// Each call as its own end user, so the failed-guess limit does not stop the lookups.
fn as_user<T>(message: T, user: u64) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = user.to_string().parse() {
        request.metadata_mut().insert("x-end-user", value);
    }
    request
}

async fn run(app: &TestApp, call: Call, user: u64) -> Result<(), Code> {
    let mut c = app.tokens.clone();
    let code = |s: tonic::Status| s.code();
    match call {
        Call::Issue(r) => c.issue_token(r).await.map(drop).map_err(code),
        Call::List(r) => c.list_tokens(r).await.map(drop).map_err(code),
        Call::Revoke(r) => c.revoke_token(r).await.map(drop).map_err(code),
        Call::Check(r) => c
            .check_token(as_user(r, user))
            .await
            .map(drop)
            .map_err(code),
        Call::Redeem(r) => c
            .redeem_token(as_user(r, user))
            .await
            .map(drop)
            .map_err(code),
        Call::GetSession(r) => c.get_session(r).await.map(drop).map_err(code),
        Call::Identify(r) => c.identify_session(r).await.map(drop).map_err(code),
        Call::End(r) => c.end_session(r).await.map(drop).map_err(code),
    }
}

#[test]
fn random_well_formed_requests_never_get_internal_and_refusals_write_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (app, known) = runtime.block_on(async {
        let app = spawn_app_with(
            temp_db_path(),
            NOWHERE,
            &["--caller-key-header", "x-end-user"],
        )
        .await;
        let issued = app.issue("prov-prop", 0).await;
        let session = app.redeem("prov-prop", &issued.secret).await.unwrap();
        let known = vec![
            "prov-prop".to_owned(),
            issued.secret,
            issued.token.unwrap().token_id,
            session.session_secret,
            uuid::Uuid::new_v4().to_string(),
            "cust-prop".to_owned(),
            "a@b.co".to_owned(),
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
    let user = std::sync::atomic::AtomicU64::new(0);
    runner
        .run(&call(&known), |call| {
            let user = user.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            runtime.block_on(async {
                let before = app.db_dump();
                let described = format!("{call:?}");
                match run(&app, call, user).await {
                    Ok(()) => Ok(()),
                    Err(code @ (Code::Internal | Code::Unknown)) => {
                        Err(TestCaseError::fail(format!("{code:?} for {described}")))
                    }
                    Err(code) => {
                        prop_assert_eq!(
                            before,
                            app.db_dump(),
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
    runtime.block_on(app.stop());
}
