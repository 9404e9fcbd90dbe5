//! `TokenManager`: hands out valid Atlassian access tokens and refreshes them safely, one
//! refresh per OAuth grant (DESIGN §4).
//!
//! One consent is one grant (`oauth_grant`) with ONE rotating refresh token for every site it
//! lists. Atlassian rotates the refresh token on every use, and a rotated-out token presented
//! again after its reuse leeway (10 minutes) revokes the whole grant. So two refreshes of one
//! grant must never race — not between tasks of one process, nor between processes:
//!
//! 1. The stored access token is returned as long as it is valid for more than a margin.
//! 2. Otherwise one task per grant and process refreshes ([`KeyedLock`], a bounded wait): the
//!    others wait for it and then find the fresh token in the database.
//! 3. Across processes, the refresh **lease** on the grant row: one conditional `UPDATE`
//!    (same `token_version`, no lease or an expired one) that returns the row. No transaction,
//!    no pooled connection and no SQLite write lock is held while Atlassian answers. A process
//!    that finds the lease taken waits (bounded) for the holder's new `token_version`.
//! 4. The token endpoint is called (transient failures retried a few times with backoff), and
//!    the rotated pair is saved with a compare-and-set on `token_version`, which also frees
//!    the lease. This runs in a task of its own, so a caller giving up cannot cancel it.
//!
//! **A refresh token is never presented outside Atlassian's reuse leeway once it may have been
//! used.** Taking the lease records when the current refresh token was first sent
//! (`refresh_token_used_at`). It is sent again (a retry, or another process after a crash) only
//! after an answer that may not have rotated it (5xx, timeout, unreadable answer), and only
//! within [`RefreshPolicy::reuse_leeway`] of that first use; past it the grant is marked
//! `reauth_required` instead. An answer that certainly did not use it (no connection made, a
//! refusal) forgets that use again.
//!
//! **A rotated pair that could not be saved** (the database went away) is kept in memory, logged
//! loudly and counted (`hookline_token_pair_save_failures_total`), saved again in the
//! background, and saved before any other refresh of that grant by this process.
//!
//! `invalid_grant` (HTTP 403 at Atlassian) marks the grant and every site of it
//! `reauth_required` and is never retried. Tokens are never logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use chrono::{DateTime, SubsecRound as _, Utc};
use entity::cipher::{Cipher, CipherError};
use entity::{oauth_grant, plugin_connection};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};
use uuid::Uuid;

use crate::jira::oauth::{JiraOAuth, OAuthError, TokenSet};
use crate::keyed_lock::KeyedLock;

/// How long before its expiry an access token is refreshed, by default.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(5 * 60);

/// How often a task waiting for another process' refresh looks at the grant again.
const WAIT_POLL: Duration = Duration::from_millis(50);

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
    /// The token endpoint failed after retries, or another refresh took too long; try again
    /// later.
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

/// An access token and the grant version it belongs to.
#[derive(Clone)]
pub struct AccessToken {
    /// The bearer token.
    pub token: String,
    /// The grant the token belongs to.
    pub grant_id: Uuid,
    /// The grant's `token_version` when it was read; pass the token to
    /// [`TokenManager::force_refresh`].
    pub version: i64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("grant_id", &self.grant_id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// How a [`TokenManager`] refreshes.
#[derive(Debug, Clone, Copy)]
pub struct RefreshPolicy {
    /// Access tokens valid for less than this are refreshed.
    pub margin: Duration,
    /// How long a refresh lease holds: longer than a refresh with its retries takes, so that a
    /// live holder keeps it, and short enough that a crashed holder's lease is taken over soon.
    pub lease: Duration,
    /// How long a caller waits for another task's or process' refresh of the same grant before
    /// it gives up (`Unavailable`).
    pub wait: Duration,
    /// How long after its first use a refresh token may be presented again. Atlassian's reuse
    /// leeway is 10 minutes from the rotation; the default keeps 2 minutes of slack for clocks
    /// of different hosts.
    pub reuse_leeway: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            margin: DEFAULT_MARGIN,
            lease: Duration::from_secs(60),
            wait: Duration::from_secs(20),
            reuse_leeway: Duration::from_secs(8 * 60),
        }
    }
}

