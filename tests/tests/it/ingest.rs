//! `POST /webhook/jira/{connectionId}` (DESIGN §4 "Ingest").

use std::time::Duration;

use api::Role;
use chrono::Utc;
use entity::cipher::Cipher;
use entity::plugin_connection;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, IntoActiveModel};
use tests::{Backend, TEST_ENCRYPTION_KEY, fixtures};
use uuid::Uuid;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    every_fixture_body_is_stored_byte_identical,
    the_signed_fixture_verifies_and_a_one_byte_change_is_rejected,
    a_retried_delivery_is_stored_once_and_enqueued_once,
    twenty_concurrent_copies_are_stored_once_and_enqueued_once,
    concurrent_deliveries_committed_together_each_get_their_own_event,
    a_body_without_identifier_is_deduplicated_on_its_hash,
    credentials_are_never_stored_with_the_headers,
    unknown_malformed_and_disabled_connections_are_404,
    a_body_over_the_limit_is_413,
    a_missing_or_wrong_signature_is_401,
    a_database_that_cannot_record_is_503_and_ingest_recovers,
    an_event_whose_job_was_lost_is_processed_once_the_sweeper_runs,
);

async fn every_fixture_body_is_stored_byte_identical(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("webhookUrl");
    let secret = connection["webhookSecret"].as_str().expect("webhookSecret");
    let names = fixtures::webhook_bodies();
    assert!(names.len() >= 9, "found only {names:?}");
    for name in &names {
        let body = fixtures::bytes(name);
        let response = post_webhook(&app, url, &body, Some(secret), Some(name)).await;
        assert_eq!(response.status(), 200, "{name}");
        let out: serde_json::Value = response.json().await.expect("json");
        assert_eq!(out["duplicate"], false, "{name}");
        let stored = event(
            &app,
            out["eventId"]
                .as_str()
                .expect("eventId")
                .parse()
                .expect("uuid"),
        )
        .await;
        assert_eq!(stored.body, body, "{name} stored byte for byte");
        assert_eq!(stored.status, "received");
        assert_eq!(stored.delivery_key, format!("id:{name}"));
        assert_eq!(
            stored.headers["x-atlassian-webhook-identifier"],
            name.as_str()
        );
    }
    assert_eq!(
        event_count(&app, connection_id(&connection)).await,
        names.len() as u64
    );
    app.stop().await;
    env.cleanup().await;
}

/// Inserts a connection whose secret is the admin-webhook fixture's secret.
async fn connection_with_fixture_secret(app: &tests::TestApp) -> Uuid {
    let (_, api_key) = app.create_company("Fixture Co").await;
    let created = app.create_connection(&api_key, "fixture-site").await;
    let id = connection_id(&created);
    let headers = fixtures::json("webhook_issue_created.admin_headers.json");
    let secret = headers["_fixture_secret"].as_str().expect("secret");
    let model = <plugin_connection::Entity as sea_orm::EntityTrait>::find_by_id(id)
        .one(&app.db)
        .await
        .expect("query")
        .expect("connection");
    let mut active = model.into_active_model();
    active.webhook_secret = Set(Some(Cipher::new(&TEST_ENCRYPTION_KEY, &[]).encrypt(secret)));
    active.update(&app.db).await.expect("update secret");
    id
}

