//! Broker connections, pooled per destination and reused by every delivery to it.
//!
//! One entry per subscription, keyed by its id and a fingerprint of its stored (encrypted)
//! destination settings: a subscription whose destination changed gets a new entry, and the
//! old one (with its connection) is dropped. An entry connects on first use, one task at a time
//! (concurrent deliveries of a batch wait for that one connection); a publish that finds the
//! connection broken (broker restarted, timed out, channel closed) drops it, and the next
//! attempt connects again. [`DestinationPool::prune`] (run periodically by every worker) drops
//! the entries of subscriptions that were deleted, changed or disabled, and those unused for
//! [`IDLE_AFTER`]; dropping an entry closes its connection.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use super::amqp::AmqpConnection;
use super::broker::{BrokerSettings, BrokerTimeouts, Published};
use super::nats::NatsConnection;
use super::{AttemptResult, Destination, Message, amqp, nats, redis_stream};
use crate::target::{self, BrokerAddressError};

/// An entry unused this long is dropped (its connection closed) by [`DestinationPool::prune`].
pub const IDLE_AFTER: Duration = Duration::from_secs(300);

/// How often each worker prunes its pool.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(30);

/// The broker connections of one worker process.
#[derive(Debug)]
pub struct DestinationPool {
    entries: Mutex<HashMap<Uuid, Arc<PoolEntry>>>,
    timeouts: BrokerTimeouts,
    allow_private: bool,
}

/// One subscription's destination and its connection, if one is open.
#[derive(Debug)]
struct PoolEntry {
    fingerprint: u64,
    settings: BrokerSettings,
    slot: tokio::sync::Mutex<Slot>,
    last_used: Mutex<Instant>,
}

/// After a failed connect, attempts within this time fail at once with its error instead of
/// each waiting for its own connect timeout (a batch to an unreachable broker).
const CONNECT_FAILURE_HOLD: Duration = Duration::from_secs(1);

/// The open connection and how many were opened before it (so a publish that saw an older one
/// fail does not drop a newer one), or the last failed connect.
#[derive(Debug, Default)]
struct Slot {
    connection: Option<BrokerConnection>,
    generation: u64,
    failed: Option<(Instant, AttemptResult)>,
}

/// A connection of one of the broker kinds; cheap to clone.
#[derive(Debug, Clone)]
enum BrokerConnection {
    RedisStream(redis::aio::MultiplexedConnection),
    Amqp(Arc<AmqpConnection>),
    Nats(NatsConnection),
}

impl DestinationPool {
    /// An empty pool whose connections use `timeouts` and the SSRF rules (`allow_private`).
    pub fn new(timeouts: BrokerTimeouts, allow_private: bool) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            timeouts,
            allow_private,
        }
    }

    /// The destination of broker subscription `subscription_id` whose `destination` column is
    /// `stored`: its pooled entry, made anew when the settings changed. Refused (permanently)
    /// when the stored settings cannot be read.
    pub fn destination(
        &self,
        subscription_id: Uuid,
        stored: &str,
        cipher: &entity::cipher::Cipher,
    ) -> Result<Arc<dyn Destination>, AttemptResult> {
        let fingerprint = fingerprint(stored);
        let mut entries = self.lock();
        let entry = match entries.get(&subscription_id) {
            Some(entry) if entry.fingerprint == fingerprint => entry.clone(),
            _ => {
                let settings = cipher
                    .decrypt(stored)
                    .map_err(anyhow::Error::from)
                    .and_then(|json| BrokerSettings::from_stored(&json))
                    .map_err(|error| {
                        AttemptResult::transient(format!(
                            "could not read the destination settings: {error:#}"
                        ))
                    })?;
                let entry = Arc::new(PoolEntry {
                    fingerprint,
                    settings,
                    slot: tokio::sync::Mutex::new(Slot::default()),
                    last_used: Mutex::new(Instant::now()),
                });
                // The replaced entry (settings changed) closes once its last publish ends.
                entries.insert(subscription_id, entry.clone());
                entry
            }
        };
        drop(entries);
        entry.touch();
        Ok(Arc::new(BrokerDestination {
            entry,
            timeouts: self.timeouts,
            allow_private: self.allow_private,
        }))
    }

    /// How many destinations the pool holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the pool holds no destination.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the entries whose subscription is gone, disabled, no longer a broker or has other
    /// settings, and those unused for [`IDLE_AFTER`]; their connections close.
    pub async fn prune(&self, db: &DatabaseConnection) -> anyhow::Result<usize> {
        use anyhow::Context as _;
        let ids: Vec<Uuid> = self.lock().keys().copied().collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let live: Vec<(Uuid, Option<String>, bool)> = entity::subscription::Entity::find()
            .select_only()
            .columns([
                entity::subscription::Column::Id,
                entity::subscription::Column::Destination,
                entity::subscription::Column::Enabled,
            ])
            .filter(entity::subscription::Column::Id.is_in(ids))
            .into_tuple()
            .all(db)
            .await
            .context("could not read the pooled destinations' subscriptions")?;
        let live: HashMap<Uuid, u64> = live
            .into_iter()
            .filter(|(_, _, enabled)| *enabled)
            .filter_map(|(id, stored, _)| stored.map(|stored| (id, fingerprint(&stored))))
            .collect();
        Ok(self.retain(&live, IDLE_AFTER))
    }

    /// Keeps the entries whose subscription is in `live` with the same fingerprint and that
    /// were used within `idle_after`; returns how many were dropped.
    fn retain(&self, live: &HashMap<Uuid, u64>, idle_after: Duration) -> usize {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|id, entry| {
            live.get(id) == Some(&entry.fingerprint) && entry.idle_for() < idle_after
        });
        before - entries.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<PoolEntry>>> {
        // A panic while holding the map leaves it consistent (every change is one call).
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs [`DestinationPool::prune`] every [`PRUNE_INTERVAL`] until `stop` turns true.
pub async fn run_pruning(
    pool: Arc<DestinationPool>,
    db: DatabaseConnection,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(PRUNE_INTERVAL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        match pool.prune(&db).await {
            Ok(0) => {}
            Ok(dropped) => tracing::debug!(dropped, "closed unused broker connections"),
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "pruning broker connections failed"
            ),
        }
    }
}

