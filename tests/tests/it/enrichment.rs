//! Enrichment through the Jira REST API against the fake Atlassian (DESIGN §4 "ProcessEvents").

use std::time::Duration;

use entity::plugin_connection;
use sea_orm::EntityTrait;
use tests::fake_atlassian::{self, FakeAtlassian};
use tests::{Backend, TestApp, fixtures};
use uuid::Uuid;
use worker::jobs::process_events;

use crate::helpers::*;
use crate::oauth::{connect_sites, start_with_fake};
use crate::on_both_backends;

on_both_backends!(
    an_issue_event_is_enriched_with_the_fresh_issue,
    a_deleted_issue_is_skipped_with_the_reason,
    a_rate_limit_within_the_budget_is_waited_out,
    a_jira_that_keeps_failing_gives_up_within_the_budget,
    a_connection_needing_reauthorisation_is_skipped_without_calling_jira,
    a_worklog_is_enriched_through_its_issue_id,
);

/// An OAuth connection to the fake's site; returns (connection id, webhook URL, secret).
async fn oauth_connection(app: &TestApp, fake: &FakeAtlassian) -> (Uuid, String, String) {
    let (_, api_key) = app.create_company("Northwind").await;
    for connection in connect_sites(app, fake, &api_key).await {
        let id = connection_id(&connection);
        let model = plugin_connection::Entity::find_by_id(id)
            .one(&app.db)
            .await
            .expect("query")
            .expect("connection");
        if model.metadata["cloudId"] == fake_atlassian::CLOUD_ID {
            return (
                id,
                connection["webhookUrl"].as_str().expect("url").to_owned(),
                connection["webhookSecret"]
                    .as_str()
                    .expect("secret")
                    .to_owned(),
            );
        }
    }
    panic!("no connection to the fake's site");
}

/// Posts `body` and runs ProcessEvents on it directly; returns the event's `data.enrichment`.
async fn enrichment_of(app: &TestApp, url: &str, secret: &str, body: &[u8]) -> serde_json::Value {
    let out: serde_json::Value = post_webhook(app, url, body, Some(secret), None)
        .await
        .json()
        .await
        .expect("json");
    let event_id: Uuid = out["eventId"].as_str().expect("id").parse().expect("uuid");
    let outcome = process_events::run_one(&app.job_context, event_id)
        .await
        .expect("run");
    assert_eq!(outcome, process_events::Outcome::Processed);
    let stored = event(app, event_id).await;
    worker::envelope::data_of(&stored).expect("data")["enrichment"].clone()
}

async fn an_issue_event_is_enriched_with_the_fresh_issue(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (_, url, secret) = oauth_connection(&app, &fake).await;
    let enrichment = enrichment_of(
        &app,
        &url,
        &secret,
        &fixtures::bytes("webhook_issue_updated_status.json"),
    )
    .await;
    assert_eq!(enrichment["status"], "ok", "{enrichment}");
    let expected = fixtures::json("rest_get_issue_v3_response.json");
    assert_eq!(enrichment["issue"]["key"], expected["key"]);
    assert_eq!(
        enrichment["issue"]["fields"]["summary"],
        expected["fields"]["summary"]
    );
    assert!(enrichment.get("error").is_none());
    app.stop().await;
    env.cleanup().await;
}

async fn a_deleted_issue_is_skipped_with_the_reason(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (_, url, secret) = oauth_connection(&app, &fake).await;
    let mut payload = fixtures::json("webhook_issue_deleted.json");
    payload["issue"]["key"] = "ORB-999".into();
    payload["issue"]["id"] = "29999".into();
    let enrichment = enrichment_of(&app, &url, &secret, payload.to_string().as_bytes()).await;
    assert_eq!(enrichment["status"], "skipped");
    assert!(
        enrichment["error"]
            .as_str()
            .expect("reason")
            .contains("404")
    );
    app.stop().await;
    env.cleanup().await;
}

async fn a_rate_limit_within_the_budget_is_waited_out(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (_, url, secret) = oauth_connection(&app, &fake).await;
    // Two 429s with Retry-After: 1 s, then the issue: well within the default 10 s budget.
    fake.fail_issue_requests(2, 429);
    let before = fake.issue_requests();
    let enrichment = enrichment_of(
        &app,
        &url,
        &secret,
        &fixtures::bytes("webhook_issue_created.json"),
    )
    .await;
    assert_eq!(enrichment["status"], "ok", "{enrichment}");
    assert_eq!(fake.issue_requests() - before, 3);
    app.stop().await;
    env.cleanup().await;
}

async fn a_jira_that_keeps_failing_gives_up_within_the_budget(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (_, url, secret) = oauth_connection(&app, &fake).await;
    fake.fail_issue_requests(usize::MAX, 500);
    let mut ctx = app.job_context.clone();
    let mut settings = (*ctx.settings).clone();
    settings.enrichment_budget = Duration::from_secs(2);
    ctx.settings = std::sync::Arc::new(settings);
    let out: serde_json::Value = post_webhook(
        &app,
        &url,
        &fixtures::bytes("webhook_issue_created.json"),
        Some(&secret),
        None,
    )
    .await
    .json()
    .await
    .expect("json");
    let event_id: Uuid = out["eventId"].as_str().expect("id").parse().expect("uuid");
    let started = std::time::Instant::now();
    assert_eq!(
        process_events::run_one(&ctx, event_id).await.expect("run"),
        process_events::Outcome::Processed
    );
    // Bounded: the budget plus one request, generously.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let enrichment =
        worker::envelope::data_of(&event(&app, event_id).await).expect("data")["enrichment"]
            .clone();
    assert_eq!(enrichment["status"], "failed");
    assert!(
        enrichment["error"].as_str().expect("error").contains("500"),
        "{enrichment}"
    );
    assert!(fake.issue_requests() >= 2, "retried before giving up");
    app.stop().await;
    env.cleanup().await;
}

async fn a_connection_needing_reauthorisation_is_skipped_without_calling_jira(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (id, url, secret) = oauth_connection(&app, &fake).await;
    fake.revoke_all();
    fake.expire_access_tokens();
    // The first event finds the grant revoked: skipped, and the connection is marked.
    let first = enrichment_of(
        &app,
        &url,
        &secret,
        &fixtures::bytes("webhook_issue_created.json"),
    )
    .await;
    assert_eq!(first["status"], "skipped", "{first}");
    let model = plugin_connection::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .expect("query")
        .expect("row");
    assert_eq!(model.status, plugin_connection::status::REAUTH_REQUIRED);
    let before = fake.issue_requests();
    let second = enrichment_of(
        &app,
        &url,
        &secret,
        &fixtures::bytes("webhook_issue_updated_status.json"),
    )
    .await;
    assert_eq!(second["status"], "skipped");
    assert!(
        second["error"]
            .as_str()
            .expect("reason")
            .contains("re-authorised")
    );
    assert_eq!(fake.issue_requests(), before, "no call to Jira");
    app.stop().await;
    env.cleanup().await;
}

async fn a_worklog_is_enriched_through_its_issue_id(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (_, url, secret) = oauth_connection(&app, &fake).await;
    let enrichment = enrichment_of(
        &app,
        &url,
        &secret,
        &fixtures::bytes("webhook_worklog_created.json"),
    )
    .await;
    assert_eq!(enrichment["status"], "ok", "{enrichment}");
    assert_eq!(enrichment["issue"]["id"], "20417");
    app.stop().await;
    env.cleanup().await;
}
