//! schemathesis against the committed `openapi.json` and a running hookline, on both backends
//! (`scripts/schemathesis.sh`). A long run, so opt-in: `HOOKLINE_SCHEMATHESIS=1` (with
//! `schemathesis` on PATH, or `SCHEMATHESIS=/path/to/it`). `MAX_EXAMPLES` and `SEED` pass through.

use std::path::Path;

fn run(backend: &str) {
    if std::env::var_os("HOOKLINE_SCHEMATHESIS").is_none() {
        eprintln!("schemathesis ({backend}) skipped: set HOOKLINE_SCHEMATHESIS=1 to run it");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/schemathesis.sh");
    let binary = tests::hookline_binary();
    // Each backend on its own port, as the two tests may run at once.
    let port = if backend == "embedded" {
        "18081"
    } else {
        "18082"
    };
    let status = std::process::Command::new("bash")
        .arg(&script)
        .env("BACKEND", backend)
        .env("PORT", port)
        .env("HOOKLINE_BIN", &binary)
        .status()
        .expect("run scripts/schemathesis.sh");
    assert!(status.success(), "schemathesis found failures on {backend}");
}

#[test]
fn schemathesis_finds_no_failures_on_the_embedded_backend() {
    run("embedded");
}

#[test]
fn schemathesis_finds_no_failures_on_postgres_and_redis() {
    run("postgres");
}
