//! Batches at every stage (DESIGN §1, §4): `ProcessEvents` and `Deliver` claim, process and
//! commit many rows at once, and behave exactly as they do for one.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use api::Role;
use entity::subscription;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Statement};
use tests::fake_atlassian::{self, FakeAtlassian};
use tests::fake_subscriber::{FakeSubscriber, Reply};
use tests::{Backend, TestApp, TestEnv, fixtures, wait_until};
use uuid::Uuid;
use worker::jobs::{ProcessEvents, process_events};

use crate::helpers::*;
use crate::oauth::connect_sites;
use crate::on_both_backends;

on_both_backends!(
    batches_of_one_and_of_many_write_the_same_rows_and_bytes,
    a_bad_member_does_not_spoil_its_batch,
    a_slow_jira_read_and_a_hanging_subscriber_hold_back_nobody,
    a_worker_killed_mid_batch_loses_nothing_and_does_nothing_twice,
    a_subscription_created_just_before_an_event_is_matched,
    the_sweeper_adds_no_job_for_a_row_whose_job_is_still_queued,
    a_poison_event_ends_failed_after_the_configured_attempts,
    jobs_running_at_once_are_merged_into_one_batch,
    the_waiting_rows_are_found_and_an_event_claim_adds_no_index_entry,
);

/// The fixtures a batch is made of: several event families.
const FIXTURES: &[&str] = &[
    "webhook_issue_created.json",
    "webhook_issue_updated_status.json",
    "webhook_issue_updated_assignee.json",
    "webhook_comment_created.json",
    "webhook_worklog_created.json",
    "webhook_issue_deleted.json",
];

async fn company_id_of(app: &TestApp, connection: Uuid) -> String {
    entity::plugin_connection::Entity::find_by_id(connection)
        .one(&app.db)
        .await
        .expect("query")
        .expect("connection")
        .company_id
        .to_string()
}

/// Subscriptions with different filters for `company`: issue events, comments, and everything
/// of project ORB.
async fn three_subscriptions(app: &TestApp, company: &str) -> Vec<Uuid> {
    vec![
        insert_subscription(app, company, &["jira:issue_*"], None, None).await,
        insert_subscription(app, company, &["comment_*"], None, None).await,
        insert_subscription(
            app,
            company,
            &["*"],
            None,
            Some(serde_json::json!({"projectKeys": ["ORB"]})),
        )
        .await,
    ]
}

/// The delivered bytes of an event with its own ids and timestamp masked, and the
/// subscriptions it was delivered to.
async fn delivered_shape(app: &TestApp, event_id: Uuid) -> (String, String, BTreeSet<Uuid>) {
    let stored = event(app, event_id).await;
    let body = String::from_utf8(worker::envelope::body_of(&stored)).expect("utf-8");
    let timestamp = stored
        .received_at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let masked = body
        .replace(&event_id.to_string(), "<event>")
        .replace(&stored.connection_id.to_string(), "<connection>")
        .replace(&timestamp, "<timestamp>");
    let subscriptions = deliveries_of(app, event_id)
        .await
        .into_iter()
        .map(|delivery| delivery.subscription_id)
        .collect();
    (stored.status, masked, subscriptions)
}