async fn the_signed_fixture_verifies_and_a_one_byte_change_is_rejected(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let id = connection_with_fixture_secret(&app).await;
    let url = app.url(&format!("/webhook/jira/{id}"));
    let body = fixtures::bytes("webhook_issue_created.json");
    let headers = fixtures::json("webhook_issue_created.admin_headers.json");
    let send = |body: Vec<u8>| {
        let mut request = app.client.post(&url).body(body);
        for (name, value) in headers["headers"].as_object().expect("headers") {
            request = request.header(name, value.as_str().expect("header value"));
        }
        request.send()
    };

    let mut changed = body.clone();
    changed[100] ^= 0x01;
    let rejected = send(changed).await.expect("request");
    assert_eq!(rejected.status(), 401);
    let error: serde_json::Value = rejected.json().await.expect("json");
    assert_eq!(error["code"], "unauthorized");
    let detail = error["detail"].as_str().expect("detail");
    assert!(detail.contains("does not match"), "{detail}");

    let accepted = send(body.clone()).await.expect("request");
    assert_eq!(accepted.status(), 200);
    let out: serde_json::Value = accepted.json().await.expect("json");
    let stored = event(
        &app,
        out["eventId"].as_str().expect("id").parse().expect("uuid"),
    )
    .await;
    assert_eq!(stored.body, body);
    assert_eq!(
        event_count(&app, id).await,
        1,
        "the rejected body was not stored"
    );
    app.stop().await;
    env.cleanup().await;
}

