//! The SSRF guard (`worker/src/target.rs`): subscriber URLs pointing inside the network are
//! refused when a subscription is saved, and again at delivery time (DNS can change after the
//! check); deliveries never follow redirects.

use std::net::IpAddr;
use std::time::Duration;

use api::Role;
use sea_orm::{ActiveValue::Set, EntityTrait};
use tests::fake_subscriber::{FakeSubscriber, Reply};
use tests::{Backend, TestApp, TestEnv, wait_until};
use uuid::Uuid;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    internal_urls_are_refused_when_a_subscription_is_saved,
    internal_targets_are_refused_at_delivery_time,
    deliveries_never_follow_redirects,
);

/// An app as production runs it: private targets refused.
async fn start_guarded(backend: Backend) -> Option<(TestEnv, TestApp)> {
    let env = TestEnv::new(backend).await?;
    env.migrate().await;
    let app = env
        .spawn_with(Role::All, |settings| {
            settings.allow_private_targets = Some(false);
        })
        .await;
    Some((env, app))
}

/// A name other than `localhost` that resolves to an internal address here: the machine's own
/// host name (loopback or a private address in containers and CI). None if it does not.
async fn name_resolving_inside() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_owned();
    let addrs: Vec<IpAddr> = tokio::net::lookup_host((name.as_str(), 80))
        .await
        .ok()?
        .map(|addr| addr.ip())
        .collect();
    (!addrs.is_empty() && addrs.iter().all(|ip| worker::target::is_forbidden(*ip))).then_some(name)
}

