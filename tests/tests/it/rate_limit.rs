//! Rate limiting of ingest per connection (`HOOKLINE_INGEST_RATE_LIMIT`, `HOOKLINE_INGEST_BURST`).

use api::Role;
use tests::{Backend, TestApp, TestEnv};

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    a_noisy_connection_is_limited_while_another_company_is_not,
    unsigned_requests_do_not_spend_a_connections_budget,
);

/// One token per second and a burst of five: a test sending dozens of requests in a row is
/// limited however slow the machine is.
async fn start_limited(backend: Backend) -> Option<(TestEnv, TestApp)> {
    let env = TestEnv::new(backend).await?;
    env.migrate().await;
    let app = env
        .spawn_with(Role::Serve, |settings| {
            settings.ingest_rate_limit = 1;
            settings.ingest_burst = 5;
        })
        .await;
    Some((env, app))
}

const BODY: &[u8] = br#"{"webhookEvent":"jira:issue_updated","issue":{"key":"ENG-1"}}"#;

async fn a_noisy_connection_is_limited_while_another_company_is_not(backend: Backend) {
    let Some((env, app)) = start_limited(backend).await else {
        return;
    };
    let (_, noisy_key) = app.create_company("Noisy").await;
    let noisy = app
        .create_connection(&noisy_key, "noisy.atlassian.net")
        .await;
    let (_, quiet_key) = app.create_company("Quiet").await;
    let quiet = app
        .create_connection(&quiet_key, "quiet.atlassian.net")
        .await;

    let mut accepted = Vec::new();
    let mut limited = 0;
    for n in 0..30 {
        let response = post_webhook(
            &app,
            noisy["webhookUrl"].as_str().expect("url"),
            BODY,
            noisy["webhookSecret"].as_str(),
            Some(&format!("noisy-{n}")),
        )
        .await;
        match response.status().as_u16() {
            200 => {
                let out: serde_json::Value = response.json().await.expect("json");
                accepted.push(out["eventId"].as_str().expect("eventId").to_owned());
            }
            429 => {
                limited += 1;
                let retry_after: u64 = response
                    .headers()
                    .get("retry-after")
                    .expect("a 429 carries Retry-After")
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("Retry-After is whole seconds");
                assert!(retry_after >= 1, "Retry-After {retry_after}");
                let body: serde_json::Value = response.json().await.expect("json");
                assert_eq!(body["code"], "rate_limited", "{body}");
                assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
            }
            status => panic!("unexpected status {status}"),
        }

        // Meanwhile the other company's connection is served normally.
        if n % 10 == 9 {
            let response = post_webhook(
                &app,
                quiet["webhookUrl"].as_str().expect("url"),
                BODY,
                quiet["webhookSecret"].as_str(),
                Some(&format!("quiet-{n}")),
            )
            .await;
            assert_eq!(
                response.status(),
                200,
                "the quiet connection is not limited"
            );
        }
    }
    assert!(accepted.len() >= 5, "the burst is accepted: {accepted:?}");
    assert!(
        limited > 0,
        "30 requests at once exceed a burst of 5 at 1/s"
    );

    // Everything accepted is stored, nothing limited is.
    assert_eq!(
        event_count(&app, connection_id(&noisy)).await,
        accepted.len() as u64
    );
    for event_id in &accepted {
        event(&app, event_id.parse().expect("uuid")).await;
    }
    assert_eq!(event_count(&app, connection_id(&quiet)).await, 3);
    app.stop().await;
    env.cleanup().await;
}

async fn unsigned_requests_do_not_spend_a_connections_budget(backend: Backend) {
    let Some((env, app)) = start_limited(backend).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    for n in 0..20 {
        let unsigned = post_webhook(&app, url, BODY, None, Some(&format!("u-{n}"))).await;
        assert_eq!(unsigned.status(), 401);
        let forged = post_webhook(&app, url, BODY, Some("not-the-secret"), None).await;
        assert_eq!(forged.status(), 401);
    }
    let signed = post_webhook(
        &app,
        url,
        BODY,
        connection["webhookSecret"].as_str(),
        Some("signed"),
    )
    .await;
    assert_eq!(signed.status(), 200, "the budget is intact");
    app.stop().await;
    env.cleanup().await;
}
