//! A session and its conversation never disagree (both services, real gRPC): retries
//! bound to their first request, refusals that reach the caller, one session's calls
//! applied in order.

use std::time::Duration;

use chat_proto::v1::{
    ConversationState, CustomerLinkState, GetConversationRequest, GetSessionRequest,
    IdentifySessionRequest, RedeemTokenRequest, Session, UpdateCustomerRequest,
};
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{
    ConversationClient, TestApp, assert_refused, eventually, free_addr, list_all, new_provider,
    spawn_app_with, spawn_conversation_service, spawn_fresh_conversation_service, temp_db_path,
    test_database,
};
use chat_proto::v1::Participant;

#[tokio::test]
async fn a_redeem_retry_with_another_customer_or_new_conversation_is_refused() {
    let conv = spawn_fresh_conversation_service().await;
    let app = spawn_app_with(temp_db_path(), &conv.url, &[]).await;
    let prov = new_provider();
    let link = app.issue(&prov, 0).await;
    let first = RedeemTokenRequest {
        request_id: Uuid::new_v4().to_string(),
        provider_id: prov.clone(),
        secret: link.secret.clone(),
        customer_id: "cust-a".into(),
        new_conversation: false,
    };
    let redeemed = app.redeem_req(first.clone()).await.unwrap();
    let session = redeemed.session.unwrap();
    assert_eq!(session.conversation_state(), ConversationState::Ready);

    let before = app.db_dump();
    for mismatched in [
        RedeemTokenRequest {
            customer_id: "cust-b".into(),
            ..first.clone()
        },
        RedeemTokenRequest {
            customer_id: String::new(),
            ..first.clone()
        },
        RedeemTokenRequest {
            new_conversation: true,
            ..first.clone()
        },
    ] {
        assert_refused(
            app.redeem_req(mismatched).await,
            Code::InvalidArgument,
            "REQUEST_ID_REUSED",
        );
    }
    assert_eq!(app.db_dump(), before, "a refused retry changed something");
    assert_eq!(
        list_all(&conv.client, Some(Participant::provider(&prov)))
            .await
            .len(),
        1
    );

    // The same request again is still a plain retry.
    let again = app.redeem_req(first).await.unwrap().session.unwrap();
    assert_eq!(again.session_id, session.session_id);
    assert_eq!(again.conversation_id, session.conversation_id);
    app.stop().await;
    conv.stop().await;
}

fn identify(secret: &str, customer: &str) -> IdentifySessionRequest {
    IdentifySessionRequest {
        session_secret: secret.into(),
        customer_id: customer.into(),
        name: Some("Bea".into()),
        email: Some("bea@example.com".into()),
        phone: None,
    }
}

