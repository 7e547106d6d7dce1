//! Following and sending while PostgreSQL restarts. Restarting a shared PostgreSQL would
//! break everyone else's tests, so this is `#[ignore]`d and needs CLIENT_FAULT_PG_RESTART=1:
//! `clients/test-pg-restart.sh` runs it on a private cluster (PGPORT, and the restart
//! command in CLIENT_FAULT_PG_RESTART_CMD).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use chat_client::{Client, v1};
use v1::stream_conversation_response::Event;

use crate::helpers::{Replica, fast, free_port, message, new_conversation, next_event, provider};

/// A database on the cluster at PGPORT, dropped on drop.
struct PrivateDatabase {
    name: String,
    port: String,
}

impl PrivateDatabase {
    fn new() -> Self {
        let db = Self {
            name: format!("cs_test_client_pg_{}", uuid::Uuid::new_v4().simple()),
            port: std::env::var("PGPORT").unwrap_or_else(|_| "5432".into()),
        };
        db.psql(&format!("CREATE DATABASE \"{}\"", db.name));
        db
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, self.name)
    }

    fn psql(&self, sql: &str) {
        let status = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-qAtc",
                sql,
            ])
            .status()
            .expect("psql");
        assert!(status.success(), "{sql}");
    }
}

impl Drop for PrivateDatabase {
    fn drop(&mut self) {
        self.psql(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ));
    }
}

#[tokio::test]
#[ignore = "restarts PostgreSQL: clients/test-pg-restart.sh runs it on a private cluster"]
async fn follow_sees_every_message_once_in_order_while_postgres_restarts() {
    assert_eq!(
        std::env::var("CLIENT_FAULT_PG_RESTART").as_deref(),
        Ok("1"),
        "set CLIENT_FAULT_PG_RESTART=1 (and CLIENT_FAULT_PG_RESTART_CMD) to restart PostgreSQL"
    );
    let restart =
        std::env::var("CLIENT_FAULT_PG_RESTART_CMD").expect("CLIENT_FAULT_PG_RESTART_CMD");
    let db = PrivateDatabase::new();
    let mut replica = Replica::on(db.url(), free_port());
    replica.start().await;
    let mut config = fast(replica.url());
    config.send_attempts = 60;
    config.backoff.max = Duration::from_secs(1);
    let client = Client::connect(config).unwrap();
    let conversation = new_conversation(&client).await;
    let mut events = client.follow(conversation.clone(), provider(), 0);
    let total = 40;
    for i in 1..=total {
        if i == 15 {
            let status = Command::new("bash")
                .args(["-c", &restart])
                .status()
                .unwrap();
            assert!(status.success(), "{restart}");
        }
        // Retried through the outage with the same client_message_id.
        client
            .send(message(&conversation, provider(), &format!("m{i}")))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < total {
        if let Some(Event::Message(m)) = next_event(&mut events).await.event {
            seen.push(m.seq);
        }
    }
    assert_eq!(
        seen,
        (1..=i64::try_from(total).unwrap()).collect::<Vec<_>>()
    );
}
