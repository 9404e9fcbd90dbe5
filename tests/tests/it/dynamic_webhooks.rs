//! Jira dynamic webhooks (issue 16): registered by hookline through the connection's OAuth
//! grant at the fake Atlassian, verified at ingest by their JWT and `matchedWebhookIds`,
//! renewed by the workers, deleted with their connection.

use std::time::Duration;

use api::Role;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use entity::{jira_webhook, periodic_task};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tests::fake_atlassian::{self, FakeAtlassian};
use tests::fake_subscriber::{FakeSubscriber, Reply};
use tests::{Backend, TestApp, TestEnv, fixtures, wait_until};
use uuid::Uuid;

use crate::helpers::{connection_id, create_subscription, event_count};
use crate::oauth::connect_sites;
use crate::on_both_backends;

on_both_backends!(
    a_registered_webhook_delivers_an_event_signed_with_a_jwt_to_a_subscriber,
    deliveries_without_a_valid_jwt_or_naming_another_connections_webhook_are_refused_and_not_stored,
    renewal_moves_the_expiry_once_across_workers_and_marks_gone_and_revoked_registrations,
    deleting_a_webhook_or_its_connection_deletes_it_at_jira,
    an_entry_jira_refuses_is_reported_not_hidden,
    registrations_jira_would_refuse_are_refused_before_calling_it,
);

/// The fake Atlassian and an app of `role` configured for it, changed by `configure`.
async fn start(
    backend: Backend,
    role: Role,
    configure: impl FnOnce(&mut api::config::Settings) + Send + 'static,
) -> Option<(FakeAtlassian, TestEnv, TestApp)> {
    let env = TestEnv::new(backend).await?;
    env.migrate().await;
    let fake = FakeAtlassian::start().await;
    let url = fake.url.clone();
    let app = env
        .spawn_with(role, move |settings| {
            settings.jira_client_id = Some(fake_atlassian::CLIENT_ID.to_owned());
            settings.jira_client_secret = Some(fake_atlassian::CLIENT_SECRET.to_owned().into());
            settings.atlassian_auth_url = url.clone();
            settings.atlassian_api_url = url;
            configure(settings);
        })
        .await;
    Some((fake, env, app))
}

/// A company whose consent connected the fake's two sites; returns (api key, connections).
async fn connected(app: &TestApp, fake: &FakeAtlassian) -> (String, Vec<serde_json::Value>) {
    let (_, api_key) = app.create_company("Northwind").await;
    let connections = connect_sites(app, fake, &api_key).await;
    assert_eq!(connections.len(), 2);
    (api_key, connections)
}

fn webhooks_path(connection: &serde_json::Value) -> String {
    format!(
        "/api/v1/connections/{}/jira/webhooks",
        connection_id(connection)
    )
}

