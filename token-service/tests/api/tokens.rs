//! IssueToken, ListTokens, RevokeToken, CheckToken.

use std::time::Duration;

use chat_proto::v1::{
    CheckTokenRequest, IssueTokenRequest, ListTokensRequest, RevokeTokenRequest, TokenState,
};
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{assert_invalid, assert_refused, spawn_app};

#[tokio::test]
async fn issue_token_returns_the_secret_once_and_stores_only_its_hash() {
    let app = spawn_app().await;
    let issued = app
        .tokens
        .clone()
        .issue_token(IssueTokenRequest {
            provider_id: "provider-1".into(),
            label: "Spring offer".into(),
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            max_uses: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(issued.secret.starts_with("ctk_"));
    // The issue time (6 bytes) and 32 random bytes, base64url: 51 characters.
    assert_eq!(issued.secret.len(), 4 + 51);
    assert_eq!(
        issued.link_path,
        format!("/u/provider-1/c/{}", issued.secret)
    );
    let token = issued.token.unwrap();
    assert_eq!(token.provider_id, "provider-1");
    assert_eq!(token.label, "Spring offer");
    assert_eq!(token.max_uses, 3);
    assert_eq!(token.use_count, 0);
    assert_eq!(token.state(), TokenState::Valid);
    let create = token.create_time.unwrap();
    let expire = token.expire_time.unwrap();
    assert_eq!(expire.seconds - create.seconds, 3600);

    // Neither the database nor any later reply holds the secret.
    assert!(!app.db_dump().contains(&issued.secret[4..]));
    let listed = app
        .tokens
        .clone()
        .list_tokens(ListTokensRequest {
            provider_id: "provider-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens, vec![token]);
    assert!(!format!("{listed:?}").contains(&issued.secret[4..]));

    // Two links never share a secret.
    let other = app.issue("provider-1", 0).await;
    assert_ne!(other.secret, issued.secret);
    app.stop().await;
}

#[tokio::test]
async fn issue_token_defaults_to_seven_days_and_unlimited_uses() {
    let app = spawn_app().await;
    let token = app.issue("p", 0).await.token.unwrap();
    let span = token.expire_time.unwrap().seconds - token.create_time.unwrap().seconds;
    assert_eq!(span, 7 * 86_400);
    assert_eq!(token.max_uses, 0);
    app.stop().await;
}

#[tokio::test]
async fn issue_token_refuses_invalid_fields_and_stores_nothing() {
    let app = spawn_app().await;
    let before = app.db_dump();
    let valid = IssueTokenRequest {
        provider_id: "p".into(),
        label: "ok".into(),
        ttl: None,
        max_uses: 1,
    };
    let cases = [
        (
            IssueTokenRequest {
                provider_id: String::new(),
                ..valid.clone()
            },
            "provider_id",
        ),
        (
            IssueTokenRequest {
                provider_id: "a/b".into(),
                ..valid.clone()
            },
            "provider_id",
        ),
        (
            IssueTokenRequest {
                provider_id: "x".repeat(129),
                ..valid.clone()
            },
            "provider_id",
        ),
        (
            IssueTokenRequest {
                label: "l".repeat(201),
                ..valid.clone()
            },
            "label",
        ),
        (
            IssueTokenRequest {
                ttl: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
                ..valid.clone()
            },
            "ttl",
        ),
        (
            IssueTokenRequest {
                ttl: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
                ..valid.clone()
            },
            "ttl",
        ),
        (
            IssueTokenRequest {
                ttl: Some(prost_types::Duration {
                    seconds: 366 * 86_400,
                    nanos: 0,
                }),
                ..valid.clone()
            },
            "ttl",
        ),
        (
            IssueTokenRequest {
                max_uses: -1,
                ..valid.clone()
            },
            "max_uses",
        ),
    ];
    for (request, field) in cases {
        assert_invalid(app.tokens.clone().issue_token(request).await, field);
    }
    assert_eq!(app.db_dump(), before);
    app.stop().await;
}

#[tokio::test]
async fn list_tokens_pages_newest_first_and_binds_page_tokens_to_the_provider() {
    let app = spawn_app().await;
    let mut issued = Vec::new();
    for _ in 0..5 {
        issued.push(app.issue("lister", 0).await.token.unwrap().token_id);
    }
    app.issue("someone-else", 0).await;
    issued.reverse(); // newest first

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .tokens
            .clone()
            .list_tokens(ListTokensRequest {
                provider_id: "lister".into(),
                page_size: 2,
                page_token: page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.tokens.len() <= 2);
        seen.extend(page.tokens.into_iter().map(|t| t.token_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, issued);

    // 0 is the default, above the maximum is lowered: both return everything here.
    for page_size in [0, 10_000] {
        let page = app
            .tokens
            .clone()
            .list_tokens(ListTokensRequest {
                provider_id: "lister".into(),
                page_size,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.tokens.len(), 5);
        assert!(page.next_page_token.is_empty());
    }

    assert_invalid(
        app.tokens
            .clone()
            .list_tokens(ListTokensRequest {
                provider_id: "lister".into(),
                page_size: -1,
                page_token: String::new(),
            })
            .await,
        "page_size",
    );
    // A page token of one provider's list does not page through another's.
    let first = app
        .tokens
        .clone()
        .list_tokens(ListTokensRequest {
            provider_id: "lister".into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let refused = app
        .tokens
        .clone()
        .list_tokens(ListTokensRequest {
            provider_id: "someone-else".into(),
            page_size: 1,
            page_token: first.next_page_token.clone(),
        })
        .await;
    assert_refused(refused, Code::InvalidArgument, "INVALID_PAGE_TOKEN");
    assert_invalid(
        app.tokens
            .clone()
            .list_tokens(ListTokensRequest {
                provider_id: "lister".into(),
                page_size: 1,
                page_token: "not-a-token".into(),
            })
            .await,
        "page_token",
    );
    assert_invalid(
        app.tokens
            .clone()
            .list_tokens(ListTokensRequest::default())
            .await,
        "provider_id",
    );
    app.stop().await;
}

#[tokio::test]
async fn revoke_token_stops_the_link_and_is_idempotent() {
    let app = spawn_app().await;
    let issued = app.issue("rev", 0).await;
    let token_id = issued.token.unwrap().token_id;
    let revoke = |provider: &str, token_id: &str| {
        let mut client = app.tokens.clone();
        let request = RevokeTokenRequest {
            provider_id: provider.into(),
            token_id: token_id.into(),
        };
        async move {
            client
                .revoke_token(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };

    // Refusals change nothing.
    let before = app.db_dump();
    assert_refused(
        revoke("intruder", &token_id).await,
        Code::PermissionDenied,
        "PROVIDER_MISMATCH",
    );
    assert_refused(
        revoke("rev", &Uuid::now_v7().to_string()).await,
        Code::NotFound,
        "TOKEN_NOT_FOUND",
    );
    assert_invalid(revoke("rev", "nope").await, "token_id");
    assert_invalid(revoke("", &token_id).await, "provider_id");
    assert_eq!(app.db_dump(), before);

    let revoked = revoke("rev", &token_id).await.unwrap().token.unwrap();
    assert_eq!(revoked.state(), TokenState::Revoked);
    let first_time = revoked.revoke_time.unwrap();
    let again = revoke("rev", &token_id).await.unwrap().token.unwrap();
    assert_eq!(again.revoke_time.unwrap(), first_time);

    let checked = app
        .tokens
        .clone()
        .check_token(CheckTokenRequest {
            provider_id: "rev".into(),
            secret: issued.secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.state(), TokenState::Revoked);
    let before = app.db_dump();
    assert_refused(
        app.redeem("rev", &issued.secret).await,
        Code::FailedPrecondition,
        "TOKEN_REVOKED",
    );
    assert_eq!(app.db_dump(), before);
    app.stop().await;
}

#[tokio::test]
async fn check_token_tells_why_without_side_effects() {
    let app = spawn_app().await;
    let valid = app.issue("chk", 2).await;
    let short = app
        .tokens
        .clone()
        .issue_token(IssueTokenRequest {
            provider_id: "chk".into(),
            label: String::new(),
            ttl: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            max_uses: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let check = |provider: &str, secret: &str| {
        let mut client = app.tokens.clone();
        let request = CheckTokenRequest {
            provider_id: provider.into(),
            secret: secret.into(),
        };
        async move {
            client
                .check_token(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };

    let before = app.db_dump();
    for _ in 0..3 {
        let reply = check("chk", &valid.secret).await.unwrap();
        assert_eq!(reply.state(), TokenState::Valid);
        assert_eq!(reply.token.unwrap().use_count, 0);
    }
    assert_refused(
        check("other", &valid.secret).await,
        Code::PermissionDenied,
        "PROVIDER_MISMATCH",
    );
    let unknown = format!("ctk_{}", "A".repeat(43));
    assert_refused(
        check("chk", &unknown).await,
        Code::NotFound,
        "TOKEN_NOT_FOUND",
    );
    assert_invalid(check("chk", "not-a-secret").await, "secret");
    assert_invalid(check("chk", "").await, "secret");
    assert_eq!(app.db_dump(), before, "CheckToken changed the database");

    // Expired.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        check("chk", &short.secret).await.unwrap().state(),
        TokenState::Expired
    );
    let before = app.db_dump();
    assert_refused(
        app.redeem("chk", &short.secret).await,
        Code::FailedPrecondition,
        "TOKEN_EXPIRED",
    );
    assert_eq!(app.db_dump(), before);

    // Exhausted after its two uses.
    app.redeem("chk", &valid.secret).await.unwrap();
    app.redeem("chk", &valid.secret).await.unwrap();
    let reply = check("chk", &valid.secret).await.unwrap();
    assert_eq!(reply.state(), TokenState::Exhausted);
    assert_eq!(reply.token.unwrap().use_count, 2);
    let before = app.db_dump();
    assert_refused(
        app.redeem("chk", &valid.secret).await,
        Code::FailedPrecondition,
        "TOKEN_EXHAUSTED",
    );
    assert_eq!(app.db_dump(), before);
    app.stop().await;
}

#[tokio::test]
async fn oversized_requests_are_refused_before_they_reach_the_handler() {
    let app = spawn_app().await;
    let before = app.db_dump();
    let refused = app
        .tokens
        .clone()
        .issue_token(IssueTokenRequest {
            provider_id: "p".into(),
            label: "x".repeat(100 * 1024),
            ttl: None,
            max_uses: 0,
        })
        .await;
    // Above the configured limit (64 KiB by default): RESOURCE_EXHAUSTED, as gRPC says,
    // with a reason (tonic's own answer would be OUT_OF_RANGE without one).
    assert_refused(refused, Code::ResourceExhausted, "REQUEST_TOO_LARGE");
    assert_eq!(app.db_dump(), before);
    app.stop().await;
}

#[tokio::test]
async fn a_full_page_of_long_labels_fits_in_a_reply() {
    let app = spawn_app().await;
    let issue = (0..200).map(|_| {
        let mut client = app.tokens.clone();
        async move {
            client
                .issue_token(IssueTokenRequest {
                    provider_id: "wordy".into(),
                    label: "é".repeat(200),
                    ttl: None,
                    max_uses: 0,
                })
                .await
                .unwrap()
        }
    });
    futures::future::join_all(issue).await;
    let page = app
        .tokens
        .clone()
        .list_tokens(ListTokensRequest {
            provider_id: "wordy".into(),
            page_size: 200,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.tokens.len(), 200);
    assert!(page.next_page_token.is_empty());
    app.stop().await;
}
