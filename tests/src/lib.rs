//! The test harness: start hookline in-process on either backend, talk to it over real HTTP.
//!
//! Every test runs against the embedded backend (SQLite file + SQLite queue) and against
//! Postgres + Redis. Each test gets its own SQLite file or Postgres database, its own Redis queue
//! prefix and port 0. When Postgres or Redis is not reachable the Postgres + Redis variant is
//! skipped with a notice on stderr, unless `HOOKLINE_REQUIRE_SERVICES=1` (CI) makes it a failure.

pub mod browser;
pub mod fake_atlassian;
pub mod fake_subscriber;
pub mod fixtures;
pub mod load;
pub mod process;
pub mod proxy;
pub mod services;

use std::future::Future;
use std::time::Duration;

use api::config::Settings;
use api::{Application, Role};
use base64::Engine as _;
use sea_orm::DatabaseConnection;
use secrecy::SecretString;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use services::Backend;

/// The encryption key every test app uses (so tests can decrypt and inspect stored secrets).
pub const TEST_ENCRYPTION_KEY: [u8; 32] = [42; 32];

/// The admin token every test app uses.
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token";

/// Where one test's data lives: its database and queue namespace.
pub struct TestEnv {
    /// Which backend.
    pub backend: Backend,
    /// The database URL of this test.
    pub database_url: String,
    /// The Redis URL (Postgres + Redis only).
    pub redis_url: Option<String>,
    /// This test's queue namespace.
    pub queue_prefix: String,
    /// Temporary directory (SQLite file, generated secrets); removed on drop.
    pub dir: tempfile::TempDir,
    /// The Postgres database to drop at the end, if any.
    pg_database: Option<String>,
}

impl TestEnv {
    /// A fresh environment, or None when the backend's services are not reachable (skipped).
    pub async fn new(backend: Backend) -> Option<Self> {
        init_test_process();
        let dir = tempfile::tempdir().expect("temporary directory");
        let queue_prefix = format!("hookline-test-{}", worker::short_id());
        match backend {
            Backend::Embedded => Some(Self {
                backend,
                database_url: format!("sqlite://{}/hookline.db?mode=rwc", dir.path().display()),
                redis_url: None,
                queue_prefix,
                dir,
                pg_database: None,
            }),
            Backend::PostgresRedis => {
                let services = services::postgres_redis().await?;
                let (database_url, name) = services::create_database(&services.postgres_url).await;
                Some(Self {
                    backend,
                    database_url,
                    redis_url: Some(services.redis_url.clone()),
                    queue_prefix,
                    dir,
                    pg_database: Some(name),
                })
            }
        }
    }

    /// Settings for an app in this environment: port 0, fast sweeps, short leases.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::from_env();
        settings.database_url = self.database_url.clone();
        settings.redis_url = self.redis_url.clone();
        settings.listen = "127.0.0.1:0".parse().expect("address");
        settings.public_url = None;
        settings.encryption_key = Some(SecretString::from(
            base64::engine::general_purpose::STANDARD.encode(TEST_ENCRYPTION_KEY),
        ));
        settings.admin_token = Some(SecretString::from(TEST_ADMIN_TOKEN.to_owned()));
        settings.queue_prefix = self.queue_prefix.clone();
        settings.sweep_interval = Duration::from_millis(200);
        settings.lease = Duration::from_secs(2);
        settings.worker_concurrency = 4;
        settings.body_limit_bytes = 10 * 1024 * 1024;
        settings.data_dir = self.dir.path().join("data");
        settings.metrics_listen = None;
        // The fake subscribers listen on loopback.
        settings.allow_private_targets = Some(true);
        settings.retry_schedule =
            api::config::RetrySchedule([200, 400, 800].map(Duration::from_millis).to_vec());
        settings.delivery_connect_timeout = Duration::from_secs(1);
        settings.delivery_timeout = Duration::from_secs(2);
        // No ingest rate limit: load and concurrency tests send thousands of webhooks to one
        // connection; the limiter's own tests set it.
        settings.ingest_rate_limit = 0;
        settings
    }

    /// Applies migrations (Postgres needs them before an app starts; SQLite does it itself).
    pub async fn migrate(&self) {
        api::startup::migrate(&self.settings())
            .await
            .expect("migrations apply");
    }

    /// Starts an app with this environment's settings.
    pub async fn spawn(&self, role: Role) -> TestApp {
        self.spawn_with(role, |_| {}).await
    }

    /// Starts an app with this environment's settings, changed by `configure`.
    pub async fn spawn_with(&self, role: Role, configure: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = self.settings();
        configure(&mut settings);
        TestApp::start(settings, role).await
    }

    /// Drops the Postgres database and the Redis queue keys, if this test made them.
    pub async fn cleanup(self) {
        if let Some(name) = &self.pg_database
            && let Some(services) = services::postgres_redis().await
        {
            services::drop_database(&services.postgres_url, name).await;
            services::delete_keys(&services.redis_url, &self.queue_prefix).await;
        }
    }
}

