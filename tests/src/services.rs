//! Which backends can run here: the embedded one always, Postgres + Redis when reachable.

use std::io::Write as _;
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database};
use tokio::sync::OnceCell;

/// The two backends every integration test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file and the SQLite queue: what `cargo run --release` uses.
    Embedded,
    /// Postgres and Redis: production.
    PostgresRedis,
}

/// Where the Postgres + Redis suite connects.
#[derive(Debug, Clone)]
pub struct Services {
    /// An admin connection URL to a database used to create per-test databases.
    pub postgres_url: String,
    /// The Redis URL.
    pub redis_url: String,
}

/// The Postgres + Redis services, or None (after a notice) when they cannot be reached.
///
/// `HOOKLINE_TEST_POSTGRES_URL` and `HOOKLINE_TEST_REDIS_URL` override the local defaults;
/// `HOOKLINE_REQUIRE_SERVICES=1` turns unreachable services into a test failure.
pub async fn postgres_redis() -> Option<&'static Services> {
    static SERVICES: OnceCell<Option<Services>> = OnceCell::const_new();
    SERVICES
        .get_or_init(|| async {
            let services = Services {
                postgres_url: std::env::var("HOOKLINE_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
                redis_url: std::env::var("HOOKLINE_TEST_REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
            };
            let problem = match check(&services).await {
                Ok(()) => return Some(services),
                Err(problem) => problem,
            };
            if std::env::var("HOOKLINE_REQUIRE_SERVICES").is_ok_and(|value| value == "1") {
                panic!("HOOKLINE_REQUIRE_SERVICES=1 but {problem}");
            }
            // Written to the real stderr, past the test harness' capture, so it is always seen.
            let _ = writeln!(
                std::io::stderr(),
                "\nNOTICE: the Postgres + Redis suite is SKIPPED in this run: {problem}.\n        \
                 Only the embedded (SQLite) suite ran. Start Postgres and Redis (see README) or \
                 set HOOKLINE_REQUIRE_SERVICES=1 to make this a failure.\n"
            );
            None
        })
        .await
        .as_ref()
}

async fn check(services: &Services) -> Result<(), String> {
    let timeout = Duration::from_secs(3);
    let pg = tokio::time::timeout(timeout, Database::connect(&services.postgres_url))
        .await
        .map_err(|_| format!("Postgres at {} did not answer", services.postgres_url))?
        .map_err(|error| {
            format!(
                "Postgres at {} is not reachable ({error})",
                services.postgres_url
            )
        })?;
    pg.execute_unprepared("SELECT 1")
        .await
        .map_err(|error| format!("Postgres did not answer a query ({error})"))?;
    let client = redis::Client::open(services.redis_url.as_str())
        .map_err(|error| format!("REDIS URL {} is invalid ({error})", services.redis_url))?;
    let mut conn = tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| format!("Redis at {} did not answer", services.redis_url))?
        .map_err(|error| format!("Redis at {} is not reachable ({error})", services.redis_url))?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map_err(|error| format!("Redis did not answer PING ({error})"))?;
    Ok(())
}

/// Creates an empty database for one test; returns its URL and name.
pub async fn create_database(admin_url: &str) -> (String, String) {
    let name = format!("hookline_t_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(admin_url)
        .await
        .expect("postgres admin connection");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let base = admin_url
        .rsplit_once('/')
        .map(|(base, _)| base)
        .unwrap_or(admin_url);
    (format!("{base}/{name}"), name)
}

/// Drops a test database, disconnecting whoever is still connected.
pub async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(admin) = Database::connect(admin_url).await {
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}

/// Deletes every Redis key of a test's queue namespace.
pub async fn delete_keys(redis_url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}
