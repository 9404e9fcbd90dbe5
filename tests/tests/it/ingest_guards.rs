//! Ingest against hostile senders: bodies to unknown connections are never read, the bytes of
//! bodies held at once are capped (503 with `Retry-After`, nothing accepted is lost), bodies that
//! trickle in are cut off (408), and the JSON check gives the worker's parser's verdict.

use std::time::Duration;

use api::Role;
use chrono::Utc;
use entity::plugin_connection;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, IntoActiveModel};
use tests::{Backend, TestApp, TestEnv, fixtures, wait_until};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(
    a_body_to_an_unknown_or_disabled_connection_is_refused_without_being_read,
    past_the_cap_on_body_bytes_webhooks_get_503_with_retry_after_and_none_accepted_is_lost,
    a_body_trickling_in_below_the_floor_rate_is_cut_off_with_408,
    hostile_json_gets_the_verdict_of_the_workers_parser,
);

/// The path part of a webhook URL.
fn path_of(url: &str) -> String {
    format!("/{}", url.splitn(4, '/').nth(3).expect("path"))
}

/// Opens a connection and sends a request's head declaring `content_length` body bytes, then
/// `first_bytes` of the body, and nothing more.
async fn stalled_request(
    app: &TestApp,
    path: &str,
    content_length: usize,
    first_bytes: &[u8],
) -> TcpStream {
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: hookline\r\nContent-Type: application/json\r\n\
         X-Hub-Signature: sha256={}\r\nContent-Length: {content_length}\r\n\r\n",
        "0".repeat(64)
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(first_bytes).await.expect("write body");
    stream
}

/// Reads the answer on a stalled request: the server must answer and close the connection
/// without waiting for the rest of the body.
async fn answer_without_the_rest(mut stream: TcpStream, within: Duration) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    match read {
        Ok(Ok(_)) => text,
        // A reset after the answer is as good as a close.
        Ok(Err(_)) if !answer.is_empty() => text,
        Ok(Err(error)) => panic!("reading the answer failed: {error}"),
        Err(_) => panic!("no answer (and no close) within {within:?}: {text:?}"),
    }
}

async fn disable(app: &TestApp, id: Uuid) {
    let model = plugin_connection::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .expect("query")
        .expect("connection");
    let mut active = model.into_active_model();
    active.status = Set(plugin_connection::status::DISABLED.to_owned());
    active.updated_at = Set(Utc::now());
    active.update(&app.db).await.expect("disable");
}