async fn batches_of_one_and_of_many_write_the_same_rows_and_bytes(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (api_key, first) = company_with_connection(&app).await;
    let second = app
        .create_connection(&api_key, "second.atlassian.net")
        .await;
    let (first, second) = (connection_id(&first), connection_id(&second));
    let company = company_id_of(&app, first).await;
    three_subscriptions(&app, &company).await;
    let ctx = app.job_context.clone();

    let mut singles = Vec::new();
    let mut batch = Vec::new();
    for name in FIXTURES {
        let body = fixtures::bytes(name);
        singles.push(record_event(&app, first, &body, &format!("one:{name}")).await);
        batch.push(record_event(&app, second, &body, &format!("many:{name}")).await);
    }
    for &id in &singles {
        let outcome = process_events::run(&ctx, &[id])
            .await
            .expect("batch of one");
        assert_eq!(outcome.processed, 1, "{outcome:?}");
    }
    let outcome = process_events::run(&ctx, &batch)
        .await
        .expect("batch of many");
    assert_eq!(outcome.processed, FIXTURES.len(), "{outcome:?}");
    assert!(
        outcome.deliveries > 0,
        "the subscriptions match some events"
    );

    for (name, (&one, &many)) in FIXTURES.iter().zip(singles.iter().zip(&batch)) {
        let (one, many) = (
            delivered_shape(&app, one).await,
            delivered_shape(&app, many).await,
        );
        assert_eq!(one.0, "processed", "{name}");
        // The subscriptions are the company's, so both connections' events match the same ones.
        assert_eq!(
            one, many,
            "{name}: a batch of one and a batch of many differ"
        );
    }
    // The raw body is delivered byte for byte, spliced into the envelope.
    let stored = event(&app, batch[0]).await;
    let body = worker::envelope::body_of(&stored);
    let raw = fixtures::bytes(FIXTURES[0]);
    assert!(
        body.windows(raw.len())
            .any(|window| window == raw.as_slice()),
        "the raw body is in the envelope as received"
    );
    assert!(
        stored.data.is_none(),
        "the parsed event is not stored a second time as JSON"
    );
    app.stop().await;
    env.cleanup().await;
}

/// Jobs a worker runs at once are processed as one batch (`worker::event_batches`), each job
/// answered with the merged batch's outcome, and every event processed exactly once; a batch
/// never exceeds the batch size.
async fn jobs_running_at_once_are_merged_into_one_batch(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let connection = connection_id(&connection);
    let company = company_id_of(&app, connection).await;
    three_subscriptions(&app, &company).await;
    let ctx = app.job_context.clone();
    let mut jobs = Vec::new();
    for round in 0..3 {
        let mut ids = Vec::new();
        for name in FIXTURES {
            let body = fixtures::bytes(name);
            ids.push(record_event(&app, connection, &body, &format!("{round}:{name}")).await);
        }
        jobs.push(ids);
    }
    let total: usize = jobs.iter().map(Vec::len).sum();
    // All three jobs join before the first one's gathering pause ends.
    let outcomes = futures::future::join_all(
        jobs.iter()
            .map(|ids| ctx.event_batches.process(&ctx, ids.clone())),
    )
    .await;
    for outcome in &outcomes {
        let outcome = outcome.as_ref().expect("merged batch");
        assert_eq!(
            outcome.processed, total,
            "one batch of all three jobs: {outcome:?}"
        );
    }
    for id in jobs.iter().flatten() {
        let stored = event(&app, *id).await;
        assert_eq!(stored.status, "processed");
        assert_eq!(stored.attempts, 1, "processed once");
    }

    // Past the batch size, the jobs left over make a batch of their own.
    let mut small = (*ctx.settings).clone();
    small.event_batch_size = FIXTURES.len();
    let small_ctx = worker::JobContext {
        settings: std::sync::Arc::new(small),
        event_batches: std::sync::Arc::default(),
        ..ctx.clone()
    };
    let mut jobs = Vec::new();
    for round in 0..2 {
        let mut ids = Vec::new();
        for name in FIXTURES {
            let body = fixtures::bytes(name);
            ids.push(record_event(&app, connection, &body, &format!("small{round}:{name}")).await);
        }
        jobs.push(ids);
    }
    let outcomes = futures::future::join_all(
        jobs.iter()
            .map(|ids| small_ctx.event_batches.process(&small_ctx, ids.clone())),
    )
    .await;
    for outcome in &outcomes {
        let outcome = outcome.as_ref().expect("batch");
        assert_eq!(
            outcome.processed,
            FIXTURES.len(),
            "batches of one job each: {outcome:?}"
        );
    }
    for id in jobs.iter().flatten() {
        assert_eq!(event(&app, *id).await.status, "processed");
    }
    app.stop().await;
    env.cleanup().await;
}

