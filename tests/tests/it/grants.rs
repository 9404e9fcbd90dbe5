//! One Atlassian consent is one grant (issue 13): reconnecting, the browser-bound connect flow,
//! what the connect step refuses, Jira's `Retry-After` dates, a slow token endpoint next to
//! ingest, and the two-site scenario through the real `hookline` binary.

use std::time::Duration;

use entity::{oauth_grant, oauth_state, plugin_connection};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use tests::fake_atlassian::{self, FakeAtlassian, FaultAfterRotating};
use tests::process::{HooklineProcess, hookline_env};
use tests::{Backend, TEST_ADMIN_TOKEN, wait_until};

use crate::helpers::connection_id;
use crate::oauth::{connect_sites, consented_callback, start_with_fake};
use crate::on_both_backends;
use crate::token_manager::expire_in_database;

on_both_backends!(
    reconnecting_the_same_account_replaces_its_grant_and_flags_sites_it_no_longer_lists,
    the_callback_refuses_a_browser_without_the_flows_cookie,
    the_secret_page_is_not_cached_and_names_the_company,
    a_site_with_an_invalid_cloud_id_is_refused_at_connect_time,
    expired_connect_flow_states_are_deleted,
    an_unreadable_code_exchange_answer_is_a_502,
    a_retry_after_date_from_jira_is_honoured,
    a_slow_token_endpoint_does_not_block_ingest,
    two_sites_of_one_consent_both_read_after_expiry_through_the_real_binary,
);

async fn get_json(app: &tests::TestApp, api_key: &str, path: &str) -> serde_json::Value {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.expect("json")
}

async fn reconnecting_the_same_account_replaces_its_grant_and_flags_sites_it_no_longer_lists(
    backend: Backend,
) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (alpha, beta, gamma) = (
        fake_atlassian::site("alpha"),
        fake_atlassian::site("beta"),
        fake_atlassian::site("gamma"),
    );
    fake.set_consent_sites(vec![alpha.clone(), beta.clone(), gamma.clone()]);
    let (_, api_key) = app.create_company("Northwind").await;
    let first = connect_sites(&app, &fake, &api_key).await;
    assert_eq!(first.len(), 3);
    let grant = get_json(
        &app,
        &api_key,
        &format!("/api/v1/connections/{}", connection_id(&first[0])),
    )
    .await["grant"]["id"]
        .clone();

    // The same person consents again and leaves gamma out.
    fake.set_consent_sites(vec![alpha, beta]);
    let second = connect_sites(&app, &fake, &api_key).await;
    assert_eq!(second.len(), 2);
    assert_eq!(second[0]["id"], first[0]["id"], "the same connections");
    assert_eq!(
        oauth_grant::Entity::find()
            .count(&app.db)
            .await
            .expect("count"),
        1
    );
    for site in &second {
        let shown = get_json(
            &app,
            &api_key,
            &format!("/api/v1/connections/{}", site["id"].as_str().expect("id")),
        )
        .await;
        assert_eq!(shown["status"], "active");
        assert_eq!(
            shown["grant"]["id"], grant,
            "the account's grant is replaced in place"
        );
    }
    let dropped = get_json(
        &app,
        &api_key,
        &format!("/api/v1/connections/{}", connection_id(&first[2])),
    )
    .await;
    assert_eq!(dropped["status"], "reauth_required", "{dropped}");
    assert!(dropped["grant"].is_null(), "{dropped}");
    assert!(
        dropped["statusReason"]
            .as_str()
            .is_some_and(|reason| reason.contains("no longer lists")),
        "{dropped}"
    );
    let grant = oauth_grant::Entity::find()
        .one(&app.db)
        .await
        .expect("query")
        .expect("grant");
    assert_eq!(grant.token_version, 2);

    // Another account consenting to alpha takes alpha to its own grant; beta stays.
    fake.set_consent_account("another-account");
    fake.set_consent_sites(vec![fake_atlassian::site("delta")]);
    connect_sites(&app, &fake, &api_key).await;
    assert_eq!(
        oauth_grant::Entity::find()
            .count(&app.db)
            .await
            .expect("count"),
        2
    );

    // Deleting every site of a grant deletes the grant.
    for site in &second {
        let response = app
            .client
            .delete(app.url(&format!(
                "/api/v1/connections/{}",
                site["id"].as_str().expect("id")
            )))
            .bearer_auth(&api_key)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 204);
    }
    let left = oauth_grant::Entity::find()
        .all(&app.db)
        .await
        .expect("query");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].account_id.as_deref(), Some("another-account"));

    app.stop().await;
    env.cleanup().await;
}

