//! Tenant isolation of every `/api/v1` resource: another company's ids are answered 404 exactly
//! like ids that do not exist, lists and filters never show another company's items, and a
//! subscription cannot be tied to another company's connection.

use api::Role;
use entity::{plugin_connection, subscription, webhook_event};
use reqwest::Method;
use sea_orm::{EntityTrait, PaginatorTrait};
use tests::{Backend, TestApp};
use uuid::Uuid;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    another_companys_ids_are_404_on_every_resource,
    lists_and_filters_never_show_another_companys_items,
    a_subscription_cannot_use_another_companys_connection,
);

/// One company's things: its key and one of each resource.
struct Tenant {
    api_key: String,
    connection: Uuid,
    subscription: Uuid,
    event: Uuid,
    delivery: Uuid,
}

async fn tenant(app: &TestApp, name: &str) -> Tenant {
    let (_, api_key) = app.create_company(name).await;
    let connection = app
        .create_connection(&api_key, &format!("{}.atlassian.net", name.to_lowercase()))
        .await;
    let subscription = create_subscription(app, &api_key, "http://127.0.0.1:9/hook").await;
    let subscription = id_of(&subscription);
    let (event, delivery) = event_with_delivery(app, &connection, subscription).await;
    Tenant {
        api_key,
        connection: connection_id(&connection),
        subscription,
        event,
        delivery,
    }
}

