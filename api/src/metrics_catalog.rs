//! Every metric family hookline exports (DESIGN §7), with its help text, unit and the label
//! values known in advance.
//!
//! At start-up every process describes each family and registers its known series at zero, so
//! a fresh process with no traffic already exposes every family: dashboards and alerts see `0`,
//! not "no data", and a scrape tells a healthy idle process from a broken exporter. A test
//! checks that every metric the code emits is listed here, and that the dashboard and alert
//! rules in `deploy/` query only metrics listed here. The standard `process_*` families are
//! not recorded through `metrics`: [`crate::process_metrics`] writes them at each scrape.

use metrics::{Label, Unit};

/// What kind of Prometheus metric a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonically increasing count (name ends in `_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution of observations (`_bucket`, `_sum`, `_count` series).
    Histogram,
}

/// One metric family.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The metric name, e.g. `hookline_ingest_requests_total`.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The unit, when it has one (seconds, bytes).
    pub unit: Option<Unit>,
    /// The series registered at start-up: one label set each. A family without labels lists
    /// one empty set.
    pub series: &'static [&'static [(&'static str, &'static str)]],
}

/// A family without labels.
const NO_LABELS: &[&[(&str, &str)]] = &[&[]];

/// The queues jobs travel on (label `queue` and `job`).
const JOB_SERIES: &[&[(&str, &str)]] = &[
    &[("job", "process_events"), ("outcome", "ok")],
    &[("job", "process_events"), ("outcome", "error")],
    &[("job", "deliver"), ("outcome", "ok")],
    &[("job", "deliver"), ("outcome", "error")],
    &[("job", "deliver_retry"), ("outcome", "ok")],
    &[("job", "deliver_retry"), ("outcome", "error")],
];

const JOBS: &[&[(&str, &str)]] = &[
    &[("job", "process_events")],
    &[("job", "deliver")],
    &[("job", "deliver_retry")],
];

const QUEUES: &[&[(&str, &str)]] = &[
    &[("queue", "process_events")],
    &[("queue", "deliveries")],
    &[("queue", "delivery_retries")],
];

const QUEUE_STATES: &[&[(&str, &str)]] = &[
    &[("queue", "process_events"), ("state", "ready")],
    &[("queue", "process_events"), ("state", "scheduled")],
    &[("queue", "deliveries"), ("state", "ready")],
    &[("queue", "deliveries"), ("state", "scheduled")],
    &[("queue", "delivery_retries"), ("state", "ready")],
    &[("queue", "delivery_retries"), ("state", "scheduled")],
];

const STAGES: &[&[(&str, &str)]] = &[&[("stage", "process_event")], &[("stage", "deliver")]];

