//! The job queues: Redis (apalis-redis) in production, the SQLite database itself
//! (apalis-sqlite) in the embedded mode. The jobs and their handlers are the same code for both.

use std::time::Duration;

use anyhow::Context as _;
use apalis_core::backend::TaskSink;
use apalis_core::task::builder::TaskBuilder;
use apalis_redis::{ConnectionManager, RedisStorage};
use apalis_sqlite::SqliteStorage;
use sea_orm::sqlx::SqlitePool;
use serde::{Serialize, de::DeserializeOwned};

/// A job type: its payload and the name of the queue it travels on.
///
/// The queue name is explicit because apalis would otherwise name the queue after the Rust type
/// path, and a rename would orphan every queued job.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// The queue's name, without the deployment prefix.
    const QUEUE: &'static str;
}

/// Where jobs are pushed to and pulled from.
#[derive(Clone)]
pub enum JobQueue {
    /// apalis-redis; queue keys are `<prefix>:<queue>`.
    Redis {
        /// The shared, auto-reconnecting connection.
        conn: ConnectionManager,
        /// Namespace of this deployment's queues (tests use one per test).
        prefix: String,
    },
    /// apalis-sqlite, in the same SQLite database as the data.
    Sqlite {
        /// The database's pool, shared with sea-orm.
        pool: SqlitePool,
        /// Namespace of this deployment's queues.
        prefix: String,
    },
}

impl std::fmt::Debug for JobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Redis { prefix, .. } => write!(f, "JobQueue::Redis({prefix})"),
            Self::Sqlite { prefix, .. } => write!(f, "JobQueue::Sqlite({prefix})"),
        }
    }
}

impl JobQueue {
    /// Connects to Redis. The connection manager reconnects by itself after Redis restarts.
    pub async fn redis(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let conn = tokio::time::timeout(Duration::from_secs(10), apalis_redis::connect(url))
            .await
            .context("timed out connecting to Redis")?
            .context("could not connect to Redis")?;
        Ok(Self::Redis {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    /// Uses the SQLite database behind `pool` as the queue, creating apalis' tables if needed.
    pub async fn sqlite(pool: SqlitePool, prefix: &str) -> anyhow::Result<Self> {
        // Only the migrations: `SqliteStorage::setup` would also set `synchronous = OFF`.
        SqliteStorage::<()>::migrations()
            .run(&pool)
            .await
            .context("could not create the embedded queue's tables")?;
        Ok(Self::Sqlite {
            pool,
            prefix: prefix.to_owned(),
        })
    }

    /// The full name of `J`'s queue in this deployment.
    pub fn queue_name<J: Job>(&self) -> String {
        let prefix = match self {
            Self::Redis { prefix, .. } | Self::Sqlite { prefix, .. } => prefix,
        };
        format!("{prefix}:{}", J::QUEUE)
    }

    /// The apalis-redis storage for `J`.
    pub(crate) fn redis_storage<J: Job>(
        conn: &ConnectionManager,
        config: apalis_redis::Config,
    ) -> RedisStorage<J> {
        RedisStorage::new(conn.clone()).with_config(config)
    }

    /// Pushes `job` to run now.
    pub async fn push<J: Job>(&self, job: J) -> anyhow::Result<()> {
        self.push_task(TaskBuilder::new(job)).await
    }

    /// Pushes `job` to run after `delay` (whole seconds: apalis schedules with second precision).
    pub async fn push_after<J: Job>(&self, job: J, delay: Duration) -> anyhow::Result<()> {
        self.push_task(TaskBuilder::new(job).run_after(delay)).await
    }

    async fn push_task<J: Job>(&self, task: TaskBuilder<J>) -> anyhow::Result<()> {
        let queue = self.queue_name::<J>();
        match self {
            Self::Redis { conn, .. } => {
                let config = apalis_redis::Config::default().queue(&queue);
                let mut storage = Self::redis_storage::<J>(conn, config);
                storage
                    .push_task(task.build())
                    .await
                    .with_context(|| format!("could not push a job to Redis queue {queue}"))
            }
            Self::Sqlite { pool, .. } => {
                let config = apalis_sqlite::Config::default().queue(&queue);
                let mut storage = SqliteStorage::<J>::new(pool).with_config(config);
                storage
                    .push_task(task.build())
                    .await
                    .with_context(|| format!("could not push a job to SQLite queue {queue}"))
            }
        }
    }

    /// Checks that the queue answers (for `/readyz`).
    pub async fn ping(&self) -> anyhow::Result<()> {
        match self {
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let pong: String = redis::cmd("PING")
                    .query_async(&mut conn)
                    .await
                    .context("Redis did not answer PING")?;
                anyhow::ensure!(pong == "PONG", "Redis answered PING with {pong:?}");
                Ok(())
            }
            Self::Sqlite { pool, .. } => {
                sea_orm::sqlx::query("SELECT 1")
                    .execute(pool)
                    .await
                    .context("the embedded queue's database did not answer")?;
                Ok(())
            }
        }
    }
}
