//! Bad input as an attacker or a buggy client sends it: NUL bytes in every text field,
//! forged page tokens. Always INVALID_ARGUMENT naming the field, and nothing written.

use chat_common::seal::SealKey;
use chat_proto::v1::*;
use uuid::Uuid;

use crate::helpers::{NOWHERE, assert_invalid, spawn_app, spawn_app_with, temp_db_path};

const NUL: &str = "a\u{0}b";

#[tokio::test]
async fn a_nul_byte_in_any_text_field_is_invalid_argument_naming_it_and_writes_nothing() {
    let app = spawn_app().await;
    let issued = app.issue("p1", 5).await;
    let token_id = issued.token.as_ref().unwrap().token_id.clone();
    let before = app.db_dump();
    let mut c = app.tokens.clone();

    let issue = || IssueTokenRequest {
        provider_id: "p1".into(),
        label: "ok".into(),
        ttl: None,
        max_uses: 1,
    };
    for (field, request) in [
        (
            "provider_id",
            IssueTokenRequest {
                provider_id: NUL.into(),
                ..issue()
            },
        ),
        (
            "label",
            IssueTokenRequest {
                label: NUL.into(),
                ..issue()
            },
        ),
    ] {
        assert_invalid(c.issue_token(request).await, field);
    }
    assert_invalid(
        c.list_tokens(ListTokensRequest {
            provider_id: NUL.into(),
            ..Default::default()
        })
        .await,
        "provider_id",
    );
    assert_invalid(
        c.list_tokens(ListTokensRequest {
            provider_id: "p1".into(),
            page_token: NUL.into(),
            ..Default::default()
        })
        .await,
        "page_token",
    );
    assert_invalid(
        c.revoke_token(RevokeTokenRequest {
            provider_id: NUL.into(),
            token_id: token_id.clone(),
        })
        .await,
        "provider_id",
    );
    assert_invalid(
        c.revoke_token(RevokeTokenRequest {
            provider_id: "p1".into(),
            token_id: format!("{token_id}\u{0}"),
        })
        .await,
        "token_id",
    );
    assert_invalid(
        c.check_token(CheckTokenRequest {
            provider_id: NUL.into(),
            secret: issued.secret.clone(),
        })
        .await,
        "provider_id",
    );
    assert_invalid(
        c.check_token(CheckTokenRequest {
            provider_id: "p1".into(),
            secret: format!("{}\u{0}", issued.secret),
        })
        .await,
        "secret",
    );
    let redeem = || RedeemTokenRequest {
        request_id: Uuid::new_v4().to_string(),
        provider_id: "p1".into(),
        secret: issued.secret.clone(),
        customer_id: String::new(),
        new_conversation: false,
    };
    for (field, request) in [
        (
            "request_id",
            RedeemTokenRequest {
                request_id: NUL.into(),
                ..redeem()
            },
        ),
        (
            "provider_id",
            RedeemTokenRequest {
                provider_id: NUL.into(),
                ..redeem()
            },
        ),
        (
            "secret",
            RedeemTokenRequest {
                secret: format!("{}\u{0}", issued.secret),
                ..redeem()
            },
        ),
        (
            "customer_id",
            RedeemTokenRequest {
                customer_id: NUL.into(),
                ..redeem()
            },
        ),
    ] {
        assert_invalid(c.redeem_token(request).await, field);
    }
    assert_eq!(app.db_dump(), before, "refused requests wrote nothing");

    // Session fields, on a real session.
    let session_secret = app
        .redeem("p1", &issued.secret)
        .await
        .unwrap()
        .session_secret;
    let before = app.db_dump();
    assert_invalid(
        c.get_session(GetSessionRequest {
            session_secret: NUL.into(),
        })
        .await,
        "session_secret",
    );
    let identify = || IdentifySessionRequest {
        session_secret: session_secret.clone(),
        customer_id: "cust-1".into(),
        name: None,
        email: None,
        phone: None,
    };
    for (field, request) in [
        (
            "session_secret",
            IdentifySessionRequest {
                session_secret: format!("{session_secret}\u{0}"),
                ..identify()
            },
        ),
        (
            "customer_id",
            IdentifySessionRequest {
                customer_id: NUL.into(),
                ..identify()
            },
        ),
        (
            "name",
            IdentifySessionRequest {
                name: Some(NUL.into()),
                ..identify()
            },
        ),
        (
            "email",
            IdentifySessionRequest {
                email: Some("a\u{0}@b.co".into()),
                ..identify()
            },
        ),
        (
            "phone",
            IdentifySessionRequest {
                phone: Some("+1234567\u{0}8".into()),
                ..identify()
            },
        ),
    ] {
        assert_invalid(c.identify_session(request).await, field);
    }
    assert_invalid(
        c.end_session(EndSessionRequest {
            session_secret: NUL.into(),
        })
        .await,
        "session_secret",
    );
    assert_eq!(app.db_dump(), before, "refused requests wrote nothing");
}

#[tokio::test]
async fn forged_page_tokens_are_invalid_argument() {
    const KEY: &str = "a test key of 32 bytes, not real";
    let app = spawn_app_with(temp_db_path(), NOWHERE, &["--page-token-key", KEY]).await;
    for _ in 0..3 {
        app.issue("p1", 1).await;
    }
    let list = |page_token: String| {
        let mut c = app.tokens.clone();
        async move {
            c.list_tokens(ListTokensRequest {
                provider_id: "p1".into(),
                page_size: 1,
                page_token,
            })
            .await
        }
    };
    let first = list(String::new()).await.unwrap().into_inner();
    assert_eq!(
        list(first.next_page_token)
            .await
            .unwrap()
            .into_inner()
            .tokens
            .len(),
        1
    );
    // A position before 1970 (-5000-01-01), sealed with a wrong key and with the
    // service's own key (as if it had leaked): refused before any query either way.
    let mut payload = (-219_000_000_000_i64 * 1_000_000).to_be_bytes().to_vec();
    payload.extend_from_slice(Uuid::nil().as_bytes());
    let (own, _) = SealKey::configured_or_random(Some(KEY)).unwrap();
    for key in [SealKey::random().unwrap(), own] {
        let forged = key.seal("ListTokens/p1", &payload);
        assert_invalid(list(forged).await, "page_token");
    }
}

#[tokio::test]
async fn a_connection_that_never_starts_http2_is_closed_after_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let app = spawn_app_with(temp_db_path(), NOWHERE, &["--handshake-timeout", "300ms"]).await;
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut buf = Vec::new();
    // The outer timeout only keeps a regression from hanging the suite.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        silent.read_to_end(&mut buf),
    )
    .await
    .expect("the server closed the silent connection");
    let _closed_by_eof_or_reset = read;
    // A connection that did its handshake stays, idle for longer than the timeout.
    app.issue("p1", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    app.issue("p1", 1).await;
}
