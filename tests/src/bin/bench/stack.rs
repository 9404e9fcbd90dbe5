//! The system under test: a fresh Postgres database, a fresh Redis queue prefix, the real
//! `hookline` binary as separate processes (`migrate`, `serve`, `worker`) configured only through
//! its documented environment variables, the fake Atlassian, and the benchmark's subscriber. The
//! company, the OAuth connection and the subscription are created through the public API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use tests::fake_atlassian::{self, FakeAtlassian};

use crate::consumer::{BrokerConsumer, BrokerUrls, DestinationKind};
use crate::subscriber::BenchSubscriber;

/// The admin token the benchmark gives `hookline serve`.
const ADMIN_TOKEN: &str = "hookline-bench-admin";

/// Where the services are and how the `hookline` processes run.
#[derive(Debug, Clone, clap::Args)]
pub struct StackOptions {
    /// The `hookline` binary to benchmark (build it with `cargo build --release`). Default: the
    /// `hookline` next to this binary.
    #[arg(long, env = "HOOKLINE_BIN")]
    pub hookline: Option<PathBuf>,

    /// Postgres URL of an existing database, used to create (and drop) the run's own database.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub postgres_url: String,

    /// Redis URL; the run uses a fresh `HOOKLINE_QUEUE_PREFIX` and deletes its keys at the end.
    #[arg(
        long,
        env = "BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// `HOOKLINE_WORKER_CONCURRENCY` of the worker process (jobs per queue at once).
    #[arg(long, env = "BENCH_WORKER_CONCURRENCY", default_value_t = 16)]
    pub worker_concurrency: usize,

    /// `RUST_LOG` of the hookline processes (their logs go to files in the run directory).
    #[arg(long, env = "BENCH_RUST_LOG", default_value = "warn")]
    pub rust_log: String,

    /// `HOOKLINE_LEASE` of the processes (also the grace a fresh event's job gets before the
    /// sweeper enqueues it again). Unset: hookline's default (30s) for `e2e`, 15m for `drain`,
    /// whose backlog waits longer than 30 s by design.
    #[arg(long, env = "BENCH_LEASE")]
    pub lease: Option<String>,

    /// Companies (tenants) the traffic is spread over; each has its own subscriptions.
    #[arg(long, env = "BENCH_COMPANIES", default_value_t = 4)]
    pub companies: usize,

    /// Jira sites (connections) each company connects; events go round-robin over all of them.
    #[arg(long, env = "BENCH_SITES_PER_COMPANY", default_value_t = 3)]
    pub sites_per_company: usize,

    /// Distinct issues the events are about (round-robin); 0: every event is about an issue
    /// of its own, so no Jira answer serves two events.
    #[arg(long, env = "BENCH_ISSUES", default_value_t = 1000)]
    pub issues: u64,

    /// Use a connection without OAuth (`POST /api/v1/connections`): enrichment is `skipped`.
    /// Default: connect through the fake Atlassian's OAuth flow, so events are enriched.
    #[arg(long, env = "BENCH_NO_ENRICHMENT")]
    pub no_enrichment: bool,

    /// Deliver to one destination of this kind only: each company gets a single subscription
    /// (`jira:issue_*`) to it, and no other (no fan-out, no filters that never match). For
    /// broker kinds the benchmark creates the stream, exchange and queue, or JetStream stream,
    /// and reads every message from it. Unset: the default four HTTP subscriptions per company.
    #[arg(long, env = "BENCH_DESTINATION", value_enum)]
    pub destination: Option<DestinationKind>,

    /// RabbitMQ URL of `--destination amqp`.
    #[arg(
        long,
        env = "BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// NATS URL of `--destination nats` (JetStream enabled).
    #[arg(long, env = "BENCH_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Directory for the processes' logs and the worker's final `/metrics`. Default: a new
    /// directory under the system's temporary directory.
    #[arg(long, env = "BENCH_RUN_DIR")]
    pub run_dir: Option<PathBuf>,

    /// Keep the run's database (for inspection) instead of dropping it at the end.
    #[arg(long, env = "BENCH_KEEP_DATABASE")]
    pub keep_database: bool,
}

/// One running `hookline` process.
pub struct HooklineProcess {
    /// Its OS process id.
    pub pid: u32,
    child: Child,
}