/// `POST …/jira/webhooks` with `body`; returns (status, answer).
async fn register(
    app: &TestApp,
    api_key: &str,
    connection: &serde_json::Value,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = app
        .client
        .post(app.url(&webhooks_path(connection)))
        .bearer_auth(api_key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

/// Registers `events` with a JQL filter Jira accepts; returns Jira's webhook id.
async fn register_ok(
    app: &TestApp,
    api_key: &str,
    connection: &serde_json::Value,
    events: &[&str],
) -> i64 {
    let (status, out) = register(
        app,
        api_key,
        connection,
        serde_json::json!({ "events": events, "jqlFilter": "project = ORB" }),
    )
    .await;
    assert_eq!(status, 201, "{out}");
    assert_eq!(out["refused"], serde_json::json!([]), "{out}");
    out["items"][0]["webhookId"].as_i64().expect("webhookId")
}

async fn list(app: &TestApp, api_key: &str, connection: &serde_json::Value) -> serde_json::Value {
    let response = app
        .client
        .get(app.url(&webhooks_path(connection)))
        .bearer_auth(api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

async fn get_connection(
    app: &TestApp,
    api_key: &str,
    connection: &serde_json::Value,
) -> serde_json::Value {
    let response = app
        .client
        .get(app.url(&format!(
            "/api/v1/connections/{}",
            connection_id(connection)
        )))
        .bearer_auth(api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// `webhook_issue_updated_status.json` with `matchedWebhookIds` set to `ids`.
fn event_body(ids: &[i64]) -> Vec<u8> {
    let mut body = fixtures::json("webhook_issue_updated_status.json");
    body["matchedWebhookIds"] = serde_json::json!(ids);
    body.to_string().into_bytes()
}

/// Posts a dynamic delivery with `Authorization: Bearer <token>`.
async fn post_dynamic(app: &TestApp, url: &str, token: &str, body: &[u8]) -> u16 {
    app.client
        .post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(body.to_vec())
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

fn valid_claims() -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    serde_json::json!({ "iat": now, "exp": now + 300 })
}

async fn a_registered_webhook_delivers_an_event_signed_with_a_jwt_to_a_subscriber(
    backend: Backend,
) {
    let Some((fake, env, app)) = start(backend, Role::All, |_| {}).await else {
        return;
    };
    let subscriber = FakeSubscriber::start(Reply::Status(200)).await;
    let (api_key, connections) = connected(&app, &fake).await;
    let connection = &connections[0];
    create_subscription(&app, &api_key, &subscriber.url).await;

    let before = chrono::Utc::now();
    let (status, out) = register(
        &app,
        &api_key,
        connection,
        serde_json::json!({
            "events": ["jira:issue_updated", "comment_created"],
            "jqlFilter": "project = ORB",
            "fieldIdsFilter": ["status"],
        }),
    )
    .await;
    assert_eq!(status, 201, "{out}");
    let webhook_id = out["items"][0]["webhookId"].as_i64().expect("webhookId");
    // Registered at Jira with the connection's webhook URL.
    let at_jira = fake.webhooks();
    assert_eq!(at_jira.len(), 1);
    assert_eq!(at_jira[0].id, webhook_id);
    assert_eq!(
        at_jira[0].url,
        connection["webhookUrl"].as_str().expect("url")
    );
    assert_eq!(at_jira[0].events, ["jira:issue_updated", "comment_created"]);

    // Listed with its expiry, 30 days out.
    let listed = list(&app, &api_key, connection).await;
    assert_eq!(
        listed["items"].as_array().expect("items").len(),
        1,
        "{listed}"
    );
    let item = &listed["items"][0];
    assert_eq!(item["webhookId"], webhook_id);
    assert_eq!(item["status"], "active");
    assert_eq!(item["fieldIdsFilter"], serde_json::json!(["status"]));
    let expires: chrono::DateTime<chrono::Utc> = item["expiresAt"]
        .as_str()
        .expect("expiresAt")
        .parse()
        .expect("a date");
    assert!(expires > before + chrono::Duration::days(29), "{item}");
    assert!(item["lastRefreshOutcome"].is_null());

    // Jira posts an event: verified by its JWT and matchedWebhookIds, delivered.
    let statuses = fake
        .deliver_event(&fixtures::bytes("webhook_issue_updated_status.json"))
        .await;
    assert_eq!(statuses, [200]);
    let delivered = wait_until(
        Duration::from_secs(20),
        "the subscriber gets the event",
        || async { subscriber.acknowledged().into_iter().next() },
    )
    .await;
    let body = delivered.json();
    assert_eq!(body["type"], "jira:issue_updated");
    assert_eq!(body["data"]["connectionId"], connection["id"]);
    assert_eq!(
        body["data"]["raw"]["matchedWebhookIds"],
        serde_json::json!([webhook_id])
    );
    app.stop().await;
    env.cleanup().await;
}

async fn deliveries_without_a_valid_jwt_or_naming_another_connections_webhook_are_refused_and_not_stored(
    backend: Backend,
) {
    let Some((fake, env, app)) = start(backend, Role::Serve, |_| {}).await else {
        return;
    };
    let (api_key, connections) = connected(&app, &fake).await;
    let (first, second) = (&connections[0], &connections[1]);
    let ours = register_ok(&app, &api_key, first, &["jira:issue_updated"]).await;
    let theirs = register_ok(&app, &api_key, second, &["jira:issue_updated"]).await;
    assert_ne!(ours, theirs);
    let url = first["webhookUrl"].as_str().expect("url");
    let secret = fake_atlassian::CLIENT_SECRET.as_bytes();
    let body = event_body(&[ours]);

    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(valid_claims().to_string())
    );
    let past = chrono::Utc::now().timestamp() - 3600;
    let refused: [(&str, String, Vec<u8>); 7] = [
        (
            "a forged token",
            "eyJhbGciOiJIUzI1NiJ9.e30.AAAA".to_owned(),
            body.clone(),
        ),
        (
            "a JWT signed with another secret",
            plugins::jira::jwt::sign(b"another-secret", &valid_claims()),
            body.clone(),
        ),
        ("alg: none", alg_none, body.clone()),
        (
            "an HS256 JWT whose header says HS512",
            {
                let valid = plugins::jira::jwt::sign(secret, &valid_claims());
                let (_, rest) = valid.split_once('.').expect("three parts");
                format!("{}.{rest}", URL_SAFE_NO_PAD.encode(br#"{"alg":"HS512"}"#))
            },
            body.clone(),
        ),
        (
            "an expired exp",
            plugins::jira::jwt::sign(secret, &serde_json::json!({"iat": past - 60, "exp": past})),
            body.clone(),
        ),
        (
            "matchedWebhookIds of another connection",
            plugins::jira::jwt::sign(secret, &valid_claims()),
            event_body(&[theirs]),
        ),
        (
            "no matchedWebhookIds",
            plugins::jira::jwt::sign(secret, &valid_claims()),
            fixtures::bytes("webhook_issue_created.json"),
        ),
    ];
    for (what, token, body) in &refused {
        assert_eq!(post_dynamic(&app, url, token, body).await, 401, "{what}");
    }
    assert_eq!(
        event_count(&app, connection_id(first)).await,
        0,
        "nothing stored"
    );

    // The same delivery with a valid JWT and its own webhook id is taken.
    let valid = plugins::jira::jwt::sign(secret, &valid_claims());
    assert_eq!(post_dynamic(&app, url, &valid, &body).await, 200);
    assert_eq!(event_count(&app, connection_id(first)).await, 1);
    // Admin webhooks keep X-Hub-Signature.
    let admin_body = fixtures::bytes("webhook_issue_created.json");
    let secret = first["webhookSecret"].as_str().expect("secret");
    let response = crate::helpers::post_webhook(&app, url, &admin_body, Some(secret), None).await;
    assert_eq!(response.status(), 200);
    let response = crate::helpers::post_webhook(&app, url, &admin_body, None, None).await;
    assert_eq!(response.status(), 401, "unsigned admin webhook");
    app.stop().await;
    env.cleanup().await;
}

async fn renewal_moves_the_expiry_once_across_workers_and_marks_gone_and_revoked_registrations(
    backend: Backend,
) {
    // Everything registered is due at once.
    let Some((fake, env, app)) = start(backend, Role::Serve, |settings| {
        settings.jira_webhook_renewal_margin = Duration::from_secs(31 * 86_400);
    })
    .await
    else {
        return;
    };
    let (api_key, connections) = connected(&app, &fake).await;
    let connection = &connections[0];
    let kept = register_ok(&app, &api_key, connection, &["jira:issue_updated"]).await;
    let gone = register_ok(&app, &api_key, connection, &["comment_created"]).await;
    // As if registered 25 days ago.
    let soon = chrono::Utc::now() + chrono::Duration::days(5);
    jira_webhook::Entity::update_many()
        .col_expr(jira_webhook::Column::ExpiresAt, Expr::value(soon))
        .exec(&app.db)
        .await
        .expect("update");
    // Someone deletes one of them at Jira.
    fake.forget_webhook(gone);

    // Two workers ask at once: one renews, once.
    let (a, b) = tokio::join!(
        worker::jira_webhook_renewal::run_if_due(&app.job_context),
        worker::jira_webhook_renewal::run_if_due(&app.job_context),
    );
    let runs: Vec<_> = [a.expect("run"), b.expect("run")]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(runs.len(), 1, "one run per interval: {runs:?}");
    assert_eq!(runs[0].renewed, 1, "{runs:?}");
    assert_eq!(runs[0].gone, 1, "{runs:?}");
    assert_eq!(fake.webhook_refreshes(), 1);
    // Not due again within the interval (the state is in the database: a restart keeps it).
    assert_eq!(
        worker::jira_webhook_renewal::run_if_due(&app.job_context)
            .await
            .expect("run"),
        None
    );

    let listed = list(&app, &api_key, connection).await;
    let by_id = |id: i64| {
        listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|item| item["webhookId"] == id)
            .cloned()
            .expect("listed")
    };
    let renewed = by_id(kept);
    let expires: chrono::DateTime<chrono::Utc> = renewed["expiresAt"]
        .as_str()
        .expect("expiresAt")
        .parse()
        .expect("date");
    assert!(
        expires > soon + chrono::Duration::days(20),
        "the expiry moved: {renewed}"
    );
    assert_eq!(renewed["status"], "active");
    assert_eq!(renewed["lastRefreshOutcome"], "ok");
    let missing = by_id(gone);
    assert_eq!(missing["status"], "renewal_failed", "{missing}");
    assert!(
        missing["lastRefreshError"]
            .as_str()
            .is_some_and(|error| error.contains("no longer has")),
        "{missing}"
    );
    let shown = get_connection(&app, &api_key, connection).await;
    assert!(
        shown["webhookProblem"]
            .as_str()
            .is_some_and(|problem| problem.contains(&gone.to_string())),
        "{shown}"
    );

    // The grant is revoked: the next run marks the registration, and the connection.
    fake.revoke_all();
    fake.expire_access_tokens();
    periodic_task::Entity::update_many()
        .col_expr(
            periodic_task::Column::NextRunAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .filter(periodic_task::Column::Name.eq(periodic_task::name::JIRA_WEBHOOK_RENEWAL))
        .exec(&app.db)
        .await
        .expect("update");
    let run = worker::jira_webhook_renewal::run_if_due(&app.job_context)
        .await
        .expect("run")
        .expect("due again");
    assert_eq!(run.revoked, 1, "{run:?}");
    let revoked = list(&app, &api_key, connection).await["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|item| item["webhookId"] == kept)
        .cloned()
        .expect("listed");
    assert_eq!(revoked["status"], "renewal_failed", "{revoked}");
    assert_eq!(revoked["lastRefreshOutcome"], "failed");
    assert!(
        revoked["lastRefreshError"]
            .as_str()
            .is_some_and(|error| error.contains("grant was revoked")),
        "{revoked}"
    );
    let shown = get_connection(&app, &api_key, connection).await;
    assert_eq!(shown["status"], "reauth_required", "{shown}");
    assert!(shown["webhookProblem"].is_string(), "{shown}");
    // Marked for good: the next run leaves them alone.
    assert_eq!(
        worker::jira_webhook_renewal::renew_due(&app.job_context)
            .await
            .expect("run"),
        worker::jira_webhook_renewal::Renewed::default()
    );
    app.stop().await;
    env.cleanup().await;
}

async fn deleting_a_webhook_or_its_connection_deletes_it_at_jira(backend: Backend) {
    let Some((fake, env, app)) = start(backend, Role::Serve, |_| {}).await else {
        return;
    };
    let (api_key, connections) = connected(&app, &fake).await;
    let (connection, other) = (&connections[0], &connections[1]);
    let first = register_ok(&app, &api_key, connection, &["jira:issue_updated"]).await;
    let second = register_ok(&app, &api_key, connection, &["jira:issue_created"]).await;
    let elsewhere = register_ok(&app, &api_key, other, &["jira:issue_created"]).await;
    assert_eq!(fake.webhooks().len(), 3);

    // One by Jira's id; another connection's id is not found here.
    let delete = |path: String| {
        app.client
            .delete(app.url(&path))
            .bearer_auth(&api_key)
            .send()
    };
    let response = delete(format!("{}/{elsewhere}", webhooks_path(connection)))
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    let response = delete(format!("{}/{first}", webhooks_path(connection)))
        .await
        .expect("request");
    assert_eq!(response.status(), 204);
    let ids: Vec<i64> = fake.webhooks().iter().map(|webhook| webhook.id).collect();
    assert_eq!(ids, [second, elsewhere]);
    assert_eq!(
        list(&app, &api_key, connection).await["items"]
            .as_array()
            .expect("items")
            .len(),
        1
    );

    // The connection goes: its webhook goes at Jira too, the other site's stays.
    let response = delete(format!("/api/v1/connections/{}", connection_id(connection)))
        .await
        .expect("request");
    assert_eq!(response.status(), 204);
    let ids: Vec<i64> = fake.webhooks().iter().map(|webhook| webhook.id).collect();
    assert_eq!(ids, [elsewhere]);
    assert_eq!(
        jira_webhook::Entity::find()
            .filter(jira_webhook::Column::ConnectionId.eq(connection_id(connection)))
            .all(&app.db)
            .await
            .expect("query"),
        vec![]
    );
    app.stop().await;
    env.cleanup().await;
}

async fn an_entry_jira_refuses_is_reported_not_hidden(backend: Backend) {
    let Some((fake, env, app)) = start(backend, Role::Serve, |_| {}).await else {
        return;
    };
    let (api_key, connections) = connected(&app, &fake).await;
    let connection = &connections[0];
    // Jira answers 200 with a per-entry error (dynamic_webhook_register_response.json).
    let (status, out) = register(
        &app,
        &api_key,
        connection,
        serde_json::json!({ "events": ["jira:issue_updated"], "jqlFilter": "project is not EMPTY" }),
    )
    .await;
    assert_eq!(status, 422, "{out}");
    assert_eq!(out["code"], "jira_refused", "{out}");
    assert!(
        out["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("Operator is not is unsupported")),
        "{out}"
    );
    assert!(fake.webhooks().is_empty());
    assert_eq!(
        list(&app, &api_key, connection).await["items"],
        serde_json::json!([])
    );

    // Jira's own limit, if it is reached behind hookline's back, is reported the same way.
    for _ in 0..5 {
        register_ok(&app, &api_key, connection, &["jira:issue_created"]).await;
    }
    jira_webhook::Entity::delete_many()
        .filter(jira_webhook::Column::WebhookId.eq(fake.webhooks()[0].id))
        .exec(&app.db)
        .await
        .expect("delete");
    let (status, out) = register(
        &app,
        &api_key,
        connection,
        serde_json::json!({ "events": ["jira:issue_created"], "jqlFilter": "project = ORB" }),
    )
    .await;
    assert_eq!(status, 422, "{out}");
    assert!(
        out["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("limit of 5")),
        "{out}"
    );
    app.stop().await;
    env.cleanup().await;
}

async fn registrations_jira_would_refuse_are_refused_before_calling_it(backend: Backend) {
    let Some((fake, env, app)) = start(backend, Role::Serve, |_| {}).await else {
        return;
    };
    let (api_key, connections) = connected(&app, &fake).await;
    let connection = &connections[0];
    let cases = [
        (
            serde_json::json!({ "events": ["worklog_created"], "jqlFilter": "project = ORB" }),
            422,
            "admin webhook",
        ),
        (
            serde_json::json!({ "events": ["jira:issue_created", "attachment_created"], "jqlFilter": "project = ORB" }),
            422,
            "admin webhook",
        ),
        (
            serde_json::json!({ "events": ["issuelink_created"], "jqlFilter": "project = ORB" }),
            422,
            "worklog, attachment and issue-link",
        ),
        (
            serde_json::json!({ "events": ["jira:issue_exploded"], "jqlFilter": "project = ORB" }),
            422,
            "allowed: jira:issue_created",
        ),
        (
            serde_json::json!({ "events": [], "jqlFilter": "project = ORB" }),
            422,
            "at least one event",
        ),
        (
            serde_json::json!({ "events": ["jira:issue_created"], "jqlFilter": "   " }),
            422,
            "jqlFilter is required",
        ),
        (
            serde_json::json!({ "events": ["jira:issue_created"] }),
            422,
            "jqlFilter is required",
        ),
    ];
    for (body, status, detail) in cases {
        let (got, out) = register(&app, &api_key, connection, body.clone()).await;
        assert_eq!(got, status, "{body}: {out}");
        assert!(
            out["detail"]
                .as_str()
                .is_some_and(|text| text.contains(detail)),
            "{body}: {out}"
        );
        assert!(out["code"].is_string(), "{out}");
    }
    assert!(fake.webhooks().is_empty(), "Jira was not called");

    // Jira's limit: 5 per app, user and site.
    for _ in 0..5 {
        register_ok(&app, &api_key, connection, &["jira:issue_created"]).await;
    }
    let (status, out) = register(
        &app,
        &api_key,
        connection,
        serde_json::json!({ "events": ["jira:issue_created"], "jqlFilter": "project = ORB" }),
    )
    .await;
    assert_eq!(status, 409, "{out}");
    assert!(
        out["detail"]
            .as_str()
            .is_some_and(|d| d.contains("5 dynamic webhooks")),
        "{out}"
    );
    assert_eq!(fake.webhooks().len(), 5);

    // A connection without OAuth cannot have them; another company's is not found.
    let manual = app
        .create_connection(&api_key, "manual.atlassian.net")
        .await;
    let (status, out) = register(
        &app,
        &api_key,
        &manual,
        serde_json::json!({ "events": ["jira:issue_created"], "jqlFilter": "project = ORB" }),
    )
    .await;
    assert_eq!(status, 409, "{out}");
    assert!(
        out["detail"].as_str().is_some_and(|d| d.contains("OAuth")),
        "{out}"
    );
    let (_, other_key) = app.create_company("Other").await;
    let (status, _) = register(
        &app,
        &other_key,
        connection,
        serde_json::json!({ "events": ["jira:issue_created"], "jqlFilter": "project = ORB" }),
    )
    .await;
    assert_eq!(status, 404);
    let response = app
        .client
        .get(app.url(&webhooks_path(connection)))
        .bearer_auth(&other_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    let response = app
        .client
        .delete(app.url(&format!("{}/{}", webhooks_path(connection), Uuid::now_v7())))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 404);
    app.stop().await;
    env.cleanup().await;
}
