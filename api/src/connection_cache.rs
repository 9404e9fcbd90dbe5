//! What ingest needs to know about a connection, kept in memory for a few seconds so that a busy
//! webhook URL costs one database round trip (its insert), not two.
//!
//! Only active connections (and `reauth_required` ones, which still receive events) are cached;
//! an unknown or disabled connection is looked up every time, so a new or re-enabled connection
//! works at once. A connection deleted through this process's API is dropped from its cache at
//! once; other API processes notice within the time to live (their insert then fails on the
//! foreign key and the request is answered 404 all the same). A signature that does not verify
//! against a cached secret is checked again against a fresh read before it is refused, and so
//! is a dynamic delivery whose `matchedWebhookIds` names no cached webhook (one registered a
//! moment ago, through another process).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use entity::cipher::Cipher;
use entity::jira_webhook;
use entity::plugin_connection::{self, status as connection_status};
use plugins::keyed_lock::KeyedLock;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use secrecy::SecretSlice;
use uuid::Uuid;

/// Entries kept before expired ones are dropped (and, if still full, all of them).
const MAX_ENTRIES: usize = 10_000;

/// A connection as ingest sees it.
#[derive(Debug)]
pub struct IngestConnection {
    /// The connection id.
    pub id: Uuid,
    /// Its company.
    pub company_id: Uuid,
    /// Its plugin, e.g. `"jira"`.
    pub plugin_id: String,
    /// The decrypted webhook secret, when the connection has one.
    pub webhook_secret: Option<SecretSlice<u8>>,
    /// Jira's ids of the dynamic webhooks hookline registered for the connection (a delivery's
    /// `matchedWebhookIds` must name one of them).
    pub dynamic_webhook_ids: Vec<i64>,
}

/// Why a connection could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The database did not answer.
    #[error("could not read the connection")]
    Database(#[source] sea_orm::DbErr),
    /// The stored webhook secret could not be decrypted (wrong key or corrupted row).
    #[error("could not decrypt the webhook secret of connection {0}")]
    Secret(Uuid, #[source] entity::cipher::CipherError),
}

/// The cached connections by id, each with the time it was read from the database.
type Entries = HashMap<Uuid, (Instant, Arc<IngestConnection>)>;

/// Connections by id, each kept for a fixed time to live. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionCache {
    ttl: Duration,
    entries: Arc<RwLock<Entries>>,
    /// Reads in progress, by connection id: a burst of webhooks for one connection on a cold
    /// cache waits for one database read instead of each making its own.
    loading: KeyedLock<Uuid>,
}

impl ConnectionCache {
    /// A cache whose entries live for `ttl` (zero: nothing is cached).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Arc::default(),
            loading: KeyedLock::new(),
        }
    }

    /// The connection, if it exists and is not disabled: from the cache when fresh.
    pub async fn get(
        &self,
        db: &DatabaseConnection,
        cipher: &Cipher,
        id: Uuid,
    ) -> Result<Option<Arc<IngestConnection>>, LookupError> {
        if let Some(connection) = self.fresh(id) {
            return Ok(Some(connection));
        }
        let _reading = self.loading.lock(id).await;
        // Whoever read it before us may have just cached it.
        match self.fresh(id) {
            Some(connection) => Ok(Some(connection)),
            None => self.reload(db, cipher, id).await,
        }
    }

    /// Reads the connection from the database, replacing whatever is cached.
    pub async fn reload(
        &self,
        db: &DatabaseConnection,
        cipher: &Cipher,
        id: Uuid,
    ) -> Result<Option<Arc<IngestConnection>>, LookupError> {
        let model = plugin_connection::Entity::find_by_id(id)
            .one(db)
            .await
            .map_err(LookupError::Database)?;
        let Some(model) = model.filter(|model| model.status != connection_status::DISABLED) else {
            self.forget(id);
            return Ok(None);
        };
        let webhook_secret = match &model.webhook_secret {
            Some(stored) => {
                let secret = cipher
                    .decrypt(stored)
                    .map_err(|error| LookupError::Secret(id, error))?;
                Some(SecretSlice::from(secret.into_bytes()))
            }
            None => None,
        };
        let dynamic_webhook_ids = jira_webhook::Entity::find()
            .select_only()
            .column(jira_webhook::Column::WebhookId)
            .filter(jira_webhook::Column::ConnectionId.eq(id))
            .into_tuple()
            .all(db)
            .await
            .map_err(LookupError::Database)?;
        let connection = Arc::new(IngestConnection {
            id: model.id,
            company_id: model.company_id,
            plugin_id: model.plugin_id,
            webhook_secret,
            dynamic_webhook_ids,
        });
        self.remember(Arc::clone(&connection));
        Ok(Some(connection))
    }

    /// Drops a connection from the cache (it was deleted or changed through this process).
    pub fn forget(&self, id: Uuid) {
        if let Ok(mut entries) = self.entries.write() {
            entries.remove(&id);
        }
    }

    fn fresh(&self, id: Uuid) -> Option<Arc<IngestConnection>> {
        let entries = self.entries.read().ok()?;
        let (fetched, connection) = entries.get(&id)?;
        (fetched.elapsed() < self.ttl).then(|| Arc::clone(connection))
    }

    fn remember(&self, connection: Arc<IngestConnection>) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (fetched, _)| fetched.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(connection.id, (Instant::now(), connection));
    }
}
