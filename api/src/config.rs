//! Configuration: one typed settings struct, read once at start-up from flags and environment
//! variables (DESIGN §6, §10), validated with messages a person can act on.
//!
//! This is the only module that reads the environment (through clap). Tests take
//! [`Settings::from_env`] and override the fields they care about; they never mutate the
//! environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

/// Every setting of `hookline serve`, `worker` and `all`. Each one is a flag with an
/// environment variable behind it; `hookline --help` lists them.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Database URL: `postgres://…` in production, `sqlite://…` for the embedded mode.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://.hookline/hookline.db?mode=rwc"
    )]
    pub database_url: String,

    /// Redis URL for the job queue. Unset: the embedded queue in the SQLite database (only with
    /// a SQLite `DATABASE_URL`).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(
        long = "listen",
        env = "HOOKLINE_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Base URL the outside world reaches this API at; webhook and OAuth callback URLs are built
    /// from it. Default: `http://<listen address>`.
    #[arg(long, env = "HOOKLINE_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Key that encrypts secrets at rest (webhook secrets, OAuth tokens): base64 of 32 bytes.
    /// Required with Postgres; the embedded mode generates one into its data directory.
    #[arg(long, env = "HOOKLINE_ENCRYPTION_KEY", value_parser = parse_secret, hide_env_values = true)]
    pub encryption_key: Option<SecretString>,

    /// Bearer token for the admin calls (`POST /api/v1/companies`). Unset with Postgres: the
    /// admin calls are refused. The embedded mode generates one into its data directory.
    #[arg(long, env = "HOOKLINE_ADMIN_TOKEN", value_parser = parse_secret, hide_env_values = true)]
    pub admin_token: Option<SecretString>,

    /// OAuth client id of the Atlassian (Jira) app.
    #[arg(long, env = "JIRA_CLIENT_ID")]
    pub jira_client_id: Option<String>,

    /// OAuth client secret of the Atlassian (Jira) app.
    #[arg(long, env = "JIRA_CLIENT_SECRET", value_parser = parse_secret, hide_env_values = true)]
    pub jira_client_secret: Option<SecretString>,

    /// OAuth scopes asked for when a Jira site is connected, space-separated. `offline_access`
    /// is needed for a refresh token.
    #[arg(
        long,
        env = "JIRA_SCOPES",
        default_value = plugins::jira::oauth::DEFAULT_SCOPES
    )]
    pub jira_scopes: String,

    /// Refresh an OAuth grant's tokens when its refresh token was not used for this long
    /// (Atlassian expires refresh tokens unused for 90 days).
    #[arg(long, env = "HOOKLINE_TOKEN_IDLE_REFRESH", default_value = "30d", value_parser = parse_duration)]
    pub token_idle_refresh: Duration,

    /// How long the refresh lease on an OAuth grant holds: longer than one refresh with its
    /// retries takes; a crashed holder's lease is taken over after it.
    #[arg(long, env = "HOOKLINE_TOKEN_REFRESH_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub token_refresh_lease: Duration,

    /// How long a caller waits for another task's or process' refresh of the same grant before
    /// it gives up (enrichment then goes out `failed`, a read-through answers 502).
    #[arg(long, env = "HOOKLINE_TOKEN_REFRESH_WAIT", default_value = "20s", value_parser = parse_duration)]
    pub token_refresh_wait: Duration,

    /// How long after its first use a refresh token may be sent again, after an answer that may
    /// not have rotated it (5xx, timeout, unreadable answer). Past it the grant is marked
    /// `reauth_required` rather than risking Atlassian revoking it. Must stay below Atlassian's
    /// 10-minute reuse leeway.
    #[arg(long, env = "HOOKLINE_TOKEN_REUSE_LEEWAY", default_value = "8m", value_parser = parse_duration)]
    pub token_reuse_leeway: Duration,

    /// Base URL of Atlassian's OAuth server (tests point it at a fake on loopback).
    #[arg(
        long,
        env = "ATLASSIAN_AUTH_URL",
        default_value = "https://auth.atlassian.com"
    )]
    pub atlassian_auth_url: String,

    /// Base URL of Atlassian's API gateway (tests point it at a fake on loopback).
    #[arg(
        long,
        env = "ATLASSIAN_API_URL",
        default_value = "https://api.atlassian.com"
    )]
    pub atlassian_api_url: String,

    /// Delays before each retry of a failed delivery, comma-separated (`500ms`, `5s`, `5m`, `2h`,
    /// `1d`). A delivery gets 1 + N attempts before it is dead.
    #[arg(long, env = "HOOKLINE_RETRY_SCHEDULE", default_value = "5s,5m,30m,2h,5h,10h,10h", value_parser = parse_schedule)]
    pub retry_schedule: RetrySchedule,

    /// Allow subscriber URLs on loopback, private, link-local and metadata addresses.
    /// Default: true in the embedded mode (trying hookline out with a local subscriber),
    /// false otherwise.
    #[arg(long, env = "HOOKLINE_ALLOW_PRIVATE_TARGETS", action = clap::ArgAction::Set)]
    pub allow_private_targets: Option<bool>,

    /// Time a delivery gets to connect to its subscriber.
    #[arg(long, env = "HOOKLINE_DELIVERY_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub delivery_connect_timeout: Duration,

    /// Time a delivery attempt gets in total (connect, request, response excerpt).
    #[arg(long, env = "HOOKLINE_DELIVERY_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,

    /// A subscription whose deliveries fail without a success for this long is disabled.
    #[arg(long, env = "HOOKLINE_DISABLE_FAILING_AFTER", default_value = "5d", value_parser = parse_duration)]
    pub disable_failing_after: Duration,

    /// Events older than this are deleted, with their deliveries and delivery attempts, by the
    /// workers (an event whose delivery is still pending or in retry is kept until it ends);
    /// `0s` keeps everything.
    #[arg(long, env = "HOOKLINE_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub retention: Duration,

    /// How often retention pruning runs (one worker runs it, however many there are).
    #[arg(long, env = "HOOKLINE_RETENTION_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// Dynamic Jira webhooks (registered by hookline) expiring within this time are renewed by
    /// the workers; Jira expires them 30 days after their registration or last refresh, so the
    /// default renews each about every 20 days. At least `HOOKLINE_JIRA_WEBHOOK_RENEWAL_INTERVAL`.
    #[arg(long, env = "HOOKLINE_JIRA_WEBHOOK_RENEWAL_MARGIN", default_value = "10d", value_parser = parse_duration)]
    pub jira_webhook_renewal_margin: Duration,

    /// How often the renewal of dynamic Jira webhooks runs (one worker runs it, however many
    /// there are).
    #[arg(long, env = "HOOKLINE_JIRA_WEBHOOK_RENEWAL_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub jira_webhook_renewal_interval: Duration,

    /// Jobs of one queue a worker process runs at once.
    #[arg(long, env = "HOOKLINE_WORKER_CONCURRENCY", default_value_t = 16)]
    pub worker_concurrency: usize,

    /// Database connections one process keeps at most (API and workers share the pool of a
    /// `hookline all`). Every process of a deployment opens up to this many, so their sum must
    /// stay under the server's `max_connections` (Postgres: 100 by default). The embedded SQLite
    /// database uses at most 8 whatever this says.
    #[arg(long, env = "HOOKLINE_DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: u32,

    /// Most events in one `ProcessEvents` job, and in one batch a worker merges from the jobs
    /// it runs at once: one claim and one commit serve them all. A batch is whatever arrived
    /// together, so an idle system still sends one.
    #[arg(long, env = "HOOKLINE_EVENT_BATCH_SIZE", default_value_t = 128)]
    pub event_batch_size: usize,

    /// Most deliveries in one `Deliver` job (sent concurrently, recorded together).
    #[arg(long, env = "HOOKLINE_DELIVERY_BATCH_SIZE", default_value_t = 64)]
    pub delivery_batch_size: usize,

    /// Jira issue reads one `ProcessEvents` job runs at once.
    #[arg(long, env = "HOOKLINE_ENRICHMENT_CONCURRENCY", default_value_t = 32)]
    pub enrichment_concurrency: usize,

    /// Times an event is claimed for processing before it ends `failed` with its last error
    /// (an event whose processing fails, or kills its worker, every time: a poison event).
    #[arg(long, env = "HOOKLINE_POISON_ATTEMPTS", default_value_t = 5)]
    pub poison_attempts: u16,

    /// Address the worker serves Prometheus `/metrics` on (`hookline worker`). Unset: no listener.
    #[arg(long, env = "HOOKLINE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Largest webhook body accepted, in bytes (larger ones get 413).
    #[arg(long, env = "HOOKLINE_BODY_LIMIT_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub body_limit_bytes: usize,

    /// Most bytes of webhook bodies one API process holds at once (bodies being read or waiting
    /// for their commit; a body counts with its declared `Content-Length` from the start). A
    /// webhook that does not fit is answered 503 with `Retry-After` before its body is read
    /// (Jira retries). At least `HOOKLINE_BODY_LIMIT_BYTES`.
    #[arg(long, env = "HOOKLINE_INGEST_BODY_BYTES_IN_FLIGHT", default_value_t = 32 * 1024 * 1024)]
    pub ingest_body_bytes_in_flight: usize,

    /// Slowest a webhook body may arrive, in bytes per second on average since the request
    /// started, once `HOOKLINE_INGEST_BODY_GRACE` has passed; slower bodies are cut off with
    /// 408 (Jira retries). `0` turns the floor off.
    #[arg(long, env = "HOOKLINE_INGEST_MIN_BODY_BYTES_PER_SEC", default_value_t = 8 * 1024)]
    pub ingest_min_body_bytes_per_sec: u64,

    /// How long a webhook body may take to arrive before the floor rate applies.
    #[arg(long, env = "HOOKLINE_INGEST_BODY_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub ingest_body_grace: Duration,

    /// Webhooks one connection may send per second, on average, to one API process (over
    /// it: 429 with `Retry-After`); `0` turns the limit off.
    #[arg(long, env = "HOOKLINE_INGEST_RATE_LIMIT", default_value_t = 100)]
    pub ingest_rate_limit: u32,

    /// Webhooks one connection may send at once above its rate (the token bucket's size).
    #[arg(long, env = "HOOKLINE_INGEST_BURST", default_value_t = 1000)]
    pub ingest_burst: u32,

    /// How long ingest keeps a connection (its company and webhook secret) in memory before
    /// reading it again; `0s` reads it on every webhook. A connection deleted through another
    /// API process stops accepting events within this time.
    #[arg(long, env = "HOOKLINE_CONNECTION_CACHE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub connection_cache_ttl: Duration,

    /// Namespace of the queues in Redis; deployments sharing one Redis need different ones.
    #[arg(long, env = "HOOKLINE_QUEUE_PREFIX", default_value = "hookline")]
    pub queue_prefix: String,

    /// How often each worker's sweeper looks for rows whose job was lost.
    #[arg(long, env = "HOOKLINE_SWEEP_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// How long a claimed or freshly enqueued row is left alone before the sweeper enqueues it
    /// again (a job's lease).
    #[arg(long, env = "HOOKLINE_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,

    /// How long enriching one event through the Jira API may take, waits for `Retry-After`
    /// and retries included; past it the event is delivered with `enrichment.status = failed`.
    #[arg(long, env = "HOOKLINE_ENRICHMENT_BUDGET", default_value = "10s", value_parser = parse_duration)]
    pub enrichment_budget: Duration,

    /// Where the embedded mode keeps its generated secrets.
    #[arg(long, env = "HOOKLINE_DATA_DIR", default_value = ".hookline")]
    pub data_dir: PathBuf,

    /// Log format: `text` or `json`.
    #[arg(long, env = "HOOKLINE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The delays before each retry of a failed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

