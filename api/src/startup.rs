//! Building and running the process: database, migrations, queue, HTTP server, workers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use entity::cipher::Cipher;
use metrics_exporter_prometheus::PrometheusHandle;
use migration::{Migrator, MigratorTrait};
use plugins::jira::oauth::{JiraOAuth, OAuthConfig};
use plugins::jira::rest::JiraClient;
use plugins::jira::token_manager::{RefreshPolicy, TokenManager};
use poem::endpoint::BoxEndpoint;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::{EndpointExt, Route, Server};
use poem_openapi::OpenApiService;
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use secrecy::SecretString;
use worker::{JobContext, JobQueue, WorkerSettings};

use crate::config::{Settings, decode_key};
use crate::error::ApiError;
use crate::routes;
use crate::state::AppState;

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API only (`hookline serve`).
    Serve,
    /// The workers only (`hookline worker`), with `/metrics` on `HOOKLINE_METRICS_LISTEN`.
    Worker,
    /// API and workers in one process (`hookline all`).
    All,
}

/// How long in-flight HTTP requests get to finish after a shutdown signal.
const HTTP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A built process, bound to its port, not yet serving.
pub struct Application {
    role: Role,
    acceptor: Option<TcpAcceptor>,
    metrics_acceptor: Option<TcpAcceptor>,
    local_addr: Option<SocketAddr>,
    state: AppState,
    job_context: JobContext,
    /// Where the embedded mode's generated secrets are, if they are in use.
    pub embedded_secrets: Option<std::path::PathBuf>,
}

impl Application {
    /// Connects to the database and the queue, applies migrations in the embedded mode (checks
    /// them otherwise), and binds the listener.
    pub async fn build(
        settings: Settings,
        role: Role,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Self> {
        settings.validate()?;

        let (encryption_key, admin_token, embedded_secrets) = resolve_secrets(&settings)?;
        let key = decode_key(&encryption_key).context("HOOKLINE_ENCRYPTION_KEY is invalid")?;
        let cipher = Cipher::new(&key, &[]);

        let db = connect_database(&settings).await?;
        if settings.is_embedded() {
            Migrator::up(&db, None)
                .await
                .context("could not apply migrations to the embedded database")?;
        } else {
            let pending = Migrator::get_pending_migrations(&db)
                .await
                .context("could not read the applied migrations")?;
            if !pending.is_empty() {
                bail!(
                    "the database has {} migration(s) not applied: run `hookline migrate` first",
                    pending.len()
                );
            }
        }
        let queue = connect_queue(&settings, &db).await?;
        if role != Role::Worker {
            // Jobs are about to be pushed: the sweeper's marker must exist first, or a worker's
            // first sweep would take the queue for one that lost its jobs and enqueue every
            // waiting event a second time.
            if let Err(error) = queue.mark_alive().await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "could not write the queue's marker key; the first sweep may enqueue waiting events twice"
                );
            }
        }

        let (acceptor, local_addr) = if role == Role::Worker {
            (None, None)
        } else {
            let acceptor = TcpListener::bind(settings.listen)
                .into_acceptor()
                .await
                .with_context(|| format!("could not listen on {}", settings.listen))?;
            let addr = local_socket_addr(&acceptor)?;
            (Some(acceptor), Some(addr))
        };
        let metrics_acceptor = match (role, settings.metrics_listen) {
            (Role::Worker, Some(addr)) => Some(
                TcpListener::bind(addr)
                    .into_acceptor()
                    .await
                    .with_context(|| format!("could not listen on {addr} for metrics"))?,
            ),
            _ => None,
        };

