//! TokenManager: one refresh per grant for many concurrent readers of all its sites in several
//! processes, forced refresh after a 401, retries that never present a rotated refresh token
//! outside the reuse leeway, the refresh lease, the token keeper (DESIGN §4).

use std::sync::Arc;
use std::time::Duration;

use entity::cipher::Cipher;
use entity::{oauth_grant, plugin_connection};
use plugins::jira::oauth::{JiraOAuth, OAuthConfig};
use plugins::jira::rest::JiraClient;
use plugins::jira::token_manager::{RefreshPolicy, TokenError, TokenManager};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tests::fake_atlassian::{self, FakeAtlassian, FaultAfterRotating};
use tests::{Backend, TEST_ENCRYPTION_KEY, TestEnv};
use uuid::Uuid;

use crate::oauth::{connect_sites, start_with_fake};
use crate::on_both_backends;

on_both_backends!(
    one_consent_with_three_sites_read_from_three_processes_refreshes_once_and_stays_active,
    a_401_with_a_token_believed_valid_forces_one_refresh,
    transient_token_endpoint_failures_are_retried,
    a_token_endpoint_that_rotates_then_fails_to_answer_does_not_revoke_the_grant,
    an_unreadable_200_from_the_token_endpoint_is_retried_within_the_leeway,
    a_refresh_token_of_unknown_outcome_is_not_sent_again_after_the_leeway,
    an_unreachable_token_endpoint_leaves_the_refresh_token_unused,
    a_lease_held_by_another_process_is_waited_for_and_taken_over_once_expired,
    a_rotated_pair_the_database_did_not_take_is_kept_and_saved_later,
    the_token_keeper_refreshes_idle_grants_once,
);

/// The fake Atlassian's OAuth app config.
fn oauth_config(fake: &FakeAtlassian, auth_url: &str) -> OAuthConfig {
    OAuthConfig {
        client_id: fake_atlassian::CLIENT_ID.to_owned(),
        client_secret: fake_atlassian::CLIENT_SECRET.to_owned(),
        auth_url: auth_url.to_owned(),
        api_url: fake.url.clone(),
        redirect_url: "http://127.0.0.1/oauth/jira/callback".to_owned(),
        scopes: plugins::jira::oauth::DEFAULT_SCOPES.to_owned(),
    }
}

/// A separate "process": its own database pool, its own TokenManager and Jira client.
async fn process(env: &TestEnv, fake: &FakeAtlassian) -> JiraClient {
    process_with(env, fake, &fake.url, RefreshPolicy::default()).await
}

async fn process_with(
    env: &TestEnv,
    fake: &FakeAtlassian,
    auth_url: &str,
    policy: RefreshPolicy,
) -> JiraClient {
    process_on(&env.settings().database_url, env, fake, auth_url, policy).await
}

/// A "process" whose database is at `database_url` (e.g. behind a proxy a test cuts).
async fn process_on(
    database_url: &str,
    env: &TestEnv,
    fake: &FakeAtlassian,
    auth_url: &str,
    policy: RefreshPolicy,
) -> JiraClient {
    let mut settings = env.settings();
    settings.database_url = database_url.to_owned();
    let db = api::startup::connect_database(&settings)
        .await
        .expect("database");
    let http = plugins::jira::oauth::http_client().expect("client");
    let oauth = JiraOAuth::new(oauth_config(fake, auth_url), http.clone()).expect("oauth");
    let tokens = TokenManager::with_policy(
        db,
        Cipher::new(&TEST_ENCRYPTION_KEY, &[]),
        Some(oauth),
        policy,
    );
    JiraClient::new(http, &fake.url, tokens)
}

/// The grant of connection `id`.
pub async fn grant_of(db: &sea_orm::DatabaseConnection, id: Uuid) -> oauth_grant::Model {
    let connection = plugin_connection::Entity::find_by_id(id)
        .one(db)
        .await
        .expect("query")
        .expect("connection");
    oauth_grant::Entity::find_by_id(connection.grant_id.expect("a grant"))
        .one(db)
        .await
        .expect("query")
        .expect("grant")
}

