//! Metrics from the first second (DESIGN §7): a freshly started API and worker, with no traffic
//! at all, expose every family of `api::metrics_catalog` plus the process families, and the
//! exposition passes `promtool check metrics`; every metric the code emits is in the catalog.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tests::process::{self, HooklineProcess};
use tests::{Backend, TestEnv, wait_until};

use crate::embedded::{free_port, have, repository_root};

/// A freshly started `serve` and `worker` (Postgres + Redis), or `all` (embedded), scraped
/// before anything else happens.
async fn a_fresh_process_exposes_every_family_with_no_traffic(backend: Backend) {
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    tests::hookline_binary();
    let logs = env.dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("log directory");
    let mut vars = process::hookline_env(&env);
    let api_port = free_port();
    vars.push(("HOOKLINE_LISTEN".into(), format!("127.0.0.1:{api_port}")));
    let mut scrapes = vec![format!("http://127.0.0.1:{api_port}/metrics")];
    let mut processes = Vec::new();
    match backend {
        Backend::Embedded => {
            processes.push(HooklineProcess::spawn("all", &["all"], vars, &logs));
        }
        Backend::PostgresRedis => {
            let worker_port = free_port();
            let mut worker_vars = vars.clone();
            worker_vars.push((
                "HOOKLINE_METRICS_LISTEN".into(),
                format!("127.0.0.1:{worker_port}"),
            ));
            processes.push(HooklineProcess::spawn("serve", &["serve"], vars, &logs));
            processes.push(HooklineProcess::spawn(
                "worker",
                &["worker"],
                worker_vars,
                &logs,
            ));
            scrapes.push(format!("http://127.0.0.1:{worker_port}/metrics"));
        }
    }
    let client = reqwest::Client::new();
    for url in scrapes {
        let exposition = wait_until(Duration::from_secs(60), &format!("{url} answers"), || {
            let client = client.clone();
            let url = url.clone();
            async move {
                let response = client.get(&url).send().await.ok()?;
                response.status().is_success().then_some(())?;
                response.text().await.ok()
            }
        })
        .await;
        check_exposition(&exposition, env.dir.path());
        let version = format!(
            "hookline_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(exposition.contains(&version), "{version} in\n{exposition}");
        assert!(
            exposition.contains("hookline_ingest_requests_total{outcome=\"accepted\"} 0"),
            "counters start at zero for their known labels:\n{exposition}"
        );
        assert!(
            exposition.contains("hookline_delivery_end_to_end_seconds_count 0"),
            "histograms are registered before their first observation:\n{exposition}"
        );
    }
    for process in &mut processes {
        assert!(process.is_running(), "{}", process.logs());
    }
    drop(processes);
    env.cleanup().await;
}

crate::on_both_backends!(a_fresh_process_exposes_every_family_with_no_traffic);

/// Checks a Prometheus text exposition: every family of the catalog and every process family is
/// there with `# HELP` and `# TYPE`, counters and only counters end in `_total`; and
/// `promtool check metrics` passes when promtool is installed (CI installs it).
pub fn check_exposition(text: &str, scratch: &Path) {
    let mut help = std::collections::BTreeSet::new();
    let mut types = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, description) = rest.split_once(' ').expect("HELP line has a text");
            assert!(!description.trim().is_empty(), "empty help for {name}");
            help.insert(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line has a type");
            types.insert(name.to_owned(), kind.to_owned());
        }
    }
    let expected = api::metrics_catalog::FAMILIES
        .iter()
        .map(|family| family.name)
        .chain(
            api::process_metrics::FAMILIES
                .iter()
                .map(|(name, _, _)| *name),
        );
    for family in expected {
        assert!(types.contains_key(family), "{family} missing from:\n{text}");
    }
    for (name, kind) in &types {
        assert!(
            name.starts_with("hookline_") || name.starts_with("process_"),
            "{name} lacks the prefix"
        );
        assert!(help.contains(name), "{name} has no HELP line");
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{kind} {name}: counters and only counters end in _total"
        );
    }
    if have("promtool") {
        let file = scratch.join("metrics.txt");
        std::fs::write(&file, text).expect("write metrics");
        let output = Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", file.display()))
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    } else {
        crate::deploy::tool_missing("promtool", "`promtool check metrics`");
    }
}

/// Every `counter!`/`gauge!`/`histogram!` of a `hookline_*` name in the product's source is in
/// the catalog, and every catalog family is emitted somewhere (no stale entries).
#[test]
fn every_metric_the_code_emits_is_in_the_catalog_and_back() {
    let root = repository_root();
    let mut emitted = std::collections::BTreeSet::new();
    let mut sources = String::new();
    for crate_dir in ["api", "worker", "plugins", "entity"] {
        for file in rust_files(&root.join(crate_dir).join("src")) {
            if file.ends_with("metrics_catalog.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).expect("read a source file");
            for macro_name in ["counter!(", "gauge!(", "histogram!("] {
                for (at, _) in text.match_indices(macro_name) {
                    let rest = text[at + macro_name.len()..].trim_start();
                    if let Some(literal) = rest.strip_prefix('"') {
                        let name: String = literal.chars().take_while(|c| *c != '"').collect();
                        if name.starts_with("hookline_") {
                            emitted.insert(name);
                        }
                    }
                }
            }
            sources.push_str(&text);
        }
    }
    assert!(!emitted.is_empty(), "the scan found the metrics");
    for name in &emitted {
        assert!(
            api::metrics_catalog::family(name).is_some(),
            "{name} is emitted but not in api/src/metrics_catalog.rs"
        );
    }
    for family in api::metrics_catalog::FAMILIES {
        if family.name == "hookline_build_info" {
            continue;
        }
        assert!(
            sources.contains(&format!("\"{}\"", family.name)),
            "{} is in the catalog but nothing emits it",
            family.name
        );
    }
}

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}
