//! Benchmark baseline: the ingest path without the queue push.
//!
//! Does what `POST /webhook/jira/{connection_id}` does (connection lookup, signature check,
//! `INSERT … ON CONFLICT DO NOTHING`) but never pushes a job, so `bench/ingest.sh` can show what
//! the push costs. Not part of the product. Reads `DATABASE_URL`, `HOOKLINE_ENCRYPTION_KEY`
//! and `HOOKLINE_LISTEN` like `hookline serve`.

use anyhow::Context as _;
use api::config::Settings;
use chrono::Utc;
use entity::cipher::Cipher;
use entity::{plugin_connection, webhook_event};
use plugins::jira::webhook as jira_webhook;
use poem::http::StatusCode;
use poem::web::{Data, Json, Path};
use poem::{EndpointExt, Request, Route, Server, handler, post};
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use uuid::Uuid;

#[handler]
async fn insert_only(
    req: &Request,
    Path(connection_id): Path<Uuid>,
    body: Vec<u8>,
    Data((db, cipher)): Data<&(DatabaseConnection, Cipher)>,
) -> poem::Result<Json<serde_json::Value>> {
    let unavailable = |_| poem::Error::from_status(StatusCode::SERVICE_UNAVAILABLE);
    let connection = plugin_connection::Entity::find_by_id(connection_id)
        .one(db)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| poem::Error::from_status(StatusCode::NOT_FOUND))?;
    if let Some(secret) = &connection.webhook_secret {
        let secret = cipher
            .decrypt(secret)
            .map_err(|_| poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR))?;
        let header = req
            .headers()
            .get(jira_webhook::SIGNATURE_HEADER)
            .and_then(|value| value.to_str().ok());
        jira_webhook::verify_signature(secret.as_bytes(), &body, header)
            .map_err(|_| poem::Error::from_status(StatusCode::UNAUTHORIZED))?;
    }
    let identifier = req
        .headers()
        .get(jira_webhook::IDENTIFIER_HEADER)
        .and_then(|value| value.to_str().ok());
    let event_id = Uuid::now_v7();
    let now = Utc::now();
    webhook_event::Entity::insert(webhook_event::ActiveModel {
        id: Set(event_id),
        connection_id: Set(connection.id),
        company_id: Set(connection.company_id),
        plugin_id: Set(connection.plugin_id),
        delivery_key: Set(jira_webhook::delivery_key(identifier, &body)),
        received_at: Set(now),
        headers: Set(serde_json::json!({})),
        body: Set(body.to_vec()),
        status: Set(webhook_event::status::RECEIVED.to_owned()),
        attempts: Set(0),
        locked_until: Set(Some(now)),
        event_type: Set(None),
        data: Set(None),
        payload: Set(None),
        error: Set(None),
        processed_at: Set(None),
        replay_of: Set(None),
    })
    .on_conflict_do_nothing_on([
        webhook_event::Column::ConnectionId,
        webhook_event::Column::DeliveryKey,
    ])
    .exec_without_returning(db)
    .await
    .map_err(unavailable)?;
    Ok(Json(
        serde_json::json!({ "eventId": event_id, "duplicate": false }),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings::from_env();
    let key = settings
        .encryption_key
        .as_ref()
        .context("HOOKLINE_ENCRYPTION_KEY is required")?;
    let cipher = Cipher::new(&api::config::decode_key(key)?, &[]);
    let db = api::startup::connect_database(&settings).await?;
    let app = Route::new()
        .at("/webhook/jira/:connection_id", post(insert_only))
        .data((db, cipher));
    eprintln!("insert-only ingest baseline on http://{}", settings.listen);
    Server::new(poem::listener::TcpListener::bind(settings.listen))
        .run(app)
        .await
        .context("server failed")
}
