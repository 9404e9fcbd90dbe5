//! Secrets: API keys stored hashed, webhook secrets and OAuth tokens encrypted at rest, none of
//! them in API answers (except where DESIGN §10 shows them once, at creation), and none in the
//! logs, at trace level, of a whole flow: company, connections (registered and through OAuth),
//! a token refresh, the issue read-through, webhooks, deliveries.
//!
//! The logs are captured with a tracing subscriber installed as the default of every thread of
//! this test's own runtime (and `log` records forwarded to it), so other tests running in the
//! same process are not affected.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::Role;
use base64::Engine as _;
use sea_orm::EntityTrait;
use tests::fake_atlassian::{self, FakeAtlassian};
use tests::fake_subscriber::{FakeSubscriber, Reply};
use tests::{Backend, TEST_ADMIN_TOKEN, TEST_ENCRYPTION_KEY, TestApp, TestEnv, wait_until};
use uuid::Uuid;

use crate::helpers::*;

mod secrets_never_appear_in_the_database_answers_or_logs {
    #[test]
    fn embedded() {
        super::run_captured(tests::Backend::Embedded);
    }

    #[test]
    fn postgres_redis() {
        super::run_captured(tests::Backend::PostgresRedis);
    }
}

/// Everything written to the captured log.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn text(&self) -> String {
        let bytes = self.0.lock().expect("logs").clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn run_captured(backend: Backend) {
    // Forward `log` records (reqwest, rustls) to tracing; another test may have done it first.
    let _ = tracing_log::LogTracer::init();
    let logs = CapturedLogs::default();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish(),
    );
    let on_thread = dispatch.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // The guard would restore the previous default when dropped: keep it for the
            // thread's life.
            std::mem::forget(tracing::dispatcher::set_default(&on_thread));
        })
        .build()
        .expect("runtime");
    let _guard = tracing::dispatcher::set_default(&dispatch);
    runtime.block_on(secrets_never_leak(backend, logs));
    runtime.shutdown_timeout(Duration::from_secs(10));
}

async fn start_with_fake(backend: Backend) -> Option<(FakeAtlassian, TestEnv, TestApp)> {
    let env = TestEnv::new(backend).await?;
    env.migrate().await;
    let fake = FakeAtlassian::start().await;
    let url = fake.url.clone();
    let app = env
        .spawn_with(Role::All, move |settings| {
            settings.jira_client_id = Some(fake_atlassian::CLIENT_ID.to_owned());
            settings.jira_client_secret = Some(fake_atlassian::CLIENT_SECRET.to_owned().into());
            settings.atlassian_auth_url = url.clone();
            settings.atlassian_api_url = url;
        })
        .await;
    Some((fake, env, app))
}

/// Every row of every table that can hold a secret, as text.
async fn database_dump(app: &TestApp) -> String {
    use entity::*;
    let db = &app.db;
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        company::Entity::find().all(db).await.expect("companies"),
        api_key::Entity::find().all(db).await.expect("api keys"),
        plugin_connection::Entity::find()
            .all(db)
            .await
            .expect("connections"),
        oauth_grant::Entity::find().all(db).await.expect("grants"),
        oauth_state::Entity::find().all(db).await.expect("states"),
        subscription::Entity::find()
            .all(db)
            .await
            .expect("subscriptions"),
        webhook_event::Entity::find().all(db).await.expect("events"),
        delivery::Entity::find().all(db).await.expect("deliveries"),
        delivery_attempt::Entity::find()
            .all(db)
            .await
            .expect("attempts"),
    )
}

async fn get_text(app: &TestApp, api_key: &str, path: &str) -> String {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(api_key)
        .send()
        .await
        .expect("request");
    assert!(response.status().is_success(), "GET {path}");
    response.text().await.expect("body")
}

