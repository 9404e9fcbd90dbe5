//! The `Deliver` job: signatures, retries on the schedule, dead deliveries, isolation (DESIGN §4).

use std::time::Duration;

use api::Role;
use tests::fake_subscriber::{FakeSubscriber, Reply};
use tests::{Backend, TestApp, wait_until};
use uuid::Uuid;

use crate::helpers::*;
use crate::on_both_backends;
use sea_orm::{ConnectionTrait, Statement};

on_both_backends!(
    a_subscriber_verifying_signatures_receives_every_delivery,
    a_subscriber_failing_twice_gets_the_event_once_after_scheduled_retries,
    a_subscriber_that_never_succeeds_ends_dead_and_a_manual_retry_delivers_it,
    a_slow_subscriber_does_not_delay_a_healthy_one,
    a_subscription_failing_too_long_is_disabled_and_resumes_when_enabled,
);

async fn wait_for_status(app: &TestApp, id: Uuid, status: &str) -> entity::delivery::Model {
    wait_until(
        Duration::from_secs(30),
        &format!("the delivery is {status}"),
        || async {
            let stored = delivery(app, id).await;
            (stored.status == status).then_some(stored)
        },
    )
    .await
}

async fn a_subscriber_verifying_signatures_receives_every_delivery(backend: Backend) {
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let subscriber = FakeSubscriber::start(Reply::Status(204)).await;
    let (api_key, connection) = company_with_connection(&app).await;
    let subscription = create_subscription(&app, &api_key, &subscriber.url).await;
    let secret = subscription["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"));
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        deliveries.push(event_with_delivery(&app, &connection, id_of(&subscription)).await);
    }
    for &(_, delivery_id) in &deliveries {
        let done = wait_for_status(&app, delivery_id, "succeeded").await;
        assert_eq!(done.attempts, 1);
        assert!(done.delivered_at.is_some());
    }
    let requests = subscriber.requests();
    assert_eq!(requests.len(), 3, "each delivery arrives once");
    for request in &requests {
        let id = request.header("webhook-id");
        let timestamp: i64 = request
            .header("webhook-timestamp")
            .parse()
            .expect("seconds");
        let expected =
            worker::signature::sign(&secret, id, timestamp, &request.body).expect("signs");
        assert_eq!(request.header("webhook-signature"), expected);
        assert_eq!(request.header("content-type"), "application/json");
        assert!(request.header("user-agent").starts_with("hookline/"));
        let body = request.json();
        assert_eq!(body["type"], "jira:issue_updated");
        assert!(body["timestamp"].is_string());
        let (event_id, delivery_id) = deliveries
            .iter()
            .find(|(_, delivery_id)| delivery_id.to_string() == id)
            .expect("webhook-id is a delivery id");
        assert_eq!(body["data"]["eventId"], event_id.to_string());
        assert_eq!(body["data"]["raw"]["issue"]["key"], "ENG-1");
        assert_eq!(attempts(&app, *delivery_id).await.len(), 1);
    }
    let request = &requests[0];
    check_with_standardwebhooks(
        &secret,
        request.header("webhook-id"),
        request.header("webhook-timestamp"),
        request.header("webhook-signature"),
        &request.body,
    );
    app.stop().await;
    env.cleanup().await;
}

