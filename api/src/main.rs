//! The `hookline` binary: `all` (default), `serve`, `worker`, `migrate`.

use anyhow::Context as _;
use api::config::Settings;
use api::{Application, Role, telemetry};
use clap::{Parser, Subcommand};

/// Connects your Jira Cloud sites to your own systems: Jira posts its webhooks to hookline,
/// which records each one durably, answers at once, enriches it through the Jira REST API and
/// delivers it, signed, to every subscriber that wants it, with retries.
///
/// `hookline` alone runs everything in one process on an embedded SQLite database (for trying
/// it out: open http://127.0.0.1:8080/). In production run `hookline migrate` once per
/// release, then `hookline serve` (the API) and `hookline worker` (scale these) against
/// Postgres (DATABASE_URL) and Redis (REDIS_URL); `hookline check` tells what a deployment's
/// settings reach. Every setting is a flag with an environment variable behind it: see
/// `hookline <command> --help`.
#[derive(Parser)]
#[command(name = "hookline", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// API and workers in one process (the default).
    All(Settings),
    /// The HTTP API only.
    Serve(Settings),
    /// The workers only; scale these horizontally.
    Worker(Settings),
    /// Apply database migrations and exit (needs only DATABASE_URL).
    Migrate(Settings),
    /// Validate the settings, try the database, the queue and the Atlassian URLs, and print
    /// what was found (secrets redacted); exits non-zero when a check fails.
    Check(Settings),
    /// Print the OpenAPI document and exit.
    Openapi,
    /// A small subscriber that verifies and prints deliveries (for trying hookline out).
    Sink(api::sink::SinkSettings),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One TLS provider for the whole process (ring), before any TLS client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let cli = Cli::parse();
    let (role, settings) = match cli.command {
        Some(Command::Openapi) => {
            println!("{}", api::openapi_spec());
            return Ok(());
        }
        Some(Command::Sink(settings)) => return api::sink::run(settings).await,
        Some(Command::Migrate(settings)) => {
            telemetry::init_logging(settings.log_format);
            settings.validate_for_migrate()?;
            api::startup::migrate(&settings).await?;
            tracing::info!("migrations applied");
            return Ok(());
        }
        Some(Command::Check(settings)) => {
            let report = api::check::run(&settings).await;
            print!("{}", report.render(&settings));
            if !report.ok() {
                std::process::exit(1);
            }
            return Ok(());
        }
        Some(Command::All(settings)) => (Role::All, settings),
        Some(Command::Serve(settings)) => (Role::Serve, settings),
        Some(Command::Worker(settings)) => (Role::Worker, settings),
        None => (Role::All, Settings::from_env()),
    };
    telemetry::init_logging(settings.log_format);
    let metrics = telemetry::install_metrics_recorder()?;
    let app = Application::build(settings, role, Some(metrics))
        .await
        .context("hookline could not start")?;
    print_banner(&app, role);
    app.run_until_stopped(shutdown_signal()).await
}

fn print_banner(app: &Application, role: Role) {
    if let Some(addr) = app.local_addr() {
        let base = app.public_url();
        tracing::info!(%addr, ?role, "hookline listening");
        eprintln!("\nhookline is running ({role:?}) on http://{addr}");
        eprintln!("  Console:       open {base}/");
        eprintln!("  API docs:      {base}/docs");
        eprintln!("  OpenAPI:       {base}/openapi.json");
    } else {
        tracing::info!(?role, "hookline workers running");
    }
    if let Some(secrets) = &app.embedded_secrets {
        let base = app.public_url();
        eprintln!(
            "  Admin token:   in {} (adminToken)\n\n  \
             EMBEDDED MODE: SQLite and generated secrets, for trying hookline out.\n  \
             In production set DATABASE_URL (Postgres), REDIS_URL, HOOKLINE_ENCRYPTION_KEY and \
             HOOKLINE_ADMIN_TOKEN.\n",
            secrets.display()
        );
        eprintln!(
            "Try it: open {base}/admin, sign in with the admin token and create a company;\n\
             sign in at {base}/ with its API key, register a Jira site and press\n\
             `Send a test event`. The same from a shell: examples/walkthrough.sh.\n"
        );
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown signal received: finishing in-flight work");
}