impl Settings {
    /// Settings from the environment variables alone, with defaults for the rest.
    pub fn from_env() -> Self {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        // Parsing no arguments cannot fail: every field has a default or is optional.
        match Only::try_parse_from(["hookline"]) {
            Ok(only) => only.settings,
            Err(error) => panic!("the settings' defaults do not parse: {error}"),
        }
    }

    /// Whether the database is SQLite (the embedded mode).
    pub fn is_embedded(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }

    /// Whether subscriber URLs may point at private addresses (see the field).
    pub fn private_targets_allowed(&self) -> bool {
        self.allow_private_targets
            .unwrap_or_else(|| self.is_embedded())
    }

    /// The public base URL without a trailing slash.
    pub fn public_base_url(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{bound}"),
        }
    }

    /// Checks everything that can be checked without connecting anywhere.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_for_migrate()?;
        if !self.is_embedded() && self.redis_url.is_none() {
            bail!(
                "REDIS_URL is required with a Postgres DATABASE_URL (the embedded queue exists only with SQLite)"
            );
        }
        if let Some(redis) = &self.redis_url
            && !(redis.starts_with("redis://") || redis.starts_with("rediss://"))
        {
            bail!("REDIS_URL must start with redis:// or rediss://");
        }
        if !self.is_embedded() && self.encryption_key.is_none() {
            bail!(
                "HOOKLINE_ENCRYPTION_KEY is required with Postgres: generate one with `openssl rand -base64 32`"
            );
        }
        if let Some(key) = &self.encryption_key {
            decode_key(key).context("HOOKLINE_ENCRYPTION_KEY is invalid")?;
        }
        if let Some(public) = &self.public_url
            && !(public.starts_with("http://") || public.starts_with("https://"))
        {
            bail!("HOOKLINE_PUBLIC_URL must start with http:// or https:// (got {public:?})");
        }
        if self.worker_concurrency == 0 {
            bail!("HOOKLINE_WORKER_CONCURRENCY must be at least 1");
        }
        if self.database_pool_size < 2 {
            bail!("HOOKLINE_DATABASE_POOL_SIZE must be at least 2");
        }
        if self.event_batch_size == 0 || self.event_batch_size > 1000 {
            bail!("HOOKLINE_EVENT_BATCH_SIZE must be between 1 and 1000");
        }
        if self.delivery_batch_size == 0 || self.delivery_batch_size > 1000 {
            bail!("HOOKLINE_DELIVERY_BATCH_SIZE must be between 1 and 1000");
        }
        if self.enrichment_concurrency == 0 {
            bail!("HOOKLINE_ENRICHMENT_CONCURRENCY must be at least 1");
        }
        if self.poison_attempts == 0 {
            bail!("HOOKLINE_POISON_ATTEMPTS must be at least 1");
        }
        if self.token_reuse_leeway >= Duration::from_secs(10 * 60) {
            bail!(
                "HOOKLINE_TOKEN_REUSE_LEEWAY must be below Atlassian's 10-minute reuse leeway (e.g. 8m)"
            );
        }
        if self.token_refresh_lease.is_zero() || self.token_refresh_wait.is_zero() {
            bail!(
                "HOOKLINE_TOKEN_REFRESH_LEASE and HOOKLINE_TOKEN_REFRESH_WAIT must be above zero"
            );
        }
        if self.body_limit_bytes < 1024 {
            bail!("HOOKLINE_BODY_LIMIT_BYTES must be at least 1024");
        }
        if self.ingest_body_bytes_in_flight < self.body_limit_bytes {
            bail!(
                "HOOKLINE_INGEST_BODY_BYTES_IN_FLIGHT ({}) must be at least HOOKLINE_BODY_LIMIT_BYTES ({}): a body at the limit could never be received",
                self.ingest_body_bytes_in_flight,
                self.body_limit_bytes
            );
        }
        if self.ingest_rate_limit > 0 && self.ingest_burst == 0 {
            bail!(
                "HOOKLINE_INGEST_BURST must be at least 1 (or set HOOKLINE_INGEST_RATE_LIMIT=0 to turn the limit off)"
            );
        }
        if self.lease < Duration::from_secs(1) {
            bail!("HOOKLINE_LEASE must be at least 1s");
        }
        if self.sweep_interval < Duration::from_millis(50) {
            bail!("HOOKLINE_SWEEP_INTERVAL must be at least 50ms");
        }
        if self.retention_interval < Duration::from_secs(1) {
            bail!("HOOKLINE_RETENTION_INTERVAL must be at least 1s");
        }
        if !self.retention.is_zero() && self.retention < Duration::from_secs(60) {
            bail!(
                "HOOKLINE_RETENTION must be 0s (keep everything) or at least 1m (got {:?})",
                self.retention
            );
        }
        if self.jira_webhook_renewal_interval < Duration::from_secs(1) {
            bail!("HOOKLINE_JIRA_WEBHOOK_RENEWAL_INTERVAL must be at least 1s");
        }
        if self.jira_webhook_renewal_margin < self.jira_webhook_renewal_interval {
            bail!(
                "HOOKLINE_JIRA_WEBHOOK_RENEWAL_MARGIN ({:?}) must be at least HOOKLINE_JIRA_WEBHOOK_RENEWAL_INTERVAL ({:?}): a webhook could otherwise expire between two runs",
                self.jira_webhook_renewal_margin,
                self.jira_webhook_renewal_interval
            );
        }
        if self.queue_prefix.is_empty() || self.queue_prefix.contains(char::is_whitespace) {
            bail!("HOOKLINE_QUEUE_PREFIX must be non-empty and without spaces");
        }
        Ok(())
    }
}