impl HooklineProcess {
    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HooklineProcess {
    fn drop(&mut self) {
        // An early error return must not leave hookline processes behind.
        let _ = self.child.kill();
    }
}

/// The running system under test.
pub struct Stack {
    /// How the stack was set up.
    pub options: StackOptions,
    hookline: PathBuf,
    /// The run's directory (logs, metrics).
    pub run_dir: PathBuf,
    /// The run's database name.
    database: String,
    /// The run's database URL.
    pub database_url: String,
    /// The run's database, for the figures computed from its rows.
    pub db: DatabaseConnection,
    queue_prefix: String,
    environment: Vec<(&'static str, String)>,
    /// `http://127.0.0.1:<port>` of `hookline serve`.
    pub api_url: String,
    /// `127.0.0.1:<port>` of the worker's `/metrics`.
    pub metrics_addr: String,
    /// The fake Atlassian (OAuth and the issue API).
    pub fake: FakeAtlassian,
    /// The benchmark's subscriber: every company's `jira:issue_*` subscription, whose
    /// deliveries the figures count (one per event).
    pub subscriber: BenchSubscriber,
    /// A second subscriber: every company's subscription to project ORB's issue events (the
    /// fan-out: a second delivery of every event, checked for loss and duplicates too). None
    /// with `--destination`.
    pub fanout: Option<BenchSubscriber>,
    /// The reader of the broker destination of `--destination <broker kind>`; it counts into
    /// `subscriber`'s recorder.
    pub consumer: Option<BrokerConsumer>,
    /// `hookline serve`.
    pub api: Option<HooklineProcess>,
    /// `hookline worker`.
    pub worker: Option<HooklineProcess>,
    /// Every connection's webhook URL and secret (`X-Hub-Signature` key).
    pub connections: Vec<(String, String)>,
    /// The HTTP client of the setup calls.
    client: reqwest::Client,
}

impl Stack {
    /// Creates the database and queue namespace, migrates, starts the fakes and `hookline
    /// serve`, and creates the company, connection and subscription. The worker is not started.
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        let hookline = match &options.hookline {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .context("locating this binary")?
                .with_file_name("hookline"),
        };
        ensure!(
            hookline.is_file(),
            "no hookline binary at {} (build it with `cargo build --release -p api --bin \
             hookline`, or pass --hookline)",
            hookline.display()
        );
        let id = worker::short_id();
        let run_dir = match &options.run_dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join(format!("hookline-bench-{id}")),
        };
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating the run directory {}", run_dir.display()))?;

        let database = format!("hookline_bench_{id}");
        let database_url = create_database(&options.postgres_url, &database).await?;
        let queue_prefix = format!("hookline-bench-{id}");
        let fake = FakeAtlassian::start().await;
        let subscriber = BenchSubscriber::start().await?;
        let fanout = match options.destination {
            None => Some(BenchSubscriber::start().await?),
            Some(_) => None,
        };
        let consumer = match options.destination {
            None | Some(DestinationKind::Http) => None,
            Some(kind) => {
                let urls = BrokerUrls {
                    redis: options.redis_url.clone(),
                    amqp: options.amqp_url.clone(),
                    nats: options.nats_url.clone(),
                };
                let run = format!("hookline-bench-{id}");
                Some(
                    BrokerConsumer::start(kind, &urls, &run, subscriber.recorder())
                        .await
                        .with_context(|| format!("setting up the {} destination", kind.name()))?,
                )
            }
        };
        fake.serve_every_issue();
        let api_port = free_port()?;
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let key = base64::engine::general_purpose::STANDARD.encode(rand_key());
        let environment = vec![
            ("DATABASE_URL", database_url.clone()),
            ("REDIS_URL", options.redis_url.clone()),
            ("HOOKLINE_QUEUE_PREFIX", queue_prefix.clone()),
            ("HOOKLINE_LISTEN", format!("127.0.0.1:{api_port}")),
            ("HOOKLINE_METRICS_LISTEN", metrics_addr.clone()),
            ("HOOKLINE_ENCRYPTION_KEY", key),
            ("HOOKLINE_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("HOOKLINE_ALLOW_PRIVATE_TARGETS", "true".to_owned()),
            // One connection takes the whole offered load: the per-connection limit is off.
            ("HOOKLINE_INGEST_RATE_LIMIT", "0".to_owned()),
            (
                "HOOKLINE_WORKER_CONCURRENCY",
                options.worker_concurrency.to_string(),
            ),
            ("JIRA_CLIENT_ID", fake_atlassian::CLIENT_ID.to_owned()),
            (
                "JIRA_CLIENT_SECRET",
                fake_atlassian::CLIENT_SECRET.to_owned(),
            ),
            ("ATLASSIAN_AUTH_URL", fake.url.clone()),
            ("ATLASSIAN_API_URL", fake.url.clone()),
            ("RUST_LOG", options.rust_log.clone()),
        ];
        let mut environment = environment;
        if let Some(lease) = &options.lease {
            environment.push(("HOOKLINE_LEASE", lease.clone()));
        }
        let db = Database::connect(&database_url)
            .await
            .with_context(|| format!("connecting to the run's database {database}"))?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the setup HTTP client")?;
        let mut stack = Self {
            options,
            hookline,
            run_dir,
            database,
            database_url,
            db,
            queue_prefix,
            environment,
            api_url: format!("http://127.0.0.1:{api_port}"),
            metrics_addr,
            fake,
            subscriber,
            fanout,
            consumer,
            api: None,
            worker: None,
            connections: Vec::new(),
            client,
        };
        stack.migrate().await?;
        stack.api = Some(stack.spawn("serve")?);
        stack
            .wait_until_up(&format!("{}/healthz", stack.api_url))
            .await?;
        stack.create_tenant().await?;
        Ok(stack)
    }