async fn a_body_to_an_unknown_or_disabled_connection_is_refused_without_being_read(
    backend: Backend,
) {
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    let app = env
        .spawn_with(Role::Serve, |settings| {
            settings.connection_cache_ttl = Duration::from_millis(300);
        })
        .await;
    let (_, connection) = company_with_connection(&app).await;
    let id = connection_id(&connection);
    // The floor rate would also end a stalled body, after its grace (5 s): the answers below
    // come at once, from the lookup alone.
    let path = format!("/webhook/jira/{}", Uuid::now_v7());
    let stalled = stalled_request(&app, &path, 100_000, b"{\"webhookEvent\":").await;
    let answer = answer_without_the_rest(stalled, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("not_found"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    // A connection disabled after it was cached: once its cache entry expires, a sender that
    // sends nothing of its body gets its 404 at once.
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str();
    let body = fixtures::bytes("webhook_issue_created.json");
    let ok = post_webhook(&app, url, &body, secret, Some("before")).await;
    assert_eq!(ok.status(), 200, "active");
    disable(&app, id).await;
    wait_until(
        Duration::from_secs(10),
        "the disabled connection is refused",
        || async {
            let response = post_webhook(&app, url, &body, secret, Some("after")).await;
            (response.status() == 404).then_some(())
        },
    )
    .await;
    let stalled = stalled_request(&app, &path_of(url), 50_000, b"").await;
    let answer = answer_without_the_rest(stalled, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // "before", and "after" if it came while the connection was still cached as active.
    assert!(matches!(event_count(&app, id).await, 1 | 2));
    app.stop().await;
    env.cleanup().await;
}

/// The cap on body bytes in this test: room for two fixture bodies, not three.
const CAP: usize = 16 * 1024;

async fn past_the_cap_on_body_bytes_webhooks_get_503_with_retry_after_and_none_accepted_is_lost(
    backend: Backend,
) {
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    let app = env
        .spawn_with(Role::Serve, |settings| {
            settings.body_limit_bytes = CAP;
            settings.ingest_body_bytes_in_flight = CAP;
            // The stalled senders below must hold their bytes for the whole test.
            settings.ingest_body_grace = Duration::from_secs(120);
        })
        .await;
    let (_, connection) = company_with_connection(&app).await;
    let id = connection_id(&connection);
    let url = connection["webhookUrl"].as_str().expect("url").to_owned();
    let secret = connection["webhookSecret"].as_str().map(str::to_owned);
    let body = fixtures::bytes("webhook_issue_created.json");
    assert!(body.len() * 2 <= CAP && body.len() * 3 > CAP);

    // Two senders declare 6 KiB each and stall: 12 KiB of the 16 are held.
    let stalled = [
        stalled_request(&app, &path_of(&url), 6 * 1024, b"{").await,
        stalled_request(&app, &path_of(&url), 6 * 1024, b"{").await,
    ];
    // Until both stalled requests have reached ingest, a probe may still be accepted.
    let accepted_probes = std::sync::atomic::AtomicU64::new(0);
    let sequence = std::sync::atomic::AtomicU64::new(0);
    let response = wait_until(
        Duration::from_secs(30),
        "a webhook is refused for the held bytes",
        || async {
            let n = sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let identifier = format!("probe-{n}");
            let response =
                post_webhook(&app, &url, &body, secret.as_deref(), Some(&identifier)).await;
            if response.status() == 200 {
                accepted_probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return None;
            }
            Some(response)
        },
    )
    .await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok()),
        Some("1")
    );
    let error: serde_json::Value = response.json().await.expect("json");
    assert_eq!(error["code"], "busy", "{error}");

    // The held bytes are given back when the stalled senders go away.
    drop(stalled);
    wait_until(Duration::from_secs(10), "the bytes are given back", || {
        let (url, secret, body, app) = (&url, &secret, &body, &app);
        async move {
            let response = post_webhook(app, url, body, secret.as_deref(), Some("after")).await;
            (response.status() == 200).then_some(())
        }
    })
    .await;

    // A burst of 40 concurrent webhooks, two bodies' worth of room: some are refused, each
    // refusal says when to retry, and after their retries every one is stored exactly once.
    let burst = (0..40).map(|n| {
        let (url, secret, body) = (&url, &secret, &body);
        let app = &app;
        async move {
            let identifier = format!("burst-{n}");
            let mut refusals = 0;
            loop {
                let response =
                    post_webhook(app, url, body, secret.as_deref(), Some(&identifier)).await;
                match response.status().as_u16() {
                    200 => return refusals,
                    503 => {
                        let retry_after = response
                            .headers()
                            .get("retry-after")
                            .and_then(|value| value.to_str().ok())
                            .and_then(|value| value.parse::<u64>().ok());
                        assert_eq!(retry_after, Some(1), "a 503 says when to retry");
                        refusals += 1;
                        assert!(refusals < 1000, "{identifier} never got in");
                        // Retried sooner than asked, to keep the test short.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    status => panic!("{identifier}: {status}"),
                }
            }
        }
    });
    let refusals: Vec<usize> = futures::future::join_all(burst).await;
    eprintln!(
        "refusals during the burst: {}",
        refusals.iter().sum::<usize>()
    );
    // The probes accepted before the stall took hold, "after" and the 40.
    let probes = accepted_probes.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(event_count(&app, id).await, probes + 41);
    app.stop().await;
    env.cleanup().await;
}

async fn a_body_trickling_in_below_the_floor_rate_is_cut_off_with_408(backend: Backend) {
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    let app = env
        .spawn_with(Role::Serve, |settings| {
            settings.ingest_min_body_bytes_per_sec = 2000;
            settings.ingest_body_grace = Duration::from_millis(500);
        })
        .await;
    let (_, connection) = company_with_connection(&app).await;
    let id = connection_id(&connection);
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str().expect("secret");

    // 100 of 5,000 bytes, then nothing: cut off at the end of the grace (2,000 bytes/s × 0.5 s
    // is more than 100 bytes), long before the body could have arrived.
    let started = std::time::Instant::now();
    let stalled = stalled_request(&app, &path_of(url), 5000, &[b' '; 100]).await;
    let answer = answer_without_the_rest(stalled, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A trickle that keeps sending, but below the floor, is cut off too. (Read while it sends:
    // the answer comes before the trickle ends.)
    let (mut reader, mut writer) = stalled_request(&app, &path_of(url), 5000, b"")
        .await
        .into_split();
    let sender = tokio::spawn(async move {
        for _ in 0..50 {
            if writer.write_all(&[b' '; 10]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    sender.abort();

    // A body sent in pieces, above the floor, is accepted.
    let body = fixtures::bytes("webhook_issue_created.json");
    let signature = plugins::jira::webhook::sign(secret.as_bytes(), &body);
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: hookline\r\nContent-Type: application/json\r\n\
         X-Hub-Signature: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        path_of(url),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    for piece in body.chunks(body.len() / 3 + 1) {
        stream.write_all(piece).await.expect("piece");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let answer = answer_without_the_rest(stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(event_count(&app, id).await, 1, "only the complete body");
    app.stop().await;
    env.cleanup().await;
}

/// JSON chosen to find a disagreement between ingest's check and the worker's parser.
fn hostile_json() -> Vec<(&'static str, Vec<u8>)> {
    let nested = |depth: usize| {
        format!(
            "{{\"webhookEvent\":\"jira:issue_created\",\"a\":{}1{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
        .into_bytes()
    };
    vec![
        // serde_json's recursion limit of 128 reads 127 levels and refuses the 128th.
        ("nested 127 levels", nested(127)),
        ("nested 128 levels", nested(128)),
        ("nested 129 levels", nested(129)),
        (
            "a 400-digit integer",
            format!("{{\"n\":{}}}", "9".repeat(400)).into_bytes(),
        ),
        ("a float out of range", b"{\"n\":1e400}".to_vec()),
        ("a float that underflows", b"{\"n\":-1e-400}".to_vec()),
        (
            "every escape",
            br#"{"s":"\" \\ \/ \b \f \n \r \t \u00e9 \ud83d\ude00 \u0000"}"#.to_vec(),
        ),
        ("a lone surrogate", br#"{"s":"\ud800"}"#.to_vec()),
        ("a bad escape", br#"{"s":"\q"}"#.to_vec()),
        (
            "invalid UTF-8 in a string",
            b"{\"s\":\"\xc3\x28\"}".to_vec(),
        ),
        ("an encoded surrogate", b"{\"s\":\"\xed\xa0\x80\"}".to_vec()),
        ("invalid UTF-8 in a key", b"{\"\xff\":1}".to_vec()),
        ("trailing garbage", b"{\"a\":1} x".to_vec()),
        ("trailing whitespace", b"{\"a\":1}\r\n".to_vec()),
        ("a byte-order mark", b"\xef\xbb\xbf{\"a\":1}".to_vec()),
        ("duplicate keys", b"{\"a\":1,\"a\":2}".to_vec()),
        ("a trailing comma", b"{\"a\":1,}".to_vec()),
        ("an empty object", b"{}".to_vec()),
    ]
}

async fn hostile_json_gets_the_verdict_of_the_workers_parser(backend: Backend) {
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str();
    let mut accepted = Vec::new();
    for (case, body) in hostile_json() {
        let worker_accepts = plugins::jira::event::parse(&body).is_ok();
        let response = post_webhook(&app, url, &body, secret, None).await;
        let status = response.status().as_u16();
        let out: serde_json::Value = response.json().await.expect("json");
        if worker_accepts {
            assert_eq!(status, 200, "{case}: the worker can parse it: {out}");
            accepted.push((case, id_of_event(&out)));
        } else {
            assert_eq!(status, 400, "{case}: the worker cannot parse it: {out}");
            assert_eq!(out["code"], "bad_request", "{case}");
        }
    }
    assert!(accepted.len() >= 5, "both verdicts are exercised");
    for (case, event_id) in accepted {
        // The status alone: the stored envelope of the deepest body nests one level deeper
        // than serde_json reads back (see BENCHMARKS.md, findings).
        let status = wait_until(Duration::from_secs(20), "the event is terminal", || async {
            let status = status_of(&app, event_id).await;
            (status != "received" && status != "processing").then_some(status)
        })
        .await;
        assert_eq!(status, "processed", "{case}");
    }
    app.stop().await;
    env.cleanup().await;
}

async fn status_of(app: &TestApp, event_id: Uuid) -> String {
    use sea_orm::ColumnTrait;
    use sea_orm::{QueryFilter, QuerySelect};
    entity::webhook_event::Entity::find()
        .select_only()
        .column(entity::webhook_event::Column::Status)
        .filter(entity::webhook_event::Column::Id.eq(event_id))
        .into_tuple::<String>()
        .one(&app.db)
        .await
        .expect("query")
        .expect("the event exists")
}

fn id_of_event(out: &serde_json::Value) -> Uuid {
    out["eventId"]
        .as_str()
        .expect("eventId")
        .parse()
        .expect("uuid")
}
