//! RedeemToken with conversation-service down: uses counted atomically, idempotency,
//! every refusal, the failed-redemption limiter.

use std::sync::Arc;

use chat_proto::v1::{CheckTokenRequest, ConversationState, GetSessionRequest, RedeemTokenRequest};
use futures::future::join_all;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{
    NOWHERE, TestApp, assert_invalid, assert_refused, spawn_app, spawn_app_with, temp_db_path,
};

fn request(provider: &str, secret: &str) -> RedeemTokenRequest {
    RedeemTokenRequest {
        request_id: Uuid::new_v4().to_string(),
        provider_id: provider.into(),
        secret: secret.into(),
        customer_id: String::new(),
        new_conversation: false,
    }
}

#[tokio::test]
async fn redeem_opens_a_pending_session_while_conversation_service_is_down() {
    let app = spawn_app().await;
    let issued = app.issue("prov", 0).await;
    let token_id = issued.token.unwrap().token_id;
    let redeemed = app.redeem("prov", &issued.secret).await.unwrap();
    assert!(redeemed.session_secret.starts_with("cse_"));
    let session = redeemed.session.unwrap();
    assert_eq!(session.token_id, token_id);
    assert_eq!(session.provider_id, "prov");
    assert_eq!(session.conversation_state(), ConversationState::Pending);
    assert!(session.conversation_id.is_empty());
    assert!(session.end_time.is_none());
    // The session secret is stored only as a hash; the call is queued.
    let dump = app.db_dump();
    assert!(!dump.contains(&redeemed.session_secret[4..]));
    // One CreateConversation queued, named by the session id, with the link as origin.
    let conn = rusqlite::Connection::open_with_flags(
        &app.db_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let queued: Vec<(String, String, String, String)> = conn
        .prepare("SELECT session_id, kind, request_id, origin FROM outbox")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        queued,
        vec![(
            session.session_id.clone(),
            "create_conversation".to_owned(),
            session.session_id.clone(),
            format!("token:{token_id}"),
        )]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_returns_the_same_session_with_a_fresh_secret() {
    let app = spawn_app().await;
    let issued = app.issue("prov", 1).await;
    let req = request("prov", &issued.secret);
    let first = app.redeem_req(req.clone()).await.unwrap();
    // The link is used up now, yet the retry succeeds: it consumes nothing.
    let second = app.redeem_req(req.clone()).await.unwrap();
    assert_eq!(
        first.session.as_ref().unwrap().session_id,
        second.session.as_ref().unwrap().session_id
    );
    assert_ne!(first.session_secret, second.session_secret);
    let checked = app
        .tokens
        .clone()
        .check_token(CheckTokenRequest {
            provider_id: "prov".into(),
            secret: issued.secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.token.unwrap().use_count, 1);

    // The secret handed out first stops working; the fresh one works.
    let old = app
        .tokens
        .clone()
        .get_session(GetSessionRequest {
            session_secret: first.session_secret.clone(),
        })
        .await;
    assert_refused(old, Code::Unauthenticated, "SESSION_NOT_FOUND");
    let current = app
        .tokens
        .clone()
        .get_session(GetSessionRequest {
            session_secret: second.session_secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.session, second.session);

    // The same request_id for another link is refused.
    let other = app.issue("prov", 0).await;
    let before = app.db_dump();
    let reused = app
        .redeem_req(RedeemTokenRequest {
            secret: other.secret.clone(),
            ..req.clone()
        })
        .await;
    assert_refused(reused, Code::InvalidArgument, "REQUEST_ID_REUSED");
    assert_eq!(app.db_dump(), before);
    app.stop().await;
}

#[tokio::test]
async fn redeem_refusals_have_their_codes_and_change_nothing() {
    let app = spawn_app().await;
    let issued = app.issue("prov", 0).await;
    let before = app.db_dump();
    assert_refused(
        app.redeem("other-provider", &issued.secret).await,
        Code::PermissionDenied,
        "PROVIDER_MISMATCH",
    );
    assert_refused(
        app.redeem("prov", &format!("ctk_{}", "B".repeat(43))).await,
        Code::NotFound,
        "TOKEN_NOT_FOUND",
    );
    assert_invalid(app.redeem("prov", "ctk_short").await, "secret");
    assert_invalid(
        app.redeem_req(RedeemTokenRequest {
            request_id: String::new(),
            ..request("prov", &issued.secret)
        })
        .await,
        "request_id",
    );
    assert_invalid(
        app.redeem_req(RedeemTokenRequest {
            request_id: "not-a-uuid".into(),
            ..request("prov", &issued.secret)
        })
        .await,
        "request_id",
    );
    assert_invalid(
        app.redeem_req(RedeemTokenRequest {
            customer_id: "bad/customer".into(),
            ..request("prov", &issued.secret)
        })
        .await,
        "customer_id",
    );
    assert_invalid(app.redeem("", &issued.secret).await, "provider_id");
    assert_eq!(app.db_dump(), before);
    app.stop().await;
}

#[tokio::test]
async fn a_hundred_concurrent_redemptions_of_a_five_use_link_succeed_exactly_five_times() {
    let app = Arc::new(spawn_app().await);
    let issued = app.issue("busy", 5).await;
    let attempts = (0..100).map(|_| {
        let app = Arc::clone(&app);
        let secret = issued.secret.clone();
        tokio::spawn(async move { app.redeem("busy", &secret).await })
    });
    let results: Vec<_> = join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 5);
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_eq!(crate::helpers::reason(refused), "TOKEN_EXHAUSTED");
    }
    let mut sessions: Vec<_> = ok
        .iter()
        .map(|r| r.session.as_ref().unwrap().session_id.clone())
        .collect();
    sessions.sort();
    sessions.dedup();
    assert_eq!(sessions.len(), 5);
    let checked = app
        .tokens
        .clone()
        .check_token(CheckTokenRequest {
            provider_id: "busy".into(),
            secret: issued.secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.token.unwrap().use_count, 5);
    Arc::into_inner(app).unwrap().stop().await;
}

fn from(chain: &str, req: RedeemTokenRequest) -> tonic::Request<RedeemTokenRequest> {
    with_header("x-forwarded-for", chain, req)
}

fn with_header(
    name: &'static str,
    value: &str,
    req: RedeemTokenRequest,
) -> tonic::Request<RedeemTokenRequest> {
    let mut request = tonic::Request::new(req);
    request.metadata_mut().insert(name, value.parse().unwrap());
    request
}

fn wrong_guess(provider: &str) -> RedeemTokenRequest {
    let secret = format!(
        "ctk_{}",
        &Uuid::new_v4().simple().to_string().repeat(2)[..43]
    );
    request(provider, &secret)
}

/// One BFF in front: it appends the end user's address to x-forwarded-for.
async fn behind_one_proxy() -> TestApp {
    spawn_app_with(temp_db_path(), NOWHERE, &["--trusted-proxy-hops", "1"]).await
}

#[tokio::test]
async fn repeated_failed_redemptions_from_one_caller_are_slowed_down() {
    let app = behind_one_proxy().await;
    let issued = app.issue("prov", 0).await;
    let mut client = app.tokens.clone();
    // The test limit is 10 failed guesses per window.
    for _ in 0..10 {
        let refused = client
            .redeem_token(from("203.0.113.7", wrong_guess("prov")))
            .await;
        assert_refused(refused, Code::NotFound, "TOKEN_NOT_FOUND");
    }
    // Now even a valid link is refused for that caller, before any lookup, whatever
    // the client wrote to the left of what the proxy appended...
    let before = app.db_dump();
    let status = assert_refused(
        client
            .redeem_token(from(
                "198.51.100.1, 203.0.113.7",
                request("prov", &issued.secret),
            ))
            .await,
        Code::ResourceExhausted,
        "TOO_MANY_FAILED_REDEMPTIONS",
    );
    use tonic_types::StatusExt;
    assert!(status.get_error_details().retry_info().is_some());
    let mut check = tonic::Request::new(CheckTokenRequest {
        provider_id: "prov".into(),
        secret: issued.secret.clone(),
    });
    check
        .metadata_mut()
        .insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    assert_refused(
        client.check_token(check).await,
        Code::ResourceExhausted,
        "TOO_MANY_FAILED_REDEMPTIONS",
    );
    assert_eq!(app.db_dump(), before);
    // ...while another caller is unaffected, even one the attacker named.
    client
        .redeem_token(from("198.51.100.1", request("prov", &issued.secret)))
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn sixty_parallel_wrong_secrets_get_at_most_the_limit_looked_up() {
    let app = Arc::new(spawn_app().await);
    app.issue("prov", 0).await;
    let results = join_all((0..60).map(|_| {
        let mut client = app.tokens.clone();
        async move { client.redeem_token(wrong_guess("prov")).await }
    }))
    .await;
    let looked_up = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|s| s.code() == Code::NotFound))
        .count();
    let refused = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_err_and(|s| s.code() == Code::ResourceExhausted)
        })
        .count();
    eprintln!("60 parallel wrong secrets: {looked_up} looked up, {refused} refused");
    assert!((1..=10).contains(&looked_up), "{looked_up} lookups");
    assert_eq!(looked_up + refused, 60);
    Arc::into_inner(app).unwrap().stop().await;
}

