//! Faults: conversation-service down in the middle of redemptions, token-service killed
//! with calls in its outbox. Afterwards every session has exactly one conversation, no
//! conversation lacks a session, nothing is duplicated.

use std::{
    collections::HashSet,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use chat_proto::v1::{
    ConversationState, Customer, GetConversationRequest, GetSessionRequest, IdentifySessionRequest,
    Session, token_service_client::TokenServiceClient,
};
use futures::future::join_all;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::helpers::{
    ConversationClient, db_dump, eventually, free_addr, list_all, new_provider, spawn_app_with,
    spawn_conversation_service, temp_db_path, test_database,
};
use chat_proto::v1::Participant;

const SETTLE: Duration = Duration::from_secs(30);

/// Waits until every session is READY; returns them.
async fn settled(tokens: &TokenServiceClient<Channel>, secrets: &[String]) -> Vec<Session> {
    eventually(SETTLE, || {
        let tokens = tokens.clone();
        let secrets = secrets.to_vec();
        async move {
            let mut sessions = Vec::new();
            for secret in secrets {
                let session = tokens
                    .clone()
                    .get_session(GetSessionRequest {
                        session_secret: secret,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .session?;
                if session.conversation_state() != ConversationState::Ready {
                    return None;
                }
                sessions.push(session);
            }
            Some(sessions)
        }
    })
    .await
}

/// One conversation per session, each existing, and the provider has no other.
async fn assert_one_conversation_each(conv: &ConversationClient, prov: &str, sessions: &[Session]) {
    let ids: HashSet<_> = sessions.iter().map(|s| s.conversation_id.clone()).collect();
    assert_eq!(
        ids.len(),
        sessions.len(),
        "two sessions share a conversation"
    );
    for session in sessions {
        let c = conv
            .clone()
            .get_conversation(GetConversationRequest {
                conversation_id: session.conversation_id.clone(),
                viewer: None,
            })
            .await
            .unwrap()
            .into_inner()
            .conversation
            .unwrap();
        assert_eq!(c.provider_id, prov);
        assert_eq!(c.origin, format!("token:{}", session.token_id));
    }
    let listed: Vec<_> = list_all(conv, Some(Participant::provider(prov)))
        .await
        .into_iter()
        .map(|c| c.conversation_id)
        .collect();
    assert_eq!(
        listed.len(),
        sessions.len(),
        "a conversation without a session, or a duplicate"
    );
    assert_eq!(listed.into_iter().collect::<HashSet<_>>(), ids);
}

#[tokio::test]
async fn redemptions_while_conversation_service_stops_succeed_and_get_one_conversation_each() {
    let database = test_database().await;
    let database_url = database.url();
    let addr = free_addr();
    let conv = spawn_conversation_service(database_url, &addr.to_string()).await;
    let url = conv.url.clone();
    let app = Arc::new(spawn_app_with(temp_db_path(), &url, &[]).await);
    let prov = new_provider();
    let link = app.issue(&prov, 0).await;

    // 100 redemptions spread over ~1 s; conversation-service stops a third of the way in.
    let redemptions = (0..100u64).map(|i| {
        let app = Arc::clone(&app);
        let (prov, secret) = (prov.clone(), link.secret.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 10)).await;
            app.redeem(&prov, &secret).await
        })
    });
    let redemptions = tokio::spawn(join_all(redemptions));
    tokio::time::sleep(Duration::from_millis(330)).await;
    conv.stop().await;
    let results = redemptions.await.unwrap();
    let mut secrets = Vec::new();
    let mut pending = 0;
    for result in results {
        // Every redemption succeeds: with its conversation, or with it queued.
        let redeemed = result.unwrap().unwrap();
        if redeemed.session.unwrap().conversation_state() == ConversationState::Pending {
            pending += 1;
        }
        secrets.push(redeemed.session_secret);
    }
    assert!(pending > 0, "conversation-service was never seen down");

    let conv = spawn_conversation_service(database_url, &addr.to_string()).await;
    let sessions = settled(&app.tokens, &secrets).await;
    assert_one_conversation_each(&conv.client, &prov, &sessions).await;
    assert!(
        !app.db_dump().contains("create_conversation"),
        "outbox not drained"
    );
    Arc::into_inner(app).unwrap().stop().await;
    conv.stop().await;
}

#[tokio::test]
async fn identify_while_the_conversation_is_pending_is_applied_after_creation() {
    let database = test_database().await;
    let database_url = database.url();
    let addr = free_addr();
    let app = spawn_app_with(temp_db_path(), &format!("http://{addr}"), &[]).await;
    let prov = new_provider();
    let link = app.issue(&prov, 0).await;
    let redeemed = app.redeem(&prov, &link.secret).await.unwrap();
    assert_eq!(
        redeemed.session.unwrap().conversation_state(),
        ConversationState::Pending
    );
    let cust = format!("cust-{}", Uuid::new_v4().simple());
    app.tokens
        .clone()
        .identify_session(IdentifySessionRequest {
            session_secret: redeemed.session_secret.clone(),
            customer_id: cust.clone(),
            name: Some("Late Riser".into()),
            email: None,
            phone: None,
        })
        .await
        .unwrap();

    let conv = spawn_conversation_service(database_url, &addr.to_string()).await;
    let sessions = settled(&app.tokens, std::slice::from_ref(&redeemed.session_secret)).await;
    let conversation_id = sessions[0].conversation_id.clone();
    let linked = linked_customer(&conv.client, &conversation_id).await;
    assert_eq!(linked.customer_id, cust);
    assert_eq!(linked.name, "Late Riser");
    assert_one_conversation_each(&conv.client, &prov, &sessions).await;
    app.stop().await;
    conv.stop().await;
}