async fn a_retried_delivery_is_stored_once_and_enqueued_once(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str();
    let body = fixtures::bytes("webhook_issue_updated_status.json");
    let first: serde_json::Value = post_webhook(&app, url, &body, secret, Some("retry-1"))
        .await
        .json()
        .await
        .expect("json");
    let second: serde_json::Value = post_webhook(&app, url, &body, secret, Some("retry-1"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(first["eventId"], second["eventId"]);
    assert_eq!(event_count(&app, connection_id(&connection)).await, 1);
    assert_eq!(queued_process_event_jobs(&env, &app).await, 1);
    app.stop().await;
    env.cleanup().await;
}

async fn twenty_concurrent_copies_are_stored_once_and_enqueued_once(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str();
    let body = fixtures::bytes("webhook_comment_created.json");
    let posts = (0..20).map(|_| post_webhook(&app, url, &body, secret, Some("concurrent-1")));
    let responses = futures::future::join_all(posts).await;
    let mut event_ids = std::collections::HashSet::new();
    let mut fresh = 0;
    for response in responses {
        assert_eq!(response.status(), 200);
        let out: serde_json::Value = response.json().await.expect("json");
        if out["duplicate"] == false {
            fresh += 1;
        }
        event_ids.insert(out["eventId"].as_str().expect("id").to_owned());
    }
    assert_eq!(fresh, 1, "exactly one copy is new");
    assert_eq!(event_ids.len(), 1, "every copy answers the same event id");
    assert_eq!(event_count(&app, connection_id(&connection)).await, 1);
    assert_eq!(queued_process_event_jobs(&env, &app).await, 1);
    app.stop().await;
    env.cleanup().await;
}

/// Many deliveries at once, each sent three times: the group commit writes them in shared
/// batches, and every answer still names the right event.
async fn concurrent_deliveries_committed_together_each_get_their_own_event(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str();
    let body = fixtures::bytes("webhook_issue_updated_status.json");
    let identifiers: Vec<String> = (0..40).map(|i| format!("batch-{i}")).collect();
    let posts = (0..3).flat_map(|_| {
        identifiers.iter().map(|identifier| {
            let identifier = identifier.clone();
            let body = &body;
            let app = &app;
            async move {
                let response = post_webhook(app, url, body, secret, Some(&identifier)).await;
                let status = response.status();
                let out: serde_json::Value = response.json().await.expect("json");
                assert_eq!(status, 200, "{out}");
                (identifier, out)
            }
        })
    });
    let answers = futures::future::join_all(posts).await;
    let mut by_identifier: std::collections::HashMap<String, Vec<serde_json::Value>> =
        Default::default();
    for (identifier, out) in answers {
        by_identifier.entry(identifier).or_default().push(out);
    }
    let mut event_ids = std::collections::HashSet::new();
    for (identifier, outs) in &by_identifier {
        assert_eq!(outs.len(), 3);
        let fresh = outs.iter().filter(|out| out["duplicate"] == false).count();
        assert_eq!(fresh, 1, "{identifier}: exactly one copy is new: {outs:?}");
        let ids: std::collections::HashSet<&str> = outs
            .iter()
            .map(|out| out["eventId"].as_str().expect("id"))
            .collect();
        assert_eq!(ids.len(), 1, "{identifier}: one event id: {outs:?}");
        event_ids.extend(ids.into_iter().map(str::to_owned));
    }
    assert_eq!(event_ids.len(), 40, "one event per delivery");
    assert_eq!(event_count(&app, connection_id(&connection)).await, 40);
    // The group commits' batches: at most one job per webhook, every event in exactly one.
    let jobs = queued_process_event_jobs(&env, &app).await;
    assert!((1..=40).contains(&jobs), "{jobs} jobs");
    let mut queued = queued_event_ids(&env, &app).await;
    queued.sort_unstable();
    let mut expected: Vec<Uuid> = event_ids
        .iter()
        .map(|id| id.parse().expect("uuid"))
        .collect();
    expected.sort_unstable();
    assert_eq!(queued, expected, "every event is enqueued once");
    app.stop().await;
    env.cleanup().await;
}

async fn a_body_without_identifier_is_deduplicated_on_its_hash(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str();
    let body = fixtures::bytes("webhook_worklog_created.json");
    let first: serde_json::Value = post_webhook(&app, url, &body, secret, None)
        .await
        .json()
        .await
        .expect("json");
    let again: serde_json::Value = post_webhook(&app, url, &body, secret, None)
        .await
        .json()
        .await
        .expect("json");
    let other: serde_json::Value =
        post_webhook(&app, url, b"{\"webhookEvent\":\"x\"}", secret, None)
            .await
            .json()
            .await
            .expect("json");
    assert_eq!(again["duplicate"], true);
    assert_eq!(first["eventId"], again["eventId"]);
    assert_eq!(other["duplicate"], false);
    assert_eq!(event_count(&app, connection_id(&connection)).await, 2);
    app.stop().await;
    env.cleanup().await;
}

async fn unknown_malformed_and_disabled_connections_are_404(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let body = fixtures::bytes("webhook_issue_created.json");
    for path in [
        format!("/webhook/jira/{}", Uuid::now_v7()),
        "/webhook/jira/not-a-uuid".to_owned(),
    ] {
        let response = post_webhook(&app, &app.url(&path), &body, None, None).await;
        assert_eq!(response.status(), 404, "{path}");
        let error: serde_json::Value = response.json().await.expect("json");
        assert_eq!(error["code"], "not_found");
    }

    let (_, connection) = company_with_connection(&app).await;
    let id = connection_id(&connection);
    let model = <plugin_connection::Entity as sea_orm::EntityTrait>::find_by_id(id)
        .one(&app.db)
        .await
        .expect("query")
        .expect("connection");
    let mut active = model.into_active_model();
    active.status = Set(plugin_connection::status::DISABLED.to_owned());
    active.updated_at = Set(Utc::now());
    active.update(&app.db).await.expect("disable");
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str();
    let response = post_webhook(&app, url, &body, secret, None).await;
    assert_eq!(response.status(), 404, "disabled connection");
    assert_eq!(event_count(&app, id).await, 0);
    app.stop().await;
    env.cleanup().await;
}

async fn a_body_over_the_limit_is_413(backend: Backend) {
    let Some(env) = tests::TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    let app = env
        .spawn_with(Role::Serve, |settings| {
            settings.body_limit_bytes = 64 * 1024
        })
        .await;
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str();
    let mut big = b"{\"webhookEvent\":\"jira:issue_created\",\"padding\":\"".to_vec();
    big.resize(64 * 1024 + 10, b'x');
    big.extend_from_slice(b"\"}");
    let response = post_webhook(&app, url, &big, secret, None).await;
    assert_eq!(response.status(), 413);
    let error: serde_json::Value = response.json().await.expect("json");
    assert_eq!(error["code"], "payload_too_large");
    // Just under the limit is fine.
    let body = fixtures::bytes("webhook_issue_created.json");
    assert_eq!(
        post_webhook(&app, url, &body, secret, None).await.status(),
        200
    );
    assert_eq!(event_count(&app, connection_id(&connection)).await, 1);
    app.stop().await;
    env.cleanup().await;
}

async fn a_missing_or_wrong_signature_is_401(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    let body = fixtures::bytes("webhook_issue_deleted.json");
    let missing = post_webhook(&app, url, &body, None, None).await;
    assert_eq!(missing.status(), 401);
    let error: serde_json::Value = missing.json().await.expect("json");
    assert!(
        error["detail"]
            .as_str()
            .expect("detail")
            .contains("missing")
    );
    let wrong = post_webhook(&app, url, &body, Some("not-the-secret"), None).await;
    assert_eq!(wrong.status(), 401);
    let malformed = app
        .client
        .post(url)
        .header("content-type", "application/json")
        .header("x-hub-signature", "sha1=abcdef")
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(malformed.status(), 401);
    assert_eq!(event_count(&app, connection_id(&connection)).await, 0);
    app.stop().await;
    env.cleanup().await;
}

async fn a_database_that_cannot_record_is_503_and_ingest_recovers(backend: Backend) {
    let Some(env) = tests::TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    let body = fixtures::bytes("webhook_issue_created.json");
    match backend {
        Backend::PostgresRedis => {
            // The app reaches Postgres through a proxy the test cuts.
            let target = "127.0.0.1:5432".parse().expect("address");
            let proxy = tests::proxy::TcpProxy::start(target).await;
            let url = env
                .database_url
                .replace("127.0.0.1:5432", &proxy.addr.to_string());
            let app = env
                .spawn_with(Role::Serve, |settings| settings.database_url = url)
                .await;
            let (_, connection) = company_with_connection(&app).await;
            let webhook_url = connection["webhookUrl"].as_str().expect("url");
            let secret = connection["webhookSecret"].as_str();

            proxy.cut();
            let response = post_webhook(&app, webhook_url, &body, secret, Some("outage-1")).await;
            assert_eq!(response.status(), 503, "database gone");
            let error: serde_json::Value = response.json().await.expect("json");
            assert_eq!(error["code"], "unavailable");

            proxy.restore();
            let recovered =
                tests::wait_until(Duration::from_secs(20), "ingest recovers", || async {
                    let response =
                        post_webhook(&app, webhook_url, &body, secret, Some("outage-1")).await;
                    (response.status() == 200).then_some(())
                })
                .await;
            let () = recovered;
            assert_eq!(event_count(&app, connection_id(&connection)).await, 1);
            app.stop().await;
        }
        Backend::Embedded => {
            let app = env.spawn_with(Role::Serve, |_| {}).await;
            let (_, connection) = company_with_connection(&app).await;
            let webhook_url = connection["webhookUrl"].as_str().expect("url");
            let secret = connection["webhookSecret"].as_str();
            // Another process holds the write lock past the busy timeout.
            let path = env.dir.path().join("hookline.db");
            let locker = sea_orm::Database::connect(format!("sqlite://{}", path.display()))
                .await
                .expect("second connection");
            let pool = locker.get_sqlite_connection_pool();
            let mut lock = pool.acquire().await.expect("connection");
            sea_orm::sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut *lock)
                .await
                .expect("lock");
            let response = post_webhook(&app, webhook_url, &body, secret, Some("outage-1")).await;
            assert_eq!(response.status(), 503, "database locked");
            sea_orm::sqlx::query("ROLLBACK")
                .execute(&mut *lock)
                .await
                .expect("unlock");
            drop(lock);
            let response = post_webhook(&app, webhook_url, &body, secret, Some("outage-1")).await;
            assert_eq!(response.status(), 200, "recovered");
            assert_eq!(event_count(&app, connection_id(&connection)).await, 1);
            app.stop().await;
        }
    }
    env.cleanup().await;
}

async fn an_event_whose_job_was_lost_is_processed_once_the_sweeper_runs(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str();
    // The push happens, then the queue loses it: as if Redis restarted right after.
    let body = fixtures::bytes("webhook_issue_updated_assignee.json");
    let out: serde_json::Value = post_webhook(&app, url, &body, secret, Some("lost-1"))
        .await
        .json()
        .await
        .expect("json");
    // The push follows the answer (the group commit answers first): wait for the job before
    // losing it, or the push would land after the loss.
    tests::wait_until(
        Duration::from_secs(10),
        "the event's job is queued",
        || async { (queued_process_event_jobs(&env, &app).await > 0).then_some(()) },
    )
    .await;
    lose_queued_jobs(&env, &app).await;
    assert_eq!(queued_process_event_jobs(&env, &app).await, 0);
    let event_id: Uuid = out["eventId"].as_str().expect("id").parse().expect("uuid");

    let worker = env.spawn(Role::Worker).await;
    let processed = tests::wait_until(
        Duration::from_secs(30),
        "the sweeper recovers the event",
        || async {
            let stored = event(&app, event_id).await;
            (stored.status == "processed").then_some(stored)
        },
    )
    .await;
    assert_eq!(processed.event_type.as_deref(), Some("jira:issue_updated"));
    assert_eq!(processed.attempts, 1);
    worker.stop().await;
    app.stop().await;
    env.cleanup().await;
}

/// Redis unreachable when ingest pushes: the event is still accepted and, once Redis is back,
/// processed through the sweeper. (The embedded queue lives in the database itself, so a push
/// cannot fail there without the insert failing first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_push_still_answers_200_and_the_event_is_processed_later() {
    let Some(env) = tests::TestEnv::new(Backend::PostgresRedis).await else {
        return;
    };
    env.migrate().await;
    let target = "127.0.0.1:6379".parse().expect("address");
    let proxy = tests::proxy::TcpProxy::start(target).await;
    let redis_url = format!("redis://{}", proxy.addr);
    let app = env
        .spawn_with(Role::Serve, |settings| {
            settings.redis_url = Some(redis_url.clone())
        })
        .await;
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str();

    proxy.cut();
    let body = fixtures::bytes("webhook_issue_created.json");
    let response = post_webhook(&app, url, &body, secret, Some("no-redis-1")).await;
    assert_eq!(response.status(), 200, "accepted although the push failed");
    let out: serde_json::Value = response.json().await.expect("json");
    let event_id: Uuid = out["eventId"].as_str().expect("id").parse().expect("uuid");
    proxy.restore();

    let worker = env.spawn(Role::Worker).await;
    tests::wait_until(
        Duration::from_secs(30),
        "the event is processed",
        || async { (event(&app, event_id).await.status == "processed").then_some(()) },
    )
    .await;
    worker.stop().await;
    app.stop().await;
    env.cleanup().await;
}