impl PoolEntry {
    fn touch(&self) {
        *self
            .last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }
}

/// A broker subscription's destination: its pooled entry.
#[derive(Debug)]
struct BrokerDestination {
    entry: Arc<PoolEntry>,
    timeouts: BrokerTimeouts,
    allow_private: bool,
}

impl BrokerDestination {
    async fn publish(&self, message: Message<'_>) -> AttemptResult {
        let (connection, generation) = match self.connection().await {
            Ok(connection) => connection,
            Err(result) => return result,
        };
        let timeouts = self.timeouts;
        let published: Published = match (&connection, &self.entry.settings) {
            (BrokerConnection::RedisStream(connection), BrokerSettings::RedisStream(settings)) => {
                let mut connection = connection.clone();
                redis_stream::publish(&mut connection, settings, message, timeouts).await
            }
            (BrokerConnection::Amqp(connection), BrokerSettings::Amqp(settings)) => {
                amqp::publish(connection, settings, message, timeouts).await
            }
            (BrokerConnection::Nats(connection), BrokerSettings::Nats(settings)) => {
                nats::publish(connection, settings, message, timeouts).await
            }
            _ => Published::broken("the pooled connection is of another kind".to_owned()),
        };
        if published.broken {
            let mut slot = self.entry.slot.lock().await;
            if slot.generation == generation {
                slot.connection = None;
            }
        }
        published.result
    }

    /// The open connection, or a new one (one connect at a time per entry).
    async fn connection(&self) -> Result<(BrokerConnection, u64), AttemptResult> {
        let mut slot = self.entry.slot.lock().await;
        if let Some(connection) = &slot.connection {
            return Ok((connection.clone(), slot.generation));
        }
        if let Some((at, failure)) = &slot.failed
            && at.elapsed() < CONNECT_FAILURE_HOLD
        {
            return Err(failure.clone());
        }
        match self.connect().await {
            Ok(connection) => {
                slot.generation += 1;
                slot.connection = Some(connection.clone());
                slot.failed = None;
                Ok((connection, slot.generation))
            }
            Err(failure) => {
                slot.failed = Some((Instant::now(), failure.clone()));
                Err(failure)
            }
        }
    }

    /// Resolves the broker's host, checks it against the SSRF rules, and connects.
    async fn connect(&self) -> Result<BrokerConnection, AttemptResult> {
        let settings = &self.entry.settings;
        let original = settings.url();
        let url = url::Url::parse(original)
            .map_err(|_| AttemptResult::permanent("the destination URL is not a URL"))?;
        let addr = match target::resolve_broker(&url, self.allow_private).await {
            Ok(addr) => addr,
            Err(BrokerAddressError::Forbidden(refused)) => {
                return Err(AttemptResult::permanent(refused.to_string()));
            }
            Err(BrokerAddressError::Unresolved(error)) => {
                return Err(AttemptResult::transient(error));
            }
        };
        let url = pinned(url, addr);
        let timeouts = self.timeouts;
        let connected = match settings {
            BrokerSettings::RedisStream(_) => redis_stream::connect(&url, original, timeouts)
                .await
                .map(BrokerConnection::RedisStream),
            BrokerSettings::Amqp(_) => amqp::connect(&url, original, timeouts)
                .await
                .map(|connection| BrokerConnection::Amqp(Arc::new(connection))),
            BrokerSettings::Nats(_) => nats::connect(&url, original, timeouts)
                .await
                .map(BrokerConnection::Nats),
        };
        connected.map_err(AttemptResult::transient)
    }
}