async fn a_bad_member_does_not_spoil_its_batch(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (api_key, good) = company_with_connection(&app).await;
    let doomed = app
        .create_connection(&api_key, "doomed.atlassian.net")
        .await;
    let (good, doomed) = (connection_id(&good), connection_id(&doomed));
    let company = company_id_of(&app, good).await;
    let kept = insert_subscription(&app, &company, &["*"], None, None).await;
    let disabled = insert_subscription(&app, &company, &["*"], None, None).await;

    let mut fine = Vec::new();
    for (i, name) in ["webhook_issue_created.json", "webhook_comment_created.json"]
        .iter()
        .enumerate()
    {
        let body = fixtures::bytes(name);
        fine.push(record_event(&app, good, &body, &format!("fine:{i}")).await);
    }
    let malformed = record_event(&app, good, b"{\"webhookEvent\": truncated", "malformed").await;
    let orphan = record_event(
        &app,
        doomed,
        &fixtures::bytes("webhook_issue_updated_status.json"),
        "orphan",
    )
    .await;
    // Meanwhile: a connection is deleted and a subscription disabled.
    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/connections/{doomed}")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert!(deleted.status().is_success(), "{}", deleted.status());
    subscription::Entity::update_many()
        .col_expr(subscription::Column::Enabled, Expr::value(false))
        .filter(subscription::Column::Id.eq(disabled))
        .exec(&app.db)
        .await
        .expect("disable");

    let mut ids = fine.clone();
    ids.extend([malformed, orphan]);
    let outcome = process_events::run(&app.job_context, &ids)
        .await
        .expect("batch");
    assert_eq!(outcome.processed, 2, "{outcome:?}");
    assert_eq!(outcome.failed, 1, "{outcome:?}");
    for id in fine {
        let stored = event(&app, id).await;
        assert_eq!(stored.status, "processed");
        let to: Vec<Uuid> = deliveries_of(&app, id)
            .await
            .iter()
            .map(|d| d.subscription_id)
            .collect();
        assert_eq!(
            to,
            vec![kept],
            "only the enabled subscription gets a delivery"
        );
    }
    let failed = event(&app, malformed).await;
    assert_eq!(failed.status, "failed");
    assert!(failed.error.expect("error").contains("not valid JSON"));
    // The deleted connection took its event with it; nothing was delivered for it.
    let gone = webhook_event_exists(&app, orphan).await;
    assert!(!gone || deliveries_of(&app, orphan).await.is_empty());
    app.stop().await;
    env.cleanup().await;
}

async fn webhook_event_exists(app: &TestApp, id: Uuid) -> bool {
    entity::webhook_event::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .expect("query")
        .is_some()
}

/// Starts an app with workers, talking to a fake Atlassian, with short budgets; returns an
/// OAuth connection to the fake's site and its company.
async fn start_with_workers(
    backend: Backend,
    configure: impl FnOnce(&mut api::config::Settings) + Send + 'static,
) -> Option<(FakeAtlassian, TestEnv, TestApp, Uuid, String)> {
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
            configure(settings);
        })
        .await;
    let (_, api_key) = app.create_company("Northwind").await;
    let mut connection = None;
    for connected in connect_sites(&app, &fake, &api_key).await {
        let id = connection_id(&connected);
        let model = entity::plugin_connection::Entity::find_by_id(id)
            .one(&app.db)
            .await
            .expect("query")
            .expect("connection");
        if model.metadata["cloudId"] == fake_atlassian::CLOUD_ID {
            connection = Some(id);
        }
    }
    let connection = connection.expect("a connection to the fake's site");
    let company = company_id_of(&app, connection).await;
    Some((fake, env, app, connection, company))
}