/// Verifies a captured delivery (HTTP request or broker message) with the reference Python
/// library, when it is installed.
pub(crate) fn check_with_standardwebhooks(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
) {
    let available = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        eprintln!(
            "NOTICE: python3 with `standardwebhooks` is not installed; the cross-check with the \
             reference implementation is skipped (pip install standardwebhooks)"
        );
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/standardwebhooks_check.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .env("WEBHOOK_SECRET", secret)
        .env("WEBHOOK_ID", id)
        .env("WEBHOOK_TIMESTAMP", timestamp)
        .env("WEBHOOK_SIGNATURE", signature)
        .env("WEBHOOK_BODY", String::from_utf8_lossy(body).as_ref())
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "standardwebhooks rejected the delivery: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn a_subscriber_failing_twice_gets_the_event_once_after_scheduled_retries(backend: Backend) {
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let subscriber = FakeSubscriber::start(Reply::Status(200)).await;
    subscriber.fail_times(2);
    let (api_key, connection) = company_with_connection(&app).await;
    let subscription = create_subscription(&app, &api_key, &subscriber.url).await;
    let (_, delivery_id) = event_with_delivery(&app, &connection, id_of(&subscription)).await;
    let done = wait_for_status(&app, delivery_id, "succeeded").await;
    assert_eq!(done.attempts, 3);
    let recorded = attempts(&app, delivery_id).await;
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[0].status_code, Some(500));
    assert_eq!(recorded[1].status_code, Some(500));
    assert!(recorded[0].error.is_some() && recorded[1].error.is_some());
    assert!(
        recorded[0]
            .response_excerpt
            .as_deref()
            .is_some_and(|excerpt| excerpt.contains("500"))
    );
    assert_eq!(recorded[2].status_code, Some(200));
    assert!(recorded[2].error.is_none());
    let requests = subscriber.requests();
    assert_eq!(requests.len(), 3);
    let ids: Vec<&str> = requests.iter().map(|r| r.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|id| *id == delivery_id.to_string()),
        "webhook-id is stable"
    );
    // Schedule 200 ms, 400 ms (±20 %), plus up to a sweep interval and a poll: generous bounds.
    let gaps: Vec<Duration> = requests.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(150), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(300), "{gaps:?}");
    assert!(
        gaps.iter().all(|gap| *gap < Duration::from_secs(5)),
        "{gaps:?}"
    );
    app.stop().await;
    env.cleanup().await;
}

