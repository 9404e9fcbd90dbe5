//! Logging (tracing) and the Prometheus recorder.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global tracing subscriber. `RUST_LOG` overrides the default filter.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn,apalis=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second initialisation (tests) is ignored.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Installs the process-wide Prometheus recorder and returns the handle that renders it.
pub fn install_metrics_recorder() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    // End-to-end latency includes delivery retries: minutes to hours.
    let end_to_end_buckets = [
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0,
        36000.0,
    ];
    let batch_row_buckets = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
    let handle = PrometheusBuilder::new()
        .set_buckets(&buckets)?
        .set_buckets_for_metric(
            Matcher::Full("hookline_delivery_end_to_end_seconds".into()),
            &end_to_end_buckets,
        )?
        .set_buckets_for_metric(
            Matcher::Full("hookline_ingest_batch_rows".into()),
            &batch_row_buckets,
        )?
        .install_recorder()
        .map_err(|error| anyhow::anyhow!("could not install the Prometheus recorder: {error}"))?;
    describe_metrics();
    Ok(handle)
}

/// The help text and unit of every metric hookline exports (DESIGN §7): the `# HELP` lines of
/// `/metrics`, and the list an operator reads to know what there is.
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

    // Ingest (API).
    describe_counter!(
        "hookline_ingest_requests_total",
        "Webhook requests answered, by outcome (accepted, duplicate, or the error code)"
    );
    describe_histogram!(
        "hookline_ingest_duration_seconds",
        Unit::Seconds,
        "Time from a webhook request's arrival to its answer"
    );
    describe_histogram!(
        "hookline_ingest_batch_rows",
        "Events written per group commit of the ingest path"
    );
    describe_histogram!(
        "hookline_ingest_batch_duration_seconds",
        Unit::Seconds,
        "Time one group commit of the ingest path took"
    );
    describe_counter!(
        "hookline_enqueue_failures_total",
        "Jobs that could not be pushed after their row was committed (the sweeper recovers them)"
    );

    // Jobs (worker).
    describe_counter!("hookline_jobs_total", "Jobs run, by job and outcome");
    describe_histogram!(
        "hookline_job_duration_seconds",
        Unit::Seconds,
        "Time one job run took, by job"
    );
    describe_counter!(
        "hookline_sweeper_requeued_total",
        "Rows whose job was lost or due and that the sweeper enqueued, by stage"
    );
    describe_counter!(
        "hookline_worker_restarts_total",
        "Queue workers restarted after their backend failed (e.g. Redis lost its keys), by queue"
    );
    describe_counter!(
        "hookline_queue_jobs_removed_total",
        "Finished jobs the janitor removed from the queue backend"
    );
    describe_counter!(
        "hookline_enrichment_total",
        "Events enriched through the Jira API, by enrichment status (ok, skipped, failed)"
    );
    describe_counter!(
        "hookline_jira_api_calls_total",
        "Calls to the Jira REST API, by HTTP status"
    );
    describe_counter!(
        "hookline_jira_rate_limited_total",
        "Jira REST API calls answered 429"
    );
    describe_counter!(
        "hookline_token_refreshes_total",
        "OAuth token refreshes, by outcome"
    );
    describe_counter!(
        "hookline_delivery_attempts_total",
        "Delivery attempts to subscribers, by outcome"
    );
    describe_histogram!(
        "hookline_delivery_attempt_duration_seconds",
        Unit::Seconds,
        "Time one delivery attempt took"
    );
    describe_histogram!(
        "hookline_delivery_end_to_end_seconds",
        Unit::Seconds,
        "Time from an event's receipt to its successful delivery to one subscriber"
    );
    describe_counter!(
        "hookline_deliveries_dead_total",
        "Deliveries that ran out of retries (or failed permanently) and are dead"
    );
    describe_counter!(
        "hookline_subscriptions_disabled_total",
        "Subscriptions disabled after failing for too long"
    );

    // Sampled on a timer by the workers.
    describe_gauge!(
        "hookline_queue_depth",
        "Rows waiting per stage in the database (events not yet processed, deliveries due)"
    );
    describe_gauge!(
        "hookline_queue_oldest_age_seconds",
        Unit::Seconds,
        "Age of the oldest row waiting per stage"
    );
    describe_gauge!(
        "hookline_queue_jobs",
        "Jobs waiting in the queue backend, by queue and state (ready, scheduled)"
    );
    describe_gauge!(
        "hookline_deliveries_dead",
        "Dead deliveries in the database"
    );
    describe_gauge!("hookline_connections", "Connections by status");
}
