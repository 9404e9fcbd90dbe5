//! Processing into typed events, fan-out to subscriptions, and the events API (issue 4).

use api::Role;
use tests::{Backend, TestApp, fixtures};
use uuid::Uuid;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    a_processed_event_carries_the_parsed_event_enrichment_and_raw_payload,
    matching_subscriptions_get_one_delivery_each,
    two_workers_racing_on_one_event_create_one_set_of_deliveries,
    a_company_never_receives_another_companys_events,
    events_are_listed_filtered_paginated_and_fetched_with_deliveries,
    a_replay_is_recorded_as_a_new_event_and_delivered_again,
);

struct Posted {
    company_id: String,
    api_key: String,
    connection_id: Uuid,
    url: String,
    secret: String,
}

async fn company(app: &TestApp, name: &str, site: &str) -> Posted {
    let (company_id, api_key) = app.create_company(name).await;
    let connection = app.create_connection(&api_key, site).await;
    Posted {
        company_id,
        api_key,
        connection_id: connection_id(&connection),
        url: connection["webhookUrl"].as_str().expect("url").to_owned(),
        secret: connection["webhookSecret"]
            .as_str()
            .expect("secret")
            .to_owned(),
    }
}

async fn post(app: &TestApp, to: &Posted, fixture: &str) -> Uuid {
    let response = post_webhook(
        app,
        &to.url,
        &fixtures::bytes(fixture),
        Some(&to.secret),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    let out: serde_json::Value = response.json().await.expect("json");
    out["eventId"].as_str().expect("id").parse().expect("uuid")
}

async fn a_processed_event_carries_the_parsed_event_enrichment_and_raw_payload(backend: Backend) {
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let site = company(&app, "Northwind", "northwind.atlassian.net").await;
    let event_id = post(&app, &site, "webhook_issue_updated_status.json").await;
    let stored = wait_processed(&app, event_id).await;
    assert_eq!(stored.status, "processed");
    assert_eq!(stored.event_type.as_deref(), Some("jira:issue_updated"));
    let data = worker::envelope::data_of(&stored).expect("data");
    assert_eq!(data["eventId"], event_id.to_string());
    assert_eq!(data["pluginId"], "jira");
    assert_eq!(data["eventType"], "jira:issue_updated");
    assert_eq!(data["connectionId"], site.connection_id.to_string());
    assert_eq!(data["companyId"], site.company_id);
    assert!(
        data["occurredAt"]
            .as_str()
            .is_some_and(|at| at.starts_with("20"))
    );
    assert_eq!(data["issue"]["key"], "ORB-417");
    assert_eq!(data["issue"]["projectKey"], "ORB");
    let status_change = data["changelog"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|item| item["fieldId"] == "status")
        .expect("status change");
    assert_eq!(status_change["toString"], "In Progress");
    // An admin-registered connection has no OAuth credential: enrichment is skipped.
    assert_eq!(data["enrichment"]["status"], "skipped");
    assert!(data["enrichment"]["error"].as_str().is_some());
    assert_eq!(
        data["raw"],
        fixtures::json("webhook_issue_updated_status.json")
    );
    app.stop().await;
    env.cleanup().await;
}

async fn matching_subscriptions_get_one_delivery_each(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let site = company(&app, "Northwind", "northwind.atlassian.net").await;
    let issues = insert_subscription(&app, &site.company_id, &["jira:issue_*"], None, None).await;
    let everything = insert_subscription(
        &app,
        &site.company_id,
        &["*"],
        Some(site.connection_id),
        None,
    )
    .await;
    let _comments = insert_subscription(&app, &site.company_id, &["comment_*"], None, None).await;
    let second_site = app
        .create_connection(&site.api_key, "second.atlassian.net")
        .await;
    let _other_connection = insert_subscription(
        &app,
        &site.company_id,
        &["*"],
        Some(connection_id(&second_site)),
        None,
    )
    .await;
    let orb = insert_subscription(
        &app,
        &site.company_id,
        &["*"],
        None,
        Some(serde_json::json!({"projectKeys": ["ORB"]})),
    )
    .await;
    let _xyz = insert_subscription(
        &app,
        &site.company_id,
        &["*"],
        None,
        Some(serde_json::json!({"projectKeys": ["XYZ"]})),
    )
    .await;

    let event_id = post(&app, &site, "webhook_issue_created.json").await;
    let outcome = worker::jobs::process_events::run_one(&app.job_context, event_id)
        .await
        .expect("run");
    assert_eq!(outcome, worker::jobs::process_events::Outcome::Processed);
    let mut subscribed: Vec<Uuid> = deliveries_of(&app, event_id)
        .await
        .iter()
        .map(|d| d.subscription_id)
        .collect();
    subscribed.sort();
    let mut expected = vec![issues, everything, orb];
    expected.sort();
    assert_eq!(subscribed, expected);
    for delivery in deliveries_of(&app, event_id).await {
        assert_eq!(delivery.status, "pending");
        assert_eq!(delivery.attempts, 0);
        assert!(delivery.next_attempt_at.is_some());
    }

    // A worklog (no project) reaches only the unfiltered subscriptions that want it.
    let worklog = post(&app, &site, "webhook_worklog_created.json").await;
    worker::jobs::process_events::run_one(&app.job_context, worklog)
        .await
        .expect("run");
    let subscribed: Vec<Uuid> = deliveries_of(&app, worklog)
        .await
        .iter()
        .map(|d| d.subscription_id)
        .collect();
    assert_eq!(subscribed, vec![everything]);
    app.stop().await;
    env.cleanup().await;
}

async fn two_workers_racing_on_one_event_create_one_set_of_deliveries(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let site = company(&app, "Northwind", "northwind.atlassian.net").await;
    insert_subscription(&app, &site.company_id, &["*"], None, None).await;
    insert_subscription(&app, &site.company_id, &["jira:issue_*"], None, None).await;
    let event_id = post(&app, &site, "webhook_issue_created.json").await;
    // Two worker processes: separate job contexts over separate pools.
    let second = worker::JobContext {
        db: api::startup::connect_database(&env.settings())
            .await
            .expect("second pool"),
        ..app.job_context.clone()
    };
    let (a, b) = tokio::join!(
        worker::jobs::process_events::run_one(&app.job_context, event_id),
        worker::jobs::process_events::run_one(&second, event_id),
    );
    let processed = [a.expect("run"), b.expect("run")]
        .iter()
        .filter(|outcome| **outcome == worker::jobs::process_events::Outcome::Processed)
        .count();
    assert_eq!(processed, 1);
    assert_eq!(
        deliveries_of(&app, event_id).await.len(),
        2,
        "one delivery per subscription"
    );
    // A late third run changes nothing.
    worker::jobs::process_events::run_one(&second, event_id)
        .await
        .expect("run");
    assert_eq!(deliveries_of(&app, event_id).await.len(), 2);
    app.stop().await;
    env.cleanup().await;
}

async fn a_company_never_receives_another_companys_events(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let a = company(&app, "A", "a.atlassian.net").await;
    let b = company(&app, "B", "b.atlassian.net").await;
    let a_subscription = insert_subscription(&app, &a.company_id, &["*"], None, None).await;
    // B even names A's connection: the tenant boundary still holds.
    let b_subscription =
        insert_subscription(&app, &b.company_id, &["*"], Some(a.connection_id), None).await;
    let event_id = post(&app, &a, "webhook_comment_created.json").await;
    worker::jobs::process_events::run_one(&app.job_context, event_id)
        .await
        .expect("run");
    let subscribed: Vec<Uuid> = deliveries_of(&app, event_id)
        .await
        .iter()
        .map(|d| d.subscription_id)
        .collect();
    assert_eq!(subscribed, vec![a_subscription]);
    assert!(!subscribed.contains(&b_subscription));
    app.stop().await;
    env.cleanup().await;
}

async fn get_json(app: &TestApp, api_key: &str, path: &str) -> (u16, serde_json::Value) {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(api_key)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

async fn events_are_listed_filtered_paginated_and_fetched_with_deliveries(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let a = company(&app, "A", "a.atlassian.net").await;
    let b = company(&app, "B", "b.atlassian.net").await;
    insert_subscription(&app, &a.company_id, &["*"], None, None).await;
    let mut ids = Vec::new();
    for fixture in [
        "webhook_issue_created.json",
        "webhook_comment_created.json",
        "webhook_worklog_created.json",
    ] {
        let id = post(&app, &a, fixture).await;
        worker::jobs::process_events::run_one(&app.job_context, id)
            .await
            .expect("run");
        ids.push(id);
    }
    let b_event = post(&app, &b, "webhook_issue_deleted.json").await;

    let (status, page) = get_json(&app, &a.api_key, "/api/v1/events?limit=2").await;
    assert_eq!(status, 200);
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], ids[2].to_string(), "newest first");
    let cursor = page["nextCursor"].as_str().expect("a next page");
    let (_, rest) = get_json(
        &app,
        &a.api_key,
        &format!("/api/v1/events?limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(rest["items"].as_array().expect("items").len(), 1);
    assert!(rest["nextCursor"].is_null());

    let (_, comments) =
        get_json(&app, &a.api_key, "/api/v1/events?eventType=comment_created").await;
    assert_eq!(comments["items"].as_array().expect("items").len(), 1);
    let (_, by_connection) = get_json(
        &app,
        &a.api_key,
        &format!(
            "/api/v1/events?connectionId={}&status=processed",
            a.connection_id
        ),
    )
    .await;
    assert_eq!(by_connection["items"].as_array().expect("items").len(), 3);
    let (status, _) = get_json(&app, &a.api_key, "/api/v1/events?status=bogus").await;
    assert_eq!(status, 400);

    let (status, detail) = get_json(&app, &a.api_key, &format!("/api/v1/events/{}", ids[0])).await;
    assert_eq!(status, 200);
    assert_eq!(detail["status"], "processed");
    assert_eq!(detail["raw"], fixtures::json("webhook_issue_created.json"));
    assert_eq!(detail["data"]["issue"]["key"], "ORB-417");
    assert_eq!(
        detail["deliveries"].as_array().expect("deliveries").len(),
        1
    );
    assert_eq!(detail["deliveries"][0]["status"], "pending");

    // Tenant isolation: B sees only its own event, and A's ids are 404 for B.
    let (_, b_list) = get_json(&app, &b.api_key, "/api/v1/events").await;
    let b_items = b_list["items"].as_array().expect("items");
    assert_eq!(b_items.len(), 1);
    assert_eq!(b_items[0]["id"], b_event.to_string());
    let (status, _) = get_json(&app, &b.api_key, &format!("/api/v1/events/{}", ids[0])).await;
    assert_eq!(status, 404);
    let replay = app
        .client
        .post(app.url(&format!("/api/v1/events/{}/replay", ids[0])))
        .bearer_auth(&b.api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(replay.status(), 404);
    app.stop().await;
    env.cleanup().await;
}

async fn a_replay_is_recorded_as_a_new_event_and_delivered_again(backend: Backend) {
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let site = company(&app, "Northwind", "northwind.atlassian.net").await;
    insert_subscription(&app, &site.company_id, &["*"], None, None).await;
    let original = post(&app, &site, "webhook_issue_created.json").await;
    wait_processed(&app, original).await;
    let original_deliveries = deliveries_of(&app, original).await;
    assert_eq!(original_deliveries.len(), 1);

    let response = app
        .client
        .post(app.url(&format!("/api/v1/events/{original}/replay")))
        .bearer_auth(&site.api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 202);
    let out: serde_json::Value = response.json().await.expect("json");
    assert_eq!(out["replayOf"], original.to_string());
    let replay: Uuid = out["eventId"].as_str().expect("id").parse().expect("uuid");
    assert_ne!(replay, original);
    let replayed = wait_processed(&app, replay).await;
    assert_eq!(replayed.status, "processed");
    assert_eq!(replayed.replay_of, Some(original));
    assert_eq!(replayed.body, event(&app, original).await.body);
    assert_eq!(
        deliveries_of(&app, replay).await.len(),
        1,
        "delivered again"
    );
    // The original keeps its own deliveries (their attempts go on; none were added or replaced).
    let ids = |deliveries: Vec<entity::delivery::Model>| {
        deliveries.into_iter().map(|d| d.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(deliveries_of(&app, original).await),
        ids(original_deliveries)
    );
    app.stop().await;
    env.cleanup().await;
}
