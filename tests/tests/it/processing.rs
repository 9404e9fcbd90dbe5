//! The `ProcessEvents` job's claim rules and the sweeper (DESIGN §1).

use std::time::Duration;

use api::Role;
use tests::{Backend, fixtures, wait_until};
use uuid::Uuid;
use worker::jobs::process_events::{self, Outcome};

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    a_received_event_is_processed_by_the_workers,
    the_same_event_run_by_two_workers_at_once_is_processed_once,
    a_body_that_is_not_json_is_kept_and_marked_failed,
    a_worker_that_died_holding_a_claim_is_taken_over_after_its_lease,
    a_backlog_larger_than_apalis_can_promote_at_once_is_promoted_in_chunks,
);

async fn post_fixture(app: &tests::TestApp, name: &str) -> Uuid {
    let (_, connection) = company_with_connection(app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str();
    let out: serde_json::Value = post_webhook(app, url, &fixtures::bytes(name), secret, None)
        .await
        .json()
        .await
        .expect("json");
    out["eventId"].as_str().expect("id").parse().expect("uuid")
}

async fn a_received_event_is_processed_by_the_workers(backend: Backend) {
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let event_id = post_fixture(&app, "webhook_comment_created.json").await;
    let processed = wait_until(
        Duration::from_secs(20),
        "the event is processed",
        || async {
            let stored = event(&app, event_id).await;
            (stored.status == "processed").then_some(stored)
        },
    )
    .await;
    assert_eq!(processed.event_type.as_deref(), Some("comment_created"));
    assert_eq!(processed.attempts, 1);
    assert!(processed.processed_at.is_some());
    assert!(processed.locked_until.is_none());
    // The finished job does not stay in the queue backend: the janitor removes it.
    wait_until(
        Duration::from_secs(20),
        "the finished job is removed from the queue",
        || async { (finished_jobs_in_queue(&env, &app).await == 0).then_some(()) },
    )
    .await;
    app.stop().await;
    env.cleanup().await;
}

async fn the_same_event_run_by_two_workers_at_once_is_processed_once(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let event_id = post_fixture(&app, "webhook_issue_created.json").await;
    let ctx = app.job_context.clone();
    let (first, second) = tokio::join!(
        process_events::run_one(&ctx, event_id),
        process_events::run_one(&ctx, event_id)
    );
    let mut outcomes = [first.expect("run"), second.expect("run")];
    outcomes.sort_by_key(|outcome| outcome.as_str());
    assert_eq!(outcomes, [Outcome::NotClaimed, Outcome::Processed]);
    // A third run, later, does nothing either.
    assert_eq!(
        process_events::run_one(&ctx, event_id).await.expect("run"),
        Outcome::NotClaimed
    );
    let stored = event(&app, event_id).await;
    assert_eq!(stored.status, "processed");
    assert_eq!(stored.attempts, 1);
    app.stop().await;
    env.cleanup().await;
}

async fn a_body_that_is_not_json_is_kept_and_marked_failed(backend: Backend) {
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str();
    let body = b"{\"webhookEvent\": truncated".to_vec();
    let response = post_webhook(&app, url, &body, secret, None).await;
    assert_eq!(
        response.status(),
        400,
        "ingest refuses what the worker cannot parse"
    );
    // One stored anyway (by an older version, or replayed) is kept and marked failed.
    let event_id = insert_received_event(&app, &connection, &body).await;
    let failed = wait_until(
        Duration::from_secs(20),
        "the event is marked failed",
        || async {
            let stored = event(&app, event_id).await;
            (stored.status == "failed").then_some(stored)
        },
    )
    .await;
    assert_eq!(failed.body, body, "the raw body is kept");
    assert!(failed.error.expect("error").contains("not valid JSON"));
    app.stop().await;
    env.cleanup().await;
}

async fn a_worker_that_died_holding_a_claim_is_taken_over_after_its_lease(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let event_id = post_fixture(&app, "webhook_issue_deleted.json").await;
    // A worker claims the event and dies: status processing, lease running, job gone.
    use sea_orm::{ActiveModelTrait, ActiveValue::Set, IntoActiveModel};
    let mut claimed = event(&app, event_id).await.into_active_model();
    claimed.status = Set("processing".to_owned());
    claimed.attempts = Set(1);
    claimed.locked_until = Set(Some(chrono::Utc::now() + chrono::Duration::seconds(1)));
    claimed.update(&app.db).await.expect("claim");
    lose_queued_jobs(&env, &app).await;

    let worker = env.spawn(Role::Worker).await;
    let processed = wait_until(
        Duration::from_secs(30),
        "another worker takes over",
        || async {
            let stored = event(&app, event_id).await;
            (stored.status == "processed").then_some(stored)
        },
    )
    .await;
    assert_eq!(processed.attempts, 2, "the dead worker's attempt counts");
    worker.stop().await;
    app.stop().await;
    env.cleanup().await;
}

async fn backlog_gauges_are_sampled_from_the_database(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    post_fixture(&app, "webhook_issue_created.json").await;
    let rendered = sampled_metrics(&app).await;
    assert!(
        rendered.contains("hookline_queue_depth{stage=\"process_event\"} 1"),
        "{rendered}"
    );
    assert!(
        rendered.contains("hookline_queue_depth{stage=\"deliver\"} 0"),
        "{rendered}"
    );
    assert!(
        rendered.contains("hookline_connections{status=\"active\"} 1"),
        "{rendered}"
    );
    assert!(
        rendered.contains("hookline_deliveries_dead 0"),
        "{rendered}"
    );
    assert!(rendered.contains("hookline_queue_oldest_age_seconds{stage=\"process_event\"}"));
    app.stop().await;
    env.cleanup().await;
}

mod backlog_gauges_are_sampled_from_the_database {
    // Current-thread runtimes: the thread-local metrics recorder must see the sampler's writes.
    #[tokio::test(flavor = "current_thread")]
    async fn embedded() {
        super::backlog_gauges_are_sampled_from_the_database(tests::Backend::Embedded).await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn postgres_redis() {
        super::backlog_gauges_are_sampled_from_the_database(tests::Backend::PostgresRedis).await
    }
}

/// apalis-redis promotes every due job with one Lua `unpack`, which fails above ~8,000 ids; a
/// backlog built while no worker ran must still reach the workers. The janitor promotes due
/// jobs in chunks of 1,000 first.
async fn a_backlog_larger_than_apalis_can_promote_at_once_is_promoted_in_chunks(backend: Backend) {
    if backend != Backend::PostgresRedis {
        return; // the SQLite queue has no scheduled set to promote
    }
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let ctx = app.job_context.clone();
    let queue = format!("{}:process_events", env.queue_prefix);
    let mut conn = redis_connection(&env).await;
    // 9,000 waiting jobs, written straight into the scheduled set as apalis' push does.
    let mut pipe = redis::pipe();
    for i in 0..9_000u32 {
        pipe.cmd("ZADD")
            .arg(format!("{queue}:scheduled"))
            .arg(0)
            .arg(format!("job-{i}"))
            .ignore();
    }
    let () = pipe.query_async(&mut conn).await.expect("ZADD");

    worker::janitor::clean_once(&ctx).await.expect("janitor");

    let (scheduled, active): (u64, u64) = redis::pipe()
        .cmd("ZCARD")
        .arg(format!("{queue}:scheduled"))
        .cmd("LLEN")
        .arg(format!("{queue}:active"))
        .query_async(&mut conn)
        .await
        .expect("ZCARD/LLEN");
    assert_eq!((scheduled, active), (0, 9_000));
    app.stop().await;
    env.cleanup().await;
}
