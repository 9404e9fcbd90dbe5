//! The job queues: Redis (apalis-redis) in production, the SQLite database itself
//! (apalis-sqlite) in the embedded mode. The jobs and their handlers are the same code for both.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use apalis_core::backend::TaskSink;
use apalis_core::task::builder::TaskBuilder;
use apalis_redis::{ConnectionManager, RedisStorage};
use apalis_sqlite::SqliteStorage;
use sea_orm::sqlx::SqlitePool;
use serde::{Serialize, de::DeserializeOwned};

use crate::wake::{WakeStream, Wakers};

/// Removes up to `ARGV[1]` members of the `done` (KEYS[1]) and `dead` (KEYS[2]) sets of an
/// apalis-redis queue together with their payload (field of the `data` hash, KEYS[3]) and their
/// metadata hash (`KEYS[4]:<id>`). `SPOP` makes two janitors never remove one job twice.
const REMOVE_FINISHED_LUA: &str = r"
local removed = 0
for _, set in ipairs({KEYS[1], KEYS[2]}) do
  local ids = redis.call('SPOP', set, tonumber(ARGV[1]))
  for _, id in ipairs(ids) do
    redis.call('HDEL', KEYS[3], id)
    redis.call('DEL', KEYS[4] .. ':' .. id)
    removed = removed + 1
  end
end
return removed
";

/// Moves up to `ARGV[2]` due jobs (score ≤ `ARGV[1]`, Unix seconds) of an apalis-redis queue
/// from its `scheduled` set (KEYS[1]) to its `active` list (KEYS[2]) and signals (KEYS[3]) that
/// jobs are waiting, as apalis' own fetch does, but a bounded number at a time.
const PROMOTE_DUE_LUA: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], 0, ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then
  redis.call('RPUSH', KEYS[2], unpack(ids))
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('DEL', KEYS[3])
  redis.call('LPUSH', KEYS[3], 1)
end
return #ids
";

