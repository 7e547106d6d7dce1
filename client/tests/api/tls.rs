//! TLS with a client certificate, and bearer tokens, from `ClientConfig`, against a
//! service that checks callers (config/callers.example.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chat_client::{Client, ClientConfig, TlsConfig};
use chat_common::testing::{EXAMPLE_BFF_TOKEN, Pair, Pki, example_callers_file};
use tonic::Code;

use crate::helpers::{Replica, database, fast, free_port, message, new_conversation, provider};

fn tls_config(pki: &Pki, url: String, identity: Option<&Pair>) -> ClientConfig {
    let mut config = fast(url);
    config.tls = Some(TlsConfig {
        ca_pem: std::fs::read(pki.ca()).unwrap(),
        client_cert_pem: identity.map(|pair| {
            (
                std::fs::read(&pair.cert).unwrap(),
                std::fs::read(&pair.key).unwrap(),
            )
        }),
        server_name: Some("localhost".into()),
    });
    config
}

#[tokio::test]
async fn mutual_tls_and_bearer_tokens_identify_the_caller() {
    let db = database().await;
    let pki = Pki::new("client-tls");
    let server = pki.server("server");
    let callers = example_callers_file().display().to_string();
    let tls_port = free_port();
    let mut secure = Replica::new(&db, tls_port)
        .with_env("TLS_CERT", server.cert.display().to_string())
        .with_env("TLS_KEY", server.key.display().to_string())
        .with_env("TLS_CLIENT_CA", pki.ca().display().to_string())
        .with_env("CALLERS_FILE", &callers);
    secure.spawn();
    let url = format!("https://127.0.0.1:{tls_port}");
    let writer = Client::connect(tls_config(
        &pki,
        url.clone(),
        Some(&pki.client("token-service")),
    ))
    .unwrap();
    crate::helpers::wait_ready(&writer).await;
    let conversation = new_conversation(&writer).await;
    let send = |body: &str| message(&conversation, provider(), body);

    // The BFF's certificate names it: it may send.
    let bff = Client::connect(tls_config(&pki, url.clone(), Some(&pki.client("bff")))).unwrap();
    assert_eq!(
        bff.send(send("over mTLS"))
            .await
            .unwrap()
            .message
            .unwrap()
            .seq,
        1
    );
    // token-service may create conversations but not send.
    let refused = writer.send(send("not granted")).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::PermissionDenied));
    assert_eq!(refused.reason(), Some("METHOD_NOT_GRANTED"));

    // Behind a mesh that terminates TLS: plaintext with a bearer token.
    let mut mesh = Replica::new(&db, free_port()).with_env("CALLERS_FILE", &callers);
    mesh.spawn();
    let mut with_token = fast(mesh.url());
    with_token.bearer_token = Some(EXAMPLE_BFF_TOKEN.into());
    let mesh_bff = Client::connect(with_token).unwrap();
    crate::helpers::wait_ready(&mesh_bff).await;
    assert_eq!(
        mesh_bff
            .send(send("with a token"))
            .await
            .unwrap()
            .message
            .unwrap()
            .seq,
        2
    );
    let anonymous = Client::connect(fast(mesh.url())).unwrap();
    let refused = anonymous.send(send("no token")).await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unauthenticated));
    assert_eq!(refused.reason(), Some("CREDENTIALS_REQUIRED"));
}