async fn secrets_never_leak(backend: Backend, logs: CapturedLogs) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    let subscriber = FakeSubscriber::start(Reply::Status(200)).await;

    // Company (admin token), a registered connection, OAuth connections, a subscription.
    let (_, api_key) = app.create_company("Northwind").await;
    let registered = app
        .create_connection(&api_key, "registered.atlassian.net")
        .await;
    let oauth_connections = crate::oauth::connect_sites(&app, &fake, &api_key).await;
    let oauth = oauth_connections.first().expect("a connected site").clone();
    let subscription = create_subscription(&app, &api_key, &subscriber.url).await;
    let whsec = subscription["secret"].as_str().expect("secret").to_owned();
    assert!(whsec.starts_with("whsec_"));

    // Webhooks on both connections; the OAuth one is enriched with the access token. Then the
    // access token expires, so the next event refreshes it (client secret and refresh token
    // sent), and the issue is read through the API.
    let mut event_ids = Vec::new();
    for (n, connection) in [&registered, &oauth, &oauth].into_iter().enumerate() {
        if n == 2 {
            fake.expire_access_tokens();
        }
        let response = post_webhook(
            &app,
            connection["webhookUrl"].as_str().expect("url"),
            &tests::fixtures::bytes("webhook_issue_created.json"),
            connection["webhookSecret"].as_str(),
            Some(&format!("secrets-{n}")),
        )
        .await;
        assert_eq!(response.status(), 200);
        let out: serde_json::Value = response.json().await.expect("json");
        let id: Uuid = out["eventId"].as_str().expect("id").parse().expect("uuid");
        wait_processed(&app, id).await;
        event_ids.push(id);
    }
    assert!(fake.refreshes() >= 1, "a refresh happened");
    let oauth_id = oauth["id"].as_str().expect("id");
    let issue = app
        .client
        .get(app.url(&format!(
            "/api/v1/connections/{oauth_id}/jira/issues/ORB-417"
        )))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(issue.status(), 200);
    wait_until(
        Duration::from_secs(20),
        "every delivery succeeded",
        || async {
            let mut all = Vec::new();
            for id in &event_ids {
                all.extend(deliveries_of(&app, *id).await);
            }
            (all.len() == 3 && all.iter().all(|d| d.status == "succeeded")).then_some(())
        },
    )
    .await;
    // The subscriber got signed deliveries (the secret was used, not shown).
    assert!(
        subscriber
            .requests()
            .iter()
            .all(|request| request.header("webhook-signature").starts_with("v1,"))
    );

    let mut secrets: Vec<(String, String)> = vec![
        ("API key".into(), api_key.clone()),
        ("admin token".into(), TEST_ADMIN_TOKEN.to_owned()),
        (
            "client secret".into(),
            fake_atlassian::CLIENT_SECRET.to_owned(),
        ),
        (
            "encryption key".into(),
            base64::engine::general_purpose::STANDARD.encode(TEST_ENCRYPTION_KEY),
        ),
        ("subscription secret".into(), whsec.clone()),
        (
            "subscription secret key".into(),
            whsec.trim_start_matches("whsec_").to_owned(),
        ),
    ];
    for connection in std::iter::once(&registered).chain(&oauth_connections) {
        let secret = connection["webhookSecret"].as_str().expect("webhookSecret");
        secrets.push(("webhook secret".into(), secret.to_owned()));
    }
    let tokens = fake.issued_tokens();
    assert!(
        tokens.len() >= 4,
        "access and refresh tokens, before and after the refresh"
    );
    for token in tokens {
        secrets.push(("OAuth token".into(), token));
    }

    // At rest: hashed or encrypted.
    let dump = database_dump(&app).await;
    assert!(dump.contains(&registered["id"].as_str().expect("id").to_owned()));
    for (what, secret) in &secrets {
        assert!(
            !dump.contains(secret.as_str()),
            "the {what} is stored in plaintext"
        );
    }

    // In answers: never after creation.
    let subscription_id = subscription["id"].as_str().expect("id");
    let mut answers = String::new();
    for path in [
        "/api/v1/connections".to_owned(),
        format!("/api/v1/connections/{oauth_id}"),
        format!(
            "/api/v1/connections/{}",
            registered["id"].as_str().expect("id")
        ),
        "/api/v1/subscriptions".to_owned(),
        format!("/api/v1/subscriptions/{subscription_id}"),
        "/api/v1/events".to_owned(),
        "/api/v1/deliveries".to_owned(),
    ] {
        answers.push_str(&get_text(&app, &api_key, &path).await);
    }
    for id in &event_ids {
        answers.push_str(&get_text(&app, &api_key, &format!("/api/v1/events/{id}")).await);
        for delivery in deliveries_of(&app, *id).await {
            answers.push_str(
                &get_text(
                    &app,
                    &api_key,
                    &format!("/api/v1/deliveries/{}", delivery.id),
                )
                .await,
            );
        }
    }
    for (what, secret) in &secrets {
        assert!(
            !answers.contains(secret.as_str()),
            "the {what} is in an API answer"
        );
    }

    app.stop().await;
    env.cleanup().await;

    // In the logs, at trace level: never.
    let text = logs.text();
    assert!(
        text.contains("event processed") && text.contains("delivered"),
        "the logs were captured"
    );
    assert!(text.contains("TRACE"), "trace level was on");
    for (what, secret) in &secrets {
        if let Some(at) = text.find(secret.as_str()) {
            let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
            let line_end = text[at..].find('\n').map_or(text.len(), |n| at + n);
            panic!("the {what} is in the logs: {}", &text[line_start..line_end]);
        }
    }
}
