//! The embedded default as a new user runs it: the real `hookline` binary with no configuration
//! (SQLite, embedded queue, generated secrets), the README walk-through, and a `kill -9`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tests::fake_subscriber::{FakeSubscriber, Reply};
use tests::{fixtures, wait_until};

/// A `hookline` OS process, killed with SIGKILL when dropped.
struct Process(Child);

impl Process {
    /// Starts `hookline <args>` in `dir` with the environment a new user has (nothing set).
    fn start(dir: &Path, args: &[&str], envs: &[(&str, String)], output: &Path) -> Self {
        let log = std::fs::File::create(output).expect("log file");
        let mut command = Command::new(tests::hookline_binary());
        command
            .args(args)
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("HOOKLINE_ENCRYPTION_KEY")
            .env_remove("HOOKLINE_ADMIN_TOKEN")
            .env_remove("HOOKLINE_ALLOW_PRIVATE_TARGETS")
            .env("HOOKLINE_SWEEP_INTERVAL", "200ms")
            .env("HOOKLINE_LEASE", "2s")
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log));
        for (name, value) in envs {
            command.env(name, value);
        }
        Self(command.spawn().expect("start hookline"))
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the process to exit.
    fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hookline did not exit within {timeout:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

async fn wait_healthy(base: &str) {
    let client = reqwest::Client::new();
    wait_until(
        Duration::from_secs(60),
        "hookline answers /healthz",
        || async {
            client
                .get(format!("{base}/healthz"))
                .send()
                .await
                .ok()
                .filter(|response| response.status() == 200)
                .map(|_| ())
        },
    )
    .await;
}

pub(crate) fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(crate) fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
        || Command::new(tool)
            .arg("version")
            .output()
            .is_ok_and(|out| out.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_points_at_the_console_and_the_readme_walkthrough_works() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !(have("curl") && have("openssl")) {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "NOTICE: walk-through test SKIPPED: it needs curl and openssl"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let (port, sink_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let hookline_log = dir.path().join("hookline.log");
    let sink_log = dir.path().join("sink.log");
    let _hookline = Process::start(
        dir.path(),
        &[],
        &[("HOOKLINE_LISTEN", format!("127.0.0.1:{port}"))],
        &hookline_log,
    );
    let _sink = Process::start(
        dir.path(),
        &["sink", "--listen", &format!("127.0.0.1:{sink_port}")],
        &[],
        &sink_log,
    );
    wait_healthy(&base).await;

    let banner = std::fs::read_to_string(&hookline_log).expect("log");
    assert!(banner.contains("EMBEDDED MODE"), "{banner}");
    // The banner points at the console, which answers there with its sign-in page.
    assert!(banner.contains(&format!("open {base}/")), "{banner}");
    let console = reqwest::get(format!("{base}/"))
        .await
        .expect("the console")
        .text()
        .await
        .expect("html");
    assert!(console.contains("API key"), "{console}");

    let output = tokio::task::spawn_blocking({
        let data_dir = dir.path().join(".hookline");
        let base = base.clone();
        move || {
            Command::new("bash")
                .arg("examples/walkthrough.sh")
                .current_dir(repository_root())
                .env("HOOKLINE", base)
                .env("SINK", format!("http://127.0.0.1:{sink_port}/"))
                .env("HOOKLINE_DATA_DIR", data_dir)
                .output()
                .expect("run the walk-through")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("delivered: yes"), "{stdout}");
    let sink = std::fs::read_to_string(&sink_log).expect("sink log");
    assert!(sink.contains("type=jira:issue_created"), "{sink}");

    // The process that ran the whole pipeline exposes every metric of DESIGN §7.
    let exposition = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .expect("metrics text");
    crate::metrics::check_exposition(&exposition, dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_accepted_before_a_kill_9_is_delivered_after_a_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let listen = [("HOOKLINE_LISTEN", format!("127.0.0.1:{port}"))];
    let log = dir.path().join("first.log");
    let mut first = Process::start(dir.path(), &[], &listen, &log);
    wait_healthy(&base).await;

    let subscriber = FakeSubscriber::start(Reply::Status(200)).await;
    let connection = subscribed_connection(dir.path(), &base, &subscriber.url).await;
    let response = post_signed_fixture(&connection).await;
    assert_eq!(response.status(), 200);
    first.kill();
    let out: serde_json::Value = response.json().await.expect("json");
    let event_id = out["eventId"].as_str().expect("eventId").to_owned();

    let _second = Process::start(dir.path(), &[], &listen, &dir.path().join("second.log"));
    wait_until(
        Duration::from_secs(60),
        "the event is delivered after the restart",
        || async {
            subscriber
                .requests()
                .iter()
                .any(|request| request.json()["data"]["eventId"] == event_id.as_str())
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_delivery_finish_and_exits_cleanly() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("hookline.log");
    let mut hookline = Process::start(
        dir.path(),
        &[],
        &[("HOOKLINE_LISTEN", format!("127.0.0.1:{port}"))],
        &log,
    );
    wait_healthy(&base).await;
    // A slow subscriber: the delivery is still in flight when SIGTERM arrives.
    let subscriber = FakeSubscriber::start(Reply::Hang(Duration::from_secs(3))).await;
    let connection = subscribed_connection(dir.path(), &base, &subscriber.url).await;
    let response = post_signed_fixture(&connection).await;
    assert_eq!(response.status(), 200);
    wait_until(
        Duration::from_secs(30),
        "the delivery reaches the subscriber",
        || async { (!subscriber.requests().is_empty()).then_some(()) },
    )
    .await;

    let status = tokio::task::spawn_blocking(move || {
        let status = hookline.terminate(Duration::from_secs(30));
        (status, hookline)
    })
    .await
    .expect("join");
    assert!(
        status.0.success(),
        "hookline exits 0 after SIGTERM: {:?}\n{}",
        status.0,
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // The attempt in flight was finished, not cut off: the delivery succeeded with one attempt.
    let db = sea_orm::Database::connect(format!(
        "sqlite://{}/.hookline/hookline.db?mode=rw",
        dir.path().display()
    ))
    .await
    .expect("open the database");
    let deliveries = entity::delivery::Entity::find()
        .all(&db)
        .await
        .expect("deliveries");
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].status, entity::delivery::status::SUCCEEDED);
    let attempts = entity::delivery_attempt::Entity::find()
        .filter(entity::delivery_attempt::Column::DeliveryId.eq(deliveries[0].id))
        .all(&db)
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 1, "one attempt, finished before exit");
    assert_eq!(subscriber.requests().len(), 1);
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(log.contains("shutdown signal received"), "{log}");
}

/// Creates a company (with the generated admin token in `dir`), a Jira connection and a
/// subscription of `subscriber_url` to every event; returns the connection as the API answered.
async fn subscribed_connection(dir: &Path, base: &str, subscriber_url: &str) -> serde_json::Value {
    let secrets: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(".hookline/secrets.json")).expect("secrets file"),
    )
    .expect("json");
    let client = reqwest::Client::new();
    let company: serde_json::Value = client
        .post(format!("{base}/api/v1/companies"))
        .bearer_auth(secrets["adminToken"].as_str().expect("adminToken"))
        .json(&serde_json::json!({"name": "Northwind"}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let key = company["apiKey"].as_str().expect("apiKey");
    let connection: serde_json::Value = client
        .post(format!("{base}/api/v1/connections"))
        .bearer_auth(key)
        .json(&serde_json::json!({"pluginId": "jira", "externalId": "northwind.atlassian.net", "externalName": "Northwind"}))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let subscription = client
        .post(format!("{base}/api/v1/subscriptions"))
        .bearer_auth(key)
        .json(&serde_json::json!({"url": subscriber_url, "eventTypes": ["*"]}))
        .send()
        .await
        .expect("request");
    assert_eq!(
        subscription.status(),
        201,
        "private targets are allowed in the embedded mode"
    );
    connection
}

/// Posts the `webhook_issue_created.json` fixture to the connection, signed as Jira signs it.
async fn post_signed_fixture(connection: &serde_json::Value) -> reqwest::Response {
    let body = fixtures::bytes("webhook_issue_created.json");
    let secret = connection["webhookSecret"].as_str().expect("secret");
    reqwest::Client::new()
        .post(connection["webhookUrl"].as_str().expect("url"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature",
            plugins::jira::webhook::sign(secret.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .expect("request")
}
