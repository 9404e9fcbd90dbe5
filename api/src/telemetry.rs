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

/// Installs the process-wide Prometheus recorder, registers every family of
/// [`crate::metrics_catalog`] and returns the handle that renders them.
pub fn install_metrics_recorder() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    // End-to-end latency includes delivery retries: minutes to hours.
    let end_to_end_buckets = [
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0,
        36000.0,
    ];
    let batch_row_buckets = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
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
        .set_buckets_for_metric(
            Matcher::Full("hookline_process_events_batch_events".into()),
            &batch_row_buckets,
        )?
        .install_recorder()
        .map_err(|error| anyhow::anyhow!("could not install the Prometheus recorder: {error}"))?;
    crate::metrics_catalog::register_all();
    Ok(handle)
}

/// The Prometheus text exposition of this process: every hookline family, then the standard
/// process families.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut exposition = handle.render();
    crate::process_metrics::append_to(&mut exposition);
    exposition
}