/// A Jira issue event about `key`.
fn issue_event(key: &str) -> Vec<u8> {
    let mut event = fixtures::json("webhook_issue_updated_status.json");
    event["issue"]["key"] = serde_json::json!(key);
    event["timestamp"] = serde_json::json!(chrono::Utc::now().timestamp_millis());
    event.to_string().into_bytes()
}

async fn point_subscription_at(app: &TestApp, id: Uuid, url: &str) {
    subscription::Entity::update_many()
        .col_expr(subscription::Column::TargetUrl, Expr::value(url.to_owned()))
        .filter(subscription::Column::Id.eq(id))
        .exec(&app.db)
        .await
        .expect("point the subscription");
}

async fn a_slow_jira_read_and_a_hanging_subscriber_hold_back_nobody(backend: Backend) {
    let Some((fake, env, app, connection, company)) = start_with_workers(backend, |settings| {
        settings.enrichment_budget = Duration::from_secs(4);
        settings.delivery_timeout = Duration::from_secs(4);
    })
    .await
    else {
        return;
    };
    fake.set_issue_delay_for("SLOW-1", Duration::from_secs(30));
    let healthy = FakeSubscriber::start(Reply::Status(204)).await;
    let hanging = FakeSubscriber::start(Reply::Hang(Duration::from_secs(30))).await;
    let to_healthy = insert_subscription(&app, &company, &["*"], None, None).await;
    let to_hanging = insert_subscription(&app, &company, &["*"], None, None).await;
    point_subscription_at(&app, to_healthy, &healthy.url).await;
    point_subscription_at(&app, to_hanging, &hanging.url).await;

    let mut fast = Vec::new();
    for i in 0..5 {
        fast.push(
            record_event(
                &app,
                connection,
                &issue_event("ORB-417"),
                &format!("fast:{i}"),
            )
            .await,
        );
    }
    let slow = record_event(&app, connection, &issue_event("SLOW-1"), "slow").await;
    let mut ids = fast.clone();
    ids.push(slow);
    app.job_context
        .queue
        .push(ProcessEvents { event_ids: ids })
        .await
        .expect("push one batch");

    // Every fast event reaches the healthy subscriber while the slow one still waits for Jira
    // and the hanging subscriber still holds its requests.
    wait_until(
        Duration::from_secs(20),
        "the fast events are delivered to the healthy subscriber",
        || async { (healthy.acknowledged().len() >= fast.len()).then_some(()) },
    )
    .await;
    let slow_now = event(&app, slow).await;
    assert_eq!(
        slow_now.status, "processing",
        "the slow event is still being enriched: the others did not wait for it"
    );
    for &id in &fast {
        let deliveries = deliveries_of(&app, id).await;
        let hanging_delivery = deliveries
            .iter()
            .find(|d| d.subscription_id == to_hanging)
            .expect("a delivery to the hanging subscriber");
        assert_ne!(
            hanging_delivery.status, "succeeded",
            "the hanging subscriber has not answered"
        );
    }
    let received: BTreeSet<String> = healthy
        .acknowledged()
        .iter()
        .map(|request| {
            request.json()["data"]["eventId"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    for id in &fast {
        assert!(received.contains(&id.to_string()), "{id} delivered");
        let stored = event(&app, *id).await;
        let data = worker::envelope::data_of(&stored).unwrap_or_else(|| {
            panic!(
                "no data: status {} payload {:?}",
                stored.status,
                stored.payload.as_deref().map(|p| &p[..p.len().min(300)])
            )
        });
        assert_eq!(data["enrichment"]["status"], "ok");
    }
    // The slow event goes out too, once its budget ran out.
    let slow_done = wait_processed(&app, slow).await;
    let data = worker::envelope::data_of(&slow_done).expect("data");
    assert_eq!(data["enrichment"]["status"], "failed");
    wait_until(
        Duration::from_secs(20),
        "the slow event is delivered to the healthy subscriber",
        || async {
            healthy
                .acknowledged()
                .iter()
                .any(|r| r.json()["data"]["eventId"] == slow.to_string())
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        fake.issue_requests_for("ORB-417"),
        1,
        "one read per issue of the batch (refreshes {}, requests {})",
        fake.refreshes(),
        fake.issue_requests()
    );
    app.stop().await;
    env.cleanup().await;
}

async fn a_worker_killed_mid_batch_loses_nothing_and_does_nothing_twice(backend: Backend) {
    let Some((fake, env, app, connection, company)) = start_with_workers(backend, |settings| {
        // A claim's lease is the lease plus the enrichment budget: 3 s here.
        settings.lease = Duration::from_secs(1);
        settings.enrichment_budget = Duration::from_secs(2);
    })
    .await
    else {
        return;
    };
    let subscriber = FakeSubscriber::start(Reply::Status(204)).await;
    let to = insert_subscription(&app, &company, &["*"], None, None).await;
    point_subscription_at(&app, to, &subscriber.url).await;
    // Jira answers slowly, so the batch is mid-way when its worker dies.
    fake.set_issue_delay(Duration::from_millis(800));
    let mut ids = Vec::new();
    for i in 0..8 {
        let key = format!("ORB-{}", 400 + i);
        ids.push(record_event(&app, connection, &issue_event(&key), &format!("k:{i}")).await);
    }
    // No job was pushed for these rows: a long grace keeps the sweeper from enqueueing them
    // before the batch below claims them.
    entity::webhook_event::Entity::update_many()
        .col_expr(
            entity::webhook_event::Column::LockedUntil,
            Expr::value(chrono::Utc::now() + chrono::Duration::minutes(10)),
        )
        .filter(entity::webhook_event::Column::Id.is_in(ids.clone()))
        .exec(&app.db)
        .await
        .expect("extend the grace");
    let ctx = app.job_context.clone();
    let batch = ids.clone();
    let dying = tokio::spawn(async move { process_events::run(&ctx, &batch).await });
    wait_until(Duration::from_secs(10), "the batch is claimed", || async {
        let claimed = event(&app, ids[0]).await.status == "processing";
        claimed.then_some(())
    })
    .await;
    // Killed: nothing after this point of the run happens.
    dying.abort();
    fake.set_issue_delay(Duration::ZERO);
    // The workers' sweeper hands the batch out again once the lease expires.
    for &id in &ids {
        let processed = wait_until(
            Duration::from_secs(60),
            "the event is processed",
            || async {
                let stored = event(&app, id).await;
                (stored.status == "processed").then_some(stored)
            },
        )
        .await;
        assert_eq!(
            processed.attempts, 2,
            "claimed by the dead run, then by the next one"
        );
    }
    wait_until(
        Duration::from_secs(20),
        "every event is delivered",
        || async { (subscriber.acknowledged().len() >= ids.len()).then_some(()) },
    )
    .await;
    for &id in &ids {
        assert_eq!(
            deliveries_of(&app, id).await.len(),
            1,
            "one delivery per event"
        );
    }
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for request in subscriber.acknowledged() {
        *per_event
            .entry(
                request.json()["data"]["eventId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_default() += 1;
    }
    assert_eq!(per_event.len(), ids.len());
    assert!(per_event.values().all(|&count| count == 1), "{per_event:?}");
    app.stop().await;
    env.cleanup().await;
}

async fn a_subscription_created_just_before_an_event_is_matched(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let connection = connection_id(&connection);
    let company = company_id_of(&app, connection).await;
    let first = insert_subscription(&app, &company, &["*"], None, None).await;
    let ctx = app.job_context.clone();
    // The company's subscriptions are cached by this batch.
    let warm = record_event(&app, connection, &issue_event("ORB-1"), "warm").await;
    process_events::run(&ctx, &[warm]).await.expect("batch");
    assert_eq!(deliveries_of(&app, warm).await.len(), 1);

    let second = insert_subscription(&app, &company, &["*"], None, None).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let next = record_event(&app, connection, &issue_event("ORB-2"), "next").await;
    process_events::run(&ctx, &[next]).await.expect("batch");
    let to: BTreeSet<Uuid> = deliveries_of(&app, next)
        .await
        .iter()
        .map(|d| d.subscription_id)
        .collect();
    assert_eq!(to, BTreeSet::from([first, second]));
    app.stop().await;
    env.cleanup().await;
}

async fn the_sweeper_adds_no_job_for_a_row_whose_job_is_still_queued(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let url = connection["webhookUrl"].as_str().expect("url");
    let secret = connection["webhookSecret"].as_str();
    // Ingest pushes the job; no worker runs in this process, so it stays queued.
    let body = fixtures::bytes("webhook_issue_created.json");
    assert_eq!(
        post_webhook(&app, url, &body, secret, None).await.status(),
        200
    );
    wait_until(Duration::from_secs(10), "the job is queued", || async {
        (queued_process_event_jobs(&env, &app).await == 1).then_some(())
    })
    .await;
    // Past the row's grace, it is due, but its job is still waiting: nothing is added.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ctx = app.job_context.clone();
    assert_eq!(
        worker::sweeper::sweep_once(&ctx, false)
            .await
            .expect("sweep"),
        0
    );
    assert_eq!(queued_process_event_jobs(&env, &app).await, 1);
    // Once the job is really lost, the row is enqueued again, once.
    lose_queued_jobs(&env, &app).await;
    assert_eq!(
        worker::sweeper::sweep_once(&ctx, false)
            .await
            .expect("sweep"),
        1
    );
    assert_eq!(
        worker::sweeper::sweep_once(&ctx, false)
            .await
            .expect("sweep"),
        0
    );
    assert_eq!(queued_process_event_jobs(&env, &app).await, 1);
    app.stop().await;
    env.cleanup().await;
}

/// Makes the database refuse to mark processed any event whose delivery key starts with
/// `poison` (a real statement failure, whatever the batch).
async fn poison_trigger(app: &TestApp, backend: Backend) {
    let statements: &[&str] = match backend {
        Backend::Embedded => &["CREATE TRIGGER poison BEFORE UPDATE ON webhook_event \
             WHEN NEW.status = 'processed' AND NEW.delivery_key LIKE 'poison%' \
             BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"],
        Backend::PostgresRedis => &[
            "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN \
               IF NEW.status = 'processed' AND NEW.delivery_key LIKE 'poison%' THEN \
                 RAISE EXCEPTION 'poisoned row'; \
               END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER poison BEFORE UPDATE ON webhook_event \
             FOR EACH ROW EXECUTE FUNCTION poison()",
        ],
    };
    for statement in statements {
        app.db
            .execute_raw(Statement::from_string(
                app.db.get_database_backend(),
                statement.to_string(),
            ))
            .await
            .expect("create the trigger");
    }
}

async fn a_poison_event_ends_failed_after_the_configured_attempts(backend: Backend) {
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    let app = env
        .spawn_with(Role::Serve, |settings| settings.poison_attempts = 2)
        .await;
    poison_trigger(&app, backend).await;
    let (api_key, connection) = company_with_connection(&app).await;
    let connection = connection_id(&connection);
    let company = company_id_of(&app, connection).await;
    insert_subscription(&app, &company, &["*"], None, None).await;
    let ctx = app.job_context.clone();
    let body = fixtures::bytes("webhook_issue_created.json");
    let poison = record_event(&app, connection, &body, "poison:1").await;
    let healthy = record_event(&app, connection, &body, "healthy:1").await;

    // Attempt 1: the batch's commit is refused; the healthy event is written alone, the poison
    // event is given back with the error.
    let first = process_events::run(&ctx, &[poison, healthy])
        .await
        .expect("batch");
    assert_eq!((first.processed, first.released), (1, 1), "{first:?}");
    assert_eq!(event(&app, healthy).await.status, "processed");
    assert_eq!(deliveries_of(&app, healthy).await.len(), 1);
    let given_back = event(&app, poison).await;
    assert_eq!(given_back.status, "received");
    assert!(given_back.error.expect("error").contains("poisoned row"));
    // Attempt 2 fails the same way; the third claim gives up.
    let second = process_events::run(&ctx, &[poison]).await.expect("batch");
    assert_eq!(second.released, 1, "{second:?}");
    let third = process_events::run(&ctx, &[poison]).await.expect("batch");
    assert_eq!(third.failed, 1, "{third:?}");
    let failed = event(&app, poison).await;
    assert_eq!(failed.status, "failed");
    let error = failed.error.expect("error");
    assert!(error.contains("gave up after 2 attempts"), "{error}");
    assert!(error.contains("poisoned row"), "{error}");
    assert!(deliveries_of(&app, poison).await.is_empty());
    // Visible through the API, and replayable.
    let shown: serde_json::Value = app
        .client
        .get(app.url(&format!("/api/v1/events/{poison}")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(shown["status"], "failed");
    assert!(shown["error"].as_str().expect("error").contains("gave up"));
    let replayed = app
        .client
        .post(app.url(&format!("/api/v1/events/{poison}/replay")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert!(replayed.status().is_success(), "{}", replayed.status());
    let replay: serde_json::Value = replayed.json().await.expect("json");
    let replay_id: Uuid = replay["eventId"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let outcome = process_events::run(&ctx, &[replay_id])
        .await
        .expect("batch");
    assert_eq!(outcome.processed, 1, "the replay is processed: {outcome:?}");
    app.stop().await;
    env.cleanup().await;
}

/// The sweeper finds exactly the waiting rows (not a processed one), and on Postgres the claim
/// of an event is a HOT update: no index of `webhook_event` names a column the claim or the
/// sweeper's release writes, so the claimed version adds no index entry.
async fn the_waiting_rows_are_found_and_an_event_claim_adds_no_index_entry(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, connection) = company_with_connection(&app).await;
    let connection = connection_id(&connection);
    let processed = record_event(&app, connection, &issue_event("ORB-1"), "processed").await;
    let waiting = record_event(&app, connection, &issue_event("ORB-2"), "waiting").await;
    let ctx = app.job_context.clone();
    process_events::run(&ctx, &[processed])
        .await
        .expect("batch");
    assert_eq!(event(&app, processed).await.status, "processed");
    // Ignoring the grace, a sweep enqueues every waiting row: the one still `received` only.
    assert_eq!(
        worker::sweeper::sweep_once(&ctx, true)
            .await
            .expect("sweep"),
        1
    );
    assert_eq!(event(&app, waiting).await.status, "received");

    if backend == Backend::PostgresRedis {
        let rows = app
            .db
            .query_all_raw(Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'webhook_event'",
            ))
            .await
            .expect("indexes");
        for row in rows {
            let definition: String = row.try_get("", "indexdef").expect("indexdef");
            for column in ["status", "locked_until", "attempts"] {
                assert!(
                    !definition.contains(column),
                    "{definition} names {column}, which a claim writes"
                );
            }
        }
        // The claim of `processed` and the sweeper's release of `waiting` were HOT (the result
        // update is not: it sets `processed_at`). The statistics reach the view within seconds.
        wait_until(
            Duration::from_secs(30),
            "the claim is counted as HOT",
            || async {
                let row = app
                    .db
                    .query_one_raw(Statement::from_string(
                        sea_orm::DatabaseBackend::Postgres,
                        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
                     WHERE relname = 'webhook_event'",
                    ))
                    .await
                    .expect("statistics")?;
                let updates: i64 = row.try_get("", "n_tup_upd").expect("n_tup_upd");
                let hot: i64 = row.try_get("", "n_tup_hot_upd").expect("n_tup_hot_upd");
                (updates >= 3 && hot >= 2).then_some(())
            },
        )
        .await;
    }
    app.stop().await;
    env.cleanup().await;
}
