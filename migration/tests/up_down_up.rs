//! Migrations are tested up, down, up (STYLE "Tests"), on SQLite and on Postgres, and the schema
//! they leave behind is checked against the `entity` models with a real round trip.

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use entity::{company, plugin_connection, webhook_event};
use migration::{Migrator, MigratorTrait, SchemaManager};
use sea_orm::{
    ActiveModelTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend,
    DbErr, EntityTrait, IntoActiveModel, ModelTrait, Statement,
};
use sea_orm_migration::sea_orm;
use uuid::Uuid;

/// Where the Postgres test server is when `HOOKLINE_TEST_POSTGRES_URL` is not set.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Every table the migrations create, parents first.
const TABLES: [&str; 11] = [
    "company",
    "api_key",
    "plugin_connection",
    "oauth_credential",
    "oauth_state",
    "webhook_event",
    "subscription",
    "delivery",
    "delivery_attempt",
    "periodic_task",
    "console_session",
];

#[tokio::test]
async fn migrations_run_up_down_up_on_sqlite() -> Result<(), DbErr> {
    let db = Database::connect("sqlite::memory:").await?;
    assert_eq!(db.get_database_backend(), DbBackend::Sqlite);
    up_down_up_then_round_trip(&db).await
}

#[tokio::test]
async fn migrations_run_up_down_up_on_postgres() {
    let admin_url =
        std::env::var("HOOKLINE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
    let admin = match connect(&admin_url).await {
        Ok(admin) => admin,
        Err(err) => {
            if std::env::var("HOOKLINE_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("postgres not reachable at {admin_url}: {err}");
            }
            eprintln!("skipped: postgres not reachable at {admin_url}: {err}");
            return;
        }
    };

    // A database of its own, so the test neither sees nor leaves anything in a shared one.
    let database = format!("hookline_mig_{}", Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {database}"))
        .await
        .expect("create the test database");
    let url = with_database(&admin_url, &database);

    // Run in a task so that a failed assertion still lets the database be dropped below.
    let outcome = tokio::spawn(async move {
        let db = connect(&url).await.expect("connect to the test database");
        assert_eq!(db.get_database_backend(), DbBackend::Postgres);
        up_down_up_then_round_trip(&db)
            .await
            .expect("migrations and round trip");
        assert_column_types(&db).await;
        db.close().await.expect("close the test database");
    })
    .await;

    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await
        .expect("drop the test database");
    if let Err(err) = outcome {
        std::panic::resume_unwind(err.into_panic());
    }
}

async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url);
    options
        .connect_timeout(Duration::from_secs(3))
        .acquire_timeout(Duration::from_secs(3))
        .sqlx_logging(false);
    Database::connect(options).await
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let (server, _) = base
        .rsplit_once('/')
        .expect("a postgres URL ends with /<database>");
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

async fn up_down_up_then_round_trip(db: &DatabaseConnection) -> Result<(), DbErr> {
    let schema = SchemaManager::new(db);

    Migrator::up(db, None).await?;
    for table in TABLES {
        assert!(schema.has_table(table).await?, "{table} exists after up");
    }

    Migrator::down(db, None).await?;
    for table in TABLES {
        assert!(
            !schema.has_table(table).await?,
            "{table} is gone after down"
        );
    }
    assert!(Migrator::get_applied_migrations(db).await?.is_empty());

    Migrator::up(db, None).await?;
    for table in TABLES {
        assert!(
            schema.has_table(table).await?,
            "{table} exists after up again"
        );
    }
    assert!(Migrator::get_pending_migrations(db).await?.is_empty());

    round_trip(db).await
}

/// Writes a company, a connection and an event with a 1 MiB body through the entities, reads
/// them back unchanged, then checks that deleting the company cascades.
async fn round_trip(db: &DatabaseConnection) -> Result<(), DbErr> {
    // Postgres keeps microseconds; anything finer would not survive the round trip.
    let now = Utc::now().trunc_subsecs(6);

    let company = company::Model {
        id: Uuid::now_v7(),
        name: "Acme".into(),
        created_at: now,
    };
    company.clone().into_active_model().insert(db).await?;

    let connection = plugin_connection::Model {
        id: Uuid::now_v7(),
        company_id: company.id,
        plugin_id: "jira".into(),
        external_id: "acme".into(),
        external_name: "Acme Jira".into(),
        metadata: serde_json::json!({"cloudId": "c-1", "siteUrl": "https://acme.atlassian.net"}),
        webhook_secret: Some("v1.abcd1234.ciphertext".into()),
        status: plugin_connection::status::ACTIVE.into(),
        created_at: now,
        updated_at: now,
    };
    connection.clone().into_active_model().insert(db).await?;

    // Every byte value, including NUL and invalid UTF-8, must come back as it went in.
    let body: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let event = webhook_event::Model {
        id: Uuid::now_v7(),
        connection_id: connection.id,
        company_id: company.id,
        plugin_id: "jira".into(),
        delivery_key: "delivery-1".into(),
        received_at: now,
        headers: serde_json::json!({"content-type": "application/json"}),
        body,
        status: webhook_event::status::RECEIVED.into(),
        attempts: 0,
        locked_until: None,
        event_type: None,
        data: None,
        error: None,
        processed_at: None,
        replay_of: None,
    };
    event.clone().into_active_model().insert(db).await?;

    assert_eq!(
        company::Entity::find_by_id(company.id).one(db).await?,
        Some(company.clone())
    );
    assert_eq!(
        plugin_connection::Entity::find_by_id_for_company(connection.id, company.id)
            .one(db)
            .await?,
        Some(connection.clone())
    );
    assert_eq!(
        plugin_connection::Entity::find_by_id_for_company(connection.id, Uuid::now_v7())
            .one(db)
            .await?,
        None,
        "another company does not see the connection"
    );
    let stored = webhook_event::Entity::find_by_id_for_company(event.id, company.id)
        .one(db)
        .await?
        .expect("the event was stored");
    assert!(stored.body == event.body, "the body is byte-identical");
    assert_eq!(stored, event);

    company.delete(db).await?;
    assert_eq!(plugin_connection::Entity::find().all(db).await?, vec![]);
    assert_eq!(webhook_event::Entity::find().all(db).await?, vec![]);
    Ok(())
}

/// The Postgres column types that matter: raw bodies in `bytea`, JSON in `jsonb`, timestamps
/// with time zone, ids as `uuid`.
async fn assert_column_types(db: &DatabaseConnection) {
    for (table, column, expected) in [
        ("webhook_event", "body", "bytea"),
        ("webhook_event", "headers", "jsonb"),
        ("webhook_event", "received_at", "timestamp with time zone"),
        ("webhook_event", "id", "uuid"),
        ("oauth_credential", "token_version", "bigint"),
    ] {
        let row = db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT data_type FROM information_schema.columns \
                 WHERE table_name = $1 AND column_name = $2",
                [table.into(), column.into()],
            ))
            .await
            .expect("query information_schema")
            .unwrap_or_else(|| panic!("{table}.{column} exists"));
        let data_type: String = row.try_get("", "data_type").expect("data_type is text");
        assert_eq!(data_type, expected, "type of {table}.{column}");
    }
}
