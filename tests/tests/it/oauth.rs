//! The OAuth connect flow, the issue read-through and revoked grants (DESIGN §4, §5, §10).

use api::Role;
use entity::{oauth_grant, oauth_state, plugin_connection};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use tests::fake_atlassian::{self, FakeAtlassian};
use tests::{Backend, TestApp, TestEnv};

use crate::on_both_backends;

on_both_backends!(
    connecting_creates_one_connection_per_site_and_reconnecting_updates_them,
    a_replayed_unknown_or_expired_state_is_refused,
    issues_are_read_through_with_not_found_and_rate_limits_passed_on,
    a_revoked_grant_makes_the_connection_reauth_required,
);

/// A fake Atlassian, an environment, and an app configured to use the fake.
pub async fn start_with_fake(backend: Backend) -> Option<(FakeAtlassian, TestEnv, TestApp)> {
    let env = TestEnv::new(backend).await?;
    env.migrate().await;
    let fake = FakeAtlassian::start().await;
    let url = fake.url.clone();
    let app = env
        .spawn_with(Role::Serve, move |settings| {
            settings.jira_client_id = Some(fake_atlassian::CLIENT_ID.to_owned());
            settings.jira_client_secret = Some(fake_atlassian::CLIENT_SECRET.to_owned().into());
            settings.atlassian_auth_url = url.clone();
            settings.atlassian_api_url = url;
        })
        .await;
    Some((fake, env, app))
}

/// A consent given at the fake: where Atlassian sends the browser back, and the cookie the
/// browser got when it started the flow.
pub struct Consented {
    /// The callback URL with `code` and `state`.
    pub url: String,
    /// The flow's cookie, as a `Cookie` header.
    pub cookie: String,
}

impl Consented {
    /// The browser following Atlassian's redirect back.
    pub fn get(&self, app: &TestApp) -> reqwest::RequestBuilder {
        app.client.get(&self.url).header("cookie", &self.cookie)
    }
}

/// Starts the flow as `api_key`'s company and consents at the fake.
pub async fn consented_callback(app: &TestApp, fake: &FakeAtlassian, api_key: &str) -> Consented {
    let response = app
        .client
        .post(app.url("/api/v1/connections/jira/authorize"))
        .bearer_auth(api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "authorize");
    let cookie = tests::cookies_of(&response);
    assert!(
        !cookie.is_empty(),
        "the authorize step sets the flow's cookie"
    );
    let body: serde_json::Value = response.json().await.expect("json");
    let authorize_url = body["authorizeUrl"].as_str().expect("authorizeUrl");
    assert!(authorize_url.starts_with(&fake.url));
    let url = fake.consent(authorize_url);
    assert!(url.starts_with(&app.url("/oauth/jira/callback?")), "{url}");
    Consented { url, cookie }
}

/// The whole flow with a JSON answer; returns the connections.
pub async fn connect_sites(
    app: &TestApp,
    fake: &FakeAtlassian,
    api_key: &str,
) -> Vec<serde_json::Value> {
    let callback = consented_callback(app, fake, api_key).await;
    let response = callback
        .get(app)
        .header("accept", "application/json")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "callback");
    let body: serde_json::Value = response.json().await.expect("json");
    body["connections"].as_array().expect("connections").clone()
}

