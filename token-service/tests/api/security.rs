//! Trust, token-service side: its client to conversation-service over mutual TLS (or a
//! bearer token), refusal to talk plaintext to an https:// URL, per-method grants on
//! TokenService, and certificate rotation on SIGHUP. Certificates are made by rcgen.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use chat_common::testing::{EXAMPLE_BFF_TOKEN, Pair, Pki, example_callers_file, tls_channel};
use chat_proto::v1::{
    ConversationState, ListTokensRequest, Participant, RedeemTokenRequest, SendMessageRequest,
    conversation_service_client::ConversationServiceClient,
    token_service_client::TokenServiceClient,
};
use clap::Parser;
use sha2::{Digest, Sha256};
use token_service::{config::Config, startup::Application};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;

use chat_common::testing::database::TestDatabase;

use crate::helpers::{
    assert_refused, eventually, free_addr, new_provider, temp_db_path, test_args, test_database,
};

const WAIT: Duration = Duration::from_secs(10);

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// token-service with a server certificate from `pki`, client certificates required
/// (mutual TLS) and the example callers file; conversation-service unreachable.
async fn token_service_over_mutual_tls(pki: &Pki) -> (SocketAddr, CancellationToken) {
    let server = pki.server("token");
    let callers = example_callers_file();
    token_service(
        "http://127.0.0.1:9",
        &[
            "--tls-cert",
            path(&server.cert),
            "--tls-key",
            path(&server.key),
            "--tls-client-ca",
            path(&pki.ca()),
            "--callers-file",
            path(&callers),
        ],
    )
    .await
}

