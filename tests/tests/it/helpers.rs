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

/// How many `ProcessEvents` jobs wait in this environment's queue.
pub async fn queued_process_event_jobs(env: &TestEnv, app: &TestApp) -> u64 {
    let queue = format!("{}:process_events", env.queue_prefix);
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

/// The event ids the waiting `ProcessEvents` jobs of this environment carry (a job carries a
/// batch), in no particular order.
pub async fn queued_event_ids(env: &TestEnv, app: &TestApp) -> Vec<Uuid> {
    let queue = format!("{}:process_events", env.queue_prefix);
    let payloads: Vec<Vec<u8>> = match env.backend {
        Backend::Embedded => app
            .db
            .query_all_raw(Statement::from_sql_and_values(
                app.db.get_database_backend(),
                "SELECT job FROM Jobs WHERE job_type = ? AND status = 'Pending'",
                [queue.into()],
            ))
            .await
            .expect("read jobs")
            .iter()
            .map(|row| row.try_get::<Vec<u8>>("", "job").expect("job"))
            .collect(),
        Backend::PostgresRedis => {
            let mut conn = redis_connection(env).await;
            redis::cmd("HVALS")
                .arg(format!("{queue}:data"))
                .query_async(&mut conn)
                .await
                .expect("HVALS")
        }
    };
    let mut ids = Vec::new();
    for payload in payloads {
        let job: worker::jobs::ProcessEvents =
            serde_json::from_slice(&payload).expect("a ProcessEvents job");
        ids.extend(job.event_ids);
    }
    ids
}

/// How many finished jobs the queue backend still keeps, over every queue of this environment
/// (the janitor removes them: the database is the record).
pub async fn finished_jobs_in_queue(env: &TestEnv, app: &TestApp) -> u64 {
    match env.backend {
        Backend::Embedded => {
            let row = app
                .db
                .query_one_raw(Statement::from_sql_and_values(
                    app.db.get_database_backend(),
                    "SELECT COUNT(*) AS n FROM Jobs WHERE job_type LIKE ? AND status IN ('Done', 'Killed')",
                    [format!("{}:%", env.queue_prefix).into()],
                ))
                .await
                .expect("count jobs")
                .expect("a row");
            row.try_get::<i64>("", "n").expect("n") as u64
        }
        Backend::PostgresRedis => {
            let mut conn = redis_connection(env).await;
            let mut total = 0;
            for queue in ["process_events", "deliveries", "delivery_retries"] {
                let queue = format!("{}:{queue}", env.queue_prefix);
                let (done, dead, data): (u64, u64, u64) = redis::pipe()
                    .cmd("SCARD")
                    .arg(format!("{queue}:done"))
                    .cmd("SCARD")
                    .arg(format!("{queue}:dead"))
                    .cmd("HLEN")
                    .arg(format!("{queue}:data"))
                    .query_async(&mut conn)
                    .await
                    .expect("SCARD/HLEN");
                total += done + dead + data;
            }
            total
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

pub async fn redis_connection(env: &TestEnv) -> redis::aio::MultiplexedConnection {
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

/// Inserts a subscription directly (the subscriptions API is exercised in its own tests).
pub async fn insert_subscription(
    app: &TestApp,
    company_id: &str,
    event_types: &[&str],
    connection_id: Option<Uuid>,
    filters: Option<serde_json::Value>,
) -> Uuid {
    use sea_orm::ActiveValue::Set;
    let id = Uuid::now_v7();
    let now = chrono::Utc::now();
    let cipher = entity::cipher::Cipher::new(&tests::TEST_ENCRYPTION_KEY, &[]);
    entity::subscription::Entity::insert(entity::subscription::ActiveModel {
        id: Set(id),
        company_id: Set(company_id.parse().expect("company id")),
        connection_id: Set(connection_id),
        description: Set(None),
        event_types: Set(serde_json::json!(event_types)),
        filters: Set(filters),
        target_url: Set("http://127.0.0.1:9/never-called".to_owned()),
        destination_kind: Set("http".to_owned()),
        destination: Set(None),
        secret: Set(cipher.encrypt("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
        enabled: Set(true),
        disabled_reason: Set(None),
        failing_since: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec_without_returning(&app.db)
    .await
    .expect("insert subscription");
    id
}

/// The deliveries of an event.
pub async fn deliveries_of(app: &TestApp, event_id: Uuid) -> Vec<entity::delivery::Model> {
    entity::delivery::Entity::find()
        .filter(entity::delivery::Column::EventId.eq(event_id))
        .all(&app.db)
        .await
        .expect("deliveries")
}

/// Waits until the event is processed (or failed) and returns it.
pub async fn wait_processed(app: &TestApp, event_id: Uuid) -> webhook_event::Model {
    tests::wait_until(
        std::time::Duration::from_secs(20),
        "the event is processed",
        || async {
            let stored = event(app, event_id).await;
            matches!(stored.status.as_str(), "processed" | "failed").then_some(stored)
        },
    )
    .await
}

/// Creates a subscription through the API; returns its JSON (with `id` and `secret`).
pub async fn create_subscription(app: &TestApp, api_key: &str, url: &str) -> serde_json::Value {
    let response = app
        .client
        .post(app.url("/api/v1/subscriptions"))
        .bearer_auth(api_key)
        .json(&serde_json::json!({ "url": url, "eventTypes": ["jira:issue_*"] }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 201, "create subscription");
    response.json().await.expect("json")
}

/// Records a processed event and a pending delivery of it to `subscription_id` directly through
/// the entities (as ProcessEvents would), and pushes `Deliver`. Returns (event id, delivery id).
pub async fn event_with_delivery(
    app: &TestApp,
    connection: &serde_json::Value,
    subscription_id: Uuid,
) -> (Uuid, Uuid) {
    use sea_orm::ActiveValue::Set;
    let company_id: Uuid = entity::plugin_connection::Entity::find_by_id(connection_id(connection))
        .one(&app.db)
        .await
        .expect("query")
        .expect("connection")
        .company_id;
    let now = chrono::Utc::now();
    let event_id = Uuid::now_v7();
    let raw =
        serde_json::json!({ "webhookEvent": "jira:issue_updated", "issue": { "key": "ENG-1" } });
    webhook_event::Entity::insert(webhook_event::ActiveModel {
        id: Set(event_id),
        connection_id: Set(connection_id(connection)),
        company_id: Set(company_id),
        plugin_id: Set("jira".to_owned()),
        delivery_key: Set(event_id.to_string()),
        received_at: Set(now),
        headers: Set(serde_json::json!({})),
        body: Set(raw.to_string().into_bytes()),
        status: Set("processed".to_owned()),
        attempts: Set(1),
        locked_until: Set(None),
        event_type: Set(Some("jira:issue_updated".to_owned())),
        data: Set(Some(serde_json::json!({
            "eventId": event_id,
            "pluginId": "jira",
            "eventType": "jira:issue_updated",
            "connectionId": connection_id(connection),
            "companyId": company_id,
            "occurredAt": now,
            "issue": { "key": "ENG-1" },
            "enrichment": { "status": "skipped" },
            "raw": raw,
        }))),
        payload: Set(None),
        error: Set(None),
        processed_at: Set(Some(now)),
        replay_of: Set(None),
    })
    .exec(&app.db)
    .await
    .expect("insert event");
    let delivery_id = Uuid::now_v7();
    entity::delivery::Entity::insert(entity::delivery::ActiveModel {
        id: Set(delivery_id),
        event_id: Set(event_id),
        subscription_id: Set(subscription_id),
        company_id: Set(company_id),
        status: Set("pending".to_owned()),
        attempts: Set(0),
        next_attempt_at: Set(Some(now)),
        locked_until: Set(Some(now + chrono::Duration::seconds(2))),
        last_status: Set(None),
        last_error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        delivered_at: Set(None),
    })
    .exec(&app.db)
    .await
    .expect("insert delivery");
    app.job_context
        .queue
        .push(worker::jobs::Deliver {
            delivery_ids: vec![delivery_id],
        })
        .await
        .expect("push Deliver");
    (event_id, delivery_id)
}

/// The stored delivery.
pub async fn delivery(app: &TestApp, id: Uuid) -> entity::delivery::Model {
    entity::delivery::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .expect("query")
        .expect("delivery exists")
}

/// The delivery's attempts, in order.
pub async fn attempts(app: &TestApp, id: Uuid) -> Vec<entity::delivery_attempt::Model> {
    use sea_orm::QueryOrder;
    entity::delivery_attempt::Entity::find()
        .filter(entity::delivery_attempt::Column::DeliveryId.eq(id))
        .order_by_asc(entity::delivery_attempt::Column::Attempt)
        .all(&app.db)
        .await
        .expect("query")
}

/// The id inside a JSON object's `id`.
pub fn id_of(value: &serde_json::Value) -> Uuid {
    value["id"].as_str().expect("id").parse().expect("uuid")
}

/// Records an event with `body` and `delivery_key` directly, without pushing a job for it
/// (tests push their own batches). Returns its id.
pub async fn record_event(
    app: &TestApp,
    connection_id: Uuid,
    body: &[u8],
    delivery_key: &str,
) -> Uuid {
    use sea_orm::ActiveValue::Set;
    let company_id = entity::plugin_connection::Entity::find_by_id(connection_id)
        .one(&app.db)
        .await
        .expect("query")
        .expect("connection")
        .company_id;
    let now = chrono::Utc::now();
    let event_id = Uuid::now_v7();
    webhook_event::Entity::insert(webhook_event::ActiveModel {
        id: Set(event_id),
        connection_id: Set(connection_id),
        company_id: Set(company_id),
        plugin_id: Set("jira".to_owned()),
        delivery_key: Set(delivery_key.to_owned()),
        received_at: Set(now),
        headers: Set(serde_json::json!({})),
        body: Set(body.to_vec()),
        status: Set("received".to_owned()),
        attempts: Set(0),
        locked_until: Set(Some(now + chrono::Duration::seconds(2))),
        event_type: Set(None),
        data: Set(None),
        payload: Set(None),
        error: Set(None),
        processed_at: Set(None),
        replay_of: Set(None),
    })
    .exec_without_returning(&app.db)
    .await
    .expect("insert event");
    event_id
}

/// Records an event with `body` directly (as a replay or an older version's ingest would have,
/// bypassing ingest's checks) and pushes its `ProcessEvents`. Returns its id.
pub async fn insert_received_event(
    app: &TestApp,
    connection: &serde_json::Value,
    body: &[u8],
) -> Uuid {
    let event_id = record_event(
        app,
        connection_id(connection),
        body,
        &format!("test:{}", Uuid::now_v7()),
    )
    .await;
    app.job_context
        .queue
        .push(worker::jobs::ProcessEvents {
            event_ids: vec![event_id],
        })
        .await
        .expect("push ProcessEvents");
    event_id
}

/// Samples the backlog gauges once and returns them as Prometheus text. The sampler runs on the
/// calling thread, so the test must run on a current-thread runtime for the thread-local
/// recorder to see its writes.
pub async fn sampled_metrics(app: &TestApp) -> String {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    {
        let _guard = metrics::set_default_local_recorder(&recorder);
        worker::sampler::sample_once(&app.job_context)
            .await
            .expect("sample");
    }
    handle.render()
}
