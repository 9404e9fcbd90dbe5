//! `TokenManager`: hands out valid Atlassian access tokens and refreshes them safely (DESIGN §4).
//!
//! Atlassian refresh tokens rotate on every use, and reusing an old one revokes the whole grant,
//! so two refreshes of one connection must never race — not between tasks of one process, nor
//! between processes sharing the database:
//!
//! 1. The stored access token is returned as long as it is valid for more than a margin.
//! 2. Otherwise one task per connection and process refreshes (a `tokio` mutex per connection id):
//!    the others wait for it and then find the fresh token in the database.
//! 3. Across processes the credential row is locked in a transaction: `SELECT … FOR UPDATE` on
//!    Postgres. SQLite has no row locks; there the transaction's first statement is a no-op
//!    `UPDATE` of the row, which takes SQLite's single write lock at once (like
//!    `BEGIN IMMEDIATE`), so a second process blocks (busy timeout) until the first commits.
//! 4. After taking the lock the row is read again: another process may have refreshed already.
//! 5. The token endpoint is called (transient failures retried a few times with backoff) and
//!    the rotated pair is saved, `token_version + 1`, in the same transaction.
//!
//! `invalid_grant` (HTTP 403 at Atlassian) marks the connection `reauth_required` and is never
//! retried. Tokens are never logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use chrono::{DateTime, Utc};
use entity::cipher::{Cipher, CipherError};
use entity::{oauth_credential, plugin_connection};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseBackend, DatabaseConnection, DbErr,
    EntityTrait, IntoActiveModel, QueryFilter, QuerySelect, TransactionTrait,
};
use uuid::Uuid;

use crate::jira::oauth::{JiraOAuth, OAuthError, TokenSet};

/// How long before its expiry an access token is refreshed, by default.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Why no access token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The connection does not exist or was not connected through OAuth.
    #[error("the connection has no OAuth credential")]
    NoCredential,
    /// The grant was revoked or expired: a person has to connect the site again.
    #[error("the connection needs to be connected again (its OAuth grant was rejected)")]
    ReauthRequired,
    /// `JIRA_CLIENT_ID` / `JIRA_CLIENT_SECRET` are not set, so tokens cannot be refreshed.
    #[error("JIRA_CLIENT_ID and JIRA_CLIENT_SECRET are not configured")]
    NotConfigured,
    /// The token endpoint failed after retries; try again later.
    #[error("refreshing the token failed: {0}")]
    Unavailable(String),
    /// The token endpoint refused the refresh for a reason other than a dead grant.
    #[error("the token endpoint refused the refresh: {0}")]
    Rejected(String),
    /// The stored tokens could not be decrypted (wrong or missing key).
    #[error(transparent)]
    Cipher(#[from] CipherError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbErr),
}

/// An access token and the credential version it belongs to.
#[derive(Clone)]
pub struct AccessToken {
    /// The bearer token.
    pub token: String,
    /// The credential's `token_version` when it was read; pass it to
    /// [`TokenManager::force_refresh`].
    pub version: i64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// What a refresh is for; decides, after the lock is taken, whether it is still needed.
#[derive(Debug, Clone, Copy)]
enum Need {
    /// The token expires within the margin.
    Expiring,
    /// The token of this version was refused by Jira.
    Stale(i64),
    /// The refresh token was not used since this instant.
    IdleSince(DateTime<Utc>),
}

/// Hands out valid access tokens of OAuth connections. Cheap to clone; clones share the
/// per-connection locks.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    cipher: Cipher,
    oauth: Option<JiraOAuth>,
    margin: Duration,
    retry: ExponentialBuilder,
    /// One mutex per connection id (single flight). Entries are small and bounded by the number
    /// of connections, so they are kept.
    locks: std::sync::Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("configured", &self.inner.oauth.is_some())
            .field("margin", &self.inner.margin)
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// A manager over `db`; `oauth` is None when the Atlassian app is not configured (then
    /// stored tokens are still handed out while valid, but never refreshed).
    pub fn new(db: DatabaseConnection, cipher: Cipher, oauth: Option<JiraOAuth>) -> Self {
        Self::with_margin(db, cipher, oauth, DEFAULT_MARGIN)
    }

