//! The subscriptions API: SSRF guard, tenant isolation, the secret shown once.

use api::Role;
use tests::{Backend, TestEnv};

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    private_targets_are_refused_unless_allowed,
    subscriptions_are_isolated_per_company_and_the_secret_is_shown_once,
);

async fn private_targets_are_refused_unless_allowed(backend: Backend) {
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    let app = env
        .spawn_with(Role::Serve, |settings| {
            settings.allow_private_targets = Some(false)
        })
        .await;
    let (_, api_key) = app.create_company("Northwind").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.0.0.5/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fd00::1]/hook",
        "ftp://example.com/hook",
    ] {
        let response = app
            .client
            .post(app.url("/api/v1/subscriptions"))
            .bearer_auth(&api_key)
            .json(&serde_json::json!({ "url": url, "eventTypes": ["jira:issue_*"] }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 422, "{url} must be refused");
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["code"], "unprocessable");
    }
    app.stop().await;
    env.cleanup().await;
}

async fn subscriptions_are_isolated_per_company_and_the_secret_is_shown_once(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, key_a) = app.create_company("A").await;
    let (_, key_b) = app.create_company("B").await;
    let created = create_subscription(&app, &key_a, "http://127.0.0.1:9/hook").await;
    let id = id_of(&created);
    assert!(
        created["secret"]
            .as_str()
            .expect("secret")
            .starts_with("whsec_")
    );

    let get = |key: &str| {
        app.client
            .get(app.url(&format!("/api/v1/subscriptions/{id}")))
            .bearer_auth(key.to_owned())
            .send()
    };
    let mine = get(&key_a).await.expect("request");
    assert_eq!(mine.status(), 200);
    let mine: serde_json::Value = mine.json().await.expect("json");
    assert!(
        mine.get("secret").is_none(),
        "the secret is shown only once"
    );
    assert_eq!(mine["url"], "http://127.0.0.1:9/hook");
    assert_eq!(get(&key_b).await.expect("request").status(), 404);

    for (method, path) in [
        ("PATCH", format!("/api/v1/subscriptions/{id}")),
        ("DELETE", format!("/api/v1/subscriptions/{id}")),
        ("POST", format!("/api/v1/subscriptions/{id}/rotate-secret")),
    ] {
        let mut request = app
            .client
            .request(method.parse().expect("method"), app.url(&path))
            .bearer_auth(&key_b);
        if method == "PATCH" {
            request = request.json(&serde_json::json!({ "enabled": false }));
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 404, "{method} {path}");
    }
    let list_b: serde_json::Value = app
        .client
        .get(app.url("/api/v1/subscriptions"))
        .bearer_auth(&key_b)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(list_b["items"].as_array().expect("items").len(), 0);
    assert!(list_b["nextCursor"].is_null());

    let rotated: serde_json::Value = app
        .client
        .post(app.url(&format!("/api/v1/subscriptions/{id}/rotate-secret")))
        .bearer_auth(&key_a)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_ne!(rotated["secret"], created["secret"]);

    let patched = app
        .client
        .patch(app.url(&format!("/api/v1/subscriptions/{id}")))
        .bearer_auth(&key_a)
        .json(&serde_json::json!({ "enabled": false, "description": "paused" }))
        .send()
        .await
        .expect("request");
    assert_eq!(patched.status(), 200);
    let patched: serde_json::Value = patched.json().await.expect("json");
    assert_eq!(patched["enabled"], false);
    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/subscriptions/{id}")))
        .bearer_auth(&key_a)
        .send()
        .await
        .expect("request");
    assert_eq!(deleted.status(), 204);
    app.stop().await;
    env.cleanup().await;
}