        let public_url = settings.public_base_url(local_addr.unwrap_or(settings.listen));
        let jira = jira_client(&settings, &public_url, db.clone(), cipher.clone())?;
        let state = AppState {
            db: db.clone(),
            queue: queue.clone(),
            cipher,
            public_url: Arc::from(public_url),
            admin_token,
            body_rules: crate::webhook_body::BodyRules {
                limit_bytes: settings.body_limit_bytes,
                min_bytes_per_sec: settings.ingest_min_body_bytes_per_sec,
                grace: settings.ingest_body_grace,
            },
            body_budget: crate::body_budget::BodyBudget::new(settings.ingest_body_bytes_in_flight),
            ingest_grace: settings.lease,
            allow_private_targets: settings.private_targets_allowed(),
            metrics,
            jira: jira.clone(),
            connections: crate::connection_cache::ConnectionCache::new(
                settings.connection_cache_ttl,
            ),
            events: crate::event_writer::EventWriter::spawn(
                db.clone(),
                worker::enqueue::EventPusher::spawn(queue.clone(), settings.event_batch_size),
            ),
            rate_limiter: Arc::new(crate::rate_limit::RateLimiter::new(
                settings.ingest_rate_limit,
                settings.ingest_burst,
            )),
            embedded: settings.is_embedded(),
        };
        let job_context = JobContext {
            db,
            queue,
            settings: Arc::new(WorkerSettings {
                concurrency: settings.worker_concurrency,
                sweep_interval: settings.sweep_interval,
                lease: settings.lease,
                token_idle_refresh: settings.token_idle_refresh,
                enrichment_budget: settings.enrichment_budget,
                retry_schedule: settings.retry_schedule.0.clone(),
                allow_private_targets: settings.private_targets_allowed(),
                delivery_connect_timeout: settings.delivery_connect_timeout,
                delivery_timeout: settings.delivery_timeout,
                disable_failing_after: settings.disable_failing_after,
                retention: (!settings.retention.is_zero()).then_some(settings.retention),
                retention_interval: settings.retention_interval,
                event_batch_size: settings.event_batch_size,
                deliver_batch_size: settings.delivery_batch_size,
                enrichment_concurrency: settings.enrichment_concurrency,
                poison_attempts: i32::from(settings.poison_attempts),
                jira_webhook_renewal_margin: settings.jira_webhook_renewal_margin,
                jira_webhook_renewal_interval: settings.jira_webhook_renewal_interval,
                ..WorkerSettings::default()
            }),
            jira: jira.clone(),
            cipher: state.cipher.clone(),
            subscriber_client: worker::destination::http::subscriber_client(
                worker::destination::http::ClientSettings {
                    connect_timeout: settings.delivery_connect_timeout,
                    timeout: settings.delivery_timeout,
                    allow_private_targets: settings.private_targets_allowed(),
                },
            )?,
            subscriptions: Arc::default(),
            event_batches: Arc::default(),
            running_batches: Arc::default(),
            destinations: Arc::new(worker::destination::pool::DestinationPool::new(
                worker::destination::broker::BrokerTimeouts {
                    connect: settings.delivery_connect_timeout,
                    publish: settings.delivery_timeout,
                },
                settings.private_targets_allowed(),
            )),
        };
        Ok(Self {
            role,
            acceptor,
            metrics_acceptor,
            local_addr,
            state,
            job_context,
            embedded_secrets,
        })
    }

    /// The HTTP port (None for a worker-only process).
    pub fn port(&self) -> Option<u16> {
        self.local_addr.map(|addr| addr.port())
    }

    /// The HTTP address (None for a worker-only process).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The public base URL webhook URLs are built from.
    pub fn public_url(&self) -> &str {
        &self.state.public_url
    }

    /// The database connection (tests inspect rows through it).
    pub fn db(&self) -> &DatabaseConnection {
        &self.state.db
    }

    /// What the workers of this process get (tests run jobs directly with it).
    pub fn job_context(&self) -> &JobContext {
        &self.job_context
    }

    /// Serves until `shutdown` completes, then stops taking work and lets in-flight work finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if self.role == Role::Serve {
            // The backlog gauges are sampled from the database by every worker; an API-only
            // process samples them too, so that it exposes every family from start-up (the
            // values are the same in every process: dashboards take their max).
            tokio::spawn(worker::sampler::run(
                self.job_context.clone(),
                stop_rx.clone(),
            ));
        }
        let stopped = move || {
            let mut stop_rx = stop_rx.clone();
            async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            }
        };
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });

        let mut tasks = tokio::task::JoinSet::new();
        if let Some(acceptor) = self.acceptor {
            let app = build_routes(self.state.clone());
            let signal = stopped();
            tasks.spawn(async move {
                Server::new_with_acceptor(acceptor)
                    .run_with_graceful_shutdown(app, signal, Some(HTTP_SHUTDOWN_TIMEOUT))
                    .await
                    .context("the HTTP server failed")
            });
        }
        if let Some(acceptor) = self.metrics_acceptor {
            let app = metrics_routes(self.state.metrics.clone());
            let signal = stopped();
            tasks.spawn(async move {
                Server::new_with_acceptor(acceptor)
                    .run_with_graceful_shutdown(app, signal, Some(Duration::from_secs(1)))
                    .await
                    .context("the metrics server failed")
            });
        }
        if matches!(self.role, Role::Worker | Role::All) {
            let ctx = self.job_context.clone();
            let signal = stopped();
            tasks.spawn(async move { worker::run_workers(ctx, signal).await });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.context("a task panicked")??;
        }
        Ok(())
    }
}