    /// `hookline migrate`, to completion.
    async fn migrate(&self) -> anyhow::Result<()> {
        let log = self.log_file("migrate")?;
        let mut command = self.command("migrate", log)?;
        let status = tokio::task::spawn_blocking(move || command.status())
            .await
            .context("waiting for hookline migrate")?
            .context("running hookline migrate")?;
        ensure!(
            status.success(),
            "hookline migrate failed ({status}); see {}",
            self.run_dir.join("migrate.log").display()
        );
        Ok(())
    }

    /// `HOOKLINE_WORKER_CONCURRENCY` of the worker.
    pub fn concurrency(&self) -> usize {
        self.options.worker_concurrency
    }

    /// Starts `hookline worker`; returns once its `/metrics` answers.
    pub async fn start_worker(&mut self) -> anyhow::Result<()> {
        let worker = self.spawn("worker")?;
        self.worker = Some(worker);
        let metrics = format!("http://{}/metrics", self.metrics_addr);
        self.wait_until_up(&metrics).await
    }

    /// Moves every due job of `queue` from apalis-redis' scheduled set to its active list, in
    /// chunks of 1,000; returns how many were moved.
    ///
    /// This is step 1 of apalis-redis 1.0's `fetch_next.lua`, which does it in one `RPUSH` with
    /// `unpack(ids)`: with more than about 8,000 due jobs (a backlog built while no worker
    /// fetched) Lua's `unpack` fails ("too many results to unpack"), every fetch of the queue
    /// fails, and the worker never starts on it. Every push lands in the scheduled set (apalis
    /// schedules "now" jobs at the current time), so the drain benchmark's backlog has to be
    /// promoted like this before a worker can drain it.
    pub async fn promote_scheduled_jobs(&self, queue: &str) -> anyhow::Result<usize> {
        let client = redis::Client::open(self.options.redis_url.as_str())
            .with_context(|| format!("Redis URL {}", self.options.redis_url))?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .context("connecting to Redis")?;
        let base = format!("{}:{queue}", self.queue_prefix);
        let (scheduled, active, signal) = (
            format!("{base}:scheduled"),
            format!("{base}:active"),
            format!("{base}:signal"),
        );
        let now = chrono::Utc::now().timestamp();
        let mut moved = 0;
        loop {
            let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&scheduled)
                .arg(0)
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(1000)
                .query_async(&mut conn)
                .await
                .with_context(|| format!("reading {scheduled}"))?;
            if ids.is_empty() {
                break;
            }
            redis::pipe()
                .atomic()
                .cmd("RPUSH")
                .arg(&active)
                .arg(&ids)
                .ignore()
                .cmd("ZREM")
                .arg(&scheduled)
                .arg(&ids)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .with_context(|| format!("moving jobs from {scheduled} to {active}"))?;
            moved += ids.len();
        }
        redis::pipe()
            .cmd("DEL")
            .arg(&signal)
            .ignore()
            .cmd("LPUSH")
            .arg(&signal)
            .arg(1)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .with_context(|| format!("signalling {signal}"))?;
        Ok(moved)
    }

    /// The worker's `/metrics` text now.
    pub async fn worker_metrics(&self) -> anyhow::Result<String> {
        let url = format!("http://{}/metrics", self.metrics_addr);
        self.client
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET {url}"))?
            .text()
            .await
            .with_context(|| format!("reading {url}"))
    }