/// Health of `service` over `channel` is SERVING.
async fn wait_serving(channel: &Channel, service: &str) {
    let health = HealthClient::new(channel.clone());
    eventually(WAIT, || {
        let mut health = health.clone();
        let service = service.to_owned();
        async move {
            let reply = health.check(HealthCheckRequest { service }).await.ok()?;
            (reply.get_ref().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
                .then_some(())
        }
    })
    .await;
}

/// A conversation-service started by [`conversation_service`]: stopped, then its
/// database dropped, when this drops.
struct Running {
    _stop: tokio_util::sync::DropGuard,
    _database: TestDatabase,
}

/// conversation-service in-process with `flags`; stopped when the guard drops.
async fn conversation_service(flags: &[&str]) -> (SocketAddr, Running) {
    let database = test_database().await;
    let mut args = vec![
        "conversation-service",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database.url(),
        "--shutdown-grace",
        "1s",
    ];
    args.extend_from_slice(flags);
    let config = conversation_service::config::Config::try_parse_from(args).unwrap();
    let app = conversation_service::startup::Application::build(config)
        .await
        .unwrap();
    let addr = app.local_addr();
    let guard = app.shutdown_token().drop_guard();
    tokio::spawn(app.run_until_stopped());
    (
        addr,
        Running {
            _stop: guard,
            _database: database,
        },
    )
}

/// token-service in-process with the usual test flags plus `extra`.
async fn token_service(conversation_url: &str, extra: &[&str]) -> (SocketAddr, CancellationToken) {
    let mut args = test_args(&temp_db_path(), conversation_url);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let app = Application::build(Config::try_parse_from(args).unwrap())
        .await
        .unwrap();
    let addr = app.local_addr();
    let shutdown = app.shutdown_token();
    tokio::spawn(app.run());
    (addr, shutdown)
}

#[tokio::test]
async fn a_link_is_redeemed_over_mutual_tls_and_binds_the_visitor_to_its_session() {
    let pki = Pki::new("e2e");
    let callers = example_callers_file();
    let (conversation_server, token_server) = (pki.server("conversation"), pki.server("token"));
    let mtls = |server: &Pair| {
        [
            "--tls-cert".to_owned(),
            path(&server.cert).to_owned(),
            "--tls-key".to_owned(),
            path(&server.key).to_owned(),
            "--tls-client-ca".to_owned(),
            path(&pki.ca()).to_owned(),
            "--callers-file".to_owned(),
            path(&callers).to_owned(),
        ]
    };
    let conversation_flags = mtls(&conversation_server);
    let flags: Vec<&str> = conversation_flags.iter().map(String::as_str).collect();
    let (conversation_addr, _conversation) = conversation_service(&flags).await;

    let client_identity = pki.client("token-service");
    let mut token_flags = mtls(&token_server).to_vec();
    token_flags.extend(
        [
            "--conversation-service-ca",
            path(&pki.ca()),
            "--conversation-service-client-cert",
            path(&client_identity.cert),
            "--conversation-service-client-key",
            path(&client_identity.key),
        ]
        .map(str::to_owned),
    );
    let flags: Vec<&str> = token_flags.iter().map(String::as_str).collect();
    let url = format!("https://localhost:{}", conversation_addr.port());
    let (token_addr, shutdown) = token_service(&url, &flags).await;
    let _stop = shutdown.drop_guard();

    let bff = pki.client("bff");
    let channel = tls_channel(token_addr, &pki.ca(), Some(&bff));
    // token-service sees conversation-service through its TLS client.
    wait_serving(&channel, "chat.v1.ConversationService").await;
    let mut tokens = TokenServiceClient::new(channel);
    let provider_id = new_provider();
    let issued = tokens
        .issue_token(chat_proto::v1::IssueTokenRequest {
            provider_id: provider_id.clone(),
            label: "mtls".into(),
            ttl: None,
            max_uses: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let redeemed = tokens
        .redeem_token(RedeemTokenRequest {
            request_id: Uuid::new_v4().to_string(),
            provider_id: provider_id.clone(),
            secret: issued.secret,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let session = redeemed.session.unwrap();
    assert_eq!(
        session.conversation_state,
        ConversationState::Ready as i32,
        "created inline over mTLS"
    );

    // The BFF posts for the anonymous visitor with the session it checked; a
    // conversation id alone (another session) is refused.
    let mut conversations =
        ConversationServiceClient::new(tls_channel(conversation_addr, &pki.ca(), Some(&bff)));
    let send = |who| SendMessageRequest {
        conversation_id: session.conversation_id.clone(),
        sender: who,
        body: "hello".into(),
        client_message_id: String::new(),
        attachments: Vec::new(),
    };
    conversations
        .send_message(send(Some(Participant::anonymous(&session.session_id))))
        .await
        .unwrap();
    let refused = conversations
        .send_message(send(Some(Participant::anonymous(
            Uuid::new_v4().to_string(),
        ))))
        .await;
    assert_refused(refused, Code::PermissionDenied, "SESSION_MISMATCH");

    // The BFF's own certificate does not let it create conversations itself.
    let denied = conversations
        .create_conversation(chat_proto::v1::CreateConversationRequest {
            provider_id,
            ..Default::default()
        })
        .await;
    assert_refused(denied, Code::PermissionDenied, "METHOD_NOT_GRANTED");
}

#[tokio::test]
async fn the_client_sends_its_bearer_token_when_a_mesh_terminates_tls() {
    // A callers file granting CreateConversation to a token only.
    let pki = Pki::new("bearer-client");
    let token = "token-service-mesh-token";
    let hash = hex::encode(Sha256::digest(token));
    let callers = pki.dir.join("callers.toml");
    std::fs::write(
        &callers,
        format!(
            "[[caller]]\nname = \"token-service\"\ntoken_sha256 = [\"{hash}\"]\n\
             methods = [\"/chat.v1.ConversationService/CreateConversation\"]\n"
        ),
    )
    .unwrap();
    let (conversation_addr, _conversation) =
        conversation_service(&["--callers-file", path(&callers)]).await;
    let token_file = pki.dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let url = format!("http://{conversation_addr}");

    for (file, ready) in [(None, false), (Some(&token_file), true)] {
        let mut extra = vec![];
        if let Some(file) = file {
            extra.extend(["--conversation-service-token-file", path(file)]);
        }
        let (addr, shutdown) = token_service(&url, &extra).await;
        let _stop = shutdown.drop_guard();
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        wait_serving(&channel, "").await;
        let mut tokens = TokenServiceClient::new(channel);
        let provider_id = new_provider();
        let issued = tokens
            .issue_token(chat_proto::v1::IssueTokenRequest {
                provider_id: provider_id.clone(),
                label: "mesh".into(),
                ttl: None,
                max_uses: 1,
            })
            .await
            .unwrap()
            .into_inner();
        let redeemed = tokens
            .redeem_token(RedeemTokenRequest {
                request_id: Uuid::new_v4().to_string(),
                provider_id,
                secret: issued.secret,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let state = redeemed.session.unwrap().conversation_state;
        let expected = if ready {
            ConversationState::Ready
        } else {
            // Without the token conversation-service refuses (UNAUTHENTICATED) and the
            // call stays queued.
            ConversationState::Pending
        };
        assert_eq!(state, expected as i32, "token file: {file:?}");
    }
}

#[tokio::test]
async fn an_https_url_needs_a_ca_and_tls_settings_need_https() {
    let pki = Pki::new("client-config");
    let db = temp_db_path();
    let build = |url: &str, extra: &[&str]| {
        let mut args = test_args(&db, url);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Config::try_parse_from(args).unwrap()
    };
    let error = Application::build(build("https://127.0.0.1:50051", &[]))
        .await
        .err()
        .expect("https without a CA must not start");
    assert!(
        error.to_string().contains("CONVERSATION_SERVICE_CA"),
        "{error}"
    );
    let ca = pki.ca();
    let error = Application::build(build(
        "http://127.0.0.1:50051",
        &["--conversation-service-ca", path(&ca)],
    ))
    .await
    .err()
    .expect("TLS settings with http:// must not start");
    assert!(error.to_string().contains("not https"), "{error}");
    // A callers file that does not parse stops the start too.
    let bad = pki.dir.join("bad.toml");
    std::fs::write(&bad, "[[caller]]\nname = \"x\"\n").unwrap();
    assert!(
        Application::build(build(
            "http://127.0.0.1:50051",
            &["--callers-file", path(&bad)]
        ))
        .await
        .is_err()
    );
}

#[tokio::test]
async fn token_service_grants_are_per_method() {
    let pki = Pki::new("token-grants");
    let server = pki.server("token");
    let callers = example_callers_file();
    let (addr, shutdown) = token_service(
        "http://127.0.0.1:9",
        &[
            "--tls-cert",
            path(&server.cert),
            "--tls-key",
            path(&server.key),
            "--callers-file",
            path(&callers),
        ],
    )
    .await;
    let _stop = shutdown.drop_guard();
    let channel = tls_channel(addr, &pki.ca(), None);
    wait_serving(&channel, "chat.v1.TokenService").await;
    let mut tokens = TokenServiceClient::new(channel);
    let provider_id = new_provider();
    let issue = || chat_proto::v1::IssueTokenRequest {
        provider_id: provider_id.clone(),
        label: "grants".into(),
        ttl: None,
        max_uses: 1,
    };

    assert_refused(
        tokens.issue_token(issue()).await,
        Code::Unauthenticated,
        "CREDENTIALS_REQUIRED",
    );
    assert_refused(
        tokens.issue_token(bearer(issue(), "guess")).await,
        Code::Unauthenticated,
        "UNKNOWN_TOKEN",
    );
    tokens
        .issue_token(bearer(issue(), EXAMPLE_BFF_TOKEN))
        .await
        .unwrap();
    let list = || ListTokensRequest {
        provider_id: provider_id.clone(),
        ..Default::default()
    };
    let listed = tokens
        .list_tokens(bearer(list(), EXAMPLE_BFF_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
}

#[tokio::test]
async fn operators_read_tokens_and_nothing_else_over_mutual_tls() {
    let pki = Pki::new("token-operator");
    let (addr, shutdown) = token_service_over_mutual_tls(&pki).await;
    let _stop = shutdown.drop_guard();
    let operator = pki.client("operator");
    let channel = tls_channel(addr, &pki.ca(), Some(&operator));
    wait_serving(&channel, "chat.v1.TokenService").await;
    let mut tokens = TokenServiceClient::new(channel);
    let provider_id = new_provider();
    tokens
        .list_tokens(ListTokensRequest {
            provider_id: provider_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_refused(
        tokens
            .issue_token(chat_proto::v1::IssueTokenRequest {
                provider_id,
                label: "nope".into(),
                ttl: None,
                max_uses: 1,
            })
            .await,
        Code::PermissionDenied,
        "METHOD_NOT_GRANTED",
    );
}

/// EraseCustomer / ExportCustomer belong to the privacy officer alone; the audit trail
/// names it, and refusals by the callers file write no record.
#[tokio::test]
async fn only_privacy_officers_erase_or_export_and_the_audit_trail_names_them() {
    use chat_proto::v1::{
        EraseCustomerRequest, ExportCustomerRequest, ListAuditRecordsRequest,
        audit_service_client::AuditServiceClient, privacy_service_client::PrivacyServiceClient,
    };
    let pki = Pki::new("token-privacy");
    let (addr, shutdown) = token_service_over_mutual_tls(&pki).await;
    let _stop = shutdown.drop_guard();
    let as_caller = |workload: &str| tls_channel(addr, &pki.ca(), Some(&pki.client(workload)));
    let officer = as_caller("privacy-officer");
    wait_serving(&officer, "chat.v1.TokenService").await;
    let erase = || EraseCustomerRequest {
        request_id: Uuid::new_v4().to_string(),
        customer_id: "cust-privacy".into(),
    };
    let export = || ExportCustomerRequest {
        customer_id: "cust-privacy".into(),
    };

    for workload in ["bff", "operator", "admin"] {
        let mut privacy = PrivacyServiceClient::new(as_caller(workload));
        assert_refused(
            privacy.erase_customer(erase()).await,
            Code::PermissionDenied,
            "METHOD_NOT_GRANTED",
        );
        assert_refused(
            privacy.export_customer(export()).await,
            Code::PermissionDenied,
            "METHOD_NOT_GRANTED",
        );
    }
    for workload in ["bff", "operator"] {
        assert_refused(
            AuditServiceClient::new(as_caller(workload))
                .list_audit_records(ListAuditRecordsRequest::default())
                .await,
            Code::PermissionDenied,
            "METHOD_NOT_GRANTED",
        );
    }

    PrivacyServiceClient::new(officer.clone())
        .erase_customer(erase())
        .await
        .unwrap();
    let records = AuditServiceClient::new(as_caller("admin"))
        .list_audit_records(ListAuditRecordsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .audit_records;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (
            records[0].caller.as_str(),
            records[0].method.as_str(),
            records[0].target.as_str()
        ),
        (
            "privacy-officer",
            "/chat.v1.PrivacyService/EraseCustomer",
            "cust-privacy"
        )
    );
}

#[tokio::test]
async fn callers_file_reloads_are_audited_whether_they_load_or_not() {
    use chat_proto::v1::{ListAuditRecordsRequest, audit_service_client::AuditServiceClient};
    let dir = std::env::temp_dir().join(format!("callers-audit-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let callers = dir.join("callers.toml");
    let open = "allow_no_callers = true\n[open]\nmethods = [\"/grpc.health.v1.Health/*\", \"/chat.v1.AuditService/*\"]\n";
    std::fs::write(&callers, open).unwrap();
    let (addr, shutdown) = token_service(
        "http://127.0.0.1:9",
        &[
            "--callers-file",
            path(&callers),
            "--tls-reload-interval",
            "50ms",
        ],
    )
    .await;
    let _stop = shutdown.drop_guard();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    wait_serving(&channel, "chat.v1.TokenService").await;
    let audit = AuditServiceClient::new(channel);
    let reloads = || {
        let mut audit = audit.clone();
        async move {
            let records = audit
                .list_audit_records(ListAuditRecordsRequest::default())
                .await
                .ok()?
                .into_inner()
                .audit_records;
            Some(
                records
                    .into_iter()
                    .filter(|r| r.method == "callers-file-reload")
                    .map(|r| (r.caller, r.result, r.reason))
                    .collect::<Vec<_>>(),
            )
        }
    };

    // A file changed on disk is noticed by its modification time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&callers, format!("{open}# edited\n")).unwrap();
    let loaded = eventually(WAIT, || async { reloads().await.filter(|r| !r.is_empty()) }).await;
    assert_eq!(
        loaded[0],
        ("token-service".to_owned(), "OK".to_owned(), String::new())
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&callers, "[open\nbroken").unwrap();
    let failed = eventually(WAIT, || async { reloads().await.filter(|r| r.len() >= 2) }).await;
    assert_eq!(
        (failed[0].1.as_str(), failed[0].2.as_str()),
        ("FAILED_PRECONDITION", "CALLERS_FILE_INVALID")
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_connections() {
    let old_ca = Pki::new("sighup-old");
    let new_ca = Pki::new("sighup-new");
    let live = old_ca.server("live");
    let listen = free_addr().to_string();
    let db = temp_db_path();
    let mut args = test_args(&db, "http://127.0.0.1:9");
    let at = args.iter().position(|a| a == "--listen").unwrap();
    args[at + 1].clone_from(&listen);
    args.extend(
        [
            "--tls-cert",
            path(&live.cert),
            "--tls-key",
            path(&live.key),
            // Only the signal can reload within this test.
            "--tls-reload-interval",
            "3600s",
        ]
        .map(str::to_owned),
    );
    let process = Process(
        Command::new(env!("CARGO_BIN_EXE_token-service"))
            .args(&args[1..])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = listen.parse().unwrap();
    wait_serving(&tls_channel(addr, &old_ca.ca(), None), "").await;

    let next = new_ca.server("next");
    std::fs::copy(&next.key, &live.key).unwrap();
    std::fs::copy(&next.cert, &live.cert).unwrap();
    let check = |ca: &Path| {
        let mut health = HealthClient::new(tls_channel(addr, ca, None));
        async move { health.check(HealthCheckRequest::default()).await }
    };
    // Not reloaded yet: the files changed, but only the signal reloads here.
    check(&old_ca.ca()).await.unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually(WAIT, || {
        let check = check(&new_ca.ca());
        async move { check.await.ok() }
    })
    .await;
    assert!(check(&old_ca.ca()).await.is_err());
}

#[tokio::test]
async fn the_client_certificate_rotates_without_a_restart() {
    let pki = Pki::new("client-rotation");
    let foreign = Pki::new("client-rotation-foreign");
    let server = pki.server("conversation");
    let callers = example_callers_file();
    let (conversation_addr, _conversation) = conversation_service(&[
        "--tls-cert",
        path(&server.cert),
        "--tls-key",
        path(&server.key),
        "--tls-client-ca",
        path(&pki.ca()),
        "--callers-file",
        path(&callers),
    ])
    .await;
    // token-service starts with a certificate conversation-service does not trust.
    let live = foreign.client("token-service");
    let url = format!("https://localhost:{}", conversation_addr.port());
    let (addr, shutdown) = token_service(
        &url,
        &[
            "--conversation-service-ca",
            path(&pki.ca()),
            "--conversation-service-client-cert",
            path(&live.cert),
            "--conversation-service-client-key",
            path(&live.key),
            "--tls-reload-interval",
            "50ms",
        ],
    )
    .await;
    let _stop = shutdown.drop_guard();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    wait_serving(&channel, "").await;
    let mut tokens = TokenServiceClient::new(channel);
    let provider_id = new_provider();
    let issued = tokens
        .issue_token(chat_proto::v1::IssueTokenRequest {
            provider_id: provider_id.clone(),
            label: "rotation".into(),
            ttl: None,
            max_uses: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let redeemed = tokens
        .redeem_token(RedeemTokenRequest {
            request_id: Uuid::new_v4().to_string(),
            provider_id,
            secret: issued.secret,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        redeemed.session.unwrap().conversation_state,
        ConversationState::Pending as i32,
        "the untrusted certificate is refused"
    );

    // The certificate is replaced in place; the queued call goes through with it.
    let trusted = pki.client("token-service");
    std::fs::copy(&trusted.key, &live.key).unwrap();
    std::fs::copy(&trusted.cert, &live.cert).unwrap();
    let secret = redeemed.session_secret;
    eventually(WAIT, || {
        let mut tokens = tokens.clone();
        let secret = secret.clone();
        async move {
            let session = tokens
                .get_session(chat_proto::v1::GetSessionRequest {
                    session_secret: secret,
                })
                .await
                .ok()?
                .into_inner()
                .session?;
            (session.conversation_state == ConversationState::Ready as i32).then_some(())
        }
    })
    .await;
}