async fn call(
    app: &TestApp,
    api_key: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = app
        .client
        .request(method, app.url(path))
        .bearer_auth(api_key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// Every operation that takes an id, with `ids` filled in.
fn operations(ids: &Tenant) -> Vec<(Method, String, Option<serde_json::Value>)> {
    let Tenant {
        connection: c,
        subscription: s,
        event: e,
        delivery: d,
        ..
    } = ids;
    vec![
        (Method::GET, format!("/api/v1/connections/{c}"), None),
        (
            Method::GET,
            format!("/api/v1/connections/{c}/jira/issues/ENG-1"),
            None,
        ),
        (Method::GET, format!("/api/v1/subscriptions/{s}"), None),
        (
            Method::PATCH,
            format!("/api/v1/subscriptions/{s}"),
            Some(serde_json::json!({ "enabled": false, "url": "http://127.0.0.1:9/stolen" })),
        ),
        (
            Method::POST,
            format!("/api/v1/subscriptions/{s}/rotate-secret"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/subscriptions/{s}/retry-dead"),
            Some(serde_json::json!({ "since": "2020-01-01T00:00:00Z" })),
        ),
        (Method::GET, format!("/api/v1/events/{e}"), None),
        (Method::POST, format!("/api/v1/events/{e}/replay"), None),
        (Method::GET, format!("/api/v1/deliveries/{d}"), None),
        (Method::POST, format!("/api/v1/deliveries/{d}/retry"), None),
        (Method::DELETE, format!("/api/v1/subscriptions/{s}"), None),
        (Method::DELETE, format!("/api/v1/connections/{c}"), None),
    ]
}

async fn another_companys_ids_are_404_on_every_resource(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let mine = tenant(&app, "Northwind").await;
    let theirs = tenant(&app, "Contoso").await;
    let unknown = Tenant {
        api_key: String::new(),
        connection: Uuid::now_v7(),
        subscription: Uuid::now_v7(),
        event: Uuid::now_v7(),
        delivery: Uuid::now_v7(),
    };
    let stored_subscription = subscription::Entity::find_by_id(theirs.subscription)
        .one(&app.db)
        .await
        .expect("query")
        .expect("their subscription");

    for ((method, path, body), (_, unknown_path, _)) in
        operations(&theirs).into_iter().zip(operations(&unknown))
    {
        let (status, answer) = call(&app, &mine.api_key, method.clone(), &path, body.clone()).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
        assert_eq!(answer["code"], "not_found", "{method} {path}");
        // Indistinguishable from an id that does not exist at all.
        let (unknown_status, unknown_answer) =
            call(&app, &mine.api_key, method.clone(), &unknown_path, body).await;
        assert_eq!(
            (status, &answer),
            (unknown_status, &unknown_answer),
            "{method} {path}"
        );
    }

    // Nothing of theirs changed, and nothing was replayed or retried for them.
    let after = subscription::Entity::find_by_id(theirs.subscription)
        .one(&app.db)
        .await
        .expect("query")
        .expect("their subscription still exists");
    assert_eq!(after, stored_subscription);
    assert!(
        plugin_connection::Entity::find_by_id(theirs.connection)
            .one(&app.db)
            .await
            .expect("query")
            .is_some(),
        "their connection still exists"
    );
    assert_eq!(
        webhook_event::Entity::find()
            .count(&app.db)
            .await
            .expect("count"),
        2,
        "no replay was recorded"
    );
    let their_delivery = delivery(&app, theirs.delivery).await;
    assert_eq!(their_delivery.status, "pending");
    assert_eq!(their_delivery.attempts, 0);

    // Their own key still reaches every one of them.
    for (method, path, _) in operations(&theirs) {
        if method == Method::GET && !path.contains("/jira/") {
            let (status, _) = call(&app, &theirs.api_key, method.clone(), &path, None).await;
            assert_eq!(status, 200, "{method} {path} as the owner");
        }
    }
    app.stop().await;
    env.cleanup().await;
}

fn ids_in(answer: &serde_json::Value) -> Vec<String> {
    answer["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn lists_and_filters_never_show_another_companys_items(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let mine = tenant(&app, "Northwind").await;
    let theirs = tenant(&app, "Contoso").await;
    let their_ids = [
        theirs.connection,
        theirs.subscription,
        theirs.event,
        theirs.delivery,
    ]
    .map(|id| id.to_string());

    for (path, own) in [
        ("/api/v1/connections", mine.connection),
        ("/api/v1/subscriptions", mine.subscription),
        ("/api/v1/events", mine.event),
        ("/api/v1/deliveries", mine.delivery),
        ("/api/v1/deliveries?status=pending", mine.delivery),
    ] {
        let (status, answer) = call(&app, &mine.api_key, Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}");
        let ids = ids_in(&answer);
        assert_eq!(ids, vec![own.to_string()], "{path}: only mine");
        assert!(ids.iter().all(|id| !their_ids.contains(id)), "{path}");
    }

    // Filters naming their ids find nothing, like ids that do not exist.
    for path in [
        format!("/api/v1/events?connectionId={}", theirs.connection),
        format!("/api/v1/deliveries?subscriptionId={}", theirs.subscription),
        format!("/api/v1/deliveries?eventId={}", theirs.event),
        format!(
            "/api/v1/deliveries?eventId={}&subscriptionId={}",
            theirs.event, theirs.subscription
        ),
        format!("/api/v1/events?connectionId={}", Uuid::now_v7()),
    ] {
        let (status, answer) = call(&app, &mine.api_key, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{path}");
        assert!(ids_in(&answer).is_empty(), "{path}: {answer}");
        assert!(answer["nextCursor"].is_null(), "{path}");
    }
    // A cursor is a position, not an id to fetch: their ids as cursors show only mine.
    for path in [
        format!("/api/v1/events?cursor={}", Uuid::max()),
        format!("/api/v1/deliveries?cursor={}", Uuid::nil()),
        format!("/api/v1/subscriptions?cursor={}", Uuid::nil()),
        format!("/api/v1/connections?cursor={}", Uuid::nil()),
    ] {
        let (status, answer) = call(&app, &mine.api_key, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            ids_in(&answer).iter().all(|id| !their_ids.contains(id)),
            "{path}"
        );
    }
    // The event of mine lists only my deliveries.
    let (_, event) = call(
        &app,
        &mine.api_key,
        Method::GET,
        &format!("/api/v1/events/{}", mine.event),
        None,
    )
    .await;
    assert_eq!(event["deliveries"].as_array().expect("deliveries").len(), 1);
    app.stop().await;
    env.cleanup().await;
}

async fn a_subscription_cannot_use_another_companys_connection(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let mine = tenant(&app, "Northwind").await;
    let theirs = tenant(&app, "Contoso").await;
    for connection in [theirs.connection, Uuid::now_v7()] {
        let (status, answer) = call(
            &app,
            &mine.api_key,
            Method::POST,
            "/api/v1/subscriptions",
            Some(serde_json::json!({
                "url": "http://127.0.0.1:9/hook",
                "eventTypes": ["jira:issue_*"],
                "connectionId": connection,
            })),
        )
        .await;
        assert_eq!(status, 422, "{answer}");
        assert!(
            answer["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains("connectionId")),
            "{answer}"
        );
    }
    // With my own connection it works.
    let (status, _) = call(
        &app,
        &mine.api_key,
        Method::POST,
        "/api/v1/subscriptions",
        Some(serde_json::json!({
            "url": "http://127.0.0.1:9/hook",
            "eventTypes": ["jira:issue_*"],
            "connectionId": mine.connection,
        })),
    )
    .await;
    assert_eq!(status, 201);
    app.stop().await;
    env.cleanup().await;
}
