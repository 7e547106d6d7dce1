//! The binary's subcommands: `migrate` creates the database and exits (and refuses while a
//! token-service holds it), `healthcheck` is a container's health probe.

use std::process::{Command, Output};

use crate::helpers::{NOWHERE, spawn_app, spawn_app_with, temp_db_path};

const BIN: &str = env!("CARGO_BIN_EXE_token-service");

async fn run(args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).env("RUST_LOG", "warn");
    tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn migrate_creates_the_schema_and_refuses_a_database_in_use() {
    let path = temp_db_path();
    let db = path.to_str().unwrap().to_owned();
    let out = run(&["migrate", "--database", &db]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert!(version >= 1);
    drop(conn);

    let app = spawn_app_with(path, NOWHERE, &[]).await;
    app.issue("p1", 1).await;
    let busy = run(&["migrate", "--database", &db]).await;
    assert!(
        !busy.status.success(),
        "a second process must not open a database in use"
    );
    app.stop().await;
}

#[tokio::test]
async fn healthcheck_exits_zero_only_for_a_serving_service() {
    let app = spawn_app().await;
    app.issue("p1", 1).await; // the database is open
    let addr = app.addr.to_string();
    let mut serving = run(&["healthcheck", "--listen", &addr]).await;
    for _ in 0..50 {
        if serving.status.success() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        serving = run(&["healthcheck", "--listen", &addr]).await;
    }
    assert!(
        serving.status.success(),
        "{}",
        String::from_utf8_lossy(&serving.stderr)
    );
    app.stop().await;
    let stopped = run(&["healthcheck", "--listen", &addr]).await;
    assert!(!stopped.status.success());
}