/// Marks the stored access token of every grant as expired, as time passing would.
pub async fn expire_in_database(db: &sea_orm::DatabaseConnection) {
    oauth_grant::Entity::update_many()
        .col_expr(
            oauth_grant::Column::ExpiresAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .exec(db)
        .await
        .expect("expire");
}

async fn connected(backend: Backend) -> Option<(FakeAtlassian, TestEnv, tests::TestApp, Uuid)> {
    let (fake, env, app) = start_with_fake(backend).await?;
    let (_, api_key) = app.create_company("Northwind").await;
    let connections = connect_sites(&app, &fake, &api_key).await;
    let id = crate::helpers::connection_id(&connections[0]);
    Some((fake, env, app, id))
}

async fn one_consent_with_three_sites_read_from_three_processes_refreshes_once_and_stays_active(
    backend: Backend,
) {
    let Some((fake, env, app)) = start_with_fake(backend).await else {
        return;
    };
    fake.set_consent_sites(vec![
        fake_atlassian::site("alpha"),
        fake_atlassian::site("beta"),
        fake_atlassian::site("gamma"),
    ]);
    // Any second use of a rotated refresh token revokes the grant at once.
    fake.set_reuse_leeway(Duration::ZERO);
    let (_, api_key) = app.create_company("Northwind").await;
    let connections = connect_sites(&app, &fake, &api_key).await;
    assert_eq!(connections.len(), 3);
    let sites: Vec<(Uuid, String)> = {
        let mut sites = Vec::new();
        for connection in &connections {
            let id = crate::helpers::connection_id(connection);
            let model = plugin_connection::Entity::find_by_id(id)
                .one(&app.db)
                .await
                .expect("query")
                .expect("connection");
            let cloud_id = model.metadata["cloudId"]
                .as_str()
                .expect("cloudId")
                .to_owned();
            sites.push((id, cloud_id));
        }
        sites
    };
    let processes = vec![
        process(&env, &fake).await,
        process(&env, &fake).await,
        process(&env, &fake).await,
    ];

    // Each site in turn, each through another process.
    fake.expire_access_tokens();
    expire_in_database(&app.db).await;
    for (client, (id, cloud_id)) in processes.iter().zip(&sites) {
        let issue = client
            .get_issue(*id, cloud_id, "ORB-417", Some("summary"))
            .await
            .expect("read through the site");
        assert_eq!(issue["key"], "ORB-417");
    }
    assert_eq!(
        fake.refreshes(),
        1,
        "one refresh serves every site of the grant"
    );

    // All at once: 3 processes × 3 sites × 3 readers (few enough that the shared Postgres
    // server is not short of connections for other tests).
    fake.expire_access_tokens();
    expire_in_database(&app.db).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(27));
    let mut reads = tokio::task::JoinSet::new();
    for client in &processes {
        for (id, cloud_id) in &sites {
            for _ in 0..3 {
                let (client, barrier, id, cloud_id) =
                    (client.clone(), barrier.clone(), *id, cloud_id.clone());
                reads.spawn(async move {
                    barrier.wait().await;
                    client
                        .get_issue(id, &cloud_id, "ORB-417", Some("summary"))
                        .await
                });
            }
        }
    }
    let mut ok = 0;
    while let Some(read) = reads.join_next().await {
        match read.expect("task") {
            Ok(issue) => {
                assert_eq!(issue["key"], "ORB-417");
                ok += 1;
            }
            Err(error) => panic!("a read failed: {error}"),
        }
    }
    assert_eq!(ok, 27, "every read is a 200");
    assert_eq!(
        fake.refreshes(),
        2,
        "exactly one refresh for 27 readers in 3 processes"
    );
    assert_eq!(
        fake.rotated_tokens_presented(),
        0,
        "no rotated token presented again"
    );
    assert!(fake.all_grants_valid());
    let grant = grant_of(&app.db, sites[0].0).await;
    assert_eq!(grant.token_version, 3);
    assert_eq!(grant.status, "active");
    assert_eq!(grant.refresh_lease_id, None, "the lease is given back");
    for (id, _) in &sites {
        let connection = plugin_connection::Entity::find_by_id(*id)
            .one(&app.db)
            .await
            .expect("query")
            .expect("connection");
        assert_eq!(connection.status, "active");
        assert_eq!(connection.grant_id, Some(grant.id));
    }

    app.stop().await;
    env.cleanup().await;
}