/// Jobs of one queue waiting to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Due now, waiting for a worker.
    pub ready: u64,
    /// Scheduled to run later (`run_after`).
    pub scheduled: u64,
}

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
        /// Opens the subscription that carries wake-ups between processes.
        client: redis::Client,
        /// Namespace of this deployment's queues (tests use one per test).
        prefix: String,
        /// Wakes this process' idle workers when a job is pushed.
        wakers: Arc<Wakers>,
    },
    /// apalis-sqlite, in the same SQLite database as the data.
    Sqlite {
        /// The database's pool, shared with sea-orm.
        pool: SqlitePool,
        /// Namespace of this deployment's queues.
        prefix: String,
        /// Wakes this process' idle workers when a job is pushed.
        wakers: Arc<Wakers>,
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
        let client = redis::Client::open(url).context("REDIS_URL is not a Redis URL")?;
        Ok(Self::Redis {
            conn,
            client,
            prefix: prefix.to_owned(),
            wakers: Arc::default(),
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
            wakers: Arc::default(),
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

    /// Pushes `job` to run now, and wakes the queue's idle workers.
    pub async fn push<J: Job>(&self, job: J) -> anyhow::Result<()> {
        self.push_task(TaskBuilder::new(job)).await?;
        self.wake::<J>().await;
        Ok(())
    }

    /// Pushes `jobs` to run now in one round trip, and wakes the queue's idle workers.
    pub async fn push_all<J: Job>(&self, jobs: Vec<J>) -> anyhow::Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let queue = self.queue_name::<J>();
        match self {
            Self::Redis { conn, .. } => {
                let config = apalis_redis::Config::default().queue(&queue);
                let mut storage = Self::redis_storage::<J>(conn, config);
                storage
                    .push_bulk(jobs)
                    .await
                    .with_context(|| format!("could not push jobs to Redis queue {queue}"))?;
            }
            Self::Sqlite { pool, .. } => {
                let config = apalis_sqlite::Config::default().queue(&queue);
                let mut storage = SqliteStorage::<J>::new(pool).with_config(config);
                storage
                    .push_bulk(jobs)
                    .await
                    .with_context(|| format!("could not push jobs to SQLite queue {queue}"))?;
            }
        }
        self.wake::<J>().await;
        Ok(())
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

    /// Wakes the idle workers of `J`'s queue: this process' directly, other processes' through
    /// Redis pub/sub ([`crate::wake::listen`]). Best effort: a lost wake-up costs one poll.
    async fn wake<J: Job>(&self) {
        let queue = self.queue_name::<J>();
        self.wakers().signal(&queue);
        if let Self::Redis { conn, .. } = self {
            let mut conn = conn.clone();
            let published: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(crate::wake::channel(&queue))
                .arg(1)
                .query_async(&mut conn)
                .await;
            if let Err(error) = published {
                tracing::debug!(error = %error, queue, "could not publish a wake-up");
            }
        }
    }

    /// This process' wake-up signals.
    pub fn wakers(&self) -> &Arc<Wakers> {
        match self {
            Self::Redis { wakers, .. } | Self::Sqlite { wakers, .. } => wakers,
        }
    }

    /// The stream `J`'s workers in this process wait on between polls.
    pub fn wake_stream<J: Job>(&self) -> WakeStream {
        self.wakers().stream(&self.queue_name::<J>())
    }

    /// How many jobs of `J` wait in the queue: due now, and scheduled for later.
    pub async fn backlog<J: Job>(&self) -> anyhow::Result<Backlog> {
        let queue = self.queue_name::<J>();
        match self {
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                // apalis-redis keeps pushed jobs in the scheduled set until a fetch promotes
                // them: a due scheduled job is as ready as one in the active list.
                let (active, due, later): (u64, u64, u64) = redis::pipe()
                    .cmd("LLEN")
                    .arg(format!("{queue}:active"))
                    .cmd("ZCOUNT")
                    .arg(format!("{queue}:scheduled"))
                    .arg("-inf")
                    .arg(now)
                    .cmd("ZCOUNT")
                    .arg(format!("{queue}:scheduled"))
                    .arg(format!("({now}"))
                    .arg("+inf")
                    .query_async(&mut conn)
                    .await
                    .with_context(|| format!("could not read the length of Redis queue {queue}"))?;
                Ok(Backlog {
                    ready: active + due,
                    scheduled: later,
                })
            }
            Self::Sqlite { pool, .. } => {
                let (ready, scheduled): (i64, i64) = sea_orm::sqlx::query_as(
                    "SELECT COALESCE(SUM(run_at <= strftime('%s', 'now')), 0), \
                            COALESCE(SUM(run_at > strftime('%s', 'now')), 0) \
                     FROM Jobs WHERE job_type = ? AND status = 'Pending'",
                )
                .bind(&queue)
                .fetch_one(pool)
                .await
                .with_context(|| format!("could not count SQLite queue {queue}"))?;
                Ok(Backlog {
                    ready: ready.max(0) as u64,
                    scheduled: scheduled.max(0) as u64,
                })
            }
        }
    }

    /// Moves up to `limit` due jobs of `J` from apalis-redis' scheduled set to its active list;
    /// returns how many (the SQLite queue needs nothing: always 0).
    ///
    /// apalis-redis 1.0 puts every pushed job in the scheduled set, and its fetch promotes all
    /// due ones with a single Lua `unpack`, which fails above about 8,000 ids ("too many results
    /// to unpack"): a backlog built while no worker fetched (workers down, a burst) would make
    /// every fetch of the queue fail for good. Promoting in bounded chunks first keeps the set
    /// small enough for apalis' fetch.
    pub async fn promote_due<J: Job>(&self, limit: usize) -> anyhow::Result<u64> {
        let Self::Redis { conn, .. } = self else {
            return Ok(0);
        };
        let queue = self.queue_name::<J>();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut conn = conn.clone();
        let moved: u64 = redis::Script::new(PROMOTE_DUE_LUA)
            .key(format!("{queue}:scheduled"))
            .key(format!("{queue}:active"))
            .key(format!("{queue}:signal"))
            .arg(now)
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .with_context(|| format!("could not promote due jobs of {queue}"))?;
        Ok(moved)
    }

    /// Deletes up to `limit` finished jobs of `J` from the queue backend and returns how many.
    ///
    /// apalis keeps every finished job (Redis: an entry in the `done`/`dead` set, the payload in
    /// the `data` hash and a `meta` hash; SQLite: its `Jobs` row) forever. The database is the
    /// source of truth of every event and delivery, so a finished job's copy serves nothing and
    /// would grow the queue without bound.
    pub async fn remove_finished<J: Job>(&self, limit: usize) -> anyhow::Result<u64> {
        let queue = self.queue_name::<J>();
        match self {
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let removed: u64 = redis::Script::new(REMOVE_FINISHED_LUA)
                    .key(format!("{queue}:done"))
                    .key(format!("{queue}:dead"))
                    .key(format!("{queue}:data"))
                    .key(format!("{queue}:meta"))
                    .arg(limit)
                    .invoke_async(&mut conn)
                    .await
                    .with_context(|| format!("could not remove finished jobs of {queue}"))?;
                Ok(removed)
            }
            Self::Sqlite { pool, .. } => {
                let done = sea_orm::sqlx::query(
                    "DELETE FROM Jobs WHERE rowid IN (SELECT rowid FROM Jobs \
                     WHERE job_type = ? AND status IN ('Done', 'Killed') LIMIT ?)",
                )
                .bind(&queue)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .execute(pool)
                .await
                .with_context(|| format!("could not remove finished jobs of {queue}"))?;
                Ok(done.rows_affected())
            }
        }
    }

    /// Records that the queue is alive and says whether it lost its jobs since the last call:
    /// a marker key in Redis is gone after a restart without persistence or a flush (and before
    /// the first call of a deployment). The embedded queue is in the database and never loses
    /// them on its own: always false.
    pub async fn mark_alive(&self) -> anyhow::Result<bool> {
        let Self::Redis { conn, prefix, .. } = self else {
            return Ok(false);
        };
        let mut conn = conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{prefix}:alive"))
            .arg(1)
            .arg("NX")
            .query_async(&mut conn)
            .await
            .context("could not write the queue's marker key")?;
        Ok(set.is_some())
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
