//! The soak run (long, not in CI): a steady load for `SOAK_DURATION` (default 30 minutes) at
//! `SOAK_RATE` webhooks a second (default 20) against the API and two `hookline worker`
//! processes on Postgres + Redis, with faults injected on a schedule, one every
//! `SOAK_FAULT_EVERY` (default 20 s), in turn: Redis restarted with every key lost, Postgres
//! gone for a few seconds, a worker killed with SIGKILL, the subscriber flapping, Jira
//! answering 429 to everything. Prints accepted / delivered / duplicated / lost counts and the
//! delivery latency percentiles.
//!
//! `scripts/soak.sh` runs it; by hand:
//! `SOAK_DURATION=3m cargo test -p tests --test it -- --ignored --nocapture soak`.

use std::time::{Duration, Instant};

use api::Role;
use entity::plugin_connection;
use sea_orm::EntityTrait;
use tests::fake_atlassian::{self, FakeAtlassian};
use tests::fake_subscriber::{FakeSubscriber, Reply};
use tests::load::{self, Load, WebhookTarget};
use tests::process::{self, HooklineProcess};
use tests::proxy::TcpProxy;
use tests::{Backend, TestEnv, fixtures};

use crate::helpers::*;

/// How long a Redis or Postgres outage lasts.
const OUTAGE: Duration = Duration::from_secs(3);
/// How long the subscriber flaps, or Jira rate-limits.
const EPISODE: Duration = Duration::from_secs(10);

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn duration_setting(name: &str, default: &str) -> Duration {
    let value = setting(name, default);
    api::config::parse_duration(&value)
        .unwrap_or_else(|error| panic!("{name}={value:?} is not a duration: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with scripts/soak.sh"]
async fn soak() {
    let duration = duration_setting("SOAK_DURATION", "30m");
    let fault_every = duration_setting("SOAK_FAULT_EVERY", "20s");
    let rate: f64 = setting("SOAK_RATE", "20")
        .parse()
        .expect("SOAK_RATE is a number");
    let Some(env) = TestEnv::new(Backend::PostgresRedis).await else {
        return;
    };
    env.migrate().await;
    tests::hookline_binary();
    let pg_proxy = TcpProxy::start("127.0.0.1:5432".parse().expect("address")).await;
    let redis_proxy = TcpProxy::start("127.0.0.1:6379".parse().expect("address")).await;
    let database_url = env
        .database_url
        .replace("127.0.0.1:5432", &pg_proxy.addr.to_string());
    let redis_url = format!("redis://{}", redis_proxy.addr);
    let fake = FakeAtlassian::start().await;

    let app = env
        .spawn_with(Role::Serve, |settings| {
            settings.database_url = database_url.clone();
            settings.redis_url = Some(redis_url.clone());
            settings.jira_client_id = Some(fake_atlassian::CLIENT_ID.to_owned());
            settings.jira_client_secret = Some(fake_atlassian::CLIENT_SECRET.to_owned().into());
            settings.atlassian_auth_url = fake.url.clone();
            settings.atlassian_api_url = fake.url.clone();
        })
        .await;
    let (_, api_key) = app.create_company("Northwind").await;
    let mut target = None;
    for connection in crate::oauth::connect_sites(&app, &fake, &api_key).await {
        let model = plugin_connection::Entity::find_by_id(connection_id(&connection))
            .one(&app.db)
            .await
            .expect("query")
            .expect("connection");
        if model.metadata["cloudId"] == fake_atlassian::CLOUD_ID {
            target = Some(WebhookTarget::of_connection(&connection));
        }
    }
    let target = target.expect("a connection to the fake's site");
    let plain = app
        .create_connection(&api_key, "northwind-ops.atlassian.net")
        .await;
    let subscribers = [
        FakeSubscriber::start(Reply::Status(200)).await,
        FakeSubscriber::start(Reply::Status(200)).await,
    ];
    let mut subscriptions = Vec::new();
    for subscriber in &subscribers {
        subscriptions.push(id_of(
            &create_subscription(&app, &api_key, &subscriber.url).await,
        ));
    }

    let mut vars = process::hookline_env(&env);
    vars.retain(|(name, _)| name != "DATABASE_URL" && name != "REDIS_URL");
    vars.extend([
        ("DATABASE_URL".to_owned(), database_url.clone()),
        ("REDIS_URL".to_owned(), redis_url.clone()),
        (
            "JIRA_CLIENT_ID".to_owned(),
            fake_atlassian::CLIENT_ID.to_owned(),
        ),
        (
            "JIRA_CLIENT_SECRET".to_owned(),
            fake_atlassian::CLIENT_SECRET.to_owned(),
        ),
        ("ATLASSIAN_AUTH_URL".to_owned(), fake.url.clone()),
        ("ATLASSIAN_API_URL".to_owned(), fake.url.clone()),
        ("HOOKLINE_ENRICHMENT_BUDGET".to_owned(), "2s".to_owned()),
        (
            "HOOKLINE_RETRY_SCHEDULE".to_owned(),
            "200ms,500ms,1s,2s,5s,10s,30s".to_owned(),
        ),
        ("HOOKLINE_DELIVERY_TIMEOUT".to_owned(), "1s".to_owned()),
    ]);
    let logs = env.dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("log directory");
    let mut workers = [
        HooklineProcess::spawn("worker-a", &["worker"], vars.clone(), &logs),
        HooklineProcess::spawn("worker-b", &["worker"], vars, &logs),
    ];

    eprintln!(
        "soak: {duration:?} at {rate}/s, a fault every {fault_every:?}; logs in {}",
        logs.display()
    );
    let running = load::start(Load {
        rate_per_sec: rate,
        duration,
        targets: vec![target, WebhookTarget::of_connection(&plain)],
        body: fixtures::bytes("webhook_issue_created.json"),
    });
    let started = Instant::now();
    let mut faults = 0usize;
    let redis_admin_url = env.redis_url.clone().expect("redis url");
    while started.elapsed() + fault_every < duration {
        tokio::time::sleep(fault_every).await;
        let at = started.elapsed().as_secs();
        match faults % 5 {
            0 => {
                eprintln!("soak {at}s: Redis restarted, every key lost");
                redis_proxy.cut();
                tests::services::delete_keys(&redis_admin_url, &env.queue_prefix).await;
                tokio::time::sleep(OUTAGE).await;
                tests::services::delete_keys(&redis_admin_url, &env.queue_prefix).await;
                redis_proxy.restore();
            }
            1 => {
                eprintln!("soak {at}s: Postgres gone for {OUTAGE:?}");
                pg_proxy.cut();
                tokio::time::sleep(OUTAGE).await;
                pg_proxy.restore();
            }
            2 => {
                let victim = &mut workers[(faults / 5) % 2];
                eprintln!("soak {at}s: a worker killed with SIGKILL");
                victim.kill();
                tokio::time::sleep(Duration::from_millis(500)).await;
                victim.respawn();
            }
            3 => {
                eprintln!("soak {at}s: the subscriber flaps for {EPISODE:?}");
                subscribers[0].set_flapping(
                    &[
                        Reply::Status(500),
                        Reply::Status(200),
                        Reply::Hang(Duration::from_secs(2)),
                        Reply::Status(503),
                    ],
                    3,
                );
                tokio::time::sleep(EPISODE).await;
                subscribers[0].stop_flapping();
            }
            _ => {
                eprintln!("soak {at}s: Jira answers 429 for {EPISODE:?}");
                fake.set_rate_limited(Some(1));
                tokio::time::sleep(EPISODE).await;
                fake.set_rate_limited(None);
            }
        }
        faults += 1;
    }
    let report = running.finish().await;
    let subscriber_refs: Vec<&FakeSubscriber> = subscribers.iter().collect();
    let tally = load::settle(
        &app.db,
        &report.accepted,
        &subscriber_refs,
        &subscriptions,
        Duration::from_secs(180),
    )
    .await;
    let restarts: usize = workers.iter().map(HooklineProcess::starts).sum::<usize>() - 2;
    eprintln!(
        "\nSOAK SUMMARY ({duration:?} at {rate}/s, {faults} faults, {restarts} worker restarts)\n  \
         sent {} | accepted {} | 503 {} | other {} | transport errors {}\n  \
         delivered {} | lost {} | duplicated (redelivered) {} | double-processed {} | \
         wrong delivery rows {}\n  \
         latency p50 {:?} | p90 {:?} | p99 {:?} | max {:?}\n",
        report.sent,
        report.accepted.len(),
        report.unavailable.len(),
        report.other.len(),
        report.transport_errors.len(),
        tally.delivered,
        tally.lost,
        tally.redelivered,
        tally.double_processed,
        tally.wrong_delivery_rows,
        tally.latency_quantile(0.5),
        tally.latency_quantile(0.9),
        tally.latency_quantile(0.99),
        tally.latency_quantile(1.0),
    );
    assert!(report.other.is_empty(), "{:?}", report.other.first());
    assert!(tally.nothing_lost_nothing_doubled(), "{}", tally.summary());
    drop(workers);
    app.stop().await;
    env.cleanup().await;
}
