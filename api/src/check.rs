//! `hookline check`: validates the settings and tries every dependency a deployment needs (the
//! database and its migrations, the queue, the Atlassian URLs), then prints what it found, for
//! an operator debugging a deployment. Secrets are never printed: URLs lose their password and
//! query string, keys and tokens are shown as "set" or "not set".

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use migration::{Migrator, MigratorTrait};

use crate::config::{Settings, decode_key};

/// How long each connectivity check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked, e.g. `database`.
    pub what: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, secrets redacted.
    pub detail: String,
}

/// Everything `hookline check` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The checks, in the order they ran.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.findings.iter().all(|finding| finding.ok)
    }

    fn add(&mut self, what: &'static str, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        self.findings.push(Finding { what, ok, detail });
    }

    /// The report as a person reads it: one line per check, then the settings in effect.
    pub fn render(&self, settings: &Settings) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "hookline {} check", env!("CARGO_PKG_VERSION"));
        for finding in &self.findings {
            let mark = if finding.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(text, "  {mark} {:<16} {}", finding.what, finding.detail);
        }
        let _ = writeln!(text, "\nSettings in effect (secrets redacted):");
        for (name, value) in settings_in_effect(settings) {
            let _ = writeln!(text, "  {name:<34} {value}");
        }
        let verdict = if self.ok() {
            "every check passed"
        } else {
            "some checks FAILED (see above)"
        };
        let _ = writeln!(text, "\n{verdict}");
        text
    }
}

/// Runs every check. Never fails itself: what goes wrong is a finding.
pub async fn run(settings: &Settings) -> Report {
    let mut report = Report::default();
    let valid = settings.validate().map_err(|error| format!("{error:#}"));
    let settings_ok = valid.is_ok();
    report.add(
        "settings",
        valid.map(|()| "valid (flags and environment variables)".to_owned()),
    );
    if settings_ok && let Some(key) = &settings.encryption_key {
        report.add(
            "encryption key",
            decode_key(key)
                .map(|_| "set, 32 bytes".to_owned())
                .map_err(|error| format!("{error:#}")),
        );
    }

    report.add("database", timed(check_database(settings)).await);
    if settings.redis_url.is_some() {
        report.add("queue", timed(check_redis(settings)).await);
    } else if settings.is_embedded() {
        report.add(
            "queue",
            Ok("embedded (in the SQLite database; REDIS_URL is not set)".to_owned()),
        );
    }
    report.add(
        "atlassian auth",
        timed(check_reachable(&settings.atlassian_auth_url)).await,
    );
    report.add(
        "atlassian api",
        timed(check_reachable(&settings.atlassian_api_url)).await,
    );
    report.add(
        "jira oauth app",
        match (&settings.jira_client_id, &settings.jira_client_secret) {
            (Some(_), Some(_)) => {
                Ok("JIRA_CLIENT_ID and JIRA_CLIENT_SECRET are set".to_owned())
            }
            (None, None) => Ok(
                "not configured: the connect flow and enrichment are off (admin webhooks still work)"
                    .to_owned(),
            ),
            _ => Err("only one of JIRA_CLIENT_ID and JIRA_CLIENT_SECRET is set".to_owned()),
        },
    );
    report
}

/// Runs `check` with [`CHECK_TIMEOUT`], appending how long it took.
async fn timed(
    check: impl std::future::Future<Output = Result<String, String>>,
) -> Result<String, String> {
    let started = Instant::now();
    let result = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    };
    let took = format!(" ({} ms)", started.elapsed().as_millis());
    result
        .map(|detail| detail + &took)
        .map_err(|detail| detail + &took)
}

async fn check_database(settings: &Settings) -> Result<String, String> {
    let url = redact_url(&settings.database_url);
    let db = crate::startup::connect_database(settings)
        .await
        .map_err(|error| format!("{url}: {error:#}"))?;
    let applied = Migrator::get_applied_migrations(&db)
        .await
        .map_err(|error| format!("{url}: could not read the applied migrations: {error}"))?;
    let pending = Migrator::get_pending_migrations(&db)
        .await
        .map_err(|error| format!("{url}: could not read the pending migrations: {error}"))?;
    let summary = format!(
        "{url}: reachable, {} migration(s) applied, {} pending",
        applied.len(),
        pending.len()
    );
    if pending.is_empty() || settings.is_embedded() {
        // The embedded mode applies its migrations at start-up.
        Ok(summary)
    } else {
        Err(format!("{summary}: run `hookline migrate`"))
    }
}