impl Settings {
    /// Checks what `hookline migrate` needs: only `DATABASE_URL` (a migration job must not
    /// depend on Redis or on the application's secrets).
    pub fn validate_for_migrate(&self) -> anyhow::Result<()> {
        let url = self.database_url.as_str();
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            bail!(
                "DATABASE_URL must start with postgres://, postgresql:// or sqlite: (got a URL with another scheme)"
            );
        }
        Ok(())
    }
}

/// Decodes a base64 encryption key and checks it is 32 bytes.
pub fn decode_key(key: &SecretString) -> anyhow::Result<[u8; 32]> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.expose_secret().trim())
        .context("not valid base64")?;
    bytes.try_into().map_err(|bytes: Vec<u8>| {
        anyhow::anyhow!("decodes to {} bytes, 32 are needed", bytes.len())
    })
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    if value.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(SecretString::from(value.to_owned()))
}

/// Parses `500ms`, `5s`, `5m`, `2h`, `1d`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{value:?} has no unit: write e.g. 500ms, 5s, 5m, 2h or 1d"))?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} does not start with a whole number"))?;
    let seconds = |factor: u64| Duration::from_secs(number.saturating_mul(factor));
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(seconds(1)),
        "m" => Ok(seconds(60)),
        "h" => Ok(seconds(3600)),
        "d" => Ok(seconds(86_400)),
        _ => Err(format!(
            "{value:?} has an unknown unit {unit:?}: use ms, s, m, h or d"
        )),
    }
}