async fn the_callback_refuses_a_browser_without_the_flows_cookie(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (_, api_key) = app.create_company("Northwind").await;
    let callback = consented_callback(&app, &fake, &api_key).await;
    for cookie in [None, Some("hookline_oauth_0000000000000000=forged")] {
        let mut request = app
            .client
            .get(&callback.url)
            .header("accept", "application/json");
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 400);
        let error: serde_json::Value = response.json().await.expect("json");
        assert!(
            error["detail"]
                .as_str()
                .is_some_and(|d| d.contains("browser")),
            "{error}"
        );
    }
    // A forged cookie of the right name does not pass either.
    let name = callback.cookie.split('=').next().expect("name");
    let forged = app
        .client
        .get(&callback.url)
        .header("cookie", format!("{name}=forged"))
        .send()
        .await
        .expect("request");
    assert_eq!(forged.status(), 400);
    assert_eq!(
        fake.code_exchanges(),
        0,
        "a refused browser never reaches Atlassian"
    );
    // The browser that started the flow still can finish it.
    let response = callback
        .get(&app)
        .header("accept", "application/json")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);

    app.stop().await;
    env.cleanup().await;
}

async fn the_secret_page_is_not_cached_and_names_the_company(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (company_id, api_key) = app.create_company("Northwind Traders").await;
    let callback = consented_callback(&app, &fake, &api_key).await;
    let response = callback.get(&app).send().await.expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let removed = tests::cookies_of(&response);
    let name = callback.cookie.split('=').next().expect("name");
    assert_eq!(removed, format!("{name}="), "the flow's cookie is removed");
    let page = response.text().await.expect("page");
    assert!(
        page.contains("Jira connected to Northwind Traders"),
        "{page}"
    );

    let callback = consented_callback(&app, &fake, &api_key).await;
    let response = callback
        .get(&app)
        .header("accept", "application/json")
        .send()
        .await
        .expect("request");
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["companyName"], "Northwind Traders");
    assert_eq!(body["companyId"], company_id);

    // The admin-registered connection's secret is not cached either.
    let response = app
        .client
        .post(app.url("/api/v1/connections"))
        .bearer_auth(&api_key)
        .json(&serde_json::json!({
            "pluginId": "jira", "externalId": "manual.atlassian.net", "externalName": "Manual",
        }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 201);
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );

    app.stop().await;
    env.cleanup().await;
}

async fn a_site_with_an_invalid_cloud_id_is_refused_at_connect_time(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let mut bad = fake_atlassian::site("broken");
    bad["id"] = serde_json::json!("../../admin");
    fake.set_consent_sites(vec![fake_atlassian::site("fine"), bad]);
    let (_, api_key) = app.create_company("Northwind").await;
    let callback = consented_callback(&app, &fake, &api_key).await;
    let response = callback
        .get(&app)
        .header("accept", "application/json")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 502);
    let error: serde_json::Value = response.json().await.expect("json");
    assert!(
        error["detail"]
            .as_str()
            .is_some_and(|d| d.contains("cloudId")),
        "{error}"
    );
    assert_eq!(
        plugin_connection::Entity::find()
            .count(&app.db)
            .await
            .expect("count"),
        0
    );
    assert_eq!(
        oauth_grant::Entity::find()
            .count(&app.db)
            .await
            .expect("count"),
        0
    );

    let response = app
        .client
        .post(app.url("/api/v1/connections"))
        .bearer_auth(&api_key)
        .json(&serde_json::json!({
            "pluginId": "jira",
            "externalId": "manual.atlassian.net",
            "externalName": "Manual",
            "metadata": { "cloudId": "x/../y" },
        }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 422);

    app.stop().await;
    env.cleanup().await;
}

