//! Trust: TLS only when configured, mutual TLS, bearer tokens, per-method grants from
//! the example callers file, certificate rotation, and the anonymous visitor bound to
//! the session that opened its conversation. Certificates are made at test time (rcgen).

use std::{net::SocketAddr, path::Path, time::Duration};

use chat_common::testing::{EXAMPLE_BFF_TOKEN, Pki, example_callers_file, tls_channel};
use chat_proto::v1::{self, Participant};
use clap::Parser;
use conversation_service::{config::Config, startup::Application};
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;

use crate::helpers::{
    Client, SESSION, TestDatabase, connect, create, customer, fresh_database, provider, reason,
    send, spawn_app, spawn_app_with,
};

struct SecureApp {
    addr: SocketAddr,
    _shutdown: tokio_util::sync::DropGuard,
    _database: TestDatabase,
}

/// conversation-service on a fresh database with extra (security) flags; not waited for.
async fn spawn_secure(flags: &[&str]) -> SecureApp {
    let database = fresh_database().await;
    let database_url = database.url().to_owned();
    let mut args = vec![
        "conversation-service",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &database_url,
    ];
    args.extend_from_slice(flags);
    let app = Application::build(Config::try_parse_from(args).unwrap())
        .await
        .unwrap();
    let addr = app.local_addr();
    let shutdown = app.shutdown_token().drop_guard();
    tokio::spawn(app.run_until_stopped());
    SecureApp {
        addr,
        _shutdown: shutdown,
        _database: database,
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Waits until health over `channel` says SERVING.
async fn wait_serving(channel: Channel) {
    let mut health = HealthClient::new(channel);
    for _ in 0..200 {
        let reply = health
            .check(HealthCheckRequest {
                service: "chat.v1.ConversationService".into(),
            })
            .await;
        if reply.is_ok_and(|r| r.into_inner().status == 1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never SERVING");
}

fn list_request(provider_id: &str) -> v1::ListConversationsRequest {
    v1::ListConversationsRequest {
        participant: provider(provider_id),
        ..Default::default()
    }
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A connection the server refused at the TLS layer fails, whatever tonic calls it.
#[track_caller]
fn assert_transport_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>) {
    let status = result.expect_err("the connection should have been refused");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown),
        "{status:?}"
    );
}

#[tokio::test]
async fn with_tls_configured_plaintext_clients_are_refused() {
    let pki = Pki::new("tls-only");
    let server = pki.server("server");
    let app = spawn_secure(&[
        "--tls-cert",
        path(&server.cert),
        "--tls-key",
        path(&server.key),
    ])
    .await;
    let tls = tls_channel(app.addr, &pki.ca(), None);
    wait_serving(tls.clone()).await;
    v1::conversation_service_client::ConversationServiceClient::new(tls)
        .list_conversations(list_request("p1"))
        .await
        .unwrap();

    let mut plaintext = connect(app.addr).await;
    assert_transport_refused(plaintext.list_conversations(list_request("p1")).await);
    let mut health = HealthClient::new(
        Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect_lazy(),
    );
    assert_transport_refused(health.check(HealthCheckRequest::default()).await);
}

#[tokio::test]
async fn mutual_tls_accepts_known_certificates_and_refuses_none_or_a_foreign_ca() {
    let pki = Pki::new("mtls");
    let server = pki.server("server");
    let bff = pki.client("bff");
    let app = spawn_secure(&[
        "--tls-cert",
        path(&server.cert),
        "--tls-key",
        path(&server.key),
        "--tls-client-ca",
        path(&pki.ca()),
        "--callers-file",
        path(&example_callers_file()),
    ])
    .await;
    let channel = tls_channel(app.addr, &pki.ca(), Some(&bff));
    wait_serving(channel.clone()).await;
    let mut client = Client::new(channel);
    let provider_id = format!("prov-{}", Uuid::new_v4().simple());
    client
        .list_conversations(list_request(&provider_id))
        .await
        .unwrap();

    // No certificate: the handshake fails, health included.
    let mut anonymous = Client::new(tls_channel(app.addr, &pki.ca(), None));
    assert_transport_refused(anonymous.list_conversations(list_request("p1")).await);
    let mut health = HealthClient::new(tls_channel(app.addr, &pki.ca(), None));
    assert_transport_refused(health.check(HealthCheckRequest::default()).await);

    // The same SPIFFE id, signed by another CA.
    let rogue_pki = Pki::new("rogue");
    let rogue = rogue_pki.client("bff");
    let mut rogue = Client::new(tls_channel(app.addr, &pki.ca(), Some(&rogue)));
    assert_transport_refused(rogue.list_conversations(list_request("p1")).await);
}

#[tokio::test]
async fn grants_are_per_method_and_unknown_certificates_are_unauthenticated() {
    let pki = Pki::new("grants");
    let server = pki.server("server");
    let app = spawn_secure(&[
        "--tls-cert",
        path(&server.cert),
        "--tls-key",
        path(&server.key),
        "--tls-client-ca",
        path(&pki.ca()),
        "--callers-file",
        path(&example_callers_file()),
    ])
    .await;
    let as_ = |workload: &str| {
        let pair = pki.client(workload);
        Client::new(tls_channel(app.addr, &pki.ca(), Some(&pair)))
    };
    let mut token_service = as_("token-service");
    wait_serving(tls_channel(
        app.addr,
        &pki.ca(),
        Some(&pki.client("operator")),
    ))
    .await;
    let provider_id = format!("prov-{}", Uuid::new_v4().simple());
    let conversation = create(&mut token_service, &provider_id).await;

    // token-service may create, read and link; it may not post.
    let denied = send(
        &mut token_service,
        &conversation.conversation_id,
        provider(&provider_id),
        "hi",
    )
    .await
    .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(reason(&denied), "METHOD_NOT_GRANTED");
    use tonic_types::StatusExt;
    let info = denied.get_details_error_info().unwrap();
    assert_eq!(info.metadata["caller"], "token-service");
    assert_eq!(
        info.metadata["method"],
        "/chat.v1.ConversationService/SendMessage"
    );

    // The operator reads, and nothing else.
    let mut operator = as_("operator");
    let listed = operator
        .list_conversations(list_request(&provider_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.conversations.len(), 1);
    let status = operator
        .set_conversation_status(v1::SetConversationStatusRequest {
            conversation_id: conversation.conversation_id.clone(),
            status: v1::ConversationStatus::Closed.into(),
            actor: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // The BFF acts for participants.
    let mut bff = as_("bff");
    send(
        &mut bff,
        &conversation.conversation_id,
        provider(&provider_id),
        "hello",
    )
    .await
    .unwrap();
    let status = bff
        .create_conversation(v1::CreateConversationRequest {
            request_id: Uuid::new_v4().to_string(),
            provider_id: provider_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // A certificate of the right CA that names nobody in the file.
    let mut stranger = as_("stranger");
    let status = stranger
        .list_conversations(list_request(&provider_id))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "UNKNOWN_CERTIFICATE");
    // Health stays open to it (and to anyone with a certificate of the CA).
    let mut health = HealthClient::new(tls_channel(
        app.addr,
        &pki.ca(),
        Some(&pki.client("stranger2")),
    ));
    health.check(HealthCheckRequest::default()).await.unwrap();

    // Exactly one message was written: the BFF's.
    let page = operator
        .list_messages(v1::ListMessagesRequest {
            conversation_id: conversation.conversation_id,
            viewer: provider(&provider_id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 1);
}

#[tokio::test]
async fn bearer_tokens_are_matched_by_hash_and_refused_when_unknown() {
    // A mesh terminates TLS: plaintext here, the token is the credential.
    let database = fresh_database().await;
    let database_url = database.url().to_owned();
    let callers = example_callers_file();
    let app = spawn_app_with(&database_url, &["--callers-file", path(&callers)]).await;
    let mut client = app.client.clone();
    let provider_id = format!("prov-{}", Uuid::new_v4().simple());

    client
        .list_conversations(with_token(list_request(&provider_id), EXAMPLE_BFF_TOKEN))
        .await
        .unwrap();

    let wrong = client
        .list_conversations(with_token(list_request(&provider_id), "not-the-token"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(reason(&wrong), "UNKNOWN_TOKEN");

    let none = client
        .list_conversations(list_request(&provider_id))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    assert_eq!(reason(&none), "CREDENTIALS_REQUIRED");

    let mut malformed = Request::new(list_request(&provider_id));
    malformed
        .metadata_mut()
        .insert("authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
    let status = client.list_conversations(malformed).await.unwrap_err();
    assert_eq!(reason(&status), "MALFORMED_AUTHORIZATION");

    // The scheme's case does not matter; a second authorization header is refused, even
    // one with the same token (a proxy may read the other one).
    let bearer = |scheme: &str| -> tonic::metadata::MetadataValue<_> {
        format!("{scheme} {EXAMPLE_BFF_TOKEN}").parse().unwrap()
    };
    let mut upper = Request::new(list_request(&provider_id));
    upper
        .metadata_mut()
        .insert("authorization", bearer("BEARER"));
    client.list_conversations(upper).await.unwrap();
    let mut twice = Request::new(list_request(&provider_id));
    twice
        .metadata_mut()
        .insert("authorization", bearer("Bearer"));
    twice
        .metadata_mut()
        .append("authorization", bearer("Bearer"));
    let status = client.list_conversations(twice).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "DUPLICATE_AUTHORIZATION");

    // The mesh BFF acts for participants but does not create conversations.
    let status = client
        .create_conversation(with_token(
            v1::CreateConversationRequest {
                request_id: Uuid::new_v4().to_string(),
                provider_id: provider_id.clone(),
                ..Default::default()
            },
            EXAMPLE_BFF_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "METHOD_NOT_GRANTED");
    assert_eq!(
        app.count("SELECT count(*) FROM conversations").await,
        0,
        "nothing written"
    );
}

#[tokio::test]
async fn certificates_rotate_without_a_restart() {
    let old_ca = Pki::new("rotation-old");
    let new_ca = Pki::new("rotation-new");
    let live = old_ca.server("live");
    let app = spawn_secure(&[
        "--tls-cert",
        path(&live.cert),
        "--tls-key",
        path(&live.key),
        "--tls-reload-interval",
        "50ms",
    ])
    .await;
    wait_serving(tls_channel(app.addr, &old_ca.ca(), None)).await;
    let check = |ca: &Path| {
        let mut health = HealthClient::new(tls_channel(app.addr, ca, None));
        async move { health.check(HealthCheckRequest::default()).await }
    };
    assert_transport_refused(check(&new_ca.ca()).await);

    // A half-written file is not taken: the old certificate keeps serving.
    std::fs::write(&live.cert, b"-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    check(&old_ca.ca()).await.unwrap();

    // Replace both files with a certificate of another CA, in place.
    let next = new_ca.server("next");
    std::fs::copy(&next.key, &live.key).unwrap();
    std::fs::copy(&next.cert, &live.cert).unwrap();
    let mut rotated = false;
    for _ in 0..100 {
        if check(&new_ca.ca()).await.is_ok() {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "new connections never saw the new certificate");
    assert_transport_refused(check(&old_ca.ca()).await);
}

#[tokio::test]
async fn the_anonymous_customer_must_present_the_session_that_opened_the_conversation() {
    let mut app = spawn_app().await;
    let conversation = create(&mut app.client, "p1").await;
    let id = conversation.conversation_id;
    let anonymous = |session: &str| Some(Participant::anonymous(session));
    let other = Uuid::new_v4().to_string();

    // The right session: accepted (the helpers' `customer("")` presents it).
    send(&mut app.client, &id, customer(""), "hello")
        .await
        .unwrap();

    for (who, expected) in [(anonymous(&other), "wrong"), (anonymous(""), "missing")] {
        let status = send(&mut app.client, &id, who.clone(), "intruder")
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{expected}");
        assert_eq!(reason(&status), "SESSION_MISMATCH", "{expected}");

        let read = app
            .client
            .list_messages(v1::ListMessagesRequest {
                conversation_id: id.clone(),
                viewer: who.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&read), "SESSION_MISMATCH");
        let get = app
            .client
            .get_conversation(v1::GetConversationRequest {
                conversation_id: id.clone(),
                viewer: who.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&get), "SESSION_MISMATCH");
        let stream = app
            .client
            .stream_conversation(v1::StreamConversationRequest {
                conversation_id: id.clone(),
                viewer: who.clone(),
                after_seq: 0,
                after_change: None,
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&stream), "SESSION_MISMATCH");
        let mark = app
            .client
            .mark_read(v1::MarkReadRequest {
                conversation_id: id.clone(),
                reader: who.clone(),
                seq: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&mark), "SESSION_MISMATCH");
        let typing = app
            .client
            .send_typing(v1::SendTypingRequest {
                conversation_id: id.clone(),
                sender: who.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&typing), "SESSION_MISMATCH");
        let close = app
            .client
            .set_conversation_status(v1::SetConversationStatusRequest {
                conversation_id: id.clone(),
                status: v1::ConversationStatus::Closed.into(),
                actor: who,
            })
            .await
            .unwrap_err();
        assert_eq!(reason(&close), "SESSION_MISMATCH");
    }
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM conversations WHERE status = 1 AND customer_read_seq = 1")
            .await,
        1,
        "still open, read position unmoved by the refused MarkRead"
    );

    // A conversation opened without a session has no anonymous customer at all.
    let unbound = app
        .client
        .create_conversation(v1::CreateConversationRequest {
            request_id: Uuid::new_v4().to_string(),
            provider_id: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    let status = send(
        &mut app.client,
        &unbound.conversation_id,
        anonymous(SESSION),
        "hi",
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&status), "SESSION_MISMATCH");

    // A malformed session id is bad input, not a mismatch.
    let status = send(&mut app.client, &id, anonymous("nope"), "hi")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_retry_cannot_bind_the_conversation_to_another_session() {
    let mut app = spawn_app().await;
    let request_id = Uuid::new_v4().to_string();
    let create = |session_id: &str| v1::CreateConversationRequest {
        request_id: request_id.clone(),
        provider_id: "p1".into(),
        session_id: session_id.into(),
        ..Default::default()
    };
    let first = app
        .client
        .create_conversation(create(SESSION))
        .await
        .unwrap();
    let id = first.into_inner().conversation.unwrap().conversation_id;
    // A retry with the key returns the first answer and changes nothing, whatever
    // session it names.
    let other = Uuid::new_v4().to_string();
    let again = app
        .client
        .create_conversation(create(&other))
        .await
        .unwrap();
    let again = again.into_inner();
    assert!(!again.created);
    assert_eq!(again.conversation.unwrap().conversation_id, id);
    let intruder = Some(Participant::anonymous(other));
    let status = send(&mut app.client, &id, intruder, "hi")
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "SESSION_MISMATCH");
    send(&mut app.client, &id, customer(""), "hi")
        .await
        .unwrap();
}

#[tokio::test]
async fn the_callers_file_is_reloaded_when_it_changes() {
    use sha2::{Digest, Sha256};
    let dir = Pki::new("callers-reload");
    let callers = dir.dir.join("callers.toml");
    let file_for = |token: &str| {
        let hash: String = Sha256::digest(token)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "[[caller]]\nname = \"bff\"\ntoken_sha256 = [\"{hash}\"]\n\
             methods = [\"/chat.v1.ConversationService/ListConversations\"]\n"
        )
    };
    std::fs::write(&callers, file_for("first-token")).unwrap();
    let database = fresh_database().await;
    let database_url = database.url().to_owned();
    let app = spawn_app_with(
        &database_url,
        &[
            "--callers-file",
            path(&callers),
            "--tls-reload-interval",
            "50ms",
        ],
    )
    .await;
    let mut client = app.client.clone();
    let mut list = async |token: &str| {
        client
            .list_conversations(with_token(list_request("p1"), token))
            .await
            .map(|_| ())
    };
    list("first-token").await.unwrap();

    std::fs::write(&callers, file_for("second-token")).unwrap();
    let mut reloaded = false;
    for _ in 0..100 {
        if list("second-token").await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the new token was never accepted");
    let old = list("first-token").await.unwrap_err();
    assert_eq!(reason(&old), "UNKNOWN_TOKEN");

    // A broken file is not taken: the policy in force stays.
    std::fs::write(&callers, "[[caller]]\nname = ").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    list("second-token").await.unwrap();

    // Nor one truncated in place: without `allow_no_callers = true` it would lock every
    // caller out.
    std::fs::write(&callers, "").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    list("second-token").await.unwrap();
}