async fn credentials_are_never_stored_with_the_headers(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str().expect("secret");
    let body = fixtures::bytes("webhook_issue_updated_status.json");
    // The OAuth (dynamic webhook) delivery headers carry a bearer JWT.
    let headers = fixtures::json("webhook_issue_updated_status.oauth_headers.json");
    let mut request = app.client.post(url).body(body.clone()).header(
        "x-hub-signature",
        plugins::jira::webhook::sign(secret.as_bytes(), &body),
    );
    for (name, value) in headers["headers"].as_object().expect("headers") {
        request = request.header(name, value.as_str().expect("value"));
    }
    request = request.header("cookie", "session=abc");
    let response = request.send().await.expect("request");
    assert_eq!(response.status(), 200);
    let out: serde_json::Value = response.json().await.expect("json");
    let stored = event(
        &app,
        out["eventId"].as_str().expect("id").parse().expect("uuid"),
    )
    .await;
    let stored_headers = stored.headers.as_object().expect("object");
    assert!(!stored_headers.contains_key("authorization"));
    assert!(!stored_headers.contains_key("cookie"));
    assert!(
        !stored.headers.to_string().contains("eyJhbGciOi"),
        "no JWT anywhere"
    );
    assert_eq!(stored_headers["x-atlassian-webhook-retry"], "2");
    assert_eq!(stored_headers["x-atlassian-webhook-flow"], "Primary");
    app.stop().await;
    env.cleanup().await;
}