async fn connecting_creates_one_connection_per_site_and_reconnecting_updates_them(
    backend: Backend,
) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (_, api_key) = app.create_company("Northwind").await;
    let connections = connect_sites(&app, &fake, &api_key).await;
    assert_eq!(connections.len(), 2, "{connections:?}");
    let first = &connections[0];
    assert_eq!(first["externalId"], "northwind-labs.atlassian.net");
    assert_eq!(first["externalName"], "northwind-labs");
    let id = first["id"].as_str().expect("id");
    assert_eq!(first["webhookUrl"], app.url(&format!("/webhook/jira/{id}")));
    let secret = first["webhookSecret"].as_str().expect("secret").to_owned();
    assert_eq!(secret.len(), 64);

    // The connection as the API shows it: metadata, active, no tokens.
    let shown: serde_json::Value = app
        .client
        .get(app.url(&format!("/api/v1/connections/{id}")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["metadata"]["cloudId"], fake_atlassian::CLOUD_ID);
    assert_eq!(
        shown["metadata"]["siteUrl"],
        "https://northwind-labs.atlassian.net"
    );
    let text = shown.to_string();
    for token in fake.issued_tokens() {
        assert!(!text.contains(&token), "a token is in the API answer");
    }

    // One consent is one grant, shared by both sites; tokens are encrypted at rest.
    let grants = oauth_grant::Entity::find()
        .all(&app.db)
        .await
        .expect("rows");
    assert_eq!(grants.len(), 1, "one grant for the consent's two sites");
    let grant = &grants[0];
    let row = format!("{grant:?}");
    for token in fake.issued_tokens() {
        assert!(!row.contains(&token), "a token is stored in plaintext");
    }
    assert!(grant.access_token.starts_with("v1."));
    assert!(grant.scope.contains("offline_access"));
    assert_eq!(
        grant.account_id.as_deref(),
        Some(fake_atlassian::ACCOUNT_ID)
    );
    let sites = plugin_connection::Entity::find()
        .all(&app.db)
        .await
        .expect("rows");
    assert!(sites.iter().all(|site| site.grant_id == Some(grant.id)));
    assert_eq!(shown["grant"]["id"], grant.id.to_string());
    assert_eq!(shown["grant"]["status"], "active");

    // Connecting again, with the HTML answer, updates the same connections.
    plugin_connection::Entity::update_many()
        .col_expr(
            plugin_connection::Column::Status,
            sea_orm::sea_query::Expr::value("reauth_required"),
        )
        .exec(&app.db)
        .await
        .expect("update");
    let callback = consented_callback(&app, &fake, &api_key).await;
    let response = callback.get(&app).send().await.expect("request");
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/html"))
    );
    let page = response.text().await.expect("page");
    assert!(page.contains("Settings → System → WebHooks"), "{page}");
    assert!(page.contains(&app.url(&format!("/webhook/jira/{id}"))));
    assert!(
        page.contains(&secret),
        "the existing secret is kept and shown"
    );
    assert!(page.contains("northwind-sandbox"));
    let count = plugin_connection::Entity::find()
        .count(&app.db)
        .await
        .expect("count");
    assert_eq!(count, 2, "reconnecting does not duplicate");
    let statuses: Vec<String> = plugin_connection::Entity::find()
        .all(&app.db)
        .await
        .expect("rows")
        .into_iter()
        .map(|row| row.status)
        .collect();
    assert_eq!(statuses, ["active", "active"]);
    let grants = oauth_grant::Entity::find()
        .all(&app.db)
        .await
        .expect("rows");
    assert_eq!(
        grants.len(),
        1,
        "the account's grant is replaced, not duplicated"
    );
    assert_eq!(grants[0].token_version, 2, "new tokens, a new version");
    assert_eq!(fake.code_exchanges(), 2);

    app.stop().await;
    env.cleanup().await;
}

