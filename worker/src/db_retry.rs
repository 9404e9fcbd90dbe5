//! Transient database failures (a dropped connection, a restarting server, a busy SQLite file)
//! are retried in place, with backoff, for a bounded time: a job that loses its connection
//! finishes seconds after the database is back instead of waiting out its claim's lease.

use std::future::Future;
use std::time::Duration;

use sea_orm::{DbErr, RuntimeErr};

/// How long a transient failure is retried before the job gives up (and the sweeper recovers
/// its rows once their lease expires). Longer than a database restart.
pub const BUDGET: Duration = Duration::from_secs(30);

/// Runs `op` until it succeeds, fails with an error that retrying cannot fix, or transient
/// failures have lasted [`BUDGET`]. `what` names the operation in logs.
pub async fn retry<T, F, Fut>(what: &str, mut op: F) -> Result<T, DbErr>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbErr>>,
{
    let started = tokio::time::Instant::now();
    let mut backoff = backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .without_max_times(),
    );
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(error) if is_transient(&error) && started.elapsed() < BUDGET => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(1));
                metrics::counter!("hookline_database_retries_total").increment(1);
                tracing::warn!(error = %error, ?wait, what, "database unavailable; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Whether `error` is the database being unreachable or momentarily unable to serve, rather than
/// a statement it refuses.
pub fn is_transient(error: &DbErr) -> bool {
    use sea_orm::sqlx::Error as SqlxError;
    let sqlx = match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(RuntimeErr::SqlxError(error)) | DbErr::Query(RuntimeErr::SqlxError(error)) => {
            error
        }
        _ => return false,
    };
    match sqlx.as_ref() {
        SqlxError::Io(_)
        | SqlxError::Tls(_)
        | SqlxError::Protocol(_)
        | SqlxError::PoolTimedOut
        | SqlxError::PoolClosed
        | SqlxError::WorkerCrashed => true,
        SqlxError::Database(database) => database.code().is_some_and(|code| {
            // Postgres: connection exceptions (08…), shutting down or starting up (57P0…),
            // serialization failures and deadlocks (40…). SQLite: busy (5) and locked (6).
            code.starts_with("08")
                || code.starts_with("57P0")
                || code.starts_with("40")
                || code == "5"
                || code == "6"
        }),
        _ => false,
    }
}
