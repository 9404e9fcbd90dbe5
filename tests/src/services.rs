//! Which backends can run here: the embedded one always, Postgres + Redis when reachable; and
//! the brokers of the destination suites (RabbitMQ, NATS with JetStream) when reachable.

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

/// Turns an unreachable service into a notice (its suite is skipped) or, under
/// `HOOKLINE_REQUIRE_SERVICES=1`, into a failure.
fn skipped(suite: &str, problem: &str, how: &str) {
    if std::env::var("HOOKLINE_REQUIRE_SERVICES").is_ok_and(|value| value == "1") {
        panic!("HOOKLINE_REQUIRE_SERVICES=1 but {problem}");
    }
    // Written to the real stderr, past the test harness' capture, so it is always seen.
    let _ = writeln!(
        std::io::stderr(),
        "\nNOTICE: the {suite} suite is SKIPPED in this run: {problem}.\n        {how} or set \
         HOOKLINE_REQUIRE_SERVICES=1 to make this a failure.\n"
    );
}

/// The RabbitMQ URL of the AMQP destination suite, or None (after a notice) when RabbitMQ
/// cannot be reached. `HOOKLINE_TEST_AMQP_URL` overrides `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub async fn rabbitmq() -> Option<&'static str> {
    static URL: OnceCell<Option<String>> = OnceCell::const_new();
    URL.get_or_init(|| async {
        let url = std::env::var("HOOKLINE_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        let connect = lapin::Connection::connect(&url, lapin::ConnectionProperties::default());
        let problem = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(connection)) => {
                let _ = connection.close(200, "OK".into()).await;
                return Some(url);
            }
            Ok(Err(error)) => format!("RabbitMQ at 127.0.0.1:5672 is not reachable ({error})"),
            Err(_) => "RabbitMQ at 127.0.0.1:5672 did not answer".to_owned(),
        };
        skipped(
            "RabbitMQ (AMQP destination)",
            &problem,
            "Start RabbitMQ (`rabbitmq-server -detached`, see README)",
        );
        None
    })
    .await
    .as_deref()
}

/// The NATS URL of the JetStream destination suite, or None (after a notice) when NATS with
/// JetStream cannot be reached. `HOOKLINE_TEST_NATS_URL` overrides `nats://127.0.0.1:4222`.
pub async fn nats() -> Option<&'static str> {
    static URL: OnceCell<Option<String>> = OnceCell::const_new();
    URL.get_or_init(|| async {
        let url = std::env::var("HOOKLINE_TEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        let check = async {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(3))
                .connect(url.as_str())
                .await
                .map_err(|error| format!("NATS at {url} is not reachable ({error})"))?;
            if !client.server_info().jetstream {
                return Err(format!(
                    "NATS at {url} runs without JetStream (start it with -js)"
                ));
            }
            Ok::<_, String>(())
        };
        let problem = match tokio::time::timeout(Duration::from_secs(5), check).await {
            Ok(Ok(())) => return Some(url),
            Ok(Err(problem)) => problem,
            Err(_) => format!("NATS at {url} did not answer"),
        };
        skipped(
            "NATS JetStream destination",
            &problem,
            "Start nats-server with JetStream (`nats-server -js`, see README)",
        );
        None
    })
    .await
    .as_deref()
}

/// The Redis URL of the Redis Streams destination suite, or None (after a notice) when Redis
/// cannot be reached. `HOOKLINE_TEST_REDIS_URL` overrides `redis://127.0.0.1:6379`.
pub async fn redis() -> Option<&'static str> {
    static URL: OnceCell<Option<String>> = OnceCell::const_new();
    URL.get_or_init(|| async {
        let url = std::env::var("HOOKLINE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let check = async {
            let client = redis::Client::open(url.as_str())
                .map_err(|error| format!("REDIS URL {url} is invalid ({error})"))?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|error| format!("Redis at {url} is not reachable ({error})"))?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(|error| format!("Redis did not answer PING ({error})"))?;
            Ok::<_, String>(())
        };
        let problem = match tokio::time::timeout(Duration::from_secs(5), check).await {
            Ok(Ok(())) => return Some(url),
            Ok(Err(problem)) => problem,
            Err(_) => format!("Redis at {url} did not answer"),
        };
        skipped(
            "Redis Streams destination",
            &problem,
            "Start Redis (see README)",
        );
        None
    })
    .await
    .as_deref()
}