/// What a refresh is for; decides, once the refresh may start, whether it is still needed.
#[derive(Debug, Clone, Copy)]
enum Need {
    /// The token expires within the margin.
    Expiring,
    /// The token of this version was refused by Jira.
    Stale(i64),
    /// The refresh token was not used since this instant.
    IdleSince(DateTime<Utc>),
}

/// The refresh lease on a grant, as the conditional UPDATE that took it returned the row.
struct Lease {
    id: Uuid,
    grant: oauth_grant::Model,
    /// Whether taking the lease was the first use of this refresh token (nobody sent it before).
    first_use: bool,
}

/// A rotated pair that could not be saved, with the version it replaces.
struct KeptPair {
    from_version: i64,
    tokens: TokenSet,
}

/// Hands out valid access tokens of OAuth connections. Cheap to clone; clones share the
/// per-grant single flight and the kept pairs.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    cipher: Cipher,
    oauth: Option<JiraOAuth>,
    policy: RefreshPolicy,
    retry: ExponentialBuilder,
    /// One refresh per grant in this process.
    flights: KeyedLock<Uuid>,
    /// Rotated pairs not saved yet, by grant.
    kept: Mutex<HashMap<Uuid, KeptPair>>,
    /// Valid access tokens read recently, by connection: while one is good, a Jira call does
    /// not read the database (a batch of events makes many calls per connection).
    recent: Mutex<HashMap<Uuid, RecentToken>>,
}

/// How long a token read from the database is handed out without reading it again: a grant
/// revoked or a connection marked for re-authorisation elsewhere is noticed within this time
/// (sooner when Jira refuses the token, which drops it).
const RECENT_TTL: Duration = Duration::from_secs(5);

/// Most connections whose token is kept in memory; past it the memory starts over.
const RECENT_CAPACITY: usize = 10_000;

/// An access token as read from its grant, and when.
struct RecentToken {
    token: AccessToken,
    expires_at: DateTime<Utc>,
    read_at: std::time::Instant,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("configured", &self.inner.oauth.is_some())
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// A manager over `db` with the default [`RefreshPolicy`]; `oauth` is None when the
    /// Atlassian app is not configured (then stored tokens are still handed out while valid,
    /// but never refreshed).
    pub fn new(db: DatabaseConnection, cipher: Cipher, oauth: Option<JiraOAuth>) -> Self {
        Self::with_policy(db, cipher, oauth, RefreshPolicy::default())
    }