fn parse_schedule(value: &str) -> Result<RetrySchedule, String> {
    if value.trim().is_empty() {
        return Ok(RetrySchedule(Vec::new()));
    }
    value
        .split(',')
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()
        .map(RetrySchedule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }

    #[test]
    fn the_default_retry_schedule_has_seven_retries() {
        let settings = Settings::from_env();
        assert_eq!(settings.retry_schedule.0.len(), 7);
        assert_eq!(settings.retry_schedule.0[0], Duration::from_secs(5));
        assert_eq!(settings.retry_schedule.0[6], Duration::from_secs(36_000));
    }

    #[test]
    fn defaults_are_the_embedded_mode_and_valid() {
        let settings = Settings::from_env();
        assert!(settings.is_embedded());
        settings.validate().expect("defaults validate");
    }

    #[test]
    fn migrate_needs_only_the_database_url() {
        let mut settings = Settings::from_env();
        settings.database_url = "postgres://postgres@127.0.0.1/test".into();
        settings.redis_url = None;
        settings.encryption_key = None;
        settings
            .validate_for_migrate()
            .expect("migrate needs no Redis");
        assert!(settings.validate().is_err(), "serving does need Redis");
        settings.database_url = "mysql://localhost/x".into();
        let error = settings.validate_for_migrate().expect_err("scheme");
        assert!(error.to_string().contains("DATABASE_URL"), "{error}");
    }

    #[test]
    fn postgres_without_redis_or_key_is_refused_with_a_reason() {
        let mut settings = Settings::from_env();
        settings.database_url = "postgres://localhost/hookline".into();
        let error = settings.validate().expect_err("needs redis").to_string();
        assert!(error.contains("REDIS_URL"), "{error}");
        settings.redis_url = Some("redis://127.0.0.1".into());
        let error = settings.validate().expect_err("needs a key").to_string();
        assert!(error.contains("HOOKLINE_ENCRYPTION_KEY"), "{error}");
        settings.encryption_key = Some(SecretString::from("c2hvcnQ=".to_owned()));
        let error = format!("{:#}", settings.validate().expect_err("short key"));
        assert!(error.contains("32 are needed"), "{error}");
    }
}