/// Waits until the conversation has a customer linked, and returns it.
async fn linked_customer(client: &ConversationClient, conversation_id: &str) -> Customer {
    eventually(SETTLE, || {
        let mut client = client.clone();
        let conversation_id = conversation_id.to_owned();
        async move {
            let c = client
                .get_conversation(GetConversationRequest {
                    conversation_id,
                    viewer: None,
                })
                .await
                .ok()?
                .into_inner()
                .conversation?;
            c.customer.filter(|c| !c.customer_id.is_empty())
        }
    })
    .await
}

/// token-service as an OS process, so it can be SIGKILLed.
pub(crate) struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn start_process(listen: &str, db: &std::path::Path, conversation_url: &str) -> Process {
    let mut args = crate::helpers::test_args(db, conversation_url);
    let at = args.iter().position(|a| a == "--listen").unwrap();
    args[at + 1] = listen.to_owned();
    let child = Command::new(env!("CARGO_BIN_EXE_token-service"))
        .args(&args[1..])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Process(child)
}

async fn connect(listen: &str) -> TokenServiceClient<Channel> {
    let endpoint = Channel::from_shared(format!("http://{listen}")).unwrap();
    let channel = eventually(Duration::from_secs(10), || {
        let endpoint = endpoint.clone();
        async move { endpoint.connect().await.ok() }
    })
    .await;
    TokenServiceClient::new(channel)
}

