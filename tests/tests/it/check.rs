//! `hookline check`, run as an operator would: the real binary against a real deployment's
//! settings, reporting what it reached with every secret redacted.

use std::process::Command;

use tests::fake_subscriber::{FakeSubscriber, Reply};
use tests::process;
use tests::{Backend, TestEnv};

crate::on_both_backends!(check_reports_what_the_settings_reach_without_printing_a_secret);

async fn check_reports_what_the_settings_reach_without_printing_a_secret(backend: Backend) {
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    // Any HTTP server stands in for Atlassian: `check` only asks whether it answers.
    let atlassian = FakeSubscriber::start(Reply::Status(404)).await;
    let binary = tests::hookline_binary();
    let run = |extra: &[(&str, &str)]| {
        let mut command = Command::new(&binary);
        command
            .arg("check")
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        for (name, value) in process::hookline_env(&env) {
            command.env(name, value);
        }
        command
            .env("ATLASSIAN_AUTH_URL", &atlassian.url)
            .env("ATLASSIAN_API_URL", &atlassian.url)
            .env("JIRA_CLIENT_ID", "hookline-test")
            .env("JIRA_CLIENT_SECRET", "jira-client-secret-never-printed");
        for (name, value) in extra {
            command.env(name, value);
        }
        let output = command.output().expect("run hookline check");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };

    let (ok, report) = run(&[]);
    assert!(ok, "{report}");
    assert!(report.contains("every check passed"), "{report}");
    assert!(report.contains("ok   database"), "{report}");
    assert!(report.contains("0 pending"), "{report}");
    assert!(report.contains("ok   queue"), "{report}");
    assert!(report.contains("ok   atlassian api"), "{report}");
    for secret in [tests::TEST_ADMIN_TOKEN, "jira-client-secret-never-printed"] {
        assert!(!report.contains(secret), "a secret in:\n{report}");
    }

    // An unreachable Atlassian fails the check, and says so.
    let (ok, report) = run(&[("ATLASSIAN_API_URL", "http://127.0.0.1:9")]);
    assert!(!ok, "{report}");
    assert!(report.contains("FAIL atlassian api"), "{report}");
    assert!(report.contains("some checks FAILED"), "{report}");
    env.cleanup().await;
}
