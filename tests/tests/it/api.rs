//! Companies, API keys, tenant isolation and connections (DESIGN §10).

use api::Role;
use tests::{Backend, TEST_ADMIN_TOKEN};
use uuid::Uuid;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    creating_a_company_needs_the_admin_token,
    api_calls_need_a_valid_api_key,
    a_company_never_sees_another_companys_connections,
    a_connection_is_created_listed_fetched_and_deleted,
    invalid_connections_are_refused_with_clear_errors,
    health_and_readiness_answer,
);

async fn creating_a_company_needs_the_admin_token(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let url = app.url("/api/v1/companies");
    let body = serde_json::json!({ "name": "Acme" });
    let without = app
        .client
        .post(&url)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(without.status(), 401);
    let error: serde_json::Value = without.json().await.expect("json error envelope");
    assert_eq!(error["code"], "unauthorized");
    let wrong = app
        .client
        .post(&url)
        .bearer_auth("nope")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), 401);

    let created = app
        .client
        .post(&url)
        .bearer_auth(TEST_ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(created.status(), 201);
    let company: serde_json::Value = created.json().await.expect("json");
    assert_eq!(company["name"], "Acme");
    assert!(company["id"].as_str().expect("id").parse::<Uuid>().is_ok());
    let api_key = company["apiKey"].as_str().expect("apiKey");
    assert!(api_key.starts_with("hk_"));

    // Stored hashed: the key itself is nowhere in the table.
    let keys = <entity::api_key::Entity as sea_orm::EntityTrait>::find()
        .all(&app.db)
        .await
        .expect("keys");
    assert_eq!(keys.len(), 1);
    assert_ne!(keys[0].key_hash, api_key);
    assert!(!keys[0].key_hash.contains(api_key));

    let blank = app
        .client
        .post(&url)
        .bearer_auth(TEST_ADMIN_TOKEN)
        .json(&serde_json::json!({ "name": "" }))
        .send()
        .await
        .expect("request");
    assert_eq!(blank.status(), 400);
    let not_json = app
        .client
        .post(&url)
        .bearer_auth(TEST_ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(not_json.status(), 400);
    let error: serde_json::Value = not_json.json().await.expect("json error envelope");
    assert_eq!(error["code"], "bad_request");
    app.stop().await;
    env.cleanup().await;
}

async fn api_calls_need_a_valid_api_key(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let url = app.url("/api/v1/connections");
    assert_eq!(
        app.client.get(&url).send().await.expect("request").status(),
        401
    );
    let wrong = app
        .client
        .get(&url)
        .bearer_auth("hk_wrong")
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), 401);
    // The admin token is not an API key.
    let admin = app
        .client
        .get(&url)
        .bearer_auth(TEST_ADMIN_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(admin.status(), 401);
    let (_, api_key) = app.create_company("Acme").await;
    let ok = app
        .client
        .get(&url)
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
    app.stop().await;
    env.cleanup().await;
}

async fn a_company_never_sees_another_companys_connections(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, key_a) = app.create_company("A").await;
    let (_, key_b) = app.create_company("B").await;
    let conn_a = app.create_connection(&key_a, "a.atlassian.net").await;
    let id_a = conn_a["id"].as_str().expect("id");
    // B can use the same external id: uniqueness is per company.
    app.create_connection(&key_b, "a.atlassian.net").await;

    let get = app
        .client
        .get(app.url(&format!("/api/v1/connections/{id_a}")))
        .bearer_auth(&key_b)
        .send()
        .await
        .expect("request");
    assert_eq!(get.status(), 404);
    let delete = app
        .client
        .delete(app.url(&format!("/api/v1/connections/{id_a}")))
        .bearer_auth(&key_b)
        .send()
        .await
        .expect("request");
    assert_eq!(delete.status(), 404);
    let list: serde_json::Value = app
        .client
        .get(app.url("/api/v1/connections"))
        .bearer_auth(&key_b)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_ne!(items[0]["id"], conn_a["id"]);
    app.stop().await;
    env.cleanup().await;
}

