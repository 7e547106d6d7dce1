//! TokenAdminService: failed outbox calls (listed, retried, dropped) and online backups.

use std::time::Duration;

use chat_proto::v1::{
    BackupDatabaseRequest, CallKind, DropFailedCallRequest, FailedCall, IdentifySessionRequest,
    ListFailedCallsRequest, RetryFailedCallRequest, UpdateCustomerRequest,
    token_admin_service_client::TokenAdminServiceClient,
};
use tonic::{Code, transport::Channel};

use crate::helpers::{
    TestApp, assert_invalid, assert_refused, eventually, free_addr, new_provider, spawn_app,
    spawn_app_with, spawn_conversation_service, temp_db_path, test_database,
};

const WAIT: Duration = Duration::from_secs(15);

fn admin(app: &TestApp) -> TokenAdminServiceClient<Channel> {
    TokenAdminServiceClient::new(app.channel.clone())
}

async fn failed_calls(app: &TestApp) -> Vec<FailedCall> {
    admin(app)
        .list_failed_calls(ListFailedCallsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .failed_calls
}

/// A session whose queued UpdateCustomer conversation-service refuses for good: while it
/// was down, the conversation was linked to another customer behind token-service's back.
#[tokio::test]
async fn a_refused_call_is_listed_retried_and_dropped() {
    let database = test_database().await;
    let listen = free_addr().to_string();
    let conv = spawn_conversation_service(database.url(), &listen).await;
    let app = spawn_app_with(temp_db_path(), &conv.url, &[]).await;
    let prov = new_provider();
    let issued = app.issue(&prov, 1).await;
    let redeemed = app.redeem(&prov, &issued.secret).await.unwrap();
    let conversation_id = redeemed.session.unwrap().conversation_id;
    assert!(!conversation_id.is_empty());
    conv.client
        .clone()
        .update_customer(UpdateCustomerRequest {
            conversation_id,
            customer_id: Some("someone-else".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    conv.stop().await;
    // Queued while conversation-service is down, refused once it is back.
    app.tokens
        .clone()
        .identify_session(IdentifySessionRequest {
            session_secret: redeemed.session_secret,
            customer_id: "cust-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let conv = spawn_conversation_service(database.url(), &listen).await;

    let failed = eventually(WAIT, || async {
        let calls = failed_calls(&app).await;
        (!calls.is_empty()).then_some(calls)
    })
    .await;
    assert_eq!(failed.len(), 1);
    let call = &failed[0];
    assert_eq!(call.kind(), CallKind::UpdateCustomer);
    assert!(call.last_error.contains("FAILED_PRECONDITION"), "{call:?}");
    assert_eq!(call.error_reason, "CUSTOMER_ALREADY_LINKED");
    let first_failure = call.fail_time.unwrap();

    // Retried: the worker makes it again at once; refused again, it is listed again.
    admin(&app)
        .retry_failed_call(RetryFailedCallRequest {
            call_id: call.call_id,
        })
        .await
        .unwrap();
    let again = eventually(WAIT, || async {
        let calls = failed_calls(&app).await;
        calls
            .into_iter()
            .find(|c| c.fail_time.is_some_and(|t| t != first_failure))
    })
    .await;
    assert_eq!(again.call_id, call.call_id);
    assert_eq!(again.attempts, 1, "retry starts a fresh attempt count");

    admin(&app)
        .drop_failed_call(DropFailedCallRequest {
            call_id: call.call_id,
        })
        .await
        .unwrap();
    assert!(failed_calls(&app).await.is_empty());
    assert!(!app.db_dump().contains("update_customer"));

    // Gone: neither can be done twice.
    let id = call.call_id;
    assert_refused(
        admin(&app)
            .drop_failed_call(DropFailedCallRequest { call_id: id })
            .await,
        Code::NotFound,
        "FAILED_CALL_NOT_FOUND",
    );
    assert_refused(
        admin(&app)
            .retry_failed_call(RetryFailedCallRequest { call_id: id })
            .await,
        Code::NotFound,
        "FAILED_CALL_NOT_FOUND",
    );
    app.stop().await;
    conv.stop().await;
}

/// A call still queued (not refused for good) is not the admin service's to drop.
#[tokio::test]
async fn queued_calls_are_neither_listed_nor_droppable() {
    let app = spawn_app().await; // conversation-service unreachable: calls stay queued
    let issued = app.issue("p1", 1).await;
    app.redeem("p1", &issued.secret).await.unwrap();
    assert!(failed_calls(&app).await.is_empty());
    let before = app.db_dump();
    assert!(before.contains("create_conversation"));
    assert_refused(
        admin(&app)
            .drop_failed_call(DropFailedCallRequest { call_id: 1 })
            .await,
        Code::NotFound,
        "FAILED_CALL_NOT_FOUND",
    );
    assert_invalid(
        admin(&app)
            .retry_failed_call(RetryFailedCallRequest { call_id: 0 })
            .await,
        "call_id",
    );
    assert_invalid(
        admin(&app)
            .list_failed_calls(ListFailedCallsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        "page_token",
    );
    assert_eq!(app.db_dump(), before);
    app.stop().await;
}

#[tokio::test]
async fn an_online_backup_is_a_complete_database_and_never_overwrites() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.issue("p1", 1).await;
    }
    let backup_dir = app.db_path.parent().unwrap().join("backups");
    let reply = admin(&app)
        .backup_database(BackupDatabaseRequest {
            file_name: "nightly.db".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let path = std::path::PathBuf::from(&reply.path);
    assert_eq!(path, backup_dir.join("nightly.db"));
    assert_eq!(
        i64::try_from(std::fs::metadata(&path).unwrap().len()).unwrap(),
        reply.size_bytes
    );
    let copy =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tokens: i64 = copy
        .query_row("SELECT count(*) FROM chat_tokens", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tokens, 3);
    drop(copy);

    // The service goes on writing; the copy is a snapshot.
    app.issue("p1", 1).await;
    assert_refused(
        admin(&app)
            .backup_database(BackupDatabaseRequest {
                file_name: "nightly.db".into(),
            })
            .await,
        Code::AlreadyExists,
        "BACKUP_EXISTS",
    );
    for bad in ["../escape.db", "sub/dir.db", ".hidden"] {
        assert_invalid(
            admin(&app)
                .backup_database(BackupDatabaseRequest {
                    file_name: bad.into(),
                })
                .await,
            "file_name",
        );
    }
    assert!(!app.db_path.parent().unwrap().join("escape.db").exists());

    let named = admin(&app)
        .backup_database(BackupDatabaseRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(named.path.contains("/backups/token-"), "{}", named.path);
    let mut entries: Vec<_> = std::fs::read_dir(&backup_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 2, "no .partial file is left: {entries:?}");
    app.stop().await;
}

#[tokio::test]
async fn backups_go_to_the_configured_directory() {
    let dir = std::env::temp_dir().join(format!("token-backups-{}", uuid::Uuid::new_v4()));
    let app = spawn_app_with(
        temp_db_path(),
        crate::helpers::NOWHERE,
        &["--backup-dir", dir.to_str().unwrap()],
    )
    .await;
    let reply = admin(&app)
        .backup_database(BackupDatabaseRequest {
            file_name: "a.db".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(std::path::PathBuf::from(reply.path), dir.join("a.db"));
    app.stop().await;
}

/// With the example callers file over mutual TLS: the admin may use the admin service,
/// the read-only operator may not take a backup (it is granted apart from TokenService).
#[tokio::test]
async fn the_admin_service_is_granted_apart() {
    use chat_common::testing::{Pki, example_callers_file};
    use clap::Parser;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    let pki = Pki::new("token-admin");
    let server = pki.server("token");
    let callers = example_callers_file();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let mut args = crate::helpers::test_args(&temp_db_path(), crate::helpers::NOWHERE);
    args.extend([
        "--tls-cert".into(),
        path(&server.cert),
        "--tls-key".into(),
        path(&server.key),
        "--tls-client-ca".into(),
        path(&pki.ca()),
        "--callers-file".into(),
        path(&callers),
    ]);
    let app = token_service::startup::Application::build(
        token_service::config::Config::try_parse_from(args).unwrap(),
    )
    .await
    .unwrap();
    let addr = app.local_addr();
    let _stop = app.shutdown_token().drop_guard();
    tokio::spawn(app.run());
    let client = |workload: &str| {
        let pair = pki.client(workload);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(pki.ca()).unwrap()))
            .domain_name("localhost")
            .identity(Identity::from_pem(
                std::fs::read(&pair.cert).unwrap(),
                std::fs::read(&pair.key).unwrap(),
            ));
        let channel = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy();
        TokenAdminServiceClient::new(channel)
    };

    let mut admin_client = client("admin");
    let listed = eventually(WAIT, || {
        let mut admin_client = admin_client.clone();
        async move {
            admin_client
                .list_failed_calls(ListFailedCallsRequest::default())
                .await
                .ok()
        }
    })
    .await;
    assert!(listed.into_inner().failed_calls.is_empty());
    admin_client
        .backup_database(BackupDatabaseRequest::default())
        .await
        .unwrap();

    assert_refused(
        client("operator")
            .backup_database(BackupDatabaseRequest::default())
            .await,
        Code::PermissionDenied,
        "METHOD_NOT_GRANTED",
    );
}