#[tokio::test]
async fn token_service_killed_with_work_in_its_outbox_finishes_it_after_restart() {
    let database = test_database().await;
    let database_url = database.url();
    let conv_addr = free_addr();
    let conv_url = format!("http://{conv_addr}");
    let db = temp_db_path();
    let listen = free_addr().to_string();

    // conversation-service is down: redemptions and an identification queue up.
    let process = start_process(&listen, &db, &conv_url);
    let tokens = connect(&listen).await;
    let prov = new_provider();
    let link = tokens
        .clone()
        .issue_token(chat_proto::v1::IssueTokenRequest {
            provider_id: prov.clone(),
            label: "kill test".into(),
            ttl: None,
            max_uses: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut secrets = Vec::new();
    for _ in 0..5 {
        let redeemed = tokens
            .clone()
            .redeem_token(chat_proto::v1::RedeemTokenRequest {
                request_id: Uuid::new_v4().to_string(),
                provider_id: prov.clone(),
                secret: link.secret.clone(),
                customer_id: String::new(),
                new_conversation: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            redeemed.session.unwrap().conversation_state(),
            ConversationState::Pending
        );
        secrets.push(redeemed.session_secret);
    }
    let cust = format!("cust-{}", Uuid::new_v4().simple());
    tokens
        .clone()
        .identify_session(IdentifySessionRequest {
            session_secret: secrets[0].clone(),
            customer_id: cust.clone(),
            name: Some("Kill Survivor".into()),
            email: Some("survivor@example.com".into()),
            phone: None,
        })
        .await
        .unwrap();

    // SIGKILL: no chance to finish anything.
    drop(process);
    let dump = db_dump(&db);
    assert_eq!(dump.matches("create_conversation").count(), 5, "{dump}");
    assert_eq!(dump.matches("update_customer").count(), 1, "{dump}");

    let conv = spawn_conversation_service(database_url, &conv_addr.to_string()).await;
    // Still nothing happened: the work is only in the dead process's outbox.
    assert!(
        list_all(&conv.client, Some(Participant::provider(&prov)))
            .await
            .is_empty()
    );

    let _process = start_process(&listen, &db, &conv_url);
    let tokens = connect(&listen).await;
    let sessions = settled(&tokens, &secrets).await;
    assert_one_conversation_each(&conv.client, &prov, &sessions).await;
    let first = linked_customer(&conv.client, &sessions[0].conversation_id).await;
    assert_eq!(first.customer_id, cust);
    assert_eq!(first.email, "survivor@example.com");
    eventually(SETTLE, || {
        let dump = db_dump(&db);
        async move {
            (!dump.contains("create_conversation") && !dump.contains("update_customer"))
                .then_some(())
        }
    })
    .await;
    conv.stop().await;
}

#[tokio::test]
async fn sigterm_stops_the_process_gracefully() {
    let listen = free_addr().to_string();
    let mut process = start_process(&listen, &temp_db_path(), crate::helpers::NOWHERE);
    let tokens = connect(&listen).await;
    tokens
        .clone()
        .issue_token(chat_proto::v1::IssueTokenRequest {
            provider_id: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = eventually(Duration::from_secs(10), || {
        let exit = process.0.try_wait().unwrap();
        async move { exit }
    })
    .await;
    assert!(exited.success(), "exit status {exited:?}");
}

#[tokio::test]
async fn token_service_killed_mid_redeem_counts_no_use_twice_and_leaves_no_orphan() {
    let database = test_database().await;
    let database_url = database.url();
    let conv = spawn_conversation_service(database_url, "127.0.0.1:0").await;
    let db = temp_db_path();
    let listen = free_addr().to_string();
    let process = start_process(&listen, &db, &conv.url);
    let tokens = connect(&listen).await;
    let prov = new_provider();
    let link = tokens
        .clone()
        .issue_token(chat_proto::v1::IssueTokenRequest {
            provider_id: prov.clone(),
            label: "kill mid redeem".into(),
            ttl: None,
            max_uses: 40,
        })
        .await
        .unwrap()
        .into_inner();
    let request = |request_id: &str| chat_proto::v1::RedeemTokenRequest {
        request_id: request_id.to_owned(),
        provider_id: prov.clone(),
        secret: link.secret.clone(),
        customer_id: String::new(),
        new_conversation: false,
    };
    let request_ids: Vec<String> = (0..60).map(|_| Uuid::new_v4().to_string()).collect();
    // 60 redemptions of a 40-use link in flight; SIGKILL once the first ones answer.
    let in_flight = join_all(request_ids.iter().map(|id| {
        let mut tokens = tokens.clone();
        let request = request(id);
        async move { tokens.redeem_token(request).await }
    }));
    // Killed once a few sessions are written. (Waiting for pending create_conversation
    // calls in the outbox instead raced with a fast pipeline that had already finished
    // them: sessions stay, outbox rows go.)
    let killer = async {
        eventually(Duration::from_secs(10), || {
            let sessions = sessions_in(&db);
            async move { (sessions >= 3).then_some(()) }
        })
        .await;
        drop(process);
    };
    let (answers, ()) = tokio::join!(in_flight, killer);
    let answered = answers.iter().filter(|a| a.is_ok()).count();
    assert!(answered < 60, "the kill cut some redemptions short");

    // Restart; every caller retries with its request_id, as AIP-155 says.
    let _process = start_process(&listen, &db, &conv.url);
    let tokens = connect(&listen).await;
    let mut secrets = Vec::new();
    for id in &request_ids {
        match tokens.clone().redeem_token(request(id)).await {
            Ok(reply) => secrets.push(reply.into_inner().session_secret),
            Err(status) => assert_eq!(status.code(), tonic::Code::FailedPrecondition),
        }
    }
    assert_eq!(secrets.len(), 40, "exactly the link's uses were sold");
    let sessions = settled(&tokens, &secrets).await;
    assert_one_conversation_each(&conv.client, &prov, &sessions).await;
    let checked = tokens
        .clone()
        .check_token(chat_proto::v1::CheckTokenRequest {
            provider_id: prov.clone(),
            secret: link.secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.token.unwrap().use_count, 40, "no use counted twice");
    eventually(SETTLE, || {
        let dump = db_dump(&db);
        async move { (!dump.contains("create_conversation")).then_some(()) }
    })
    .await;
    conv.stop().await;
}

#[tokio::test]
async fn an_sqlite_file_locked_by_another_process_is_unavailable_then_recovers() {
    use std::io::{BufRead, BufReader, Write};
    use tonic::Code;
    let db = temp_db_path();
    let app = spawn_app_with(
        db.clone(),
        crate::helpers::NOWHERE,
        &["--sqlite-busy-timeout", "200ms"],
    )
    .await;
    app.issue("p1", 1).await;
    let before = app.db_dump();
    // Another process (the sqlite3 shell, as an operator's script would) takes the
    // write lock and holds it.
    let mut shell = Command::new("sqlite3")
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the sqlite3 shell is installed");
    let mut stdin = shell.stdin.take().unwrap();
    stdin
        .write_all(b"BEGIN EXCLUSIVE;\nSELECT 'locked';\n")
        .unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    BufReader::new(shell.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");

    let issue = || {
        let mut tokens = app.tokens.clone();
        async move {
            tokens
                .issue_token(chat_proto::v1::IssueTokenRequest {
                    provider_id: "p1".into(),
                    label: "while locked".into(),
                    ttl: None,
                    max_uses: 1,
                })
                .await
        }
    };
    for _ in 0..3 {
        let status = issue().await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(crate::helpers::reason(&status), "STORE_UNAVAILABLE");
    }
    // The shell lets go (as a process that exits does): writes work again.
    stdin.write_all(b"ROLLBACK;\n.quit\n").unwrap();
    drop(stdin);
    shell.wait().unwrap();
    assert_eq!(app.db_dump(), before, "the refused writes left nothing");
    eventually(Duration::from_secs(10), || async { issue().await.ok() }).await;
    app.stop().await;
}

/// Sessions written so far in the SQLite file at `path`.
fn sessions_in(path: &std::path::Path) -> i64 {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|conn| conn.query_row("SELECT count(*) FROM chat_sessions", [], |row| row.get(0)))
        .unwrap_or(0)
}
