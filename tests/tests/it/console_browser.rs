//! The console in a real headless Chromium (DESIGN §5 "Console", §10), as a person uses it:
//! the admin creates a company, the company signs in, connects Jira (the fake Atlassian
//! consents at once), sees the webhook URL, subscribes a fake subscriber, watches a webhook's
//! event reach `processed` and its delivery `succeeded`, retries a dead delivery from the page,
//! is refused a form without its CSRF token, and signs out. Screenshots of every step are kept
//! (see `tests::browser`). Skipped with a NOTICE where Chromium is not installed.

use std::time::Duration;

use api::Role;
use fantoccini::Locator;
use tests::browser::Browser;
use tests::fake_atlassian::{self, FakeAtlassian};
use tests::fake_subscriber::{FakeSubscriber, Reply};
use tests::{Backend, TEST_ADMIN_TOKEN, TestApp, TestEnv, fixtures};

use crate::helpers::post_webhook;
use crate::on_both_backends;

on_both_backends!(a_person_connects_jira_and_watches_an_event_get_delivered);

/// How long the pipeline gets to move an event along (a slow, loaded machine included).
const PIPELINE: Duration = Duration::from_secs(30);

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

async fn a_person_connects_jira_and_watches_an_event_get_delivered(backend: Backend) {
    let Some(mut browser) =
        Browser::start(&format!("connect-jira-and-watch-events-{backend:?}")).await
    else {
        return;
    };
    let Some((_fake, env, app)) = start_with_fake(backend).await else {
        browser.close().await;
        return;
    };
    let subscriber = FakeSubscriber::start(Reply::Status(200)).await;

    // A page is refused without a session: the browser lands on the sign-in page.
    browser.goto(&app.url("/events")).await;
    browser.wait_for_path("/").await;
    browser.field("API key").await;
    browser.button("Sign in").await;
    browser.screenshot("sign-in").await;

    // The admin creates the company and sees its API key once.
    browser.goto(&app.url("/admin")).await;
    browser.fill("Admin token", TEST_ADMIN_TOKEN).await;
    browser.click_button("Sign in").await;
    browser.fill("Company name", "Northwind Labs").await;
    browser.click_button("Create company").await;
    let api_key = browser
        .find("#api-key")
        .await
        .text()
        .await
        .expect("the key");
    assert!(api_key.starts_with("hk_"), "{api_key}");
    browser.screenshot("admin-company-created").await;
    browser.click_button("Sign out").await;

    // The company signs in and connects Jira.
    browser.goto(&app.url("/")).await;
    browser.fill("API key", &api_key).await;
    browser.click_button("Sign in").await;
    browser.wait_for_path("/connections").await;
    browser.screenshot("connections-empty").await;
    browser.click_button("Connect Jira").await;
    // The fake Atlassian consents at once and sends the browser back to the callback.
    browser.wait_for_path("/oauth/jira/callback").await;
    let page = browser.text().await;
    assert!(page.contains("Jira connected"), "{page}");
    let webhook_url = browser
        .find("#webhook-url-0")
        .await
        .text()
        .await
        .expect("url");
    assert!(
        webhook_url.starts_with(&app.url("/webhook/jira/")),
        "the webhook URL is shown as text: {webhook_url}"
    );
    assert!(page.contains(&webhook_url));
    assert!(page.contains("Settings → System → WebHooks"));
    let secret = browser
        .find("#webhook-secret-0")
        .await
        .text()
        .await
        .expect("secret");
    browser.screenshot("jira-connected").await;

    // The connections page lists the site with its webhook URL and status.
    browser.goto(&app.url("/connections")).await;
    let page = browser.text().await;
    assert!(page.contains(&webhook_url), "{page}");
    assert!(page.contains("active"));
    browser.screenshot("connections").await;

    // A subscription to the fake subscriber.
    browser
        .client
        .find(Locator::LinkText("Subscriptions"))
        .await
        .expect("the Subscriptions link")
        .click()
        .await
        .expect("click");
    browser.fill("Destination URL", &subscriber.url).await;
    browser.fill("Event types", "jira:issue_*").await;
    browser.click_button("Create subscription").await;
    let signing_secret = browser
        .find("#signing-secret")
        .await
        .text()
        .await
        .expect("secret");
    assert!(signing_secret.starts_with("whsec_"));
    browser.screenshot("subscription-created").await;

    // Jira posts a webhook; the Events page shows it reach `processed`.
    let body = fixtures::bytes("webhook_issue_created.json");
    let response = post_webhook(&app, &webhook_url, &body, Some(&secret), Some("jira-1")).await;
    assert_eq!(response.status(), 200);
    let ingested: serde_json::Value = response.json().await.expect("json");
    let event_id = ingested["eventId"].as_str().expect("eventId").to_owned();
    browser
        .client
        .find(Locator::LinkText("Events"))
        .await
        .expect("the Events link")
        .click()
        .await
        .expect("click");
    let row = format!("tr[data-event-id='{event_id}']");
    wait_for_row_status(&browser, &row, "processed").await;
    browser.screenshot("events").await;

    // The event's page: its delivery succeeded, with its attempt.
    browser.goto(&app.url(&format!("/events/{event_id}"))).await;
    browser.wait_for_text(PIPELINE, "succeeded").await;
    let page = browser.text().await;
    assert!(page.contains("Raw payload"));
    assert!(page.contains("Parsed and enriched"));
    assert!(page.contains(&subscriber.url));
    browser.screenshot("event-delivered").await;

    // A delivery that fails every attempt is dead; fixed, it is retried from the page.
    subscriber.set_default(Reply::Status(500));
    let response = post_webhook(&app, &webhook_url, &body, Some(&secret), Some("jira-2")).await;
    assert_eq!(response.status(), 200);
    browser.goto(&app.url("/dead-letters")).await;
    browser.wait_for_text(PIPELINE, "1 dead delivery").await;
    browser.screenshot("dead-letter").await;
    subscriber.set_default(Reply::Status(200));
    browser.click_button("Retry").await;
    let page = browser.text().await;
    assert!(page.contains("scheduled again"), "{page}");
    browser.wait_for_text(PIPELINE, "No dead letters").await;
    // No longer dead means rescheduled: the retry itself reaches the subscriber soon after.
    tests::wait_until(
        PIPELINE,
        "the retried delivery reached the subscriber",
        || async { (subscriber.acknowledged().len() >= 2).then_some(()) },
    )
    .await;
    browser.screenshot("dead-letter-retried").await;

    // A form without its CSRF token is refused.
    browser.goto(&app.url(&format!("/events/{event_id}"))).await;
    browser
        .client
        .execute(
            "document.querySelectorAll('input[name=csrf_token]').forEach(function (e) { e.remove(); });",
            vec![],
        )
        .await
        .expect("remove the CSRF fields");
    browser.click_button("Replay").await;
    let page = browser.text().await;
    assert!(page.contains("Refused"), "{page}");
    assert!(page.contains("security token"));
    browser.screenshot("form-without-csrf-refused").await;

    // Signing out ends the session.
    browser.goto(&app.url("/connections")).await;
    browser.click_button("Sign out").await;
    browser.wait_for_path("/").await;
    browser.goto(&app.url("/connections")).await;
    assert_eq!(
        browser.url().await.path(),
        "/",
        "signed out: back to sign-in"
    );
    browser.screenshot("signed-out").await;

    browser.close().await;
    app.stop().await;
    env.cleanup().await;
}