async fn expired_connect_flow_states_are_deleted(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (company_id, api_key) = app.create_company("Northwind").await;
    let long_ago = chrono::Utc::now() - chrono::Duration::days(2);
    oauth_state::Entity::insert(oauth_state::ActiveModel {
        state: Set("abandoned".to_owned()),
        company_id: Set(company_id.parse().expect("uuid")),
        plugin_id: Set("jira".to_owned()),
        expires_at: Set(long_ago),
        used_at: Set(None),
        created_at: Set(long_ago),
        browser_key_hash: Set(None),
    })
    .exec_without_returning(&app.db)
    .await
    .expect("insert");
    consented_callback(&app, &fake, &api_key).await;
    assert!(
        oauth_state::Entity::find_by_id("abandoned".to_owned())
            .one(&app.db)
            .await
            .expect("query")
            .is_none(),
        "an abandoned flow's state is deleted"
    );
    assert_eq!(
        oauth_state::Entity::find()
            .count(&app.db)
            .await
            .expect("count"),
        1
    );

    app.stop().await;
    env.cleanup().await;
}

async fn an_unreadable_code_exchange_answer_is_a_502(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (_, api_key) = app.create_company("Northwind").await;
    let callback = consented_callback(&app, &fake, &api_key).await;
    fake.fault_after_rotating(1, FaultAfterRotating::UnreadableOk);
    let response = callback
        .get(&app)
        .header("accept", "application/json")
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status(),
        502,
        "Atlassian's fault, not the caller's"
    );

    app.stop().await;
    env.cleanup().await;
}

async fn a_retry_after_date_from_jira_is_honoured(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (_, api_key) = app.create_company("Northwind").await;
    let connections = connect_sites(&app, &fake, &api_key).await;
    let id = connection_id(&connections[0]);
    let at = chrono::Utc::now() + chrono::Duration::seconds(40);
    fake.set_rate_limited_header(Some(&at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()));
    let response = app
        .client
        .get(app.url(&format!("/api/v1/connections/{id}/jira/issues/ORB-417")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 429);
    let seconds: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((30..=40).contains(&seconds), "{seconds}");

    app.stop().await;
    env.cleanup().await;
}

async fn a_slow_token_endpoint_does_not_block_ingest(backend: Backend) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let (_, api_key) = app.create_company("Northwind").await;
    let connections = connect_sites(&app, &fake, &api_key).await;
    let id = connection_id(&connections[0]);
    let webhook_url = connections[0]["webhookUrl"]
        .as_str()
        .expect("url")
        .to_owned();
    let secret = connections[0]["webhookSecret"]
        .as_str()
        .expect("secret")
        .to_owned();
    // Longer than SQLite's busy timeout (5 s): a write lock held across the refresh would make
    // every ingest answer 503.
    fake.set_token_delay(Duration::from_secs(6));
    expire_in_database(&app.db).await;
    let read = tokio::spawn({
        let (client, url, api_key) = (
            app.client.clone(),
            app.url(&format!("/api/v1/connections/{id}/jira/issues/ORB-417")),
            api_key.clone(),
        );
        async move {
            client
                .get(url)
                .bearer_auth(api_key)
                .send()
                .await
                .expect("request")
                .status()
        }
    });
    wait_until(
        Duration::from_secs(10),
        "the refresh is in flight",
        || async { (fake.token_requests() >= 2).then_some(()) },
    )
    .await;
    let body = tests::fixtures::bytes("webhook_issue_updated_status.json");
    for n in 0..10 {
        let response = crate::helpers::post_webhook(
            &app,
            &webhook_url,
            &body,
            Some(&secret),
            Some(&format!("slow-token-{n}")),
        )
        .await;
        assert_eq!(response.status(), 200, "ingest during a slow refresh");
    }
    assert_eq!(
        fake.refreshes(),
        0,
        "every webhook was taken while the refresh was in flight"
    );
    assert_eq!(read.await.expect("read"), 200);
    assert_eq!(fake.refreshes(), 1);

    app.stop().await;
    env.cleanup().await;
}