async fn a_401_with_a_token_believed_valid_forces_one_refresh(backend: Backend) {
    let Some((fake, env, app, id)) = connected(backend).await else {
        return;
    };
    let client = process(&env, &fake).await;
    // Jira no longer takes the token, although the database thinks it valid for an hour.
    fake.expire_access_tokens();
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = client.clone();
        reads.spawn(async move {
            client
                .get_issue(id, fake_atlassian::CLOUD_ID, "ORB-417", None)
                .await
        });
    }
    while let Some(read) = reads.join_next().await {
        read.expect("task")
            .expect("read succeeds after one forced refresh");
    }
    assert_eq!(fake.refreshes(), 1);

    app.stop().await;
    env.cleanup().await;
}

async fn transient_token_endpoint_failures_are_retried(backend: Backend) {
    let Some((fake, env, app, id)) = connected(backend).await else {
        return;
    };
    let client = process(&env, &fake).await;
    expire_in_database(&app.db).await;
    fake.fail_token_requests(2);
    let token = tokio::time::timeout(Duration::from_secs(10), client.tokens().access_token(id))
        .await
        .expect("in time")
        .expect("the third try succeeds");
    assert_eq!(token.version, 2);
    assert_eq!(fake.refreshes(), 1);

    // Failing more often than the retries allow is an error, not a loop, and keeps the grant.
    expire_in_database(&app.db).await;
    fake.fail_token_requests(10);
    let error = client
        .tokens()
        .access_token(id)
        .await
        .expect_err("unavailable");
    assert!(
        error.to_string().contains("refreshing the token failed"),
        "{error}"
    );
    fake.fail_token_requests(0);
    let token = client.tokens().access_token(id).await.expect("works again");
    assert_eq!(token.version, 3);
    assert!(fake.all_grants_valid());

    app.stop().await;
    env.cleanup().await;
}

async fn a_token_endpoint_that_rotates_then_fails_to_answer_does_not_revoke_the_grant(
    backend: Backend,
) {
    let Some((fake, env, app, id)) = connected(backend).await else {
        return;
    };
    let client = process(&env, &fake).await;
    expire_in_database(&app.db).await;

    // One answer lost after rotating: the retry (same token, within the leeway) gets a pair.
    fake.fault_after_rotating(1, FaultAfterRotating::ServerError);
    let token = client
        .tokens()
        .access_token(id)
        .await
        .expect("the retry within the leeway succeeds");
    assert_eq!(token.version, 2);
    assert!(fake.all_grants_valid(), "the grant is not revoked");
    assert_eq!(
        fake.rotated_tokens_presented(),
        1,
        "presented again, within the leeway"
    );

    // Every try lost: an error, the grant kept, the first use remembered…
    expire_in_database(&app.db).await;
    fake.fault_after_rotating(10, FaultAfterRotating::ServerError);
    let error = client
        .tokens()
        .access_token(id)
        .await
        .expect_err("every answer was lost");
    assert!(matches!(error, TokenError::Unavailable(_)), "{error}");
    let grant = grant_of(&app.db, id).await;
    assert_eq!(grant.status, "active");
    assert!(grant.refresh_token_used_at.is_some(), "{grant:?}");
    assert_eq!(grant.refresh_lease_id, None, "the lease is given back");
    // … and once the endpoint answers again, within the leeway, the grant works.
    fake.fault_after_rotating(0, FaultAfterRotating::ServerError);
    let token = client.tokens().access_token(id).await.expect("works again");
    assert_eq!(token.version, 3);
    assert!(fake.all_grants_valid());
    let grant = grant_of(&app.db, id).await;
    assert_eq!(
        grant.refresh_token_used_at, None,
        "a saved pair starts afresh"
    );

    app.stop().await;
    env.cleanup().await;
}

async fn an_unreadable_200_from_the_token_endpoint_is_retried_within_the_leeway(backend: Backend) {
    let Some((fake, env, app, id)) = connected(backend).await else {
        return;
    };
    let client = process(&env, &fake).await;
    expire_in_database(&app.db).await;
    fake.fault_after_rotating(1, FaultAfterRotating::UnreadableOk);
    let token = client
        .tokens()
        .access_token(id)
        .await
        .expect("the retry succeeds");
    assert_eq!(token.version, 2);
    assert!(fake.all_grants_valid());

    app.stop().await;
    env.cleanup().await;
}