/// The OpenAPI document of the API, as committed in `openapi.json`.
pub fn openapi_spec() -> String {
    openapi_service().spec()
}

fn openapi_service() -> OpenApiService<routes::Apis, ()> {
    OpenApiService::new(routes::apis(), "hookline", env!("CARGO_PKG_VERSION")).description(
        "hookline receives Jira Cloud webhooks, records them durably, enriches them through the \
         Jira REST API and delivers them to subscribers with Standard Webhooks signatures.",
    )
}

fn build_routes(state: AppState) -> BoxEndpoint<'static> {
    let api = openapi_service();
    let docs = api.swagger_ui();
    let spec = api.spec_endpoint();
    // The document is generated by the same code: it always parses.
    let allowed = Arc::new(
        crate::allow::AllowedMethods::from_spec(&api.spec()).unwrap_or_else(|error| {
            tracing::error!(
                error = format!("{error:#}"),
                "the OpenAPI document does not parse"
            );
            crate::allow::AllowedMethods::default()
        }),
    );
    crate::console::mount(Route::new().nest("/", api))
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .around(crate::console::home_first)
        .data(state)
        .catch_all_error(|error| async move {
            // An operation's own `ApiError` arrives here as an error made from its response:
            // answer that as is. Everything else (unknown route, wrong method) gets the envelope.
            if error.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED {
                // `Allow` is added around this, where the path is known.
                let body = serde_json::json!({
                    "code": "method_not_allowed",
                    "detail": "this path does not accept this method; see the Allow header",
                });
                poem::Response::builder()
                    .status(poem::http::StatusCode::METHOD_NOT_ALLOWED)
                    .content_type("application/json")
                    .body(body.to_string())
            } else if error.has_source() {
                poem::IntoResponse::into_response(ApiError::from_poem(error))
            } else {
                error.into_response()
            }
        })
        .around(|endpoint, request| async move {
            use poem::Endpoint as _;
            use tracing::Instrument as _;
            // One span per request. The path only: query strings can carry OAuth codes.
            let span = tracing::info_span!(
                "request",
                method = %request.method(),
                path = %request.uri().path()
            );
            let started = std::time::Instant::now();
            let mut response = endpoint.call(request).instrument(span.clone()).await;
            let _entered = span.enter();
            if let Ok(response) = &mut response {
                with_retry_after(response);
            }
            if let Ok(response) = &response {
                tracing::debug!(
                    status = response.status().as_u16(),
                    duration_ms = started.elapsed().as_millis() as u64,
                    "request finished"
                );
            }
            response
        })
        .around(move |endpoint, request| {
            crate::allow::add_allow_header(endpoint, request, Arc::clone(&allowed))
        })
        .around(crate::body_guard::close_unread_bodies)
        .boxed()
}

/// Every `503` says when to retry (`Retry-After`), so that Jira and other callers back off
/// instead of hammering a service whose database or queue is away; `{code, detail}` stays the
/// body. The operations' own 503 answers carry it already (`ApiError::Unavailable`, documented
/// in the OpenAPI document); this adds it to the few made elsewhere (request extractors).
fn with_retry_after(response: &mut poem::Response) {
    use poem::http::header::{HeaderValue, RETRY_AFTER};
    if response.status() == poem::http::StatusCode::SERVICE_UNAVAILABLE
        && !response.headers().contains_key(RETRY_AFTER)
    {
        response.headers_mut().insert(
            RETRY_AFTER,
            HeaderValue::from(crate::error::UNAVAILABLE_RETRY_AFTER_SECS),
        );
    }
}

