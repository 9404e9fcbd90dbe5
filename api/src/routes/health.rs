//! `/healthz`, `/readyz`, `/metrics`.

use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};
use sea_orm::ConnectionTrait;

use crate::routes::ApiTags;
use crate::state::AppState;

/// The operations API.
pub struct HealthApi;

/// Liveness or readiness, with each dependency's state.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct HealthOut {
    /// `ok` or `unavailable`.
    pub status: String,
    /// The database's state (readiness only): `ok` or what failed.
    #[oai(nullable)]
    pub database: Option<String>,
    /// The queue's state (readiness only): `ok` or what failed.
    #[oai(nullable)]
    pub queue: Option<String>,
}

/// Answer of `readiness`.
#[derive(Debug, ApiResponse)]
pub enum ReadyResponse {
    /// Ready to take traffic.
    #[oai(status = 200)]
    Ready(Json<HealthOut>),
    /// A dependency is down.
    #[oai(status = 503)]
    NotReady(Json<HealthOut>),
}

#[OpenApi(tag = "ApiTags::Operations")]
impl HealthApi {
    /// Liveness
    ///
    /// Answers 200 while the process serves HTTP.
    #[oai(path = "/healthz", method = "get", operation_id = "liveness")]
    async fn liveness(&self) -> Json<HealthOut> {
        Json(HealthOut {
            status: "ok".into(),
            database: None,
            queue: None,
        })
    }

    /// Readiness
    ///
    /// Answers 200 when the database and the queue answer, 503 otherwise.
    #[oai(path = "/readyz", method = "get", operation_id = "readiness")]
    async fn readiness(&self, state: poem::web::Data<&AppState>) -> ReadyResponse {
        let timeout = std::time::Duration::from_secs(2);
        let database =
            match tokio::time::timeout(timeout, state.db.execute_unprepared("SELECT 1")).await {
                Ok(Ok(_)) => "ok".to_owned(),
                Ok(Err(error)) => format!("error: {error}"),
                Err(_) => "error: timed out".to_owned(),
            };
        let queue = match tokio::time::timeout(timeout, state.queue.ping()).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(error)) => format!("error: {error:#}"),
            Err(_) => "error: timed out".to_owned(),
        };
        let ready = database == "ok" && queue == "ok";
        let out = HealthOut {
            status: if ready { "ok" } else { "unavailable" }.into(),
            database: Some(database),
            queue: Some(queue),
        };
        if ready {
            ReadyResponse::Ready(Json(out))
        } else {
            ReadyResponse::NotReady(Json(out))
        }
    }

    /// Prometheus metrics
    ///
    /// The API process's metrics in the Prometheus text format.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self, state: poem::web::Data<&AppState>) -> PlainText<String> {
        PlainText(
            state
                .metrics
                .as_ref()
                .map(crate::telemetry::render)
                .unwrap_or_default(),
        )
    }
}