async fn a_replayed_unknown_or_expired_state_is_refused(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (_, api_key) = app.create_company("Northwind").await;
    let callback = consented_callback(&app, &fake, &api_key).await;
    let first = callback
        .get(&app)
        .header("accept", "application/json")
        .send()
        .await
        .expect("request");
    assert_eq!(first.status(), 200);
    let replay = callback
        .get(&app)
        .header("accept", "application/json")
        .send()
        .await
        .expect("request");
    assert_eq!(replay.status(), 400);
    let error: serde_json::Value = replay.json().await.expect("json");
    assert!(
        error["detail"]
            .as_str()
            .expect("detail")
            .contains("already used"),
        "{error}"
    );

    let unknown = app
        .client
        .get(app.url("/oauth/jira/callback?code=x&state=nope"))
        .send()
        .await
        .expect("request");
    assert_eq!(unknown.status(), 400);
    let error: serde_json::Value = unknown.json().await.expect("json");
    assert!(
        error["detail"]
            .as_str()
            .expect("detail")
            .contains("unknown"),
        "{error}"
    );

    let callback = consented_callback(&app, &fake, &api_key).await;
    oauth_state::Entity::update_many()
        .col_expr(
            oauth_state::Column::ExpiresAt,
            sea_orm::sea_query::Expr::value(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .filter(oauth_state::Column::UsedAt.is_null())
        .exec(&app.db)
        .await
        .expect("expire");
    let expired = callback.get(&app).send().await.expect("request");
    assert_eq!(expired.status(), 400);
    let error: serde_json::Value = expired.json().await.expect("json");
    assert!(
        error["detail"]
            .as_str()
            .expect("detail")
            .contains("expired"),
        "{error}"
    );
    assert_eq!(
        fake.code_exchanges(),
        1,
        "a refused state never reaches Atlassian"
    );

    // Without the Atlassian app configured, a clear error instead of a crash.
    let unconfigured = env
        .spawn_with(Role::Serve, |settings| {
            settings.jira_client_id = None;
            settings.jira_client_secret = None;
        })
        .await;
    let response = unconfigured
        .client
        .post(unconfigured.url("/api/v1/connections/jira/authorize"))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 503);
    let error: serde_json::Value = response.json().await.expect("json");
    let detail = error["detail"].as_str().expect("detail");
    assert!(
        detail.contains("JIRA_CLIENT_ID") && detail.contains("JIRA_CLIENT_SECRET"),
        "{detail}"
    );

    unconfigured.stop().await;
    app.stop().await;
    env.cleanup().await;
}

async fn issues_are_read_through_with_not_found_and_rate_limits_passed_on(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (_, api_key) = app.create_company("Northwind").await;
    let connections = connect_sites(&app, &fake, &api_key).await;
    let id = connections[0]["id"].as_str().expect("id");
    let issue_url = |key: &str| app.url(&format!("/api/v1/connections/{id}/jira/issues/{key}"));

    let ok = app
        .client
        .get(issue_url("ORB-417"))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
    let issue: serde_json::Value = ok.json().await.expect("json");
    assert_eq!(issue["key"], "ORB-417");
    assert_eq!(
        issue["fields"]["summary"],
        "Relay drops telemetry batches above 4k queue depth"
    );

    let missing = app
        .client
        .get(issue_url("ORB-999"))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(missing.status(), 404);
    let error: serde_json::Value = missing.json().await.expect("json");
    assert_eq!(error["code"], "not_found");

    fake.set_rate_limited(Some(12));
    let limited = app
        .client
        .get(issue_url("ORB-417"))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(limited.status(), 429);
    assert_eq!(
        limited
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("12")
    );
    fake.set_rate_limited(None);

    // Another company cannot read through this connection.
    let (_, other_key) = app.create_company("Other").await;
    let other = app
        .client
        .get(issue_url("ORB-417"))
        .bearer_auth(&other_key)
        .send()
        .await
        .expect("request");
    assert_eq!(other.status(), 404);

    // A connection registered without OAuth has no token to read with.
    let manual = app
        .create_connection(&api_key, "manual.atlassian.net")
        .await;
    let manual_id = manual["id"].as_str().expect("id");
    let response = app
        .client
        .get(app.url(&format!(
            "/api/v1/connections/{manual_id}/jira/issues/ORB-417"
        )))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 409);
    assert_eq!(fake.refreshes(), 0);

    app.stop().await;
    env.cleanup().await;
}

async fn a_revoked_grant_makes_the_connection_reauth_required(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (_, api_key) = app.create_company("Northwind").await;
    let connections = connect_sites(&app, &fake, &api_key).await;
    let id = connections[0]["id"].as_str().expect("id");
    fake.revoke_all();

    // The stored token is refused (401), the forced refresh gets invalid_grant.
    let response = app
        .client
        .get(app.url(&format!("/api/v1/connections/{id}/jira/issues/ORB-417")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 409);
    let error: serde_json::Value = response.json().await.expect("json");
    assert!(
        error["detail"]
            .as_str()
            .expect("detail")
            .contains("connected again"),
        "{error}"
    );

    let shown: serde_json::Value = app
        .client
        .get(app.url(&format!("/api/v1/connections/{id}")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(shown["status"], "reauth_required");
    assert_eq!(shown["grant"]["status"], "reauth_required");
    assert!(
        shown["grant"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("invalid_grant")),
        "{shown}"
    );
    // The other site of the consent is reauth_required too: the grant is one.
    let other = connections[1]["id"].as_str().expect("id");
    let shown: serde_json::Value = app
        .client
        .get(app.url(&format!("/api/v1/connections/{other}")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(shown["status"], "reauth_required");
    assert!(shown["statusReason"].as_str().is_some(), "{shown}");

    // Never retried in a loop: a second read does not reach the token endpoint again.
    let before = fake.issue_requests();
    let again = app
        .client
        .get(app.url(&format!("/api/v1/connections/{id}/jira/issues/ORB-417")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(again.status(), 409);
    assert_eq!(fake.issue_requests(), before);

    app.stop().await;
    env.cleanup().await;
}