/// Reloads the events page until the row `row` shows `status`.
async fn wait_for_row_status(browser: &Browser, row: &str, status: &str) {
    tests::wait_until(PIPELINE, &format!("the event is {status}"), || async {
        let text = match browser.client.find(Locator::Css(row)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains(status) {
            Some(())
        } else {
            browser.client.refresh().await.expect("reload");
            None
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_sends_a_test_event_and_sees_it_delivered_in_the_embedded_mode() {
    let Some(mut browser) = Browser::start("embedded-test-event").await else {
        return;
    };
    let Some(env) = TestEnv::new(Backend::Embedded).await else {
        return;
    };
    // The embedded mode without an Atlassian app, as `cargo run --release` starts it.
    let app = env
        .spawn_with(Role::All, |settings| {
            settings.jira_client_id = None;
            settings.jira_client_secret = None;
        })
        .await;
    let subscriber = FakeSubscriber::start(Reply::Status(200)).await;
    let (_, api_key) = app.create_company("Northwind").await;

    browser.goto(&app.url("/")).await;
    browser.fill("API key", &api_key).await;
    browser.click_button("Sign in").await;
    let page = browser.text().await;
    assert!(
        page.contains("JIRA_CLIENT_ID"),
        "says why Connect Jira is off: {page}"
    );
    browser.fill("Site", "northwind.atlassian.net").await;
    browser.fill("Name", "Northwind").await;
    browser.click_button("Register site").await;
    let webhook_url = browser
        .find("#webhook-url-0")
        .await
        .text()
        .await
        .expect("url");
    assert!(webhook_url.contains("/webhook/jira/"));
    browser.screenshot("registered").await;

    browser.goto(&app.url("/subscriptions")).await;
    browser.fill("Destination URL", &subscriber.url).await;
    browser.click_button("Create subscription").await;
    // Wait for the form's answer before leaving: a navigation started now would race with it.
    browser.find("#signing-secret").await;

    browser.goto(&app.url("/connections")).await;
    browser.screenshot("connections-with-test-button").await;
    browser.click_button("Send a test event").await;
    // The event's page, which fills in as the pipeline moves on.
    tests::wait_until(PIPELINE, "the browser shows the event", || async {
        browser
            .url()
            .await
            .path()
            .starts_with("/events/")
            .then_some(())
    })
    .await;
    browser.wait_for_text(PIPELINE, "succeeded").await;
    let page = browser.text().await;
    assert!(page.contains("jira:issue_created"), "{page}");
    browser.screenshot("test-event-delivered").await;
    assert_eq!(subscriber.acknowledged().len(), 1);

    browser.close().await;
    app.stop().await;
    env.cleanup().await;
}
