//! hookline's background work: the apalis jobs, the queues they travel on, and the sweeper.
//!
//! The database is the source of truth and the queue is the fast path (DESIGN §1). Every job
//! carries ids only, claims its row with a conditional UPDATE before doing anything, and so is
//! safe to run twice; the [`sweeper`] finds rows whose job was lost and enqueues them again.

pub mod db_retry;
pub mod destination;
pub mod enqueue;
pub mod enrichment;
pub mod envelope;
pub mod event_batches;
pub mod janitor;
pub mod jira_webhook_renewal;
pub mod jobs;
pub mod matching;
pub mod periodic;
pub mod queue;
pub mod retention;
pub mod retry_schedule;
pub mod runner;
pub mod running_batches;
pub mod sampler;
pub mod signature;
pub mod sql;
pub mod storable;
pub mod subscription_cache;
pub mod subscription_health;
pub mod sweeper;
pub mod target;
pub mod token_keeper;
pub mod wake;
pub mod waves;

use std::time::Duration;

pub use queue::JobQueue;
pub use runner::{JobContext, run_workers};

/// How the workers behave. Built by the binary from its settings; tests build it directly.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How many jobs of one queue a worker process runs at once.
    pub concurrency: usize,
    /// Unique name of this process among the workers sharing the queue (apalis requires unique
    /// worker names; a reused name makes two processes share one in-flight set).
    pub process_name: String,
    /// How often the sweeper looks for rows whose job was lost.
    pub sweep_interval: Duration,
    /// How long an enqueued or claimed row is left alone before the sweeper enqueues it again:
    /// the lease of a claim, and the grace given to a fresh row's own job.
    pub lease: Duration,
    /// How long an idle worker waits before polling the queue again.
    pub poll_interval: Duration,
    /// How long enrichment may take per event (retries and `Retry-After` waits included)
    /// before the event goes out with `enrichment.status = failed`.
    pub enrichment_budget: Duration,
    /// Refresh OAuth tokens whose refresh token was not used for this long.
    pub token_idle_refresh: Duration,
    /// How often the token keeper looks for such tokens.
    pub token_keeper_interval: Duration,
    /// Delays before each retry of a failed delivery; 1 + len attempts before it is dead.
    pub retry_schedule: Vec<Duration>,
    /// Let deliveries reach loopback, private, link-local and metadata addresses.
    pub allow_private_targets: bool,
    /// Time a delivery gets to connect to its subscriber.
    pub delivery_connect_timeout: Duration,
    /// Time a delivery attempt gets in total (connect, request, response excerpt).
    pub delivery_timeout: Duration,
    /// A subscription whose deliveries fail without a success for this long is disabled.
    pub disable_failing_after: Duration,
    /// Events (with their deliveries and attempts) older than this are deleted; `None` keeps
    /// everything.
    pub retention: Option<Duration>,
    /// How often retention pruning runs, across all workers together.
    pub retention_interval: Duration,
    /// Most events in one `ProcessEvents` job (the ingest's and the sweeper's pushes) and in
    /// one batch merged by [`event_batches`].
    pub event_batch_size: usize,
    /// Most deliveries in one `Deliver` job.
    pub deliver_batch_size: usize,
    /// Jira issue reads in flight at once per `ProcessEvents` job.
    pub enrichment_concurrency: usize,
    /// An event claimed more often than this (its processing failed or killed its worker each
    /// time) ends `failed` with its last error.
    pub poison_attempts: i32,
    /// Dynamic Jira webhooks expiring within this time are renewed (Jira expires them 30
    /// days after their registration or last refresh).
    pub jira_webhook_renewal_margin: Duration,
    /// How often the renewal of dynamic Jira webhooks runs, across all workers together.
    pub jira_webhook_renewal_interval: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            process_name: format!("hookline-{}-{}", std::process::id(), short_id()),
            sweep_interval: Duration::from_secs(5),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(100),
            enrichment_budget: Duration::from_secs(10),
            token_idle_refresh: Duration::from_secs(30 * 86_400),
            token_keeper_interval: Duration::from_secs(3600),
            retry_schedule: [5, 300, 1800, 7200, 18_000, 36_000, 36_000]
                .map(Duration::from_secs)
                .to_vec(),
            allow_private_targets: false,
            delivery_connect_timeout: Duration::from_secs(5),
            delivery_timeout: Duration::from_secs(15),
            disable_failing_after: Duration::from_secs(5 * 86_400),
            retention: Some(Duration::from_secs(30 * 86_400)),
            retention_interval: Duration::from_secs(3600),
            event_batch_size: 128,
            deliver_batch_size: 64,
            enrichment_concurrency: 32,
            poison_attempts: 5,
            jira_webhook_renewal_margin: Duration::from_secs(10 * 86_400),
            jira_webhook_renewal_interval: Duration::from_secs(3600),
        }
    }
}

/// Eight random hex digits, to tell processes apart in worker names.
pub fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}