/// Every family, in the order `/metrics` documents them.
pub const FAMILIES: &[Family] = &[
    // The process itself.
    Family {
        name: "hookline_build_info",
        kind: Kind::Gauge,
        help: "Always 1; the `version` label is the running hookline version",
        unit: None,
        series: &[&[("version", env!("CARGO_PKG_VERSION"))]],
    },
    // Ingest (API).
    Family {
        name: "hookline_ingest_requests_total",
        kind: Kind::Counter,
        help: "Webhook requests answered, by outcome (accepted, duplicate, or the error code)",
        unit: None,
        series: &[
            &[("outcome", "accepted")],
            &[("outcome", "duplicate")],
            &[("outcome", "unknown_connection")],
            &[("outcome", "bad_signature")],
            &[("outcome", "too_large")],
            &[("outcome", "too_slow")],
            &[("outcome", "busy")],
            &[("outcome", "rate_limited")],
            &[("outcome", "bad_body")],
            &[("outcome", "unavailable")],
            &[("outcome", "error")],
        ],
    },
    Family {
        name: "hookline_ingest_duration_seconds",
        kind: Kind::Histogram,
        help: "Time from a webhook request's arrival to its answer",
        unit: Some(Unit::Seconds),
        series: NO_LABELS,
    },
    Family {
        name: "hookline_ingest_batch_rows",
        kind: Kind::Histogram,
        help: "Events written per group commit of the ingest path",
        unit: None,
        series: NO_LABELS,
    },
    Family {
        name: "hookline_ingest_batch_duration_seconds",
        kind: Kind::Histogram,
        help: "Time one group commit of the ingest path took",
        unit: Some(Unit::Seconds),
        series: NO_LABELS,
    },
    Family {
        name: "hookline_enqueue_failures_total",
        kind: Kind::Counter,
        help: "Pushes of jobs that failed after their rows were committed (retried, or recovered by the sweeper)",
        unit: None,
        series: JOBS,
    },
    Family {
        name: "hookline_process_events_batch_events",
        kind: Kind::Histogram,
        help: "Events per ProcessEvents batch, after merging the jobs a worker runs at once",
        unit: None,
        series: NO_LABELS,
    },
    Family {
        name: "hookline_events_processed_total",
        kind: Kind::Counter,
        help: "Events handled by ProcessEvents batches, by outcome",
        unit: None,
        series: &[
            &[("outcome", "processed")],
            &[("outcome", "failed")],
            &[("outcome", "not_claimed")],
            &[("outcome", "released")],
        ],
    },
    Family {
        name: "hookline_database_retries_total",
        kind: Kind::Counter,
        help: "Database operations of jobs retried after a transient failure (connection lost, server restarting)",
        unit: None,
        series: NO_LABELS,
    },
    // Jobs (workers).
    Family {
        name: "hookline_jobs_total",
        kind: Kind::Counter,
        help: "Jobs run, by job and outcome",
        unit: None,
        series: JOB_SERIES,
    },
    Family {
        name: "hookline_job_duration_seconds",
        kind: Kind::Histogram,
        help: "Time one job run took, by job",
        unit: Some(Unit::Seconds),
        series: JOBS,
    },
    Family {
        name: "hookline_sweeper_requeued_total",
        kind: Kind::Counter,
        help: "Rows whose job was lost or due and that the sweeper enqueued, by stage",
        unit: None,
        series: STAGES,
    },
    Family {
        name: "hookline_worker_restarts_total",
        kind: Kind::Counter,
        help: "Queue workers restarted after their backend failed (e.g. Redis lost its keys), by queue",
        unit: None,
        series: QUEUES,
    },
    Family {
        name: "hookline_queue_jobs_removed_total",
        kind: Kind::Counter,
        help: "Finished jobs the janitor removed from the queue backend",
        unit: None,
        series: NO_LABELS,
    },
    Family {
        name: "hookline_enrichment_total",
        kind: Kind::Counter,
        help: "Events enriched through the Jira API, by enrichment status (ok, skipped, failed)",
        unit: None,
        series: &[
            &[("status", "ok")],
            &[("status", "skipped")],
            &[("status", "failed")],
        ],
    },
    Family {
        name: "hookline_jira_api_calls_total",
        kind: Kind::Counter,
        help: "Calls to the Jira REST API, by HTTP status",
        unit: None,
        series: &[
            &[("status", "200")],
            &[("status", "401")],
            &[("status", "404")],
            &[("status", "429")],
            &[("status", "500")],
        ],
    },
    Family {
        name: "hookline_jira_webhook_registrations_total",
        kind: Kind::Counter,
        help: "Dynamic Jira webhooks asked for, by what Jira did (created, refused: an entry \
               Jira refused; error: the call failed)",
        unit: None,
        series: &[
            &[("outcome", "created")],
            &[("outcome", "refused")],
            &[("outcome", "error")],
        ],
    },
    Family {
        name: "hookline_jira_webhook_renewals_total",
        kind: Kind::Counter,
        help: "Renewals of dynamic Jira webhooks, by outcome (renewed; gone, revoked, refused: \
               marked renewal_failed; failed: tried again on the next run)",
        unit: None,
        series: &[
            &[("outcome", "renewed")],
            &[("outcome", "gone")],
            &[("outcome", "revoked")],
            &[("outcome", "refused")],
            &[("outcome", "failed")],
        ],
    },
    Family {
        name: "hookline_jira_webhook_deletions_total",
        kind: Kind::Counter,
        help: "Dynamic Jira webhooks deleted at Jira (one by one, or with their connection), by \
               outcome (deleted, gone: Jira no longer had it, skipped: the grant no longer \
               works, failed: left to expire at Jira)",
        unit: None,
        series: &[
            &[("outcome", "deleted")],
            &[("outcome", "gone")],
            &[("outcome", "skipped")],
            &[("outcome", "failed")],
        ],
    },
    Family {
        name: "hookline_jira_rate_limited_total",
        kind: Kind::Counter,
        help: "Jira REST API calls answered 429",
        unit: None,
        series: NO_LABELS,
    },
    Family {
        name: "hookline_token_refreshes_total",
        kind: Kind::Counter,
        help: "OAuth token refreshes (one per grant, for all its sites), by outcome",
        unit: None,
        series: &[
            &[("outcome", "success")],
            &[("outcome", "invalid_grant")],
            &[("outcome", "unavailable")],
            &[("outcome", "rejected")],
            &[("outcome", "reuse_refused")],
            &[("outcome", "waited_too_long")],
            &[("outcome", "unsaved")],
        ],
    },
    Family {
        name: "hookline_token_pair_save_failures_total",
        kind: Kind::Counter,
        help: "Rotated OAuth token pairs the database did not take (kept in memory, saved again \
               before the grant's next refresh)",
        unit: None,
        series: NO_LABELS,
    },
    Family {
        name: "hookline_delivery_attempts_total",
        kind: Kind::Counter,
        help: "Delivery attempts to subscribers, by outcome",
        unit: None,
        series: &[
            &[("outcome", "success")],
            &[("outcome", "http_error")],
            &[("outcome", "network_error")],
            &[("outcome", "refused")],
        ],
    },
    Family {
        name: "hookline_delivery_attempt_duration_seconds",
        kind: Kind::Histogram,
        help: "Time one delivery attempt took",
        unit: Some(Unit::Seconds),
        series: NO_LABELS,
    },
    Family {
        name: "hookline_delivery_end_to_end_seconds",
        kind: Kind::Histogram,
        help: "Time from an event's receipt to its successful delivery to one subscriber",
        unit: Some(Unit::Seconds),
        series: NO_LABELS,
    },
    Family {
        name: "hookline_deliveries_dead_total",
        kind: Kind::Counter,
        help: "Deliveries that ran out of retries (or failed permanently) and are dead",
        unit: None,
        series: NO_LABELS,
    },
    Family {
        name: "hookline_subscriptions_disabled_total",
        kind: Kind::Counter,
        help: "Subscriptions disabled after failing for too long",
        unit: None,
        series: NO_LABELS,
    },
    Family {
        name: "hookline_retention_pruned_total",
        kind: Kind::Counter,
        help: "Rows deleted because they were older than the retention period, by table",
        unit: None,
        series: &[
            &[("table", "webhook_event")],
            &[("table", "delivery")],
            &[("table", "delivery_attempt")],
        ],
    },
    // Sampled on a timer (not per scrape) from the database and the queue backend.
    Family {
        name: "hookline_queue_depth",
        kind: Kind::Gauge,
        help: "Rows waiting per stage in the database (events not yet processed, deliveries due)",
        unit: None,
        series: STAGES,
    },
    Family {
        name: "hookline_queue_oldest_age_seconds",
        kind: Kind::Gauge,
        help: "Age of the oldest row waiting per stage",
        unit: Some(Unit::Seconds),
        series: STAGES,
    },
    Family {
        name: "hookline_queue_jobs",
        kind: Kind::Gauge,
        help: "Jobs waiting in the queue backend, by queue and state (ready, scheduled)",
        unit: None,
        series: QUEUE_STATES,
    },
    Family {
        name: "hookline_deliveries_dead",
        kind: Kind::Gauge,
        help: "Dead deliveries in the database",
        unit: None,
        series: NO_LABELS,
    },
    Family {
        name: "hookline_connections",
        kind: Kind::Gauge,
        help: "Connections by status",
        unit: None,
        series: &[
            &[("status", "active")],
            &[("status", "reauth_required")],
            &[("status", "disabled")],
        ],
    },
];

