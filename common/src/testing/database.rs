//! Throwaway PostgreSQL databases for tests: each test or suite gets its own, dropped
//! when its guard is, so runs never collide and a day of them does not fill the disk.

use sqlx::{Connection, PgConnection};

/// The local server's maintenance database, from which test databases are made.
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// An empty database with a random name, dropped (with its connections) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates `<prefix>_<random>`; `scripts/test.sh` sweeps leftovers by that prefix.
    ///
    /// # Panics
    /// When PostgreSQL is not running at 127.0.0.1:5432 (tests only).
    pub async fn create(prefix: &str) -> Self {
        let name = format!("{prefix}_{}", uuid_like());
        let mut admin = PgConnection::connect(ADMIN_URL)
            .await
            .expect("PostgreSQL must run at 127.0.0.1:5432 (scripts/ensure-postgres.sh)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        Self { name, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    /// Drops the database from a thread of its own: a guard may be dropped inside a
    /// runtime (which must not block on another) or after it has shut down.
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        let dropped = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(ADMIN_URL).await {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut admin)
                        .await;
                }
            });
        });
        let _ = dropped.join();
    }
}

/// The tables of the connected database (schema `public`) with a row whose text holds
/// `needle`: what a search for a person's details after an erasure must not find.
///
/// # Panics
/// When a query fails (tests only).
#[allow(clippy::expect_used)]
pub async fn tables_containing(db: &mut PgConnection, needle: &str) -> Vec<String> {
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&mut *db)
    .await
    .expect("list the tables");
    let mut found = Vec::new();
    for (table,) in tables {
        let sql = format!("SELECT count(*) FROM \"{table}\" t WHERE strpos(t::text, $1) > 0");
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(needle)
            .fetch_one(&mut *db)
            .await
            .expect("search a table");
        if n > 0 {
            found.push(table);
        }
    }
    found
}

fn uuid_like() -> String {
    use rand::Rng;
    format!("{:032x}", rand::rng().random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exists(name: &str) -> bool {
        let mut admin = PgConnection::connect(ADMIN_URL).await.expect("connect");
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        )
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .expect("query")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_test_database_is_dropped_with_its_guard_even_while_connected() {
        let db = TestDatabase::create("common_test").await;
        let name = db.name().to_owned();
        assert!(exists(&name).await);
        let _open = PgConnection::connect(db.url()).await.expect("connect");
        drop(db);
        assert!(!exists(&name).await);
    }
}