async fn a_refresh_token_of_unknown_outcome_is_not_sent_again_after_the_leeway(backend: Backend) {
    let Some((fake, env, app, id)) = connected(backend).await else {
        return;
    };
    let client = process(&env, &fake).await;
    expire_in_database(&app.db).await;
    fake.fault_after_rotating(10, FaultAfterRotating::ServerError);
    client
        .tokens()
        .access_token(id)
        .await
        .expect_err("every answer was lost");
    fake.fault_after_rotating(0, FaultAfterRotating::ServerError);
    // Nine minutes pass (our leeway is 8 minutes, Atlassian's 10).
    oauth_grant::Entity::update_many()
        .col_expr(
            oauth_grant::Column::RefreshTokenUsedAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::minutes(9)),
        )
        .exec(&app.db)
        .await
        .expect("age");
    let before = fake.refresh_requests();
    let error = client
        .tokens()
        .access_token(id)
        .await
        .expect_err("not sent again");
    assert!(matches!(error, TokenError::ReauthRequired), "{error}");
    assert_eq!(
        fake.refresh_requests(),
        before,
        "the token was not presented"
    );
    let grant = grant_of(&app.db, id).await;
    assert_eq!(grant.status, "reauth_required");
    assert!(
        grant
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("leeway")),
        "{grant:?}"
    );
    let connections = plugin_connection::Entity::find()
        .filter(plugin_connection::Column::GrantId.eq(grant.id))
        .all(&app.db)
        .await
        .expect("query");
    assert_eq!(connections.len(), 2);
    assert!(connections.iter().all(|c| c.status == "reauth_required"));

    app.stop().await;
    env.cleanup().await;
}

async fn an_unreachable_token_endpoint_leaves_the_refresh_token_unused(backend: Backend) {
    let Some((fake, env, app, id)) = connected(backend).await else {
        return;
    };
    // Nothing listens there: no connection is made, so the token is certainly not used.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let client = process_with(
        &env,
        &fake,
        &format!("http://{closed}"),
        RefreshPolicy::default(),
    )
    .await;
    expire_in_database(&app.db).await;
    let error = client
        .tokens()
        .access_token(id)
        .await
        .expect_err("unreachable");
    assert!(matches!(error, TokenError::Unavailable(_)), "{error}");
    let grant = grant_of(&app.db, id).await;
    assert_eq!(grant.refresh_token_used_at, None, "{grant:?}");
    assert_eq!(grant.refresh_lease_id, None);
    assert!(grant.last_error.is_some());
    assert_eq!(grant.status, "active");

    app.stop().await;
    env.cleanup().await;
}

async fn a_lease_held_by_another_process_is_waited_for_and_taken_over_once_expired(
    backend: Backend,
) {
    let Some((fake, env, app, id)) = connected(backend).await else {
        return;
    };
    let policy = RefreshPolicy {
        wait: Duration::from_millis(300),
        ..RefreshPolicy::default()
    };
    let client = process_with(&env, &fake, &fake.url, policy).await;
    expire_in_database(&app.db).await;
    // Another process holds the lease (and is, as far as anyone knows, calling Atlassian).
    let hold = |until: chrono::DateTime<chrono::Utc>| {
        oauth_grant::Entity::update_many()
            .col_expr(
                oauth_grant::Column::RefreshLeaseId,
                Expr::value(Uuid::new_v4()),
            )
            .col_expr(oauth_grant::Column::RefreshLeaseUntil, Expr::value(until))
            .exec(&app.db)
    };
    hold(chrono::Utc::now() + chrono::Duration::minutes(1))
        .await
        .expect("hold");
    let error = client
        .tokens()
        .access_token(id)
        .await
        .expect_err("waits, bounded");
    assert!(
        matches!(&error, TokenError::Unavailable(detail) if detail.contains("another process")),
        "{error}"
    );
    assert_eq!(
        fake.token_requests(),
        1,
        "only the code exchange: no refresh raced"
    );

    // The holder crashed: its lease expires and is taken over.
    hold(chrono::Utc::now() - chrono::Duration::seconds(1))
        .await
        .expect("expire the lease");
    let token = client.tokens().access_token(id).await.expect("taken over");
    assert_eq!(token.version, 2);
    assert_eq!(fake.refreshes(), 1);

    app.stop().await;
    env.cleanup().await;
}