async fn internal_urls_are_refused_when_a_subscription_is_saved(backend: Backend) {
    let Some((env, app)) = start_guarded(backend).await else {
        return;
    };
    let (_, api_key) = app.create_company("Northwind").await;
    let mut refused = vec![
        // Loopback, also in the spellings URL parsers accept.
        "http://127.0.0.1/hook".to_owned(),
        "http://127.1/hook".to_owned(),
        "http://2130706433/hook".to_owned(),
        "http://0x7f.0.0.1/hook".to_owned(),
        "http://0177.0.0.1/hook".to_owned(),
        "https://127.0.0.1:8443/hook".to_owned(),
        "http://0.0.0.0/hook".to_owned(),
        // Private, shared and link-local v4, the metadata address.
        "http://10.0.0.1/hook".to_owned(),
        "http://172.16.5.4/hook".to_owned(),
        "http://172.31.255.255/hook".to_owned(),
        "http://192.168.1.1/hook".to_owned(),
        "http://100.64.0.1/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://169.254.1.1/hook".to_owned(),
        // IPv6: loopback, unspecified, unique-local, link-local, AWS metadata.
        "http://[::1]/hook".to_owned(),
        "http://[::]/hook".to_owned(),
        "http://[fc00::1]/hook".to_owned(),
        "http://[fd12:3456::1]/hook".to_owned(),
        "http://[fd00:ec2::254]/hook".to_owned(),
        "http://[fe80::1]/hook".to_owned(),
        // IPv4-mapped and -compatible IPv6, NAT64.
        "http://[::ffff:127.0.0.1]/hook".to_owned(),
        "http://[::ffff:7f00:1]/hook".to_owned(),
        "http://[::ffff:10.0.0.1]/hook".to_owned(),
        "http://[::ffff:169.254.169.254]/hook".to_owned(),
        "http://[::127.0.0.1]/hook".to_owned(),
        "http://[64:ff9b::a9fe:a9fe]/hook".to_owned(),
        // Names for loopback.
        "http://localhost/hook".to_owned(),
        "http://LOCALHOST./hook".to_owned(),
        "http://api.localhost/hook".to_owned(),
    ];
    match name_resolving_inside().await {
        Some(name) => refused.push(format!("http://{name}:8080/hook")),
        None => eprintln!("NOTICE: no host name resolving to an internal address; case skipped"),
    }
    for url in &refused {
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
        let detail = body["detail"].as_str().expect("detail");
        assert!(
            detail.contains("HOOKLINE_ALLOW_PRIVATE_TARGETS"),
            "{url}: the detail says why and what to change: {detail}"
        );
    }

    // Not http(s), or with credentials, or without a host: refused whatever the setting.
    for (url, why) in [
        ("ftp://example.com/hook", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://example.com:70/_x", "http or https"),
        ("javascript:alert(1)", "http or https"),
        ("data:text/plain,hello", "http or https"),
        ("http://user:pass@example.com/hook", "credentials"),
        ("http://user@example.com/hook", "credentials"),
        ("http://example.com@127.0.0.1/hook", "credentials"),
        ("not a url", "not a URL"),
        ("http://", "not a URL"),
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
        let detail = body["detail"].as_str().expect("detail");
        assert!(detail.contains(why), "{url}: {detail}");
    }

    // A public address is fine, and changing it to an internal one later is refused too.
    let created = create_subscription(&app, &api_key, "https://93.184.215.14/hook").await;
    let id = created["id"].as_str().expect("id");
    for url in ["http://169.254.169.254/", "http://[::ffff:127.0.0.1]/"] {
        let response = app
            .client
            .patch(app.url(&format!("/api/v1/subscriptions/{id}")))
            .bearer_auth(&api_key)
            .json(&serde_json::json!({ "url": url }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 422, "PATCH to {url}");
    }
    app.stop().await;
    env.cleanup().await;
}

/// Saves a subscription without the API's check, as if its name resolved to a public address
/// when it was saved.
async fn insert_subscription_to(app: &TestApp, company_id: &str, url: &str) -> Uuid {
    let id = Uuid::now_v7();
    let now = chrono::Utc::now();
    let cipher = entity::cipher::Cipher::new(&tests::TEST_ENCRYPTION_KEY, &[]);
    entity::subscription::Entity::insert(entity::subscription::ActiveModel {
        id: Set(id),
        company_id: Set(company_id.parse().expect("company id")),
        connection_id: Set(None),
        description: Set(None),
        event_types: Set(serde_json::json!(["jira:issue_*"])),
        filters: Set(None),
        target_url: Set(url.to_owned()),
        destination_kind: Set("http".to_owned()),
        destination: Set(None),
        secret: Set(cipher.encrypt("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
        enabled: Set(true),
        disabled_reason: Set(None),
        failing_since: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec_without_returning(&app.db)
    .await
    .expect("insert subscription");
    id
}

async fn internal_targets_are_refused_at_delivery_time(backend: Backend) {
    let Some((env, app)) = start_guarded(backend).await else {
        return;
    };
    let subscriber = FakeSubscriber::start(Reply::Status(200)).await;
    let port = subscriber
        .url
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .expect("port")
        .to_owned();
    let (company_id, api_key) = app.create_company("Northwind").await;
    let connection = app
        .create_connection(&api_key, "northwind-labs.atlassian.net")
        .await;
    let mut targets = vec![
        subscriber.url.clone(),
        format!("http://localhost:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
    ];
    if let Some(name) = name_resolving_inside().await {
        // Refused by the resolver: the name's addresses are checked on every delivery.
        targets.push(format!("http://{name}:{port}/hook"));
    }
    for target in &targets {
        insert_subscription_to(&app, &company_id, target).await;
    }

    let response = post_webhook(
        &app,
        connection["webhookUrl"].as_str().expect("url"),
        br#"{"webhookEvent":"jira:issue_created","issue":{"key":"ENG-1"}}"#,
        connection["webhookSecret"].as_str(),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    let out: serde_json::Value = response.json().await.expect("json");
    let event_id: Uuid = out["eventId"].as_str().expect("id").parse().expect("uuid");
    wait_processed(&app, event_id).await;
    let deliveries = wait_until(
        Duration::from_secs(20),
        "every delivery is dead",
        || async {
            let all = deliveries_of(&app, event_id).await;
            (all.len() == targets.len() && all.iter().all(|d| d.status == "dead")).then_some(all)
        },
    )
    .await;
    for delivery in deliveries {
        // Refused for good on the first attempt: no retries against an internal address.
        assert_eq!(delivery.attempts, 1, "{delivery:?}");
        let error = delivery.last_error.expect("an error");
        assert!(
            error.contains("refused") || error.contains("no address hookline may call"),
            "{error}"
        );
    }
    assert!(subscriber.requests().is_empty(), "nothing reached loopback");
    app.stop().await;
    env.cleanup().await;
}

async fn deliveries_never_follow_redirects(backend: Backend) {
    // Private targets allowed here (the fake servers are on loopback): even so, a redirect is
    // an answer, never followed.
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let internal = FakeSubscriber::start(Reply::Status(200)).await;
    let location = internal.url.clone();
    let redirecting = {
        use poem::listener::{Acceptor, Listener, TcpListener};
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .expect("bind");
        let addr = acceptor
            .local_addr()
            .into_iter()
            .find_map(|addr| addr.as_socket_addr().copied())
            .expect("address");
        let endpoint = poem::endpoint::make_sync(move |_| {
            poem::Response::builder()
                .status(poem::http::StatusCode::FOUND)
                .header("location", location.clone())
                .finish()
        });
        let handle = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor)
                .run(endpoint)
                .await;
        });
        (format!("http://{addr}/hook"), handle)
    };
    let (_, api_key) = app.create_company("Northwind").await;
    let connection = app
        .create_connection(&api_key, "northwind-labs.atlassian.net")
        .await;
    create_subscription(&app, &api_key, &redirecting.0).await;
    let response = post_webhook(
        &app,
        connection["webhookUrl"].as_str().expect("url"),
        br#"{"webhookEvent":"jira:issue_created","issue":{"key":"ENG-1"}}"#,
        connection["webhookSecret"].as_str(),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    let out: serde_json::Value = response.json().await.expect("json");
    let event_id: Uuid = out["eventId"].as_str().expect("id").parse().expect("uuid");
    wait_processed(&app, event_id).await;
    let delivery = wait_until(Duration::from_secs(30), "the delivery is dead", || async {
        deliveries_of(&app, event_id)
            .await
            .into_iter()
            .find(|d| d.status == "dead")
    })
    .await;
    assert_eq!(
        delivery.last_status,
        Some(302),
        "a redirect is a failed attempt"
    );
    for attempt in attempts(&app, delivery.id).await {
        assert_eq!(attempt.status_code, Some(302));
    }
    assert!(
        internal.requests().is_empty(),
        "the redirect target was never called"
    );
    redirecting.1.abort();
    app.stop().await;
    env.cleanup().await;
}
