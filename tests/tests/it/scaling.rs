//! Horizontal scaling: several `hookline worker` processes on one Postgres and one Redis share
//! the work without delivering anything twice (DESIGN §8).

use std::time::Duration;

use api::Role;
use tests::fake_subscriber::{FakeSubscriber, Reply};
use tests::load::{self, Load, WebhookTarget};
use tests::process::{self, HooklineProcess};
use tests::{Backend, TestEnv, fixtures, wait_until};

use crate::helpers::*;

/// How many events the workers share.
const EVENTS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_share_a_backlog_and_deliver_each_event_once() {
    let Some(env) = TestEnv::new(Backend::PostgresRedis).await else {
        return;
    };
    env.migrate().await;
    tests::hookline_binary();
    // Small batches (the API chunks each commit's events into jobs of 2), so that the backlog is
    // many jobs to share: with the defaults one process takes a burst this size by itself.
    let app = env
        .spawn_with(Role::Serve, |settings| settings.event_batch_size = 2)
        .await;
    let (api_key, first) = company_with_connection(&app).await;
    let second = app
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

    let logs = env.dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("log directory");
    let mut vars = process::hookline_env(&env);
    // Few jobs at a time per process, so that no process takes the whole backlog.
    vars.push(("HOOKLINE_WORKER_CONCURRENCY".to_owned(), "2".to_owned()));
    let mut workers: Vec<HooklineProcess> = ["worker-a", "worker-b", "worker-c"]
        .into_iter()
        .map(|name| HooklineProcess::spawn(name, &["worker"], vars.clone(), &logs))
        .collect();
    for worker in &workers {
        wait_until(
            Duration::from_secs(60),
            "every worker process is running",
            || async {
                worker
                    .logs()
                    .contains("hookline workers running")
                    .then_some(())
            },
        )
        .await;
    }

    // A burst far above what one worker takes at a time: a backlog in the shared queue.
    let report = load::start(Load {
        rate_per_sec: 200.0,
        duration: Duration::from_secs_f64(EVENTS as f64 / 200.0),
        targets: vec![
            WebhookTarget::of_connection(&first),
            WebhookTarget::of_connection(&second),
        ],
        body: fixtures::bytes("webhook_issue_created.json"),
    })
    .finish()
    .await;
    assert!(
        report.accepted.len() >= EVENTS * 9 / 10 && report.other.is_empty(),
        "{}",
        report.summary()
    );

    let subscriber_refs: Vec<&FakeSubscriber> = subscribers.iter().collect();
    let tally = load::settle(
        &app.db,
        &report.accepted,
        &subscriber_refs,
        &subscriptions,
        Duration::from_secs(90),
    )
    .await;
    eprintln!("load: {}\ntally: {}", report.summary(), tally.summary());
    assert!(tally.nothing_lost_nothing_doubled(), "{}", tally.summary());

    // Each process did some of the work: its log shows events it processed.
    let processed: Vec<usize> = workers
        .iter()
        .map(|worker| worker.logs().matches("event processed").count())
        .collect();
    eprintln!("events processed per worker process: {processed:?}");
    assert_eq!(
        processed.iter().sum::<usize>(),
        report.accepted.len(),
        "each event was processed by exactly one worker"
    );
    // Workers are woken by the push and race for each job; the backlog is shared (which one
    // wins each race depends on the machine), never processed twice.
    assert!(
        processed.iter().filter(|count| **count > 0).count() >= 2,
        "the workers shared the work: {processed:?}"
    );
    for worker in &mut workers {
        assert!(worker.is_running(), "{}", worker.logs());
    }
    drop(workers);
    app.stop().await;
    env.cleanup().await;
}
