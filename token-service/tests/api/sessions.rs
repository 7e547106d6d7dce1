//! GetSession, IdentifySession, EndSession (conversation-service down: the
//! UpdateCustomer call waits in the outbox behind the pending conversation).

use chat_proto::v1::{ConversationState, EndSessionRequest, IdentifySessionRequest};
use tonic::Code;

use crate::helpers::{TestApp, assert_invalid, assert_refused, spawn_app};

async fn open_session(app: &TestApp) -> (String, chat_proto::v1::Session) {
    let issued = app.issue("prov", 0).await;
    let r = app.redeem("prov", &issued.secret).await.unwrap();
    (r.session_secret, r.session.unwrap())
}

fn identify(secret: &str, customer: &str) -> IdentifySessionRequest {
    IdentifySessionRequest {
        session_secret: secret.into(),
        customer_id: customer.into(),
        name: Some("Ada Lovelace".into()),
        email: Some("ada@example.com".into()),
        phone: Some("+44 20 7946 0000".into()),
    }
}

#[tokio::test]
async fn get_session_checks_the_secret() {
    let app = spawn_app().await;
    let (secret, session) = open_session(&app).await;
    let got = app.get_session(&secret).await.unwrap();
    assert_eq!(got, session);
    assert_refused(
        app.get_session(&format!("cse_{}", "C".repeat(43))).await,
        Code::Unauthenticated,
        "SESSION_NOT_FOUND",
    );
    assert_invalid(app.get_session("ctk_wrong").await, "session_secret");
    app.stop().await;
}

#[tokio::test]
async fn identify_session_links_the_customer_once() {
    let app = spawn_app().await;
    let (secret, _) = open_session(&app).await;
    let mut client = app.tokens.clone();
    let session = client
        .identify_session(identify(&secret, "cust-1"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(session.customer_id, "cust-1");
    assert_eq!(session.conversation_state(), ConversationState::Pending);
    let dump = app.db_dump();
    assert!(dump.contains("update_customer") && dump.contains("ada@example.com"));

    // The same customer again (new details) is fine; another customer is refused.
    client
        .identify_session(IdentifySessionRequest {
            name: None,
            email: None,
            phone: Some("+1 555 0100".into()),
            ..identify(&secret, "cust-1")
        })
        .await
        .unwrap();
    let before = app.db_dump();
    assert_refused(
        client.identify_session(identify(&secret, "cust-2")).await,
        Code::FailedPrecondition,
        "CUSTOMER_ALREADY_LINKED",
    );
    for (request, field) in [
        (identify(&secret, ""), "customer_id"),
        (
            IdentifySessionRequest {
                email: Some("not an email".into()),
                ..identify(&secret, "cust-1")
            },
            "email",
        ),
        (
            IdentifySessionRequest {
                phone: Some("call me".into()),
                ..identify(&secret, "cust-1")
            },
            "phone",
        ),
        (
            IdentifySessionRequest {
                name: Some("n".repeat(201)),
                ..identify(&secret, "cust-1")
            },
            "name",
        ),
        (identify("", "cust-1"), "session_secret"),
    ] {
        assert_invalid(client.identify_session(request).await, field);
    }
    assert_refused(
        client
            .identify_session(identify(&format!("cse_{}", "D".repeat(43)), "cust-1"))
            .await,
        Code::Unauthenticated,
        "SESSION_NOT_FOUND",
    );
    assert_eq!(app.db_dump(), before);
    app.stop().await;
}

#[tokio::test]
async fn end_session_stops_its_secret() {
    let app = spawn_app().await;
    let (secret, session) = open_session(&app).await;
    let mut client = app.tokens.clone();
    let ended = client
        .end_session(EndSessionRequest {
            session_secret: secret.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(ended.session_id, session.session_id);
    let end_time = ended.end_time.unwrap();

    let before = app.db_dump();
    assert_refused(
        app.get_session(&secret).await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
    assert_refused(
        client.identify_session(identify(&secret, "cust-1")).await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
    // Ending again is a no-op that returns the same end time.
    let again = client
        .end_session(EndSessionRequest {
            session_secret: secret.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(again.end_time.unwrap(), end_time);
    assert_refused(
        client
            .end_session(EndSessionRequest {
                session_secret: format!("cse_{}", "E".repeat(43)),
            })
            .await,
        Code::Unauthenticated,
        "SESSION_NOT_FOUND",
    );
    assert_eq!(app.db_dump(), before);
    app.stop().await;
}

/// The digest a release before timed secrets kept: SHA-256 of the whole secret.
fn untimed_digest(secret: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(secret.as_bytes()).to_vec()
}

#[tokio::test]
async fn links_and_sessions_issued_before_secrets_carried_their_time_still_work() {
    let app = spawn_app().await;
    let issued = app.issue("prov", 0).await;
    let (timed_session, session) = open_session(&app).await;
    let old_link = format!("ctk_{}", "L".repeat(43));
    let old_session = format!("cse_{}", "S".repeat(43));
    {
        // What the file of the previous release holds for them.
        let conn = rusqlite::Connection::open(&app.db_path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        let token_id = issued.token.as_ref().unwrap().token_id.clone();
        conn.execute(
            "UPDATE chat_tokens SET secret_hash = ?1 WHERE token_id = ?2",
            rusqlite::params![untimed_digest(&old_link), token_id],
        )
        .unwrap();
        conn.execute(
            "UPDATE chat_sessions SET secret_hash = ?1 WHERE session_id = ?2",
            rusqlite::params![untimed_digest(&old_session), session.session_id],
        )
        .unwrap();
    }
    let got = app.get_session(&old_session).await.unwrap();
    assert_eq!(got.session_id, session.session_id);
    assert_refused(
        app.get_session(&timed_session).await,
        Code::Unauthenticated,
        "SESSION_NOT_FOUND",
    );
    let redeemed = app.redeem("prov", &old_link).await.unwrap();
    assert_eq!(
        redeemed.session.unwrap().token_id,
        issued.token.unwrap().token_id
    );
    assert_eq!(redeemed.session_secret.len(), 4 + 51);
    assert_refused(
        app.redeem("prov", &issued.secret).await,
        Code::NotFound,
        "TOKEN_NOT_FOUND",
    );
    app.stop().await;
}