/// The Jira REST client with its token manager; the OAuth app only when `JIRA_CLIENT_ID` and
/// `JIRA_CLIENT_SECRET` are both set.
fn jira_client(
    settings: &Settings,
    public_url: &str,
    db: DatabaseConnection,
    cipher: Cipher,
) -> anyhow::Result<JiraClient> {
    use secrecy::ExposeSecret as _;
    let http = plugins::jira::oauth::http_client().context("could not build the HTTP client")?;
    let oauth = match (&settings.jira_client_id, &settings.jira_client_secret) {
        (Some(client_id), Some(client_secret)) => Some(JiraOAuth::new(
            OAuthConfig {
                client_id: client_id.clone(),
                client_secret: client_secret.expose_secret().to_owned(),
                auth_url: settings.atlassian_auth_url.clone(),
                api_url: settings.atlassian_api_url.clone(),
                redirect_url: format!("{public_url}/oauth/jira/callback"),
                scopes: settings.jira_scopes.clone(),
            },
            http.clone(),
        )?),
        _ => None,
    };
    let policy = RefreshPolicy {
        lease: settings.token_refresh_lease,
        wait: settings.token_refresh_wait,
        reuse_leeway: settings.token_reuse_leeway,
        ..RefreshPolicy::default()
    };
    let tokens = TokenManager::with_policy(db, cipher, oauth, policy);
    Ok(JiraClient::new(http, &settings.atlassian_api_url, tokens))
}

fn metrics_routes(metrics: Option<PrometheusHandle>) -> BoxEndpoint<'static> {
    Route::new()
        .at(
            "/metrics",
            poem::endpoint::make_sync(move |_| {
                metrics
                    .as_ref()
                    .map(crate::telemetry::render)
                    .unwrap_or_default()
            }),
        )
        .boxed()
}

fn local_socket_addr(acceptor: &TcpAcceptor) -> anyhow::Result<SocketAddr> {
    acceptor
        .local_addr()
        .into_iter()
        .find_map(|addr| addr.as_socket_addr().copied())
        .context("the listener has no socket address")
}

/// The encryption key and admin token: configured, or generated for the embedded mode.
fn resolve_secrets(
    settings: &Settings,
) -> anyhow::Result<(
    SecretString,
    Option<SecretString>,
    Option<std::path::PathBuf>,
)> {
    match (&settings.encryption_key, settings.is_embedded()) {
        (Some(key), _) => Ok((key.clone(), settings.admin_token.clone(), None)),
        (None, true) => {
            let (key, token, path) = crate::embedded::load_or_create(&settings.data_dir)?;
            let token = settings.admin_token.clone().unwrap_or(token);
            Ok((key, Some(token), Some(path)))
        }
        (None, false) => bail!("HOOKLINE_ENCRYPTION_KEY is required with Postgres"),
    }
}

/// Opens the database pool. SQLite gets WAL, a busy timeout and foreign keys; its directory is
/// created if needed.
pub async fn connect_database(settings: &Settings) -> anyhow::Result<DatabaseConnection> {
    let url = settings.database_url.as_str();
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        // Short, so that ingest answers 503 quickly when the database is gone.
        .acquire_timeout(Duration::from_secs(3));
    if settings.is_embedded() {
        create_sqlite_directory(url)?;
        options.max_connections(8).map_sqlx_sqlite_opts(|opts| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true)
        });
    } else {
        options
            .max_connections(settings.database_pool_size)
            .min_connections(2);
    }
    Database::connect(options)
        .await
        .context("could not connect to the database (DATABASE_URL)")
}

fn create_sqlite_directory(url: &str) -> anyhow::Result<()> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(":memory:") {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("could not create {}", parent.display()))?;
    }
    Ok(())
}

async fn connect_queue(settings: &Settings, db: &DatabaseConnection) -> anyhow::Result<JobQueue> {
    match &settings.redis_url {
        Some(url) => JobQueue::redis(url, &settings.queue_prefix).await,
        None => {
            JobQueue::sqlite(
                db.get_sqlite_connection_pool().clone(),
                &settings.queue_prefix,
            )
            .await
        }
    }
}

/// Applies every pending migration (`hookline migrate`).
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let db = connect_database(settings).await?;
    Migrator::up(&db, None).await.context("migrations failed")?;
    if settings.is_embedded() {
        JobQueue::sqlite(
            db.get_sqlite_connection_pool().clone(),
            &settings.queue_prefix,
        )
        .await?;
    }
    Ok(())
}
