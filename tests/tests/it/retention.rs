//! Retention (`HOOKLINE_RETENTION`): old events go with their deliveries and attempts; recent
//! events, and old ones whose delivery is still waiting for a retry, stay; one worker runs it
//! once per period.

use std::time::Duration;

use api::Role;
use chrono::Utc;
use entity::{delivery, delivery_attempt, webhook_event};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use tests::fake_subscriber::{FakeSubscriber, Reply};
use tests::{Backend, fixtures, wait_until};
use uuid::Uuid;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(old_finished_events_are_pruned_and_recent_or_pending_ones_stay);

/// Subscribes `url` to `event_type` through the API.
async fn subscribe(app: &tests::TestApp, api_key: &str, url: &str, event_type: &str) {
    let response = app
        .client
        .post(app.url("/api/v1/subscriptions"))
        .bearer_auth(api_key)
        .json(&serde_json::json!({ "url": url, "eventTypes": [event_type] }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 201, "create subscription");
}

/// Posts a fixture signed with the connection's secret and returns the event id.
async fn post_fixture(app: &tests::TestApp, connection: &serde_json::Value, name: &str) -> Uuid {
    let body = fixtures::bytes(name);
    let response = post_webhook(
        app,
        connection["webhookUrl"].as_str().expect("webhookUrl"),
        &body,
        connection["webhookSecret"].as_str(),
        Some(&Uuid::now_v7().to_string()),
    )
    .await;
    assert_eq!(response.status(), 200);
    let out: serde_json::Value = response.json().await.expect("json");
    out["eventId"]
        .as_str()
        .expect("eventId")
        .parse()
        .expect("uuid")
}

/// Moves an event's receipt `days` into the past.
async fn age(app: &tests::TestApp, event_id: Uuid, days: i64) {
    webhook_event::Entity::update_many()
        .col_expr(
            webhook_event::Column::ReceivedAt,
            Expr::value(Utc::now() - chrono::Duration::days(days)),
        )
        .filter(webhook_event::Column::Id.eq(event_id))
        .exec(&app.db)
        .await
        .expect("age the event");
}

async fn exists(app: &tests::TestApp, event_id: Uuid) -> bool {
    webhook_event::Entity::find_by_id(event_id)
        .one(&app.db)
        .await
        .expect("query")
        .is_some()
}

async fn old_finished_events_are_pruned_and_recent_or_pending_ones_stay(backend: Backend) {
    let Some(env) = tests::TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    // A failed delivery waits an hour for its retry; retention is checked by the test itself.
    let app = env
        .spawn_with(Role::All, |settings| {
            settings.retry_schedule = api::config::RetrySchedule(vec![Duration::from_secs(3600)]);
            settings.retention = Duration::ZERO;
        })
        .await;
    let healthy = FakeSubscriber::start(Reply::Status(200)).await;
    let failing = FakeSubscriber::start(Reply::Status(500)).await;
    let (api_key, connection) = company_with_connection(&app).await;
    subscribe(&app, &api_key, &healthy.url, "jira:issue_created").await;
    subscribe(&app, &api_key, &failing.url, "comment_created").await;

    let delivered_old = post_fixture(&app, &connection, "webhook_issue_created.json").await;
    let retrying_old = post_fixture(&app, &connection, "webhook_comment_created.json").await;
    let delivered_recent = post_fixture(&app, &connection, "webhook_issue_deleted.json").await;
    let unmatched_old = post_fixture(&app, &connection, "webhook_worklog_created.json").await;
    for event_id in [delivered_old, retrying_old, delivered_recent, unmatched_old] {
        wait_processed(&app, event_id).await;
    }
    let delivery_of = |event_id| {
        let app = &app;
        async move {
            wait_until(
                Duration::from_secs(20),
                "the delivery was attempted",
                || async {
                    let deliveries = deliveries_of(app, event_id).await;
                    deliveries
                        .into_iter()
                        .find(|delivery| delivery.attempts > 0 && delivery.status != "in_flight")
                },
            )
            .await
        }
    };
    let succeeded = delivery_of(delivered_old).await;
    assert_eq!(succeeded.status, delivery::status::SUCCEEDED);
    let retrying = delivery_of(retrying_old).await;
    assert_eq!(
        retrying.status,
        delivery::status::PENDING,
        "waits for its retry"
    );
    for event_id in [delivered_old, retrying_old, unmatched_old] {
        age(&app, event_id, 40).await;
    }

    let ctx = app.job_context.clone();
    let (_stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let pruned = worker::retention::prune(&ctx, Duration::from_secs(30 * 86_400), &mut stop)
        .await
        .expect("prune");
    assert_eq!(
        pruned,
        worker::retention::Pruned {
            events: 2,
            deliveries: 1,
            attempts: 1
        },
        "the old delivered event (its delivery and attempt) and the old unmatched event go"
    );
    assert!(!exists(&app, delivered_old).await);
    assert!(!exists(&app, unmatched_old).await);
    assert!(
        delivery::Entity::find_by_id(succeeded.id)
            .one(&app.db)
            .await
            .expect("query")
            .is_none()
    );
    assert_eq!(
        delivery_attempt::Entity::find()
            .filter(delivery_attempt::Column::DeliveryId.eq(succeeded.id))
            .count(&app.db)
            .await
            .expect("count"),
        0
    );
    assert!(
        exists(&app, retrying_old).await,
        "an old event whose delivery waits for a retry stays until it ends"
    );
    assert!(exists(&app, delivered_recent).await, "a recent event stays");
    assert_eq!(deliveries_of(&app, retrying_old).await.len(), 1);

    // Once the retry ends (here: the delivery is dead), the event goes on the next run.
    delivery::Entity::update_many()
        .col_expr(
            delivery::Column::Status,
            Expr::value(delivery::status::DEAD),
        )
        .filter(delivery::Column::Id.eq(retrying.id))
        .exec(&app.db)
        .await
        .expect("end the delivery");
    let pruned = worker::retention::prune(&ctx, Duration::from_secs(30 * 86_400), &mut stop)
        .await
        .expect("prune again");
    assert_eq!(pruned.events, 1);
    assert!(!exists(&app, retrying_old).await);
    assert!(exists(&app, delivered_recent).await);

    // One run per period, however many workers ask.
    let first = worker::retention::run_if_due(&ctx, Duration::from_secs(30 * 86_400), &mut stop)
        .await
        .expect("first run");
    assert!(first.is_some(), "the first worker to ask runs retention");
    let second = worker::retention::run_if_due(&ctx, Duration::from_secs(30 * 86_400), &mut stop)
        .await
        .expect("second ask");
    assert!(
        second.is_none(),
        "the period has not passed: nobody runs it again"
    );

    app.stop().await;
    env.cleanup().await;
}