#[tokio::test]
async fn a_rotated_forwarded_for_does_not_reset_the_budget() {
    // Without trusted proxies the chain is the client's own text: the peer is the caller.
    let app = spawn_app().await;
    let issued = app.issue("prov", 0).await;
    let mut client = app.tokens.clone();
    let mut looked_up = 0;
    for i in 0..30 {
        let reply = client
            .redeem_token(from(&format!("192.0.2.{i}"), wrong_guess("prov")))
            .await;
        looked_up += usize::from(reply.is_err_and(|s| s.code() == Code::NotFound));
    }
    assert_eq!(looked_up, 10);
    assert_refused(
        client
            .redeem_token(from("192.0.2.200", request("prov", &issued.secret)))
            .await,
        Code::ResourceExhausted,
        "TOO_MANY_FAILED_REDEMPTIONS",
    );
    app.stop().await;
}

#[tokio::test]
async fn a_key_set_by_the_bff_gives_each_end_user_its_own_budget() {
    let app = spawn_app_with(
        temp_db_path(),
        NOWHERE,
        &["--caller-key-header", "x-end-user"],
    )
    .await;
    let issued = app.issue("prov", 0).await;
    let mut client = app.tokens.clone();
    for _ in 0..10 {
        let refused = client
            .redeem_token(with_header("x-end-user", "typo-user", wrong_guess("prov")))
            .await;
        assert_refused(refused, Code::NotFound, "TOKEN_NOT_FOUND");
    }
    assert_refused(
        client
            .redeem_token(with_header("x-end-user", "typo-user", wrong_guess("prov")))
            .await,
        Code::ResourceExhausted,
        "TOO_MANY_FAILED_REDEMPTIONS",
    );
    // Everyone else behind the same BFF (same peer address) keeps their budget.
    client
        .redeem_token(with_header(
            "x-end-user",
            "other-user",
            request("prov", &issued.secret),
        ))
        .await
        .unwrap();
    app.stop().await;
}
