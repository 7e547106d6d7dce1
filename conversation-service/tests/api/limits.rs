//! Limits as gRPC says: a request over the size limit is RESOURCE_EXHAUSTED with an
//! ErrorInfo; a reply never exceeds its cap, because a page stops at a byte budget too.

use std::collections::HashSet;

use chat_proto::v1;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{Client, create, new_provider, provider, reason, send, spawn_app};

#[tokio::test]
async fn a_request_over_the_size_limit_is_resource_exhausted_with_error_info() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .create_conversation(v1::CreateConversationRequest {
            request_id: Uuid::new_v4().to_string(),
            provider_id: "p".into(),
            origin: "x".repeat(100 * 1024),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "REQUEST_TOO_LARGE");
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 0);
}

/// 4,000 emoji: 16,000 bytes of UTF-8, the largest body there is.
fn big_body(i: usize) -> String {
    format!("{i} {}", "😀".repeat(3_990))
}

async fn walk_messages(client: &mut Client, id: &str, prov: &str) -> (Vec<i64>, usize) {
    let (mut seqs, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let page = client
            .list_messages(v1::ListMessagesRequest {
                conversation_id: id.into(),
                viewer: provider(prov),
                page_size: 500,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("a page of big messages fits the reply cap")
            .into_inner();
        pages += 1;
        seqs.extend(page.messages.iter().map(|m| m.seq));
        if page.next_page_token.is_empty() {
            return (seqs, pages);
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn list_messages_of_big_bodies_pages_by_bytes_and_misses_nothing() {
    let mut app = spawn_app().await;
    let prov = new_provider();
    let id = create(&mut app.client, &prov).await.conversation_id;
    // 150 x 16 KB = 2.4 MB: a single page of 500 would be far above the 1 MiB reply cap.
    for i in 0..150 {
        send(&mut app.client, &id, provider(&prov), &big_body(i))
            .await
            .unwrap();
    }
    let (seqs, pages) = walk_messages(&mut app.client, &id, &prov).await;
    assert_eq!(seqs, (1..=150).collect::<Vec<i64>>());
    assert!(pages > 1, "the byte budget split the walk");
}

#[tokio::test]
async fn list_conversations_with_big_last_messages_pages_by_bytes_and_misses_nothing() {
    let mut app = spawn_app().await;
    let prov = new_provider();
    let mut ids = HashSet::new();
    for i in 0..200 {
        let id = create(&mut app.client, &prov).await.conversation_id;
        send(&mut app.client, &id, provider(&prov), &big_body(i))
            .await
            .unwrap();
        ids.insert(id);
    }
    let (mut seen, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let page = app
            .client
            .list_conversations(v1::ListConversationsRequest {
                participant: provider(&prov),
                page_size: 200,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("a page of big conversations fits the reply cap")
            .into_inner();
        pages += 1;
        seen.extend(page.conversations.into_iter().map(|c| c.conversation_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 200, "no conversation twice");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), ids);
    assert!(pages > 1, "the byte budget split the walk");
}

#[tokio::test]
async fn a_connection_that_never_starts_http2_is_closed_after_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let database = crate::helpers::fresh_database().await;
    let database_url = database.url().to_owned();
    let mut app =
        crate::helpers::spawn_app_with(&database_url, &["--handshake-timeout", "300ms"]).await;
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut buf = Vec::new();
    // The server sends its SETTINGS, then closes (EOF or a reset) a client that says
    // nothing. The outer timeout only keeps a regression from hanging.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        silent.read_to_end(&mut buf),
    )
    .await
    .expect("the server closed the silent connection");
    let _closed_by_eof_or_reset = read;
    // A connection that did its handshake stays, idle for longer than the timeout.
    create(&mut app.client, "p").await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    create(&mut app.client, "p").await;
}

/// Local ports of this machine's established TCP connections to `port` (client side).
fn client_ports_to(port: u16) -> std::collections::HashSet<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let hex_port = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let established = fields.get(3) == Some(&"01");
            let to_port = fields.get(2).and_then(|a| hex_port(a)) == Some(port);
            (established && to_port)
                .then(|| fields.get(1).and_then(|a| hex_port(a)))
                .flatten()
        })
        .collect()
}

#[tokio::test]
async fn past_the_max_connection_age_calls_move_to_a_new_connection() {
    let database = crate::helpers::fresh_database().await;
    let database_url = database.url().to_owned();
    let mut replica =
        crate::helpers::spawn_process(&database_url, &["--max-connection-age", "500ms"]).await;
    let port = replica.addr.port();
    create(&mut replica.client, "p").await;
    let before = client_ports_to(port);
    assert!(!before.is_empty());
    // Past the age the server says GOAWAY; the client's next call opens a new connection.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    create(&mut replica.client, "p").await;
    let after = client_ports_to(port);
    assert!(
        !after.is_subset(&before),
        "a new connection after the age: {before:?} -> {after:?}"
    );
}