/// One running hookline process (in-process), reachable over HTTP.
pub struct TestApp {
    /// `http://127.0.0.1:<port>` (None for a worker-only app).
    pub address: String,
    /// The app's database connection.
    pub db: DatabaseConnection,
    /// The app's job context (to run jobs directly).
    pub job_context: worker::JobContext,
    /// An HTTP client.
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Builds and starts an app.
    pub async fn start(settings: Settings, role: Role) -> Self {
        let app = Application::build(settings, role, None)
            .await
            .expect("the app builds");
        let address = app
            .local_addr()
            .map(|addr| format!("http://{addr}"))
            .unwrap_or_default();
        let db = app.db().clone();
        let job_context = app.job_context().clone();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        Self {
            address,
            db,
            job_context,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// A full URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Stops the app gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            match tokio::time::timeout(Duration::from_secs(30), handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => panic!("the app stopped with an error: {error:#}"),
                Ok(Err(join_error)) => panic!("the app panicked: {join_error}"),
                Err(_) => panic!("the app did not stop within 30 s"),
            }
        }
    }

    /// Creates a company through the admin API; returns (id, api key).
    pub async fn create_company(&self, name: &str) -> (String, String) {
        let response = self
            .client
            .post(self.url("/api/v1/companies"))
            .bearer_auth(TEST_ADMIN_TOKEN)
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 201, "create company");
        let body: serde_json::Value = response.json().await.expect("json");
        (
            body["id"].as_str().expect("id").to_owned(),
            body["apiKey"].as_str().expect("apiKey").to_owned(),
        )
    }

    /// Creates a Jira connection through the API; returns the created connection's JSON.
    pub async fn create_connection(&self, api_key: &str, external_id: &str) -> serde_json::Value {
        let response = self
            .client
            .post(self.url("/api/v1/connections"))
            .bearer_auth(api_key)
            .json(&serde_json::json!({
                "pluginId": "jira",
                "externalId": external_id,
                "externalName": "Northwind Labs",
            }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 201, "create connection");
        response.json().await.expect("json")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // A test that panicked did not call `stop`: stop the app anyway.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The `name=value` pairs a response sets with `Set-Cookie`, joined as a `Cookie` header
/// sends them back (the connect flow binds its callback to the browser with a cookie).
pub fn cookies_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| value.split(';').next())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Waits until `check` returns Some, polling every 50 ms, for at most `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Once per test process: the TLS provider, and logs when `TEST_LOG` is set.
pub(crate) fn init_test_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if std::env::var_os("TEST_LOG").is_some() {
            api::telemetry::init_logging(api::config::LogFormat::Text);
        }
    });
}

/// The real `hookline` binary, built once.
pub fn hookline_binary() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            // Without the variables cargo sets for this test process: build scripts and macros
            // track some of them, and different values would rebuild dependencies every run.
            let mut command = std::process::Command::new(env!("CARGO"));
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy().into_owned();
                let keep = matches!(name.as_str(), "CARGO_HOME" | "CARGO_TARGET_DIR");
                if !keep && (name.starts_with("CARGO_") || name == "OUT_DIR" || name == "RUSTC") {
                    command.env_remove(name);
                }
            }
            let status = command
                .args(["build", "-p", "api", "--bin", "hookline"])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the hookline binary failed");
            // …/debug/deps/it-<hash> → …/debug/hookline
            let exe = std::env::current_exe().expect("the test binary's path");
            let debug = exe
                .parent()
                .and_then(std::path::Path::parent)
                .expect("the target directory");
            debug.join("hookline")
        })
        .clone()
}