async fn a_connection_is_created_listed_fetched_and_deleted(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, api_key) = app.create_company("Acme").await;
    let created = app
        .create_connection(&api_key, "northwind-labs.atlassian.net")
        .await;
    let id = created["id"].as_str().expect("id");
    assert_eq!(created["pluginId"], "jira");
    assert_eq!(created["externalId"], "northwind-labs.atlassian.net");
    assert_eq!(created["externalName"], "Northwind Labs");
    assert_eq!(created["status"], "active");
    assert_eq!(
        created["webhookUrl"],
        app.url(&format!("/webhook/jira/{id}"))
    );
    let secret = created["webhookSecret"].as_str().expect("webhookSecret");
    assert_eq!(secret.len(), 64);

    // The secret is encrypted at rest and never shown again.
    let stored = <entity::plugin_connection::Entity as sea_orm::EntityTrait>::find_by_id(
        connection_id(&created),
    )
    .one(&app.db)
    .await
    .expect("query")
    .expect("row");
    let ciphertext = stored.webhook_secret.expect("secret stored");
    assert!(!ciphertext.contains(secret));
    let fetched: serde_json::Value = app
        .client
        .get(app.url(&format!("/api/v1/connections/{id}")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(fetched["id"], created["id"]);
    assert!(fetched.get("webhookSecret").is_none());
    assert!(!fetched.to_string().contains(secret));

    // Pagination: three more, pages of two.
    for site in ["b", "c", "d"] {
        app.create_connection(&api_key, &format!("{site}.atlassian.net"))
            .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(cursor) => app.url(&format!("/api/v1/connections?limit=2&cursor={cursor}")),
            None => app.url("/api/v1/connections?limit=2"),
        };
        let request = app.client.get(url).bearer_auth(&api_key);
        let page: serde_json::Value = request
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        for item in page["items"].as_array().expect("items") {
            seen.push(item["externalId"].as_str().expect("externalId").to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");

    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/connections/{id}")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(deleted.status(), 204);
    let gone = app
        .client
        .get(app.url(&format!("/api/v1/connections/{id}")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(gone.status(), 404);
    // Its webhook URL stops accepting events.
    let body = tests::fixtures::bytes("webhook_issue_created.json");
    let response = post_webhook(
        &app,
        created["webhookUrl"].as_str().expect("url"),
        &body,
        Some(secret),
        None,
    )
    .await;
    assert_eq!(response.status(), 404);
    app.stop().await;
    env.cleanup().await;
}

async fn invalid_connections_are_refused_with_clear_errors(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, api_key) = app.create_company("Acme").await;
    let post = |body: serde_json::Value| {
        app.client
            .post(app.url("/api/v1/connections"))
            .bearer_auth(&api_key)
            .json(&body)
            .send()
    };
    let unknown =
        post(serde_json::json!({"pluginId": "github", "externalId": "x", "externalName": "x"}))
            .await
            .expect("request");
    assert_eq!(unknown.status(), 422);
    let error: serde_json::Value = unknown.json().await.expect("json");
    assert!(error["detail"].as_str().expect("detail").contains("jira"));
    let missing = post(serde_json::json!({"pluginId": "jira"}))
        .await
        .expect("request");
    assert_eq!(missing.status(), 400);
    let bad_metadata = post(serde_json::json!({"pluginId": "jira", "externalId": "x", "externalName": "x", "metadata": [1]}))
        .await
        .expect("request");
    assert_eq!(bad_metadata.status(), 422, "metadata must be an object");
    app.create_connection(&api_key, "dup.atlassian.net").await;
    let duplicate = post(serde_json::json!({"pluginId": "jira", "externalId": "dup.atlassian.net", "externalName": "x"}))
        .await
        .expect("request");
    assert_eq!(duplicate.status(), 409);
    let error: serde_json::Value = duplicate.json().await.expect("json");
    assert_eq!(error["code"], "conflict");
    app.stop().await;
    env.cleanup().await;
}

async fn health_and_readiness_answer(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let health: serde_json::Value = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    let ready = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("request");
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(ready["database"], "ok");
    assert_eq!(ready["queue"], "ok");
    let docs = app
        .client
        .get(app.url("/docs"))
        .send()
        .await
        .expect("request");
    assert_eq!(docs.status(), 200);
    let spec: serde_json::Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert!(spec["paths"]["/webhook/jira/{connection_id}"]["post"].is_object());
    let missing = app
        .client
        .get(app.url("/no/such/path"))
        .send()
        .await
        .expect("request");
    assert_eq!(missing.status(), 404);
    let error: serde_json::Value = missing
        .json()
        .await
        .expect("json envelope for unknown paths");
    assert_eq!(error["code"], "not_found");
    app.stop().await;
    env.cleanup().await;
}
