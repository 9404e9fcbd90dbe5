//! The operator's kit in `deploy/`: the alert rules pass their unit tests, and the alert rules
//! and the Grafana dashboard query only metrics hookline exports.

use std::collections::BTreeSet;
use std::process::Command;

use crate::embedded::{have, repository_root};

/// Says plainly that `tool` is missing, so `what` was skipped; a failure where CI requires the
/// services (`HOOKLINE_REQUIRE_SERVICES=1`: CI installs the tool).
pub fn tool_missing(tool: &str, what: &str) {
    if std::env::var("HOOKLINE_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{tool} is not installed and HOOKLINE_REQUIRE_SERVICES=1: {what} cannot run");
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "NOTICE: {tool} not installed: {what} SKIPPED"
    );
}

#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() {
    if !have("promtool") {
        tool_missing("promtool", "the alert rules' unit tests");
        return;
    }
    let deploy = repository_root().join("deploy");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(&deploy)
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_dashboard_is_valid_and_queries_only_exported_metrics() {
    let path = repository_root().join("deploy/grafana/dashboards/hookline.json");
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "hookline");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut expressions = Vec::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("a numeric id")),
            "ids are unique"
        );
        assert!(
            !panel["title"].as_str().unwrap_or_default().is_empty(),
            "every panel has a title"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "prometheus",
            "{}: uses the provisioned data source",
            panel["title"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} queries something", panel["title"]);
        for target in targets {
            expressions.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    let provisioned = std::fs::read_to_string(
        repository_root().join("deploy/grafana/provisioning/datasources/prometheus.yml"),
    )
    .expect("read the data source");
    assert!(provisioned.contains("uid: prometheus"));
    let names = metric_names(&expressions.join("\n"));
    assert!(
        names.len() >= 20,
        "the dashboard covers the families: {names:?}"
    );
    check_exported(&names, "the dashboard");
}

#[test]
fn the_alert_rules_query_only_exported_metrics() {
    let rules = std::fs::read_to_string(repository_root().join("deploy/alerts.yml"))
        .expect("read the alert rules");
    let expressions: String = rules
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let names = metric_names(&expressions);
    // The descriptions may quote a metric: those must exist too.
    check_exported(&names, "the alert rules");
    for wanted in [
        "hookline_queue_oldest_age_seconds",
        "hookline_deliveries_dead_total",
        "hookline_connections",
        "hookline_token_refreshes_total",
        "hookline_worker_restarts_total",
        "hookline_ingest_requests_total",
    ] {
        assert!(names.contains(wanted), "an alert watches {wanted}");
    }
}

/// The `hookline_*` and `process_*` names in PromQL text (label values in quotes, such as
/// `stage="process_event"`, are not names).
fn metric_names(promql: &str) -> BTreeSet<String> {
    let promql: String = promql.split('"').step_by(2).collect::<Vec<_>>().join(" ");
    let promql = promql.as_str();
    let mut names = BTreeSet::new();
    for prefix in ["hookline_", "process_"] {
        for (at, _) in promql.match_indices(prefix) {
            let before = promql[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = promql[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// Fails unless every name is an exported family (histograms also as `_bucket`, `_sum`,
/// `_count`).
fn check_exported(names: &BTreeSet<String>, used_by: &str) {
    use api::metrics_catalog::{Kind, family};
    let process: BTreeSet<&str> = api::process_metrics::FAMILIES
        .iter()
        .map(|(name, _, _)| *name)
        .collect();
    for name in names {
        if family(name).is_some() || process.contains(name.as_str()) {
            continue;
        }
        let histogram_series = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .and_then(family)
                .is_some_and(|family| family.kind == Kind::Histogram)
        });
        assert!(
            histogram_series,
            "{used_by} queries {name}, which hookline does not export"
        );
    }
}