    /// Like [`TokenManager::new`], refreshing as `policy` says.
    pub fn with_policy(
        db: DatabaseConnection,
        cipher: Cipher,
        oauth: Option<JiraOAuth>,
        policy: RefreshPolicy,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                cipher,
                oauth,
                policy,
                // Three tries in all, 200 ms then 400 ms apart.
                retry: ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(2)
                    .with_jitter(),
                flights: KeyedLock::new(),
                kept: Mutex::new(HashMap::new()),
                recent: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The OAuth client, if the Atlassian app is configured.
    pub fn oauth(&self) -> Option<&JiraOAuth> {
        self.inner.oauth.as_ref()
    }

    /// A valid access token of `connection_id` (its grant's), refreshed first if it expires
    /// within the margin.
    pub async fn access_token(&self, connection_id: Uuid) -> Result<AccessToken, TokenError> {
        if let Some(token) = self.recent_token(connection_id) {
            return Ok(token);
        }
        let grant = self.grant_of(connection_id).await?;
        if self.satisfied(&grant, Need::Expiring) {
            let token = self.token_of(&grant)?;
            self.remember(connection_id, &token, grant.expires_at);
            return Ok(token);
        }
        self.refresh(grant.id, Need::Expiring).await
    }

    /// A token of `connection_id` read less than [`RECENT_TTL`] ago that is still valid for
    /// more than the margin.
    fn recent_token(&self, connection_id: Uuid) -> Option<AccessToken> {
        let recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        let entry = recent.get(&connection_id)?;
        let margin = chrono::Duration::from_std(self.inner.policy.margin)
            .unwrap_or(chrono::Duration::zero());
        (entry.read_at.elapsed() < RECENT_TTL && entry.expires_at - Utc::now() > margin)
            .then(|| entry.token.clone())
    }

    fn remember(&self, connection_id: Uuid, token: &AccessToken, expires_at: DateTime<Utc>) {
        let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT_CAPACITY {
            recent.clear();
        }
        recent.insert(
            connection_id,
            RecentToken {
                token: token.clone(),
                expires_at,
                read_at: std::time::Instant::now(),
            },
        );
    }

    /// Drops every token kept in memory, so the next call of each connection reads its grant:
    /// for a change made to the grants behind the manager's back (an operator's repair, a test
    /// moving expiry into the past).
    pub fn forget_recent_tokens(&self) {
        let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.clear();
    }

    fn forget(&self, connection_id: Uuid) {
        let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.remove(&connection_id);
    }

    /// A new access token after Jira refused `stale` (a 401 with a token believed valid). If
    /// another task or process refreshed in the meantime, its token is returned instead.
    pub async fn force_refresh(
        &self,
        connection_id: Uuid,
        stale: &AccessToken,
    ) -> Result<AccessToken, TokenError> {
        self.forget(connection_id);
        let grant = self.grant_of(connection_id).await?;
        if grant.id != stale.grant_id {
            // The site was connected again through another consent since.
            return self.access_token(connection_id).await;
        }
        self.refresh(grant.id, Need::Stale(stale.version)).await
    }

    /// Refreshes grant `grant_id` if its refresh token was not used for `idle`, so that
    /// Atlassian does not expire it (it does after 90 days without use). Returns whether it
    /// refreshed.
    pub async fn refresh_if_idle(
        &self,
        grant_id: Uuid,
        idle: Duration,
    ) -> Result<bool, TokenError> {
        let cutoff = Utc::now() - chrono::Duration::from_std(idle).unwrap_or(chrono::Duration::MAX);
        let before = self.read_grant(grant_id).await?.token_version;
        let after = self
            .refresh(grant_id, Need::IdleSince(cutoff))
            .await?
            .version;
        Ok(after != before)
    }

    /// Active grants whose refresh token was not used since `cutoff`, in id order, after
    /// `after` (exclusive), at most `limit`: page through them to visit every one.
    pub async fn idle_grants(
        &self,
        cutoff: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<Uuid>, DbErr> {
        let idle = Condition::any()
            .add(oauth_grant::Column::RefreshedAt.lt(cutoff))
            .add(
                Condition::all()
                    .add(oauth_grant::Column::RefreshedAt.is_null())
                    .add(oauth_grant::Column::CreatedAt.lt(cutoff)),
            );
        let mut query = oauth_grant::Entity::find()
            .select_only()
            .column(oauth_grant::Column::Id)
            .filter(oauth_grant::Column::Status.eq(oauth_grant::status::ACTIVE))
            .filter(idle)
            .order_by_asc(oauth_grant::Column::Id)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(oauth_grant::Column::Id.gt(after));
        }
        query.into_tuple().all(&self.inner.db).await
    }

    /// The usable grant of a connection.
    async fn grant_of(&self, connection_id: Uuid) -> Result<oauth_grant::Model, TokenError> {
        let (connection, grant) = plugin_connection::Entity::find_by_id(connection_id)
            .find_also_related(oauth_grant::Entity)
            .one(&self.inner.db)
            .await?
            .ok_or(TokenError::NoCredential)?;
        let reauth = connection.status == plugin_connection::status::REAUTH_REQUIRED;
        match grant {
            Some(grant) if grant.status == oauth_grant::status::REAUTH_REQUIRED || reauth => {
                Err(TokenError::ReauthRequired)
            }
            Some(grant) => Ok(grant),
            // A site the latest consent no longer lists.
            None if reauth => Err(TokenError::ReauthRequired),
            None => Err(TokenError::NoCredential),
        }
    }

    async fn read_grant(&self, grant_id: Uuid) -> Result<oauth_grant::Model, TokenError> {
        oauth_grant::Entity::find_by_id(grant_id)
            .one(&self.inner.db)
            .await?
            .ok_or(TokenError::NoCredential)
    }

    fn satisfied(&self, grant: &oauth_grant::Model, need: Need) -> bool {
        match need {
            Need::Expiring => {
                let margin = chrono::Duration::from_std(self.inner.policy.margin)
                    .unwrap_or(chrono::Duration::zero());
                grant.expires_at - Utc::now() > margin
            }
            Need::Stale(version) => grant.token_version != version,
            Need::IdleSince(cutoff) => grant.refreshed_at.unwrap_or(grant.created_at) > cutoff,
        }
    }

    fn token_of(&self, grant: &oauth_grant::Model) -> Result<AccessToken, TokenError> {
        Ok(AccessToken {
            token: self.inner.cipher.decrypt(&grant.access_token)?,
            grant_id: grant.id,
            version: grant.token_version,
        })
    }

    /// Refreshes grant `grant_id` unless `need` is met by the time it may: one task per grant
    /// in this process, one lease holder across processes.
    async fn refresh(&self, grant_id: Uuid, need: Need) -> Result<AccessToken, TokenError> {
        let wait = self.inner.policy.wait;
        // Waiting here is safe to abandon.
        let flight = tokio::time::timeout(wait, self.inner.flights.lock(grant_id))
            .await
            .map_err(|_| {
                count("waited_too_long");
                TokenError::Unavailable(format!(
                    "another refresh of this grant has been running for more than {wait:?}"
                ))
            })?;
        // From here on the refresh runs in a task of its own, holding the flight, so that a
        // caller giving up (an enrichment budget running out, a request cancelled) does not
        // cancel it half-way: once the token endpoint has rotated the refresh token, the new
        // pair must be saved (or kept), and a taken lease must be given back.
        let manager = self.clone();
        tokio::spawn(async move {
            let result = manager.refresh_in_flight(grant_id, need).await;
            drop(flight);
            result
        })
        .await
        .map_err(|error| {
            TokenError::Unavailable(format!("the token refresh task failed: {error}"))
        })?
    }

    async fn refresh_in_flight(
        &self,
        grant_id: Uuid,
        need: Need,
    ) -> Result<AccessToken, TokenError> {
        // A rotated pair this process could not save comes first: refreshing with the stored
        // (rotated-out) refresh token instead could revoke the grant.
        self.save_kept_pair(grant_id).await?;
        let deadline = tokio::time::Instant::now() + self.inner.policy.wait;
        loop {
            let grant = self.read_grant(grant_id).await?;
            if grant.status == oauth_grant::status::REAUTH_REQUIRED {
                return Err(TokenError::ReauthRequired);
            }
            if self.satisfied(&grant, need) {
                return self.token_of(&grant);
            }
            let Some(oauth) = &self.inner.oauth else {
                return Err(TokenError::NotConfigured);
            };
            if let Some(lease) = self.take_lease(&grant).await? {
                return self.rotate(oauth, lease, need).await;
            }
            // Another process holds the lease: wait for its new version instead of refreshing.
            if tokio::time::Instant::now() >= deadline {
                count("waited_too_long");
                return Err(TokenError::Unavailable(format!(
                    "another process has been refreshing this grant for more than {:?}",
                    self.inner.policy.wait
                )));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Takes the refresh lease of `grant` if nobody holds it and the grant is still at the
    /// version read; records the refresh token's first use.
    async fn take_lease(&self, grant: &oauth_grant::Model) -> Result<Option<Lease>, DbErr> {
        // Microseconds: what Postgres keeps, so that the returned row compares equal.
        let now = Utc::now().trunc_subsecs(6);
        let id = Uuid::new_v4();
        let lease = chrono::Duration::from_std(self.inner.policy.lease)
            .unwrap_or(chrono::Duration::minutes(1));
        let rows = oauth_grant::Entity::update_many()
            .col_expr(oauth_grant::Column::RefreshLeaseId, Expr::value(id))
            .col_expr(
                oauth_grant::Column::RefreshLeaseUntil,
                Expr::value(now + lease),
            )
            .col_expr(
                oauth_grant::Column::RefreshTokenUsedAt,
                Func::coalesce([
                    Expr::col(oauth_grant::Column::RefreshTokenUsedAt),
                    Expr::value(now),
                ])
                .into(),
            )
            .filter(oauth_grant::Column::Id.eq(grant.id))
            .filter(oauth_grant::Column::TokenVersion.eq(grant.token_version))
            .filter(oauth_grant::Column::Status.eq(oauth_grant::status::ACTIVE))
            .filter(
                Condition::any()
                    .add(oauth_grant::Column::RefreshLeaseUntil.is_null())
                    .add(oauth_grant::Column::RefreshLeaseUntil.lt(now)),
            )
            .exec_with_returning(&self.inner.db)
            .await?;
        Ok(rows.into_iter().next().map(|grant| Lease {
            id,
            first_use: grant.refresh_token_used_at == Some(now),
            grant,
        }))
    }

    /// Holding the lease: calls the token endpoint and saves the outcome.
    async fn rotate(
        &self,
        oauth: &JiraOAuth,
        lease: Lease,
        need: Need,
    ) -> Result<AccessToken, TokenError> {
        let Lease {
            id: lease_id,
            grant,
            first_use,
        } = lease;
        let leeway = chrono::Duration::from_std(self.inner.policy.reuse_leeway)
            .unwrap_or(chrono::Duration::minutes(8));
        let first_used_at = grant.refresh_token_used_at.unwrap_or_else(Utc::now);
        if !first_use && Utc::now() - first_used_at > leeway {
            return self.refuse_reuse(&grant, first_used_at).await;
        }
        let refresh_token = match self.inner.cipher.decrypt(&grant.refresh_token) {
            Ok(token) => token,
            Err(error) => {
                self.release(&grant, lease_id, &error.to_string(), first_use)
                    .await;
                return Err(error.into());
            }
        };

        // Whether any try may have been acted on (and so rotated the token).
        let maybe_used = AtomicBool::new(false);
        let within_leeway = || Utc::now() - first_used_at < leeway;
        let result = (|| async {
            let result = oauth.refresh(&refresh_token).await;
            if let Err(error) = &result
                && error.may_have_rotated()
            {
                maybe_used.store(true, Ordering::SeqCst);
            }
            result
        })
        .retry(self.inner.retry)
        .when(|error: &OAuthError| error.is_transient() && within_leeway())
        .notify(|error, delay| {
            tracing::warn!(
                grant.id = %grant.id,
                error = %error,
                retry_in_ms = delay.as_millis() as u64,
                "token refresh failed, retrying with the same refresh token within the reuse leeway"
            );
        })
        .await;

        match result {
            Ok(tokens) => self.save_rotated(&grant, tokens, need).await,
            Err(OAuthError::InvalidGrant(detail)) => {
                count("invalid_grant");
                tracing::warn!(
                    grant.id = %grant.id,
                    "the OAuth grant was rejected; its sites need to be connected again"
                );
                let marked = self
                    .mark_reauth_required(&grant, &format!("invalid_grant: {detail}"))
                    .await?;
                if marked {
                    Err(TokenError::ReauthRequired)
                } else {
                    // A new consent replaced the rejected tokens meanwhile.
                    Err(TokenError::Unavailable(
                        "the grant was connected again while it was refreshed: try again".into(),
                    ))
                }
            }
            Err(error) => {
                let transient = error.is_transient();
                count(if transient { "unavailable" } else { "rejected" });
                tracing::warn!(grant.id = %grant.id, error = %error, "token refresh failed");
                // A token that certainly was not acted on may be sent again at any time.
                let forget_use = first_use && !maybe_used.load(Ordering::SeqCst);
                self.release(&grant, lease_id, &error.to_string(), forget_use)
                    .await;
                Err(if transient {
                    TokenError::Unavailable(error.to_string())
                } else {
                    TokenError::Rejected(error.to_string())
                })
            }
        }
    }

    /// Saves a rotated pair; keeps it if the database fails.
    async fn save_rotated(
        &self,
        grant: &oauth_grant::Model,
        tokens: TokenSet,
        need: Need,
    ) -> Result<AccessToken, TokenError> {
        let token = AccessToken {
            token: tokens.access_token.clone(),
            grant_id: grant.id,
            version: grant.token_version + 1,
        };
        match self.save_pair(grant.id, grant.token_version, &tokens).await {
            Ok(true) => {
                count("success");
                tracing::info!(grant.id = %grant.id, ?need, "token refreshed");
                Ok(token)
            }
            Ok(false) => {
                // A new consent replaced the tokens meanwhile: they are the ones to use.
                // Atlassian did refresh; the pair is just not the one kept.
                count("success");
                tracing::info!(grant.id = %grant.id, "the grant changed while it was refreshed");
                let current = self.read_grant(grant.id).await?;
                if current.status == oauth_grant::status::REAUTH_REQUIRED {
                    return Err(TokenError::ReauthRequired);
                }
                if self.satisfied(&current, Need::Expiring) {
                    return self.token_of(&current);
                }
                Ok(token)
            }
            Err(error) => {
                metrics::counter!("hookline_token_pair_save_failures_total").increment(1);
                tracing::error!(
                    grant.id = %grant.id,
                    error = %error,
                    "COULD NOT SAVE A ROTATED TOKEN PAIR: it is kept in memory and saved before \
                     any other refresh of this grant; the stored refresh token is rotated out"
                );
                self.keep_pair(grant.id, grant.token_version, tokens);
                count("unsaved");
                Ok(token)
            }
        }
    }

    /// Compare-and-set of a rotated pair on `from_version`; frees the lease. Returns false if
    /// the grant is no longer at that version (or no longer active).
    async fn save_pair(
        &self,
        grant_id: Uuid,
        from_version: i64,
        tokens: &TokenSet,
    ) -> Result<bool, DbErr> {
        let now = Utc::now();
        let mut update = oauth_grant::Entity::update_many()
            .col_expr(
                oauth_grant::Column::AccessToken,
                Expr::value(self.inner.cipher.encrypt(&tokens.access_token)),
            )
            .col_expr(
                oauth_grant::Column::RefreshToken,
                Expr::value(self.inner.cipher.encrypt(&tokens.refresh_token)),
            )
            .col_expr(
                oauth_grant::Column::ExpiresAt,
                Expr::value(tokens.expires_at),
            )
            .col_expr(
                oauth_grant::Column::TokenVersion,
                Expr::value(from_version + 1),
            )
            .col_expr(oauth_grant::Column::RefreshedAt, Expr::value(Some(now)))
            .col_expr(oauth_grant::Column::LastError, Expr::value(None::<String>))
            .col_expr(
                oauth_grant::Column::RefreshLeaseId,
                Expr::value(None::<Uuid>),
            )
            .col_expr(
                oauth_grant::Column::RefreshLeaseUntil,
                Expr::value(None::<DateTime<Utc>>),
            )
            .col_expr(
                oauth_grant::Column::RefreshTokenUsedAt,
                Expr::value(None::<DateTime<Utc>>),
            )
            .col_expr(oauth_grant::Column::UpdatedAt, Expr::value(now));
        if !tokens.scope.is_empty() {
            update = update.col_expr(
                oauth_grant::Column::Scope,
                Expr::value(tokens.scope.clone()),
            );
        }
        let result = update
            .filter(oauth_grant::Column::Id.eq(grant_id))
            .filter(oauth_grant::Column::TokenVersion.eq(from_version))
            .filter(oauth_grant::Column::Status.eq(oauth_grant::status::ACTIVE))
            .exec(&self.inner.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Keeps a pair that could not be saved, and saves it in the background as soon as the
    /// database is back.
    fn keep_pair(&self, grant_id: Uuid, from_version: i64, tokens: TokenSet) {
        self.kept_pairs().insert(
            grant_id,
            KeptPair {
                from_version,
                tokens,
            },
        );
        let manager = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                tokio::time::sleep(delay).await;
                let _flight = manager.inner.flights.lock(grant_id).await;
                match manager.save_kept_pair(grant_id).await {
                    Ok(()) => return,
                    Err(_) => delay = (delay * 2).min(Duration::from_secs(30)),
                }
            }
        });
    }

    /// Saves the pair kept for `grant_id`, if any. Fails (and keeps it) while the database does.
    async fn save_kept_pair(&self, grant_id: Uuid) -> Result<(), TokenError> {
        let Some((from_version, tokens)) = self
            .kept_pairs()
            .get(&grant_id)
            .map(|kept| (kept.from_version, kept.tokens.clone()))
        else {
            return Ok(());
        };
        match self.save_pair(grant_id, from_version, &tokens).await {
            Ok(saved) => {
                self.kept_pairs().remove(&grant_id);
                if saved {
                    tracing::warn!(grant.id = %grant_id, "a kept rotated token pair was saved");
                } else {
                    tracing::warn!(
                        grant.id = %grant_id,
                        "a kept rotated token pair was dropped: the grant changed meanwhile"
                    );
                }
                Ok(())
            }
            Err(error) => {
                tracing::error!(
                    grant.id = %grant_id,
                    error = %error,
                    "a kept rotated token pair still cannot be saved"
                );
                metrics::counter!("hookline_token_pair_save_failures_total").increment(1);
                Err(error.into())
            }
        }
    }

    fn kept_pairs(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, KeptPair>> {
        self.inner
            .kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives the lease back after a failed refresh, recording why; `forget_use` when the
    /// refresh token was certainly not acted on.
    async fn release(
        &self,
        grant: &oauth_grant::Model,
        lease_id: Uuid,
        error: &str,
        forget_use: bool,
    ) {
        let mut update = oauth_grant::Entity::update_many()
            .col_expr(
                oauth_grant::Column::RefreshLeaseId,
                Expr::value(None::<Uuid>),
            )
            .col_expr(
                oauth_grant::Column::RefreshLeaseUntil,
                Expr::value(None::<DateTime<Utc>>),
            )
            .col_expr(
                oauth_grant::Column::LastError,
                Expr::value(error.to_owned()),
            )
            .col_expr(oauth_grant::Column::UpdatedAt, Expr::value(Utc::now()));
        if forget_use {
            update = update.col_expr(
                oauth_grant::Column::RefreshTokenUsedAt,
                Expr::value(None::<DateTime<Utc>>),
            );
        }
        let released = update
            .filter(oauth_grant::Column::Id.eq(grant.id))
            .filter(oauth_grant::Column::RefreshLeaseId.eq(lease_id))
            .exec(&self.inner.db)
            .await;
        if let Err(error) = released {
            // The lease expires by itself.
            tracing::warn!(grant.id = %grant.id, error = %error, "could not give back a refresh lease");
        }
    }

    /// Refuses to present a refresh token outside the reuse leeway: the grant needs a new
    /// consent, which is less harm than Atlassian revoking it.
    async fn refuse_reuse(
        &self,
        grant: &oauth_grant::Model,
        first_used_at: DateTime<Utc>,
    ) -> Result<AccessToken, TokenError> {
        count("reuse_refused");
        tracing::error!(
            grant.id = %grant.id,
            first_used_at = %first_used_at,
            "the grant's refresh token was sent without a usable answer, and the reuse leeway \
             has passed since: it is not sent again (that could revoke the grant)"
        );
        self.mark_reauth_required(
            grant,
            &format!(
                "the refresh token was sent to Atlassian at {first_used_at} without a usable \
                 answer, and Atlassian's reuse leeway has passed since: sending it again could \
                 revoke the grant"
            ),
        )
        .await?;
        Err(TokenError::ReauthRequired)
    }

    /// Marks the grant (still at the version read) and every active site of it
    /// `reauth_required`, in one short transaction. Returns false if the grant is no longer at
    /// that version (a new consent replaced its tokens).
    async fn mark_reauth_required(
        &self,
        grant: &oauth_grant::Model,
        reason: &str,
    ) -> Result<bool, DbErr> {
        let now = Utc::now();
        let txn = self.inner.db.begin().await?;
        let marked = oauth_grant::Entity::update_many()
            .col_expr(
                oauth_grant::Column::Status,
                Expr::value(oauth_grant::status::REAUTH_REQUIRED),
            )
            .col_expr(
                oauth_grant::Column::LastError,
                Expr::value(reason.to_owned()),
            )
            .col_expr(
                oauth_grant::Column::RefreshLeaseId,
                Expr::value(None::<Uuid>),
            )
            .col_expr(
                oauth_grant::Column::RefreshLeaseUntil,
                Expr::value(None::<DateTime<Utc>>),
            )
            .col_expr(oauth_grant::Column::UpdatedAt, Expr::value(now))
            .filter(oauth_grant::Column::Id.eq(grant.id))
            .filter(oauth_grant::Column::TokenVersion.eq(grant.token_version))
            .exec(&txn)
            .await?;
        if marked.rows_affected == 1 {
            plugin_connection::Entity::update_many()
                .col_expr(
                    plugin_connection::Column::Status,
                    Expr::value(plugin_connection::status::REAUTH_REQUIRED),
                )
                .col_expr(
                    plugin_connection::Column::StatusReason,
                    Expr::value(format!(
                        "the site's Atlassian grant can no longer be used ({reason}): connect \
                         the sites again"
                    )),
                )
                .col_expr(plugin_connection::Column::UpdatedAt, Expr::value(now))
                .filter(plugin_connection::Column::GrantId.eq(grant.id))
                .filter(plugin_connection::Column::Status.eq(plugin_connection::status::ACTIVE))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(marked.rows_affected == 1)
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("hookline_token_refreshes_total", "outcome" => outcome).increment(1);
}
