//! Faults under load: a replica SIGKILLed while callers send (they retry on another), and
//! PostgreSQL itself restarted (a throwaway cluster of the test's own, never the shared
//! one). Afterwards every acknowledged message is stored exactly once, seqs have no gap,
//! and a stream that resumes from its last seq sees every message once, in order.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use chat_proto::v1::{self, stream_conversation_response::Event};
use tonic::Code;

use crate::helpers::{
    Client, TestApp, create, free_addr, fresh_database, provider, spawn_app_with, spawn_process,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// Sends `count` messages, each retried with the same client_message_id (first on
/// `primary`, then on `fallback`) until acknowledged. Returns cmid -> acknowledged seq,
/// and how many attempts failed.
async fn send_with_retries(
    mut primary: Client,
    mut fallback: Client,
    id: String,
    task: usize,
    count: usize,
) -> (HashMap<String, i64>, usize) {
    let mut acknowledged = HashMap::new();
    let mut failed_attempts = 0;
    // Once the primary failed, this caller stays on the fallback.
    let mut use_fallback = false;
    for i in 0..count {
        let cmid = format!("t{task}-{i}");
        let request = v1::SendMessageRequest {
            conversation_id: id.clone(),
            sender: provider("p1"),
            body: format!("message {cmid}"),
            client_message_id: cmid.clone(),
            attachments: Vec::new(),
        };
        let started = tokio::time::Instant::now();
        let seq = loop {
            let client = if use_fallback {
                &mut fallback
            } else {
                &mut primary
            };
            let attempt =
                tokio::time::timeout(Duration::from_secs(5), client.send_message(request.clone()))
                    .await;
            match attempt {
                Ok(Ok(reply)) => break reply.into_inner().message.unwrap().seq,
                Ok(Err(status)) => assert!(
                    matches!(
                        status.code(),
                        Code::Unavailable
                            | Code::Cancelled
                            | Code::Unknown
                            | Code::DeadlineExceeded
                    ),
                    "a fault answers UNAVAILABLE, not {status:?}"
                ),
                Err(_) => {}
            }
            assert!(started.elapsed() < DEADLINE, "{cmid} never acknowledged");
            failed_attempts += 1;
            use_fallback = true;
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        acknowledged.insert(cmid, seq);
    }
    (acknowledged, failed_attempts)
}

/// Waits for every sender; returns what they acknowledged and prints the figures
/// docs/reliability.md quotes.
async fn collect(
    fault: &str,
    senders: Vec<tokio::task::JoinHandle<(HashMap<String, i64>, usize)>>,
) -> HashMap<String, i64> {
    let (mut acknowledged, mut failed) = (HashMap::new(), 0);
    for sender in senders {
        let (acks, failures) = sender.await.unwrap();
        acknowledged.extend(acks);
        failed += failures;
    }
    eprintln!(
        "{fault}: {} acknowledged, {failed} failed attempts retried",
        acknowledged.len()
    );
    acknowledged
}

/// Follows a conversation from seq 0 until `until`, reopening from the last seq seen
/// whenever the stream fails; every seq must come exactly once, in order.
async fn follow(mut client: Client, id: String, until: i64) -> Vec<i64> {
    let mut seen: Vec<i64> = Vec::new();
    let started = tokio::time::Instant::now();
    while seen.last().copied().unwrap_or(0) < until {
        assert!(
            started.elapsed() < DEADLINE,
            "stream stuck at {:?}",
            seen.last()
        );
        let after_seq = seen.last().copied().unwrap_or(0);
        let opened = client
            .stream_conversation(v1::StreamConversationRequest {
                conversation_id: id.clone(),
                viewer: provider("p1"),
                after_seq,
                after_change: None,
            })
            .await;
        let Ok(stream) = opened else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        while let Ok(Ok(Some(event))) =
            tokio::time::timeout(Duration::from_secs(5), stream.message()).await
        {
            if let Some(Event::Message(message)) = event.event {
                assert_eq!(
                    message.seq,
                    seen.last().copied().unwrap_or(0) + 1,
                    "no gap, no repeat"
                );
                seen.push(message.seq);
                if message.seq >= until {
                    break;
                }
            }
        }
    }
    seen
}

/// Every acknowledged message is stored once with the seq it was acknowledged with, and
/// the stored seqs are 1..=total with no gap.
async fn assert_stored_exactly_once(app_db: &TestApp, acknowledged: &HashMap<String, i64>) {
    let mut db = app_db.db().await;
    let rows: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT seq, client_message_id FROM messages ORDER BY seq")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let total = i64::try_from(acknowledged.len()).unwrap();
    assert_eq!(
        rows.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "stored once each, no gap"
    );
    for (seq, cmid) in rows {
        let cmid = cmid.expect("every test message has a client_message_id");
        assert_eq!(acknowledged.get(&cmid), Some(&seq), "{cmid}");
    }
}

#[tokio::test]
async fn a_replica_killed_mid_load_loses_and_duplicates_nothing() {
    let database = fresh_database().await;
    let database_url = database.url().to_owned();
    let mut survivor = spawn_app_with(&database_url, &[]).await;
    let mut victim = spawn_process(&database_url, &[]).await;
    let id = create(&mut survivor.client, "p1").await.conversation_id;
    let (tasks, per_task) = (4, 150);
    let total = i64::try_from(tasks * per_task).unwrap();
    let follower = tokio::spawn(follow(survivor.client.clone(), id.clone(), total));
    let senders: Vec<_> = (0..tasks)
        .map(|task| {
            tokio::spawn(send_with_retries(
                victim.client.clone(),
                survivor.client.clone(),
                id.clone(),
                task,
                per_task,
            ))
        })
        .collect();
    // SIGKILL the replica the callers use once some of the load has landed.
    let mut db = survivor.db().await;
    loop {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
            .fetch_one(&mut db)
            .await
            .unwrap();
        if n >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let acknowledged = collect("replica SIGKILL", senders).await;
    assert_eq!(acknowledged.len(), tasks * per_task);
    assert_stored_exactly_once(&survivor, &acknowledged).await;
    assert_eq!(follower.await.unwrap(), (1..=total).collect::<Vec<_>>());
}

/// A PostgreSQL cluster of the test's own in a temporary directory on a free port,
/// stopped and removed on drop. Never the shared cluster at 5432.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a PostgreSQL tool; as root, as the `postgres` user (initdb refuses root).
fn pg(tool: &str, args: &[&str]) {
    let program = Path::new(PG_BIN).join(tool);
    let status = if is_root() {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&program)
            .args(args)
            .stdout(Stdio::null())
            .status()
    } else {
        Command::new(&program)
            .args(args)
            .stdout(Stdio::null())
            .status()
    }
    .unwrap();
    assert!(status.success(), "{tool} {args:?} failed");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl Cluster {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("pg-fault-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let data = dir.join("data");
        pg(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        let cluster = Self {
            dir,
            port: free_addr().port(),
        };
        cluster.ctl(&["start", "-w", "-t", "30"]);
        cluster
    }

    fn ctl(&self, command: &[&str]) {
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let mut args = vec![
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-o",
            &options,
        ];
        args.extend_from_slice(command);
        pg("pg_ctl", &args);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = Command::new(if is_root() { "runuser" } else { "env" })
            .args(if is_root() {
                vec!["-u", "postgres", "--"]
            } else {
                vec![]
            })
            .arg(Path::new(PG_BIN).join("pg_ctl"))
            .args([
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn postgresql_restarted_mid_load_loses_and_duplicates_nothing() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let mut app = spawn_app_with(&cluster.url(), &["--db-acquire-timeout", "1s"]).await;
    let id = create(&mut app.client, "p1").await.conversation_id;
    let (tasks, per_task) = (3, 100);
    let total = i64::try_from(tasks * per_task).unwrap();
    let follower = tokio::spawn(follow(app.client.clone(), id.clone(), total));
    let senders: Vec<_> = (0..tasks)
        .map(|task| {
            tokio::spawn(send_with_retries(
                app.client.clone(),
                app.client.clone(),
                id.clone(),
                task,
                per_task,
            ))
        })
        .collect();
    let mut db = app.db().await;
    loop {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
            .fetch_one(&mut db)
            .await
            .unwrap();
        if n >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(db);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.ctl(&["restart", "-m", "fast", "-w", "-t", "30"]);
        cluster
    })
    .await
    .unwrap();
    let mut db = app.db().await;
    let (stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
        .fetch_one(&mut db)
        .await
        .unwrap();
    eprintln!("PostgreSQL restart: {stored} of {total} stored once it was back");
    let acknowledged = collect("PostgreSQL restart", senders).await;
    assert_eq!(acknowledged.len(), tasks * per_task);
    assert_stored_exactly_once(&app, &acknowledged).await;
    assert_eq!(follower.await.unwrap(), (1..=total).collect::<Vec<_>>());
    drop(app);
    drop(cluster);
}