async fn the_token_keeper_refreshes_idle_grants_once(backend: Backend) {
    let Some((fake, env, app, _)) = connected(backend).await else {
        return;
    };
    // A second company with its own grant.
    let (_, other_key) = app.create_company("Contoso").await;
    connect_sites(&app, &fake, &other_key).await;
    // Nothing is idle right after connecting.
    let refreshed = worker::token_keeper::keep_once(&app.job_context)
        .await
        .expect("keep");
    assert_eq!(refreshed, 0);

    oauth_grant::Entity::update_many()
        .col_expr(
            oauth_grant::Column::RefreshedAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::days(31)),
        )
        .exec(&app.db)
        .await
        .expect("age");
    let refreshed = worker::token_keeper::keep_once(&app.job_context)
        .await
        .expect("keep");
    assert_eq!(refreshed, 2, "every idle grant, once (not once per site)");
    assert_eq!(fake.refreshes(), 2);
    let again = worker::token_keeper::keep_once(&app.job_context)
        .await
        .expect("keep");
    assert_eq!(again, 0, "a refreshed grant is no longer idle");
    assert_eq!(fake.refreshes(), 2);
    assert_eq!(fake.rotated_tokens_presented(), 0);

    app.stop().await;
    env.cleanup().await;
}

async fn a_rotated_pair_the_database_did_not_take_is_kept_and_saved_later(backend: Backend) {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let Some((fake, env, app, id)) = connected(backend).await else {
        return;
    };
    // Postgres goes away behind a proxy; SQLite stays locked by another writer for longer than
    // the busy timeout.
    let proxy = match backend {
        Backend::PostgresRedis => {
            Some(tests::proxy::TcpProxy::start("127.0.0.1:5432".parse().expect("address")).await)
        }
        Backend::Embedded => None,
    };
    let database_url = match &proxy {
        Some(proxy) => env
            .database_url
            .replace("127.0.0.1:5432", &proxy.addr.to_string()),
        None => env.database_url.clone(),
    };
    let client = process_on(
        &database_url,
        &env,
        &fake,
        &fake.url,
        RefreshPolicy::default(),
    )
    .await;
    fake.set_token_delay(Duration::from_millis(500));
    expire_in_database(&app.db).await;
    let refresh = tokio::spawn({
        let client = client.clone();
        async move { client.tokens().access_token(id).await }
    });
    wait_until_token_requests(&fake, 2).await;
    // The lease is taken and Atlassian is rotating: now the database fails.
    let lock = match &proxy {
        Some(proxy) => {
            proxy.cut();
            None
        }
        None => {
            let txn = app.db.begin().await.expect("begin");
            txn.execute_unprepared("UPDATE company SET name = name")
                .await
                .expect("take the write lock");
            Some(txn)
        }
    };
    let token = refresh
        .await
        .expect("task")
        .expect("the rotated access token is handed out although it was not saved");
    assert_eq!(fake.refreshes(), 1);
    assert_eq!(
        grant_of(&app.db, id).await.token_version,
        1,
        "not saved yet"
    );

    // The database is back: the kept pair is saved (in the background), not refreshed again.
    match (&proxy, lock) {
        (Some(proxy), _) => proxy.restore(),
        (None, Some(txn)) => txn.rollback().await.expect("release the lock"),
        (None, None) => unreachable!("one of them"),
    }
    tests::wait_until(
        Duration::from_secs(60),
        "the kept pair is saved",
        || async { (grant_of(&app.db, id).await.token_version == 2).then_some(()) },
    )
    .await;
    assert_eq!(
        client.tokens().access_token(id).await.expect("valid").token,
        token.token
    );
    // The next refresh uses the saved (rotated) refresh token: no reuse, the grant lives.
    fake.set_token_delay(Duration::ZERO);
    expire_in_database(&app.db).await;
    // The token read just above is kept in memory for a few seconds; the expiry was moved
    // behind the manager's back.
    client.tokens().forget_recent_tokens();
    let next = client.tokens().access_token(id).await.expect("refreshed");
    assert_eq!(next.version, 3);
    assert_eq!(
        fake.rotated_tokens_presented(),
        0,
        "the rotated-out token was never sent"
    );
    assert!(fake.all_grants_valid());

    app.stop().await;
    env.cleanup().await;
}

async fn wait_until_token_requests(fake: &FakeAtlassian, count: usize) {
    tests::wait_until(
        Duration::from_secs(10),
        "the token request arrives",
        || async { (fake.token_requests() >= count).then_some(()) },
    )
    .await;
}
