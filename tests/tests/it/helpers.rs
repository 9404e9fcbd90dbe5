//! Small helpers shared by the test modules.

use api::Role;
use entity::webhook_event;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, Statement};
use tests::{Backend, TestApp, TestEnv};
use uuid::Uuid;

/// A fresh environment and an app of `role` in it (migrated first), or None when skipped.
pub async fn start(backend: Backend, role: Role) -> Option<(TestEnv, TestApp)> {
    let env = TestEnv::new(backend).await?;
    env.migrate().await;
    let app = env.spawn(role).await;
    Some((env, app))
}

/// A company and a connection; returns (api key, connection JSON with `webhookSecret`).
pub async fn company_with_connection(app: &TestApp) -> (String, serde_json::Value) {
    let (_, api_key) = app.create_company("Northwind").await;
    let connection = app
        .create_connection(&api_key, "northwind-labs.atlassian.net")
        .await;
    (api_key, connection)
}

/// Posts `body` to a connection's webhook URL, signed with `secret` when given.
pub async fn post_webhook(
    app: &TestApp,
    webhook_url: &str,
    body: &[u8],
    secret: Option<&str>,
    identifier: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(webhook_url)
        .header("content-type", "application/json; charset=utf-8")
        .body(body.to_vec());
    if let Some(secret) = secret {
        request = request.header(
            "x-hub-signature",
            plugins::jira::webhook::sign(secret.as_bytes(), body),
        );
    }
    if let Some(identifier) = identifier {
        request = request.header("x-atlassian-webhook-identifier", identifier);
    }
    request.send().await.expect("webhook request")
}

/// The stored event.
pub async fn event(app: &TestApp, id: Uuid) -> webhook_event::Model {
    webhook_event::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .expect("query")
        .expect("event exists")
}

/// How many events a connection has.
pub async fn event_count(app: &TestApp, connection_id: Uuid) -> u64 {
    webhook_event::Entity::find()
        .filter(webhook_event::Column::ConnectionId.eq(connection_id))
        .count(&app.db)
        .await
        .expect("count")
}

/// How many `ProcessEvent` jobs wait in this environment's queue.
pub async fn queued_process_event_jobs(env: &TestEnv, app: &TestApp) -> u64 {
    let queue = format!("{}:process_event", env.queue_prefix);
    match env.backend {
        Backend::Embedded => {
            let row = app
                .db
                .query_one_raw(Statement::from_sql_and_values(
                    app.db.get_database_backend(),
                    "SELECT COUNT(*) AS n FROM Jobs WHERE job_type = ? AND status = 'Pending'",
                    [queue.into()],
                ))
                .await
                .expect("count jobs")
                .expect("a row");
            row.try_get::<i64>("", "n").expect("n") as u64
        }
        Backend::PostgresRedis => {
            // A pushed job waits in the active list, or in the scheduled set when it has a run
            // time (apalis gives every task one).
            let mut conn = redis_connection(env).await;
            let active: u64 = redis::cmd("LLEN")
                .arg(format!("{queue}:active"))
                .query_async(&mut conn)
                .await
                .expect("LLEN");
            let scheduled: u64 = redis::cmd("ZCARD")
                .arg(format!("{queue}:scheduled"))
                .query_async(&mut conn)
                .await
                .expect("ZCARD");
            active + scheduled
        }
    }
}

/// Loses every queued job of this environment, as a Redis restart without persistence would.
pub async fn lose_queued_jobs(env: &TestEnv, app: &TestApp) {
    match env.backend {
        Backend::Embedded => {
            app.db
                .execute_raw(Statement::from_string(
                    app.db.get_database_backend(),
                    "DELETE FROM Jobs".to_owned(),
                ))
                .await
                .expect("delete jobs");
        }
        Backend::PostgresRedis => {
            let mut conn = redis_connection(env).await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", env.queue_prefix))
                .query_async(&mut conn)
                .await
                .expect("KEYS");
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL")
                    .arg(keys)
                    .query_async(&mut conn)
                    .await
                    .expect("DEL");
            }
        }
    }
}

async fn redis_connection(env: &TestEnv) -> redis::aio::MultiplexedConnection {
    let url = env.redis_url.as_deref().expect("redis url");
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

/// The connection id inside a connection JSON.
pub fn connection_id(connection: &serde_json::Value) -> Uuid {
    connection["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid")
}
