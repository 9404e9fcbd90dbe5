//! What every request handler shares.

use std::sync::Arc;

use entity::cipher::Cipher;
use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::DatabaseConnection;
use secrecy::SecretString;
use worker::JobQueue;

/// Shared state of the API, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: DatabaseConnection,
    /// The job queue ingest pushes to.
    pub queue: JobQueue,
    /// Encrypts and decrypts secret columns.
    pub cipher: Cipher,
    /// Base URL webhook URLs are built from, without a trailing slash.
    pub public_url: Arc<str>,
    /// The admin token, if admin calls are enabled.
    pub admin_token: Option<SecretString>,
    /// How webhook bodies must arrive: size limit, floor rate and its grace.
    pub body_rules: crate::webhook_body::BodyRules,
    /// The bytes of webhook bodies this process holds at once, capped.
    pub body_budget: crate::body_budget::BodyBudget,
    /// How long a freshly recorded event is left to its own job before the sweeper enqueues it
    /// again.
    pub ingest_grace: std::time::Duration,
    /// Whether subscriber URLs may point at loopback and private addresses.
    pub allow_private_targets: bool,
    /// Renders `/metrics`, when a Prometheus recorder is installed in this process.
    pub metrics: Option<PrometheusHandle>,
    /// The Jira REST client, with the token manager and (if configured) the OAuth app.
    pub jira: plugins::jira::rest::JiraClient,
    /// Connections as ingest sees them, cached for a few seconds.
    pub connections: crate::connection_cache::ConnectionCache,
    /// Records received webhooks with group commit.
    pub events: crate::event_writer::EventWriter,
    /// Limits how fast each connection's webhooks are accepted.
    pub rate_limiter: Arc<crate::rate_limit::RateLimiter>,
    /// Whether this is the embedded mode (SQLite): the console then offers `Send a test event`
    /// when no Atlassian app is configured.
    pub embedded: bool,
}

impl AppState {
    /// The webhook URL Jira posts a connection's events to.
    pub fn webhook_url(&self, connection_id: uuid::Uuid) -> String {
        format!("{}/webhook/jira/{connection_id}", self.public_url)
    }
}