async fn a_subscriber_that_never_succeeds_ends_dead_and_a_manual_retry_delivers_it(
    backend: Backend,
) {
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let subscriber = FakeSubscriber::start(Reply::Status(503)).await;
    let (api_key, connection) = company_with_connection(&app).await;
    let subscription = create_subscription(&app, &api_key, &subscriber.url).await;
    let (_, delivery_id) = event_with_delivery(&app, &connection, id_of(&subscription)).await;
    let dead = wait_for_status(&app, delivery_id, "dead").await;
    assert_eq!(dead.attempts, 4, "1 + 3 retries");
    assert_eq!(dead.last_status, Some(503));
    assert_eq!(attempts(&app, delivery_id).await.len(), 4);
    assert_eq!(subscriber.requests().len(), 4);

    subscriber.set_default(Reply::Status(200));
    let response = app
        .client
        .post(app.url(&format!("/api/v1/deliveries/{delivery_id}/retry")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    wait_for_status(&app, delivery_id, "succeeded").await;
    let detail: serde_json::Value = app
        .client
        .get(app.url(&format!("/api/v1/deliveries/{delivery_id}")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(detail["status"], "succeeded");
    assert_eq!(
        detail["attemptsMade"].as_array().expect("attempts").len(),
        5
    );
    assert_eq!(subscriber.requests().len(), 5);
    app.stop().await;
    env.cleanup().await;
}

async fn a_slow_subscriber_does_not_delay_a_healthy_one(backend: Backend) {
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let slow = FakeSubscriber::start(Reply::Hang(Duration::from_secs(30))).await;
    let healthy = FakeSubscriber::start(Reply::Status(200)).await;
    let (api_key, connection) = company_with_connection(&app).await;
    let slow_subscription = create_subscription(&app, &api_key, &slow.url).await;
    let healthy_subscription = create_subscription(&app, &api_key, &healthy.url).await;
    let mut slow_deliveries = Vec::new();
    for _ in 0..3 {
        let (_, id) = event_with_delivery(&app, &connection, id_of(&slow_subscription)).await;
        slow_deliveries.push(id);
    }
    let mut healthy_deliveries = Vec::new();
    for _ in 0..5 {
        let (_, id) = event_with_delivery(&app, &connection, id_of(&healthy_subscription)).await;
        healthy_deliveries.push(id);
    }
    for &id in &healthy_deliveries {
        wait_for_status(&app, id, "succeeded").await;
    }
    assert_eq!(healthy.requests().len(), 5);
    for &id in &slow_deliveries {
        let stored = delivery(&app, id).await;
        assert!(
            stored.status == "pending" || stored.status == "in_flight",
            "the slow subscriber is still being retried: {}",
            stored.status
        );
    }
    app.stop().await;
    env.cleanup().await;
}

async fn a_subscription_failing_too_long_is_disabled_and_resumes_when_enabled(backend: Backend) {
    let Some(env) = tests::TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    // Attempts at about 0, 0.2, 0.6 and 1.4 s: the fourth finds it failing for over a second.
    let app = env
        .spawn_with(Role::All, |settings| {
            settings.disable_failing_after = Duration::from_secs(1);
        })
        .await;
    let subscriber = FakeSubscriber::start(Reply::Status(500)).await;
    let (api_key, connection) = company_with_connection(&app).await;
    let subscription = create_subscription(&app, &api_key, &subscriber.url).await;
    let subscription_id = id_of(&subscription);
    let since = chrono::Utc::now() - chrono::Duration::minutes(1);
    let (_, first) = event_with_delivery(&app, &connection, subscription_id).await;
    let stored = wait_until(
        Duration::from_secs(30),
        "the subscription is disabled",
        || async {
            let stored = get_subscription(&app, &api_key, subscription_id).await;
            (stored["enabled"] == false).then_some(stored)
        },
    )
    .await;
    // Usually the retries ran out first (dead); on a slow machine the subscription may be
    // disabled before the last retry, which then waits parked (pending) like any new delivery.
    let first_status = wait_until(
        Duration::from_secs(30),
        "the first delivery is dead or parked",
        || async {
            let stored = delivery(&app, first).await;
            (stored.status == "dead" || stored.status == "pending").then_some(stored.status)
        },
    )
    .await;
    let reason = stored["disabledReason"].as_str().expect("a reason");
    assert!(reason.contains("failed continuously"), "{reason}");

    // While disabled, a new delivery waits unattempted.
    let attempts_so_far = subscriber.requests().len();
    let (_, parked) = event_with_delivery(&app, &connection, subscription_id).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = delivery(&app, parked).await;
    assert_eq!(waiting.status, "pending");
    assert_eq!(waiting.attempts, 0);
    assert_eq!(subscriber.requests().len(), attempts_so_far);

    // Enabled again, with a healthy subscriber: the parked delivery goes out.
    subscriber.set_default(Reply::Status(200));
    let response = app
        .client
        .patch(app.url(&format!("/api/v1/subscriptions/{subscription_id}")))
        .bearer_auth(&api_key)
        .json(&serde_json::json!({ "enabled": true }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let enabled: serde_json::Value = response.json().await.expect("json");
    assert_eq!(enabled["enabled"], true);
    assert!(enabled["disabledReason"].is_null());
    wait_for_status(&app, parked, "succeeded").await;

    // The dead one comes back through the bulk retry (a parked one went out on enabling); a
    // second bulk retry finds nothing.
    let expected_retries: &[u64] = if first_status == "dead" {
        &[1, 0]
    } else {
        &[0]
    };
    for &expected in expected_retries {
        let response = app
            .client
            .post(app.url(&format!(
                "/api/v1/subscriptions/{subscription_id}/retry-dead"
            )))
            .bearer_auth(&api_key)
            .json(&serde_json::json!({ "since": since.to_rfc3339() }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        let retried: serde_json::Value = response.json().await.expect("json");
        assert_eq!(retried["retried"], expected);
        wait_for_status(&app, first, "succeeded").await;
    }
    // Everything after the switch to 200 was answered 200.
    let delivered: Vec<String> = subscriber.requests()[attempts_so_far..]
        .iter()
        .map(|request| request.header("webhook-id").to_owned())
        .collect();
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert!(delivered.contains(&first.to_string()) && delivered.contains(&parked.to_string()));
    app.stop().await;
    env.cleanup().await;
}

async fn get_subscription(app: &TestApp, api_key: &str, id: Uuid) -> serde_json::Value {
    let response = app
        .client
        .get(app.url(&format!("/api/v1/subscriptions/{id}")))
        .bearer_auth(api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

on_both_backends!(a_worker_killed_mid_delivery_is_taken_over_by_a_new_worker);

/// A `hookline worker` OS process, killed with SIGKILL when dropped.
struct WorkerProcess(std::process::Child);

impl WorkerProcess {
    async fn spawn(env: &tests::TestEnv) -> Self {
        use base64::Engine as _;
        let binary = tokio::task::spawn_blocking(tests::hookline_binary)
            .await
            .expect("build");
        let mut command = std::process::Command::new(binary);
        command
            .arg("worker")
            .env("DATABASE_URL", &env.database_url)
            .env(
                "HOOKLINE_ENCRYPTION_KEY",
                base64::engine::general_purpose::STANDARD.encode(tests::TEST_ENCRYPTION_KEY),
            )
            .env("HOOKLINE_QUEUE_PREFIX", &env.queue_prefix)
            .env("HOOKLINE_SWEEP_INTERVAL", "200ms")
            .env("HOOKLINE_LEASE", "2s")
            .env("HOOKLINE_ALLOW_PRIVATE_TARGETS", "true")
            .env("HOOKLINE_DELIVERY_TIMEOUT", "3s")
            .env("HOOKLINE_RETRY_SCHEDULE", "200ms,400ms,800ms")
            .env("HOOKLINE_WORKER_CONCURRENCY", "2")
            .env("HOOKLINE_DATA_DIR", env.dir.path().join("data"))
            .env_remove("REDIS_URL")
            .env_remove("HOOKLINE_METRICS_LISTEN")
            .stdout(std::process::Stdio::null());
        if let Some(redis) = &env.redis_url {
            command.env("REDIS_URL", redis);
        }
        Self(command.spawn().expect("start hookline worker"))
    }

    fn kill(&mut self) {
        // `Child::kill` sends SIGKILL on Unix: no graceful shutdown.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn a_worker_killed_mid_delivery_is_taken_over_by_a_new_worker(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let subscriber = FakeSubscriber::start(Reply::Hang(Duration::from_secs(60))).await;
    let (api_key, connection) = company_with_connection(&app).await;
    let subscription = create_subscription(&app, &api_key, &subscriber.url).await;
    let (_, delivery_id) = event_with_delivery(&app, &connection, id_of(&subscription)).await;

    let mut first = WorkerProcess::spawn(&env).await;
    wait_until(
        Duration::from_secs(60),
        "the first worker is mid-delivery",
        || async { (!subscriber.requests().is_empty()).then_some(()) },
    )
    .await;
    assert_eq!(delivery(&app, delivery_id).await.status, "in_flight");
    first.kill();

    subscriber.set_default(Reply::Status(200));
    let second = WorkerProcess::spawn(&env).await;
    let done = wait_until(
        Duration::from_secs(60),
        "the new worker completes the delivery",
        || async {
            let stored = delivery(&app, delivery_id).await;
            (stored.status == "succeeded").then_some(stored)
        },
    )
    .await;
    assert_eq!(done.attempts, 2, "the killed worker's attempt counts");
    assert_eq!(subscriber.requests().len(), 2);
    drop(second);
    app.stop().await;
    env.cleanup().await;
}

/// A delivery's `delivered_at` is set exactly while it is `succeeded`, and `next_attempt_at`
/// exactly while it is neither `succeeded` nor `dead`: a dead delivery is counted as dead, and a
/// succeeded one retried through the API is undelivered again until the target accepts it again.
/// On Postgres the claim of a delivery is a HOT update: no index of `delivery` names a column
/// the claim writes, so each claimed version adds no index entry.
async fn a_retried_delivery_is_undelivered_until_accepted_and_its_claims_add_no_index_entry(
    backend: Backend,
) {
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let subscriber = FakeSubscriber::start(Reply::Status(503)).await;
    let (api_key, connection) = company_with_connection(&app).await;
    let subscription = create_subscription(&app, &api_key, &subscriber.url).await;
    let (_, delivery_id) = event_with_delivery(&app, &connection, id_of(&subscription)).await;
    let dead = wait_for_status(&app, delivery_id, "dead").await;
    assert_eq!(
        (dead.next_attempt_at, dead.delivered_at),
        (None, None),
        "a dead delivery has no next attempt and was not delivered"
    );
    let rendered = sampled_metrics(&app).await;
    assert!(
        rendered.contains("hookline_deliveries_dead 1"),
        "{rendered}"
    );
    assert!(
        rendered.contains("hookline_queue_depth{stage=\"deliver\"} 0"),
        "{rendered}"
    );

    subscriber.set_default(Reply::Status(200));
    let retry = |app: &TestApp| {
        app.client
            .post(app.url(&format!("/api/v1/deliveries/{delivery_id}/retry")))
            .bearer_auth(&api_key)
            .send()
    };
    assert_eq!(retry(&app).await.expect("request").status(), 200);
    let first = wait_for_status(&app, delivery_id, "succeeded").await;
    let first_delivered = first
        .delivered_at
        .expect("a succeeded delivery was delivered");
    assert_eq!(first.next_attempt_at, None);

    // Sent again: not delivered until the target accepts it again.
    let response = retry(&app).await.expect("request");
    assert_eq!(response.status(), 200);
    let answered: serde_json::Value = response.json().await.expect("json");
    if answered["status"] != "succeeded" {
        assert!(answered["deliveredAt"].is_null(), "{answered}");
        assert!(!answered["nextAttemptAt"].is_null(), "{answered}");
    }
    let second = wait_until(
        Duration::from_secs(30),
        "the retried delivery succeeds again",
        || async {
            let stored = delivery(&app, delivery_id).await;
            (stored.status == "succeeded" && stored.attempts == 6).then_some(stored)
        },
    )
    .await;
    assert!(
        second.delivered_at.expect("delivered again") > first_delivered,
        "delivered_at is the second acceptance"
    );
    assert_eq!(subscriber.requests().len(), 6);

    if backend == Backend::PostgresRedis {
        let rows = app
            .db
            .query_all_raw(Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'delivery'",
            ))
            .await
            .expect("indexes");
        for row in rows {
            let definition: String = row.try_get("", "indexdef").expect("indexdef");
            for column in ["status", "locked_until", "attempts", "updated_at"] {
                assert!(
                    !definition.contains(column),
                    "{definition} names {column}, which a claim writes"
                );
            }
        }
        // Each of the six attempts was claimed by a HOT update (the result updates are not:
        // they move `next_attempt_at` or set `delivered_at`). The statistics reach the view
        // within seconds.
        wait_until(
            Duration::from_secs(30),
            "the claims are counted as HOT",
            || async {
                let row = app
                    .db
                    .query_one_raw(Statement::from_string(
                        sea_orm::DatabaseBackend::Postgres,
                        "SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'delivery'",
                    ))
                    .await
                    .expect("statistics")?;
                let hot: i64 = row.try_get("", "n_tup_hot_upd").expect("n_tup_hot_upd");
                (hot >= 6).then_some(())
            },
        )
        .await;
    }
    app.stop().await;
    env.cleanup().await;
}

mod a_retried_delivery_is_undelivered_until_accepted_and_its_claims_add_no_index_entry {
    // Current-thread runtimes: the thread-local metrics recorder must see the sampler's writes.
    #[tokio::test(flavor = "current_thread")]
    async fn embedded() {
        super::a_retried_delivery_is_undelivered_until_accepted_and_its_claims_add_no_index_entry(
            tests::Backend::Embedded,
        )
        .await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn postgres_redis() {
        super::a_retried_delivery_is_undelivered_until_accepted_and_its_claims_add_no_index_entry(
            tests::Backend::PostgresRedis,
        )
        .await
    }
}