/// Describes every family and registers its known series: counters at zero, histograms with
/// no observations, gauges at zero (the sampler and the process metrics fill them in at once),
/// `hookline_build_info` at one. Call once, after the recorder is installed.
pub fn register_all() {
    for family in FAMILIES {
        describe(family);
        for series in family.series {
            let labels: Vec<Label> = series
                .iter()
                .map(|&(key, value)| Label::new(key, value))
                .collect();
            match family.kind {
                Kind::Counter => metrics::counter!(family.name, labels).increment(0),
                Kind::Gauge if family.name == "hookline_build_info" => {
                    metrics::gauge!(family.name, labels).set(1.0);
                }
                Kind::Gauge => metrics::gauge!(family.name, labels).set(0.0),
                Kind::Histogram => {
                    // Registering the handle is enough: it is rendered with empty buckets.
                    let _ = metrics::histogram!(family.name, labels);
                }
            }
        }
    }
}

fn describe(family: &Family) {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    match (family.kind, family.unit) {
        (Kind::Counter, Some(unit)) => describe_counter!(family.name, unit, family.help),
        (Kind::Counter, None) => describe_counter!(family.name, family.help),
        (Kind::Gauge, Some(unit)) => describe_gauge!(family.name, unit, family.help),
        (Kind::Gauge, None) => describe_gauge!(family.name, family.help),
        (Kind::Histogram, Some(unit)) => describe_histogram!(family.name, unit, family.help),
        (Kind::Histogram, None) => describe_histogram!(family.name, family.help),
    }
}

/// The family named `name`, if hookline exports it.
pub fn family(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|family| family.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for family in FAMILIES {
            assert!(seen.insert(family.name), "{} listed twice", family.name);
            assert!(
                family.name.starts_with("hookline_"),
                "{} lacks the prefix",
                family.name
            );
            assert_eq!(
                family.kind == Kind::Counter,
                family.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                family.name
            );
            assert!(!family.help.is_empty(), "{} has no help", family.name);
            assert!(!family.series.is_empty(), "{} has no series", family.name);
        }
    }
}