async fn check_redis(settings: &Settings) -> Result<String, String> {
    let Some(url) = &settings.redis_url else {
        return Err("REDIS_URL is not set".to_owned());
    };
    let shown = redact_url(url);
    let queue = worker::JobQueue::redis(url, &settings.queue_prefix)
        .await
        .map_err(|error| format!("{shown}: {error:#}"))?;
    queue
        .ping()
        .await
        .map_err(|error| format!("{shown}: {error:#}"))?;
    Ok(format!(
        "{shown}: answers PING (queue prefix {:?})",
        settings.queue_prefix
    ))
}

/// Any HTTP answer means the host is reachable; only a transport failure fails the check.
async fn check_reachable(base_url: &str) -> Result<String, String> {
    let shown = redact_url(base_url);
    let client = plugins::jira::oauth::http_client().map_err(|error| format!("{error:#}"))?;
    match client.get(base_url).timeout(CHECK_TIMEOUT).send().await {
        Ok(response) => Ok(format!(
            "{shown}: reachable (answered HTTP {})",
            response.status().as_u16()
        )),
        Err(error) => Err(format!(
            "{shown}: not reachable: {:#}",
            anyhow::Error::new(error.without_url())
        )),
    }
}

/// `url` without its password and query string (which may hold credentials).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("REDACTED"));
            }
            if parsed.query().is_some() {
                parsed.set_query(Some("REDACTED"));
            }
            parsed.to_string()
        }
        Err(_) => "(not a valid URL)".to_owned(),
    }
}

fn set_or_not<T>(value: Option<&T>) -> String {
    if value.is_some() {
        "set".to_owned()
    } else {
        "not set".to_owned()
    }
}

/// The settings an operator most often gets wrong, as `check` prints them.
fn settings_in_effect(settings: &Settings) -> Vec<(&'static str, String)> {
    let schedule: Vec<String> = settings
        .retry_schedule
        .0
        .iter()
        .map(|delay| format!("{delay:?}"))
        .collect();
    vec![
        ("DATABASE_URL", redact_url(&settings.database_url)),
        (
            "REDIS_URL",
            settings
                .redis_url
                .as_deref()
                .map_or_else(|| "not set (embedded queue)".to_owned(), redact_url),
        ),
        ("HOOKLINE_LISTEN", settings.listen.to_string()),
        (
            "HOOKLINE_PUBLIC_URL",
            settings.public_base_url(settings.listen),
        ),
        (
            "HOOKLINE_ENCRYPTION_KEY",
            set_or_not(settings.encryption_key.as_ref()),
        ),
        (
            "HOOKLINE_ADMIN_TOKEN",
            set_or_not(settings.admin_token.as_ref()),
        ),
        (
            "JIRA_CLIENT_ID",
            settings
                .jira_client_id
                .clone()
                .unwrap_or_else(|| "not set".to_owned()),
        ),
        (
            "JIRA_CLIENT_SECRET",
            set_or_not(settings.jira_client_secret.as_ref()),
        ),
        (
            "ATLASSIAN_AUTH_URL",
            redact_url(&settings.atlassian_auth_url),
        ),
        ("ATLASSIAN_API_URL", redact_url(&settings.atlassian_api_url)),
        ("HOOKLINE_RETRY_SCHEDULE", schedule.join(",")),
        (
            "HOOKLINE_ALLOW_PRIVATE_TARGETS",
            settings.private_targets_allowed().to_string(),
        ),
        (
            "HOOKLINE_WORKER_CONCURRENCY",
            settings.worker_concurrency.to_string(),
        ),
        (
            "HOOKLINE_METRICS_LISTEN",
            settings
                .metrics_listen
                .map_or_else(|| "not set".to_owned(), |addr| addr.to_string()),
        ),
        ("HOOKLINE_QUEUE_PREFIX", settings.queue_prefix.clone()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_and_query() {
        assert_eq!(
            redact_url("postgres://hookline:s3cret@db:5432/hookline?sslmode=require&password=x"),
            "postgres://hookline:REDACTED@db:5432/hookline?REDACTED"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("not a url"), "(not a valid URL)");
    }

    #[test]
    fn the_report_never_prints_a_secret() {
        let mut settings = Settings::from_env();
        settings.database_url = "postgres://u:hunter2@db/x".into();
        settings.admin_token = Some(secrecy::SecretString::from("admin-hunter2".to_owned()));
        settings.jira_client_secret = Some(secrecy::SecretString::from("jira-hunter2".to_owned()));
        let mut report = Report::default();
        report.add(
            "database",
            Err("postgres://u:REDACTED@db/x: down".to_owned()),
        );
        let text = report.render(&settings);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("FAIL"), "{text}");
        assert!(text.contains("HOOKLINE_ADMIN_TOKEN"), "{text}");
    }
}