impl Destination for BrokerDestination {
    fn send<'a>(&'a self, message: Message<'a>) -> BoxFuture<'a, AttemptResult> {
        self.publish(message).boxed()
    }
}

/// `url` with its host replaced by the address the SSRF guard checked, so the client cannot
/// resolve the name to another one. TLS URLs keep the name (the certificate is checked for it).
fn pinned(mut url: url::Url, addr: std::net::SocketAddr) -> url::Url {
    if matches!(url.scheme(), "redis" | "amqp" | "nats") {
        let _ = url.set_ip_host(addr.ip());
        let _ = url.set_port(Some(addr.port()));
    }
    url
}

/// A fingerprint of a stored destination: it changes whenever the destination is written.
fn fingerprint(stored: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    stored.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> DestinationPool {
        DestinationPool::new(
            BrokerTimeouts {
                connect: Duration::from_secs(1),
                publish: Duration::from_secs(1),
            },
            true,
        )
    }

    fn stored(cipher: &entity::cipher::Cipher, stream: &str) -> String {
        cipher.encrypt(
            &BrokerSettings::RedisStream(redis_stream::RedisStreamSettings {
                url: "redis://127.0.0.1:6379".to_owned(),
                stream: stream.to_owned(),
                max_len: None,
            })
            .to_stored(),
        )
    }

    #[test]
    fn one_entry_per_subscription_replaced_when_its_settings_change() {
        let cipher = entity::cipher::Cipher::new(&[7; 32], &[]);
        let pool = pool();
        let id = Uuid::now_v7();
        let first = stored(&cipher, "a");
        pool.destination(id, &first, &cipher).expect("readable");
        pool.destination(id, &first, &cipher).expect("readable");
        assert_eq!(pool.len(), 1);
        let fingerprint_first = pool.lock()[&id].fingerprint;
        let second = stored(&cipher, "b");
        pool.destination(id, &second, &cipher).expect("readable");
        assert_eq!(pool.len(), 1);
        assert_ne!(pool.lock()[&id].fingerprint, fingerprint_first);
    }

    #[test]
    fn deleted_changed_and_idle_entries_are_dropped() {
        let cipher = entity::cipher::Cipher::new(&[7; 32], &[]);
        let pool = pool();
        let (kept, deleted, changed) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let kept_stored = stored(&cipher, "kept");
        for (id, stream) in [(deleted, "deleted"), (changed, "changed")] {
            pool.destination(id, &stored(&cipher, stream), &cipher)
                .expect("readable");
        }
        pool.destination(kept, &kept_stored, &cipher)
            .expect("readable");
        let live = HashMap::from([
            (kept, fingerprint(&kept_stored)),
            (changed, fingerprint(&stored(&cipher, "changed"))),
        ]);
        assert_eq!(pool.retain(&live, IDLE_AFTER), 2);
        assert_eq!(pool.len(), 1);
        assert!(pool.lock().contains_key(&kept));
        assert_eq!(pool.retain(&live, Duration::ZERO), 1, "idle");
        assert!(pool.is_empty());
    }

    #[test]
    fn unreadable_settings_are_a_failed_attempt() {
        let cipher = entity::cipher::Cipher::new(&[7; 32], &[]);
        let pool = pool();
        assert!(
            pool.destination(Uuid::now_v7(), "v1.garbage", &cipher)
                .is_err()
        );
        assert!(pool.is_empty());
    }

    #[test]
    fn plain_urls_are_pinned_to_the_checked_address_and_tls_ones_keep_their_name() {
        let addr: std::net::SocketAddr = "10.1.2.3:5672".parse().expect("address");
        let url = url::Url::parse("amqp://u:p@rabbit.internal/%2f").expect("url");
        assert_eq!(pinned(url, addr).as_str(), "amqp://u:p@10.1.2.3:5672/%2f");
        let url = url::Url::parse("amqps://u:p@rabbit.example.com/%2f").expect("url");
        assert_eq!(
            pinned(url, addr).as_str(),
            "amqps://u:p@rabbit.example.com/%2f"
        );
    }
}
