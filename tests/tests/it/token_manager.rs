//! TokenManager: one refresh for many concurrent readers in several processes, forced refresh
//! after a 401, retries of transient token-endpoint failures (DESIGN §4).

use std::sync::Arc;
use std::time::Duration;

use entity::cipher::Cipher;
use entity::oauth_credential;
use plugins::jira::oauth::{JiraOAuth, OAuthConfig};
use plugins::jira::rest::JiraClient;
use plugins::jira::token_manager::TokenManager;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tests::fake_atlassian::{self, FakeAtlassian};
use tests::{Backend, TEST_ENCRYPTION_KEY, TestEnv};
use uuid::Uuid;

use crate::oauth::{connect_sites, start_with_fake};
use crate::on_both_backends;

on_both_backends!(
    concurrent_reads_in_three_processes_with_an_expired_token_refresh_it_once,
    a_401_with_a_token_believed_valid_forces_one_refresh,
    transient_token_endpoint_failures_are_retried,
    the_token_keeper_refreshes_idle_grants_once,
);

/// A separate "process": its own database pool, its own TokenManager and Jira client.
async fn process(env: &TestEnv, fake: &FakeAtlassian) -> JiraClient {
    let db = api::startup::connect_database(&env.settings())
        .await
        .expect("database");
    let http = plugins::jira::oauth::http_client().expect("client");
    let oauth = JiraOAuth::new(
        OAuthConfig {
            client_id: fake_atlassian::CLIENT_ID.to_owned(),
            client_secret: fake_atlassian::CLIENT_SECRET.to_owned(),
            auth_url: fake.url.clone(),
            api_url: fake.url.clone(),
            redirect_url: "http://127.0.0.1/oauth/jira/callback".to_owned(),
            scopes: plugins::jira::oauth::DEFAULT_SCOPES.to_owned(),
        },
        http.clone(),
    )
    .expect("oauth");
    let tokens = TokenManager::new(db, Cipher::new(&TEST_ENCRYPTION_KEY, &[]), Some(oauth));
    JiraClient::new(http, &fake.url, tokens)
}

/// Marks the stored access token of `id` as expired, as time passing would.
async fn expire_in_database(db: &sea_orm::DatabaseConnection, id: Uuid) {
    oauth_credential::Entity::update_many()
        .col_expr(
            oauth_credential::Column::ExpiresAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .filter(oauth_credential::Column::ConnectionId.eq(id))
        .exec(db)
        .await
        .expect("expire");
}

async fn connected(backend: Backend) -> Option<(FakeAtlassian, TestEnv, tests::TestApp, Uuid)> {
    let (fake, env, app) = start_with_fake(backend).await?;
    let (_, api_key) = app.create_company("Northwind").await;
    let connections = connect_sites(&app, &fake, &api_key).await;
    let id = connections[0]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    Some((fake, env, app, id))
}

async fn concurrent_reads_in_three_processes_with_an_expired_token_refresh_it_once(
    backend: Backend,
) {
    let Some((fake, env, app, id)) = connected(backend).await else {
        return;
    };
    let processes = vec![
        process(&env, &fake).await,
        process(&env, &fake).await,
        process(&env, &fake).await,
    ];
    fake.expire_access_tokens();
    expire_in_database(&app.db, id).await;

    let barrier = Arc::new(tokio::sync::Barrier::new(150));
    let mut reads = tokio::task::JoinSet::new();
    for client in &processes {
        for _ in 0..50 {
            let client = client.clone();
            let barrier = barrier.clone();
            reads.spawn(async move {
                barrier.wait().await;
                client
                    .get_issue(id, fake_atlassian::CLOUD_ID, "ORB-417", Some("summary"))
                    .await
            });
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
    assert_eq!(ok, 150);
    assert_eq!(
        fake.refreshes(),
        1,
        "exactly one refresh for 150 readers in 3 processes"
    );
    let credential = oauth_credential::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .expect("query")
        .expect("credential");
    assert_eq!(credential.token_version, 2);
    assert!(credential.refreshed_at.is_some());

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
    expire_in_database(&app.db, id).await;
    fake.fail_token_requests(2);
    let token = tokio::time::timeout(Duration::from_secs(10), client.tokens().access_token(id))
        .await
        .expect("in time")
        .expect("the third try succeeds");
    assert_eq!(token.version, 2);
    assert_eq!(fake.refreshes(), 1);

    // Failing more often than the retries allow is an error, not a loop, and keeps the grant.
    expire_in_database(&app.db, id).await;
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

    app.stop().await;
    env.cleanup().await;
}

async fn the_token_keeper_refreshes_idle_grants_once(backend: Backend) {
    let Some((fake, env, app, id)) = connected(backend).await else {
        return;
    };
    // Nothing is idle right after connecting.
    let refreshed = worker::token_keeper::keep_once(&app.job_context)
        .await
        .expect("keep");
    assert_eq!(refreshed, 0);

    oauth_credential::Entity::update_many()
        .col_expr(
            oauth_credential::Column::RefreshedAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::days(31)),
        )
        .filter(oauth_credential::Column::ConnectionId.eq(id))
        .exec(&app.db)
        .await
        .expect("age");
    let refreshed = worker::token_keeper::keep_once(&app.job_context)
        .await
        .expect("keep");
    assert_eq!(refreshed, 1);
    assert_eq!(fake.refreshes(), 1);
    let again = worker::token_keeper::keep_once(&app.job_context)
        .await
        .expect("keep");
    assert_eq!(again, 0, "a refreshed grant is no longer idle");
    assert_eq!(fake.refreshes(), 1);

    app.stop().await;
    env.cleanup().await;
}