    /// Like [`TokenManager::new`], refreshing tokens valid for less than `margin`.
    pub fn with_margin(
        db: DatabaseConnection,
        cipher: Cipher,
        oauth: Option<JiraOAuth>,
        margin: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                cipher,
                oauth,
                margin,
                // Three tries in all, 200 ms then 400 ms apart.
                retry: ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(2)
                    .with_jitter(),
                locks: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The OAuth client, if the Atlassian app is configured.
    pub fn oauth(&self) -> Option<&JiraOAuth> {
        self.inner.oauth.as_ref()
    }

    /// A valid access token of `connection_id`, refreshed first if it expires within the margin.
    pub async fn access_token(&self, connection_id: Uuid) -> Result<AccessToken, TokenError> {
        let (credential, connection) = self.read(connection_id).await?;
        if connection.status == plugin_connection::status::REAUTH_REQUIRED {
            return Err(TokenError::ReauthRequired);
        }
        if self.satisfied(&credential, Need::Expiring) {
            return self.token_of(&credential);
        }
        self.refresh(connection_id, Need::Expiring).await
    }

    /// A new access token after Jira refused `stale` (a 401 with a token believed valid). If
    /// another task or process refreshed in the meantime, its token is returned instead.
    pub async fn force_refresh(
        &self,
        connection_id: Uuid,
        stale: &AccessToken,
    ) -> Result<AccessToken, TokenError> {
        self.refresh(connection_id, Need::Stale(stale.version))
            .await
    }

    /// Refreshes the credential if its refresh token was not used for `idle`, so that Atlassian
    /// does not expire it (it does after 90 days without use). Returns whether it refreshed.
    pub async fn refresh_if_idle(
        &self,
        connection_id: Uuid,
        idle: Duration,
    ) -> Result<bool, TokenError> {
        let cutoff = Utc::now() - chrono::Duration::from_std(idle).unwrap_or(chrono::Duration::MAX);
        let before = self.read(connection_id).await?.0.token_version;
        let after = self
            .refresh(connection_id, Need::IdleSince(cutoff))
            .await?
            .version;
        Ok(after != before)
    }

    /// Connections with an OAuth credential whose refresh token was not used since `cutoff`,
    /// active ones only, at most `limit`.
    pub async fn idle_connections(
        &self,
        cutoff: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<Uuid>, DbErr> {
        use sea_orm::Condition;
        let idle = Condition::any()
            .add(oauth_credential::Column::RefreshedAt.lt(cutoff))
            .add(
                Condition::all()
                    .add(oauth_credential::Column::RefreshedAt.is_null())
                    .add(oauth_credential::Column::CreatedAt.lt(cutoff)),
            );
        let rows = oauth_credential::Entity::find()
            .inner_join(plugin_connection::Entity)
            .filter(plugin_connection::Column::Status.eq(plugin_connection::status::ACTIVE))
            .filter(idle)
            .limit(limit)
            .all(&self.inner.db)
            .await?;
        Ok(rows.into_iter().map(|row| row.connection_id).collect())
    }

    async fn read(
        &self,
        connection_id: Uuid,
    ) -> Result<(oauth_credential::Model, plugin_connection::Model), TokenError> {
        match oauth_credential::Entity::find_by_id(connection_id)
            .find_also_related(plugin_connection::Entity)
            .one(&self.inner.db)
            .await?
        {
            Some((credential, Some(connection))) => Ok((credential, connection)),
            _ => Err(TokenError::NoCredential),
        }
    }

    fn satisfied(&self, credential: &oauth_credential::Model, need: Need) -> bool {
        match need {
            Need::Expiring => {
                let margin = chrono::Duration::from_std(self.inner.margin)
                    .unwrap_or(chrono::Duration::zero());
                credential.expires_at - Utc::now() > margin
            }
            Need::Stale(version) => credential.token_version != version,
            Need::IdleSince(cutoff) => {
                credential.refreshed_at.unwrap_or(credential.created_at) > cutoff
            }
        }
    }

    fn token_of(&self, credential: &oauth_credential::Model) -> Result<AccessToken, TokenError> {
        Ok(AccessToken {
            token: self.inner.cipher.decrypt(&credential.access_token)?,
            version: credential.token_version,
        })
    }

    fn lock_for(&self, connection_id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.inner.locks.lock() {
            Ok(locks) => locks,
            // A panic while holding this short critical section leaves the map intact.
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.entry(connection_id).or_default().clone()
    }

    /// Refreshes in a task of its own, so that a caller giving up (an enrichment budget running
    /// out, a request cancelled) does not cancel the refresh half-way: once the token endpoint
    /// has rotated the refresh token, the new pair must be saved, or the next refresh would
    /// reuse the old token and Atlassian would revoke the grant.
    async fn refresh(&self, connection_id: Uuid, need: Need) -> Result<AccessToken, TokenError> {
        let manager = self.clone();
        tokio::spawn(async move { manager.refresh_to_completion(connection_id, need).await })
            .await
            .map_err(|error| {
                TokenError::Unavailable(format!("the token refresh task failed: {error}"))
            })?
    }

    async fn refresh_to_completion(
        &self,
        connection_id: Uuid,
        need: Need,
    ) -> Result<AccessToken, TokenError> {
        let lock = self.lock_for(connection_id);
        let _single_flight = lock.lock().await;

        // The task that held the lock before may have refreshed already: check without taking
        // the database lock first.
        let (credential, connection) = self.read(connection_id).await?;
        if connection.status == plugin_connection::status::REAUTH_REQUIRED {
            return Err(TokenError::ReauthRequired);
        }
        if self.satisfied(&credential, need) {
            return self.token_of(&credential);
        }

        let db = &self.inner.db;
        let txn = db.begin().await?;
        let backend = db.get_database_backend();
        let query = oauth_credential::Entity::find_by_id(connection_id);
        let credential = if backend == DatabaseBackend::Postgres {
            query.lock_exclusive().one(&txn).await?
        } else {
            // SQLite: take the database's write lock now (see the module docs).
            oauth_credential::Entity::update_many()
                .col_expr(
                    oauth_credential::Column::TokenVersion,
                    Expr::col(oauth_credential::Column::TokenVersion),
                )
                .filter(oauth_credential::Column::ConnectionId.eq(connection_id))
                .exec(&txn)
                .await?;
            query.one(&txn).await?
        };
        let credential = credential.ok_or(TokenError::NoCredential)?;
        let connection = plugin_connection::Entity::find_by_id(connection_id)
            .one(&txn)
            .await?
            .ok_or(TokenError::NoCredential)?;
        if connection.status == plugin_connection::status::REAUTH_REQUIRED {
            return Err(TokenError::ReauthRequired);
        }
        if self.satisfied(&credential, need) {
            txn.commit().await?;
            return self.token_of(&credential);
        }

        let Some(oauth) = &self.inner.oauth else {
            return Err(TokenError::NotConfigured);
        };
        let refresh_token = self.inner.cipher.decrypt(&credential.refresh_token)?;
        let result = (|| oauth.refresh(&refresh_token))
            .retry(self.inner.retry)
            .when(OAuthError::is_transient)
            .notify(|error, delay| {
                tracing::warn!(
                    connection.id = %connection_id,
                    error = %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "token refresh failed, retrying"
                );
            })
            .await;

        let now = Utc::now();
        let version = credential.token_version;
        let mut row = credential.into_active_model();
        row.updated_at = Set(now);
        match result {
            Ok(tokens) => {
                let TokenSet {
                    access_token,
                    refresh_token,
                    expires_at,
                    scope,
                } = tokens;
                row.access_token = Set(self.inner.cipher.encrypt(&access_token));
                row.refresh_token = Set(self.inner.cipher.encrypt(&refresh_token));
                row.expires_at = Set(expires_at);
                if !scope.is_empty() {
                    row.scope = Set(scope);
                }
                row.token_version = Set(version + 1);
                row.refreshed_at = Set(Some(now));
                row.last_error = Set(None);
                row.update(&txn).await?;
                txn.commit().await?;
                count("success");
                tracing::info!(connection.id = %connection_id, ?need, "token refreshed");
                Ok(AccessToken {
                    token: access_token,
                    version: version + 1,
                })
            }
            Err(OAuthError::InvalidGrant(detail)) => {
                row.last_error = Set(Some(format!("invalid_grant: {detail}")));
                row.update(&txn).await?;
                plugin_connection::Entity::update_many()
                    .col_expr(
                        plugin_connection::Column::Status,
                        Expr::value(plugin_connection::status::REAUTH_REQUIRED),
                    )
                    .col_expr(plugin_connection::Column::UpdatedAt, Expr::value(now))
                    .filter(plugin_connection::Column::Id.eq(connection_id))
                    .exec(&txn)
                    .await?;
                txn.commit().await?;
                count("invalid_grant");
                tracing::warn!(
                    connection.id = %connection_id,
                    "the OAuth grant was rejected; the connection needs to be connected again"
                );
                Err(TokenError::ReauthRequired)
            }
            Err(error) => {
                let transient = error.is_transient();
                row.last_error = Set(Some(error.to_string()));
                row.update(&txn).await?;
                txn.commit().await?;
                count(if transient { "unavailable" } else { "rejected" });
                tracing::warn!(connection.id = %connection_id, error = %error, "token refresh failed");
                Err(if transient {
                    TokenError::Unavailable(error.to_string())
                } else {
                    TokenError::Rejected(error.to_string())
                })
            }
        }
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("hookline_token_refreshes_total", "outcome" => outcome).increment(1);
}
