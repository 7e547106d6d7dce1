//! The binary's subcommands: `migrate` applies the schema so that serving can run with
//! DML rights only (`--migrate-on-start false`), and `healthcheck` is a container's
//! health probe.

use std::process::{Command, Output};

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::helpers::{
    ADMIN_URL, create, fresh_database, spawn_app, spawn_app_with, wait_health, wait_serving,
};

const BIN: &str = env!("CARGO_BIN_EXE_conversation-service");

async fn run(args: &[&str], database_url: &str) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn");
    tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap()
}

/// A login role with DML rights only on the tables of `database_url`, in that database.
async fn dml_only_role(database_url: &str) -> String {
    let role = format!("cs_test_dml_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(ADMIN_URL).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
        .execute(&mut admin)
        .await
        .unwrap();
    let mut db = PgConnection::connect(database_url).await.unwrap();
    for grant in [
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"),
        format!("REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(grant))
            .execute(&mut db)
            .await
            .unwrap();
    }
    role
}

async fn drop_role(database_url: &str, role: &str) {
    let mut db = PgConnection::connect(database_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP OWNED BY {role}")))
        .execute(&mut db)
        .await
        .unwrap();
    let mut admin = PgConnection::connect(ADMIN_URL).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(&mut admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn without_migrate_on_start_it_waits_for_the_migrate_subcommand_then_serves_dml_only() {
    let database = fresh_database().await;
    let url = database.url().to_owned();
    let waiting = spawn_unready(&url).await;
    let mut db = PgConnection::connect(&url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(tables, 0, "the service must not have migrated");

    let migrated = run(&["migrate"], &url).await;
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    wait_serving(waiting).await;

    // A role that cannot create anything serves once the schema is there.
    let role = dml_only_role(&url).await;
    let dml_url = url.replace("postgres@", &format!("{role}@"));
    {
        let mut app = spawn_app_with(&dml_url, &["--migrate-on-start", "false"]).await;
        create(&mut app.client, "p1").await;
    }
    drop_role(&url, &role).await;
}

/// Starts the service with `--migrate-on-start false` on an unmigrated database and
/// checks that it reports NOT_SERVING; returns its address.
async fn spawn_unready(url: &str) -> std::net::SocketAddr {
    use clap::Parser;
    use conversation_service::{config::Config, startup::Application};
    let config = Config::try_parse_from([
        "conversation-service",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        url,
        "--migrate-on-start",
        "false",
    ])
    .unwrap();
    let app = Application::build(config).await.unwrap();
    let addr = app.local_addr();
    // Runs until the test's runtime ends.
    tokio::spawn(app.run_until_stopped());
    wait_health(addr, 2).await;
    addr
}

#[tokio::test]
async fn migrate_fails_with_a_nonzero_exit_when_the_database_is_missing() {
    let url = format!(
        "postgres://postgres@127.0.0.1:5432/cs_test_missing_{}",
        Uuid::new_v4().simple()
    );
    let out = run(&["migrate", "--db-acquire-timeout", "1s"], &url).await;
    assert!(!out.status.success());
}

#[tokio::test]
async fn healthcheck_exits_zero_only_for_a_serving_service() {
    let app = spawn_app().await;
    let addr = app.addr.to_string();
    let serving = run(&["healthcheck", "--listen", &addr], &app.database_url).await;
    assert!(
        serving.status.success(),
        "{}",
        String::from_utf8_lossy(&serving.stderr)
    );

    let database = fresh_database().await;
    let url = database.url().to_owned();
    let unready = spawn_unready(&url).await.to_string();
    let not_serving = run(&["healthcheck", "--listen", &unready], &url).await;
    assert!(!not_serving.status.success());
    assert!(String::from_utf8_lossy(&not_serving.stderr).contains("NOT_SERVING"));

    let nobody = crate::helpers::free_addr().to_string();
    let down = run(&["healthcheck", "--listen", &nobody], &url).await;
    assert!(!down.status.success());
}