async fn two_sites_of_one_consent_both_read_after_expiry_through_the_real_binary(backend: Backend) {
    let Some(env) = tests::TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    let fake = FakeAtlassian::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut vars = hookline_env(&env);
    vars.extend(
        [
            ("HOOKLINE_LISTEN", format!("127.0.0.1:{port}")),
            ("JIRA_CLIENT_ID", fake_atlassian::CLIENT_ID.to_owned()),
            (
                "JIRA_CLIENT_SECRET",
                fake_atlassian::CLIENT_SECRET.to_owned(),
            ),
            ("ATLASSIAN_AUTH_URL", fake.url.clone()),
            ("ATLASSIAN_API_URL", fake.url.clone()),
        ]
        .map(|(name, value)| (name.to_owned(), value)),
    );
    let logs = env.dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let mut hookline = HooklineProcess::spawn("hookline", &["all"], vars, &logs);
    let client = reqwest::Client::new();
    wait_until(
        Duration::from_secs(60),
        "hookline answers /healthz",
        || async {
            client
                .get(format!("{base}/healthz"))
                .send()
                .await
                .ok()
                .filter(|response| response.status() == 200)
                .map(|_| ())
        },
    )
    .await;

    let company: serde_json::Value = client
        .post(format!("{base}/api/v1/companies"))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .json(&serde_json::json!({ "name": "Northwind" }))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let api_key = company["apiKey"].as_str().expect("apiKey");
    let authorize = client
        .post(format!("{base}/api/v1/connections/jira/authorize"))
        .bearer_auth(api_key)
        .send()
        .await
        .expect("request");
    let cookie = tests::cookies_of(&authorize);
    let authorize: serde_json::Value = authorize.json().await.expect("json");
    let callback = fake.consent(authorize["authorizeUrl"].as_str().expect("authorizeUrl"));
    let connected: serde_json::Value = client
        .get(callback)
        .header("cookie", cookie)
        .header("accept", "application/json")
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let sites = connected["connections"].as_array().expect("connections");
    assert_eq!(sites.len(), 2, "{connected}");

    // The tokens expire; site A is read, then site B.
    fake.expire_access_tokens();
    let db = api::startup::connect_database(&env.settings())
        .await
        .expect("database");
    expire_in_database(&db).await;
    for site in sites {
        let id = site["id"].as_str().expect("id");
        let response = client
            .get(format!(
                "{base}/api/v1/connections/{id}/jira/issues/ORB-417"
            ))
            .bearer_auth(api_key)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{}", hookline.logs());
        let shown: serde_json::Value = client
            .get(format!("{base}/api/v1/connections/{id}"))
            .bearer_auth(api_key)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        assert_eq!(shown["status"], "active");
        assert_eq!(shown["grant"]["status"], "active");
    }
    assert_eq!(fake.refreshes(), 1, "one refresh for both sites");
    assert_eq!(fake.rotated_tokens_presented(), 0);
    assert!(fake.all_grants_valid());
    let active = plugin_connection::Entity::find()
        .filter(plugin_connection::Column::Status.eq("active"))
        .count(&db)
        .await
        .expect("count");
    assert_eq!(active, 2);

    hookline.kill();
    db.close().await.expect("close");
    env.cleanup().await;
}