/// Links a conversation to `customer` directly through conversation-service.
async fn link_directly(client: &ConversationClient, conversation_id: &str, customer: &str) {
    client
        .clone()
        .update_customer(UpdateCustomerRequest {
            conversation_id: conversation_id.into(),
            customer_id: Some(customer.into()),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn conversation_customer(client: &ConversationClient, conversation_id: &str) -> String {
    client
        .clone()
        .get_conversation(GetConversationRequest {
            conversation_id: conversation_id.into(),
            viewer: None,
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .customer
        .unwrap_or_default()
        .customer_id
}

async fn get_session(app: &TestApp, secret: &str) -> Session {
    app.tokens
        .clone()
        .get_session(GetSessionRequest {
            session_secret: secret.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
}

#[tokio::test]
async fn identify_refused_by_conversation_service_reaches_the_caller_and_changes_nothing() {
    let conv = spawn_fresh_conversation_service().await;
    let app = spawn_app_with(temp_db_path(), &conv.url, &[]).await;
    let prov = new_provider();
    let link = app.issue(&prov, 0).await;
    let redeemed = app.redeem(&prov, &link.secret).await.unwrap();
    let session = redeemed.session.unwrap();
    assert_eq!(session.conversation_state(), ConversationState::Ready);
    link_directly(&conv.client, &session.conversation_id, "cust-a").await;

    let before = app.db_dump();
    let status = assert_refused(
        app.tokens
            .clone()
            .identify_session(identify(&redeemed.session_secret, "cust-b"))
            .await,
        Code::FailedPrecondition,
        "CUSTOMER_ALREADY_LINKED",
    );
    assert!(!status.message().is_empty());
    assert_eq!(
        app.db_dump(),
        before,
        "a refused IdentifySession changed something"
    );
    assert_eq!(get_session(&app, &redeemed.session_secret).await, session);
    assert_eq!(
        conversation_customer(&conv.client, &session.conversation_id).await,
        "cust-a"
    );
    assert!(
        list_all(&conv.client, Some(Participant::customer("cust-b")))
            .await
            .is_empty()
    );

    // A link conversation-service accepts says LINKED.
    let other = app.redeem(&prov, &link.secret).await.unwrap();
    let linked = app
        .tokens
        .clone()
        .identify_session(identify(&other.session_secret, "cust-b"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(linked.customer_link_state(), CustomerLinkState::Linked);
    assert!(linked.link_error_reason.is_empty());
    app.stop().await;
    conv.stop().await;
}

#[tokio::test]
async fn a_queued_identify_refused_later_shows_on_get_session_and_stays_in_the_outbox() {
    let database = test_database().await;
    let database_url = database.url();
    let addr = free_addr();
    let conv = spawn_conversation_service(database_url, &addr.to_string()).await;
    let app = spawn_app_with(temp_db_path(), &conv.url, &[]).await;
    let prov = new_provider();
    let link = app.issue(&prov, 0).await;
    let redeemed = app.redeem(&prov, &link.secret).await.unwrap();
    let conversation_id = redeemed.session.unwrap().conversation_id;
    link_directly(&conv.client, &conversation_id, "cust-a").await;

    // conversation-service is down: the call is queued and the session says so.
    conv.stop().await;
    let queued = app
        .tokens
        .clone()
        .identify_session(identify(&redeemed.session_secret, "cust-b"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(queued.customer_id, "cust-b");
    assert_eq!(queued.customer_link_state(), CustomerLinkState::Pending);

    // Back up, it refuses the call: GetSession shows the state and the reason.
    let conv = spawn_conversation_service(database_url, &addr.to_string()).await;
    let failed = eventually(Duration::from_secs(30), || async {
        let session = get_session(&app, &redeemed.session_secret).await;
        (session.customer_link_state() == CustomerLinkState::Failed).then_some(session)
    })
    .await;
    assert_eq!(failed.link_error_reason, "CUSTOMER_ALREADY_LINKED");
    assert_eq!(
        conversation_customer(&conv.client, &conversation_id).await,
        "cust-a"
    );
    assert!(
        list_all(&conv.client, Some(Participant::customer("cust-b")))
            .await
            .is_empty()
    );

    // Operators find the refused call in the outbox, with its reason.
    let conn = rusqlite::Connection::open_with_flags(
        &app.db_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let (kind, failed_time, reason): (String, Option<i64>, Option<String>) = conn
        .query_row(
            "SELECT kind, failed_time, error_reason FROM outbox WHERE session_id = ?1",
            [&failed.session_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(kind, "update_customer");
    assert!(failed_time.is_some());
    assert_eq!(reason.as_deref(), Some("CUSTOMER_ALREADY_LINKED"));
    app.stop().await;
    conv.stop().await;
}

/// Backends of this database waiting on a lock: calls blocked behind the test's row lock.
async fn waiting_on_locks(db: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn one_sessions_calls_never_overlap_even_across_a_reopen_of_the_database() {
    use sqlx::Connection;
    let database = test_database().await;
    let database_url = database.url();
    let conv = spawn_conversation_service(database_url, "127.0.0.1:0").await;
    // A blocked call stays in flight, held by the RPC that queued it.
    let app = spawn_app_with(
        temp_db_path(),
        &conv.url,
        &["--inline-wait", "20s", "--call-timeout", "20s"],
    )
    .await;
    let prov = new_provider();
    let link = app.issue(&prov, 0).await;
    let redeemed = app.redeem(&prov, &link.secret).await.unwrap();
    let secret = redeemed.session_secret;
    let conversation_id = redeemed.session.unwrap().conversation_id;

    // The test holds the conversation's row: UpdateCustomer calls wait behind it.
    let mut holder = sqlx::PgConnection::connect(database_url).await.unwrap();
    let mut observer = sqlx::PgConnection::connect(database_url).await.unwrap();
    let mut lock = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM conversations WHERE id = $1::uuid FOR UPDATE")
        .bind(&conversation_id)
        .execute(&mut *lock)
        .await
        .unwrap();

    let mut tokens = app.tokens.clone();
    let details = |email: &str| IdentifySessionRequest {
        session_secret: secret.clone(),
        customer_id: "cust-1".into(),
        name: None,
        email: Some(email.into()),
        phone: None,
    };
    let first = tokio::spawn({
        let mut tokens = tokens.clone();
        let request = details("old@example.com");
        async move { tokens.identify_session(request).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while waiting_on_locks(&mut observer).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokens
        .identify_session(details("new@example.com"))
        .await
        .unwrap();

    // The connection is reopened (as after an I/O error) while the first call is in
    // flight: neither that call again nor the next one may start meanwhile.
    app.store.reopen().await.unwrap();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            waiting_on_locks(&mut observer).await,
            1,
            "a second call of the session started while the first was in flight"
        );
    }

    lock.rollback().await.unwrap();
    first.await.unwrap().unwrap();
    let linked = eventually(Duration::from_secs(30), || async {
        let session = get_session(&app, &secret).await;
        (session.customer_link_state() == CustomerLinkState::Linked).then_some(session)
    })
    .await;
    assert_eq!(linked.customer_id, "cust-1");
    let email = conv
        .client
        .clone()
        .get_conversation(GetConversationRequest {
            conversation_id: conversation_id.clone(),
            viewer: None,
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap()
        .customer
        .unwrap()
        .email;
    assert_eq!(email, "new@example.com", "older contact details won");
    app.stop().await;
    conv.stop().await;
}