    /// The API's `/metrics` text now.
    pub async fn api_metrics(&self) -> anyhow::Result<String> {
        let url = format!("{}/metrics", self.api_url);
        self.client
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("GET {url}"))?
            .text()
            .await
            .with_context(|| format!("reading {url}"))
    }

    /// Stops the processes, drops the database (unless kept) and deletes the queue keys.
    pub async fn stop(mut self) {
        if let Some(worker) = self.worker.take() {
            worker.kill();
        }
        if let Some(api) = self.api.take() {
            api.kill();
        }
        self.db.close_by_ref().await.ok();
        if self.options.keep_database {
            eprintln!("kept database {}", self.database_url);
        } else if let Err(error) = drop_database(&self.options.postgres_url, &self.database).await {
            eprintln!("could not drop database {}: {error:#}", self.database);
        }
        tests::services::delete_keys(&self.options.redis_url, &self.queue_prefix).await;
        if let Some(consumer) = self.consumer.take() {
            consumer.stop().await;
        }
    }

    fn log_file(&self, name: &str) -> anyhow::Result<std::fs::File> {
        let path = self.run_dir.join(format!("{name}.log"));
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
    }

    fn command(&self, subcommand: &str, log: std::fs::File) -> anyhow::Result<Command> {
        let mut command = Command::new(&self.hookline);
        command
            .arg(subcommand)
            .envs(self.environment.iter().map(|(name, value)| (*name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log.try_clone().context("duplicating a log file handle")?,
            ))
            .stderr(Stdio::from(log));
        Ok(command)
    }

    fn spawn(&self, subcommand: &str) -> anyhow::Result<HooklineProcess> {
        let log = self.log_file(subcommand)?;
        let child = self
            .command(subcommand, log)?
            .spawn()
            .with_context(|| format!("starting hookline {subcommand}"))?;
        // The pid is printed so a profiler can be attached (`perf record -p <pid>`).
        eprintln!("hookline {subcommand} started, pid {}", child.id());
        Ok(HooklineProcess {
            pid: child.id(),
            child,
        })
    }

    async fn wait_until_up(&self, url: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = self.client.get(url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{url} did not answer within 30 s; see the logs in {}",
                    self.run_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tenants: `companies` companies, each with `sites_per_company` Jira connections
    /// (OAuth through the fake, or admin-registered) and its subscriptions (`subscribe`).
    async fn create_tenant(&mut self) -> anyhow::Result<()> {
        for company in 0..self.options.companies.max(1) {
            let created = self
                .call(
                    reqwest::Method::POST,
                    "/api/v1/companies",
                    ADMIN_TOKEN,
                    Some(serde_json::json!({ "name": format!("bench-{company}") })),
                )
                .await?;
            let api_key = string_field(&created, "apiKey")?;
            let sites: Vec<String> = (0..self.options.sites_per_company.max(1))
                .map(|site| format!("bench-c{company}-s{site}"))
                .collect();
            let connections = if self.options.no_enrichment {
                let mut connections = Vec::new();
                for site in &sites {
                    connections.push(
                        self.call(
                            reqwest::Method::POST,
                            "/api/v1/connections",
                            &api_key,
                            Some(serde_json::json!({
                                "pluginId": "jira",
                                "externalId": format!("{site}.atlassian.net"),
                                "externalName": site,
                            })),
                        )
                        .await?,
                    );
                }
                connections
            } else {
                self.fake.set_consent_sites(
                    sites
                        .iter()
                        .map(|site| fake_atlassian::site(site))
                        .collect(),
                );
                self.connect_through_oauth(&api_key).await?
            };
            for connection in &connections {
                self.connections.push((
                    string_field(connection, "webhookUrl")?,
                    string_field(connection, "webhookSecret")?,
                ));
            }
            self.subscribe(&api_key).await?;
        }
        Ok(())
    }

    /// A company's subscriptions. By default four with different filters: `jira:issue_*` (the
    /// counted subscriber), `jira:issue_*` of project ORB (the fan-out subscriber), and two
    /// that issue events never match (`comment_*`, and `jira:issue_*` of project NOPE), which
    /// every event is still matched against. With `--destination`, one `jira:issue_*`
    /// subscription to that destination.
    async fn subscribe(&self, api_key: &str) -> anyhow::Result<()> {
        let http = |url: &str| serde_json::json!({ "type": "http", "url": url });
        let subscriptions = match &self.fanout {
            Some(fanout) => vec![
                (http(&self.subscriber.url), "jira:issue_*", None, true),
                (
                    http(&fanout.url),
                    "jira:issue_*",
                    Some(serde_json::json!({"projectKeys": ["ORB"]})),
                    false,
                ),
                (http(&fanout.url), "comment_*", None, false),
                (
                    http(&self.subscriber.url),
                    "jira:issue_*",
                    Some(serde_json::json!({"projectKeys": ["NOPE"]})),
                    true,
                ),
            ],
            None => {
                let destination = match &self.consumer {
                    Some(consumer) => consumer.destination.clone(),
                    None => http(&self.subscriber.url),
                };
                vec![(destination, "jira:issue_*", None, true)]
            }
        };
        for (destination, event_type, filters, counted) in subscriptions {
            // An HTTP destination goes as `url`, the form binaries before broker destinations
            // (a baseline) understand too.
            let mut body = if destination["type"] == "http" {
                serde_json::json!({ "url": destination["url"], "eventTypes": [event_type] })
            } else {
                serde_json::json!({ "destination": destination, "eventTypes": [event_type] })
            };
            if let Some(filters) = filters {
                body["filters"] = filters;
            }
            let subscription = self
                .call(
                    reqwest::Method::POST,
                    "/api/v1/subscriptions",
                    api_key,
                    Some(body),
                )
                .await?;
            let secret = string_field(&subscription, "secret")?;
            match (&self.fanout, counted) {
                (Some(fanout), false) => fanout.add_secret(&secret),
                _ => self.subscriber.add_secret(&secret),
            }
        }
        Ok(())
    }

    /// The OAuth connect flow as a person runs it, against the fake Atlassian: authorize,
    /// consent, callback (JSON). Returns the connections of the sites the consent listed.
    async fn connect_through_oauth(&self, api_key: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let response = self
            .client
            .post(format!(
                "{}/api/v1/connections/jira/authorize",
                self.api_url
            ))
            .bearer_auth(api_key)
            .send()
            .await
            .context("POST /api/v1/connections/jira/authorize")?;
        ensure!(
            response.status().is_success(),
            "authorize answered {}",
            response.status()
        );
        // The callback wants the cookie the browser got when it started the flow.
        let cookie = tests::cookies_of(&response);
        let authorize: serde_json::Value = response
            .json()
            .await
            .context("reading the authorize answer")?;
        let callback = self
            .fake
            .consent(&string_field(&authorize, "authorizeUrl")?);
        let response = self
            .client
            .get(&callback)
            .header("cookie", cookie)
            .header("accept", "application/json")
            .send()
            .await
            .context("GET the OAuth callback")?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .context("reading the OAuth callback's answer")?;
        ensure!(
            status.is_success(),
            "the OAuth callback answered {status}: {body}"
        );
        body["connections"]
            .as_array()
            .filter(|connections| !connections.is_empty())
            .cloned()
            .with_context(|| format!("the OAuth callback connected no site: {body}"))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.api_url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        ensure!(
            status.is_success(),
            "{method} {path} answered {status}: {text}"
        );
        serde_json::from_str(&text)
            .with_context(|| format!("the answer to {method} {path} is not JSON: {text}"))
    }
}

fn string_field(value: &serde_json::Value, name: &str) -> anyhow::Result<String> {
    value[name]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no string {name:?} in {value}"))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr().context("finding a free port")?.port())
}

/// 32 random bytes (two v4 UUIDs: this crate has no other random source).
fn rand_key() -> Vec<u8> {
    [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
        .iter()
        .flat_map(|uuid| uuid.into_bytes())
        .collect()
}

/// The URL of database `name` on the server of `admin_url`, with the same query string
/// (`?sslmode=disable` and the like).
fn database_url(admin_url: &str, name: &str) -> String {
    let (url, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    }
}

async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let admin = Database::connect(admin_url)
        .await
        .with_context(|| format!("connecting to Postgres at {admin_url}"))?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .with_context(|| format!("creating database {name}"))?;
    admin.close().await.ok();
    Ok(database_url(admin_url, name))
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let admin = Database::connect(admin_url)
        .await
        .with_context(|| format!("connecting to Postgres at {admin_url}"))?;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .with_context(|| format!("dropping database {name}"))?;
    admin.close().await.ok();
    Ok(())
}

/// Writes `text` to `name` in the run directory (best effort: the figures matter more).
pub fn save(run_dir: &Path, name: &str, text: &str) {
    let path = run_dir.join(name);
    if let Err(error) = std::fs::write(&path, text) {
        eprintln!("could not write {}: {error}", path.display());
    }
}
