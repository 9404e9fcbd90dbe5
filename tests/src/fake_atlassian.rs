//! A fake Atlassian on loopback: the OAuth token endpoint (authorization-code and refresh grants,
//! rotating refresh tokens with reuse detection), `accessible-resources`, `/myself`, the Jira
//! issue API with 429 injection, and Jira's dynamic webhooks (register, list, refresh, delete in
//! the shapes of the `dynamic_webhook_*.json` fixtures, per-entry errors, the limit of 5 per
//! app, user and site, and deliveries to the registered URL with a JWT signed by the client
//! secret and `matchedWebhookIds`). Counters let tests assert how often tokens were refreshed.
//!
//! Like Atlassian: one consent is one grant that lists several sites and has one rotating
//! refresh token; refresh tokens rotate on every use; a rotated-out refresh token presented
//! again within the reuse leeway gets a new pair, after it 403 `invalid_grant` and the whole
//! grant is revoked (every token of it, for every site). The token endpoint can be made slow,
//! down, failing with 5xx after rotating, or answering an unreadable 200 after rotating.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poem::http::StatusCode;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::{Data, Path};
use poem::{Body, EndpointExt, Request, Response, Route, Server, get, handler, post};

use crate::fixtures;

/// The client id the fake accepts.
pub const CLIENT_ID: &str = "fake-client-id";
/// The client secret the fake accepts.
pub const CLIENT_SECRET: &str = "fake-client-secret";
/// The cloud id of the first site of `accessible_resources_response.json`.
pub const CLOUD_ID: &str = "6f2c9a14-3b7e-4d21-a8f5-0c9e7b3d5a12";
/// The account that consents unless a test says otherwise ([`FakeAtlassian::set_consent_account`]).
pub const ACCOUNT_ID: &str = "5b10ac8d82e05b22cc7d4ef5";

/// A running fake Atlassian.
pub struct FakeAtlassian {
    /// `http://127.0.0.1:<port>`: both `ATLASSIAN_AUTH_URL` and `ATLASSIAN_API_URL`.
    pub url: String,
    state: Arc<FakeState>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct FakeState {
    inner: Mutex<Inner>,
    refreshes: AtomicUsize,
    code_exchanges: AtomicUsize,
    issue_requests: AtomicUsize,
    /// Refresh requests that presented a rotated-out refresh token (within the leeway or not).
    rotated_presented: AtomicUsize,
    /// Refresh requests that arrived, whatever their outcome.
    refresh_requests: AtomicUsize,
    /// Token requests that arrived (counted before any delay).
    token_requests: AtomicUsize,
    /// Webhook refresh requests that arrived.
    webhook_refreshes: AtomicUsize,
}

struct Inner {
    access_lifetime: Duration,
    /// How long after its rotation a rotated-out refresh token still gets a new pair.
    reuse_leeway: Duration,
    /// While set, the issue API answers 429 with this `Retry-After`.
    rate_limited: Option<String>,
    /// The next `.0` issue requests answer status `.1` (429s carry `Retry-After: 1`).
    issue_failures: (usize, u16),
    token_failures: usize,
    /// While true, every token request answers 503 (the token endpoint is down).
    token_endpoint_down: bool,
    /// How long token requests wait before they are answered.
    token_delay: Duration,
    /// How long issue requests wait before they are answered.
    issue_delay: Duration,
    /// Issues (by key or id) whose requests wait this long instead.
    slow_issues: HashMap<String, Duration>,
    /// Issue requests answered, by key or id as requested.
    issue_requests_by_key: HashMap<String, usize>,
    /// Answer every issue key `ORB-<n>` (benchmarks: traffic about many issues), not only
    /// ORB-417.
    every_issue: bool,
    /// The next refresh requests that rotate and then answer badly.
    faults_after_rotating: (usize, FaultAfterRotating),
    /// The sites and account the next consents list and are made by.
    consent_sites: Vec<serde_json::Value>,
    consent_account: String,
    /// Codes not exchanged yet: the redirect URI they were issued for and their consent.
    codes: HashMap<String, (String, ConsentGrant)>,
    grants: HashMap<u64, ConsentGrant>,
    access_tokens: HashMap<String, (u64, Instant)>,
    refresh_tokens: HashMap<String, (u64, Option<Instant>)>,
    next_grant: u64,
    /// Dynamic webhooks, in registration order.
    webhooks: Vec<FakeWebhook>,
    next_webhook: i64,
}

/// A dynamic webhook registered at the fake.
#[derive(Debug, Clone)]
pub struct FakeWebhook {
    /// Jira's id.
    pub id: i64,
    /// The site.
    pub cloud_id: String,
    /// The account whose token registered it.
    pub account: String,
    /// Where deliveries go.
    pub url: String,
    /// Its events.
    pub events: Vec<String>,
    /// Its JQL filter.
    pub jql_filter: String,
    /// Expiry, epoch milliseconds.
    pub expiration_ms: i64,
}

/// The events the fake (like Jira) allows for dynamic webhooks.
const DYNAMIC_EVENTS: &[&str] = &[
    "jira:issue_created",
    "jira:issue_updated",
    "jira:issue_deleted",
    "comment_created",
    "comment_updated",
    "comment_deleted",
    "issue_property_set",
    "issue_property_deleted",
];

/// Jira's lifetime of a dynamic webhook.
const WEBHOOK_LIFETIME_MS: i64 = 30 * 86_400 * 1000;

impl Default for Inner {
    fn default() -> Self {
        Self {
            access_lifetime: Duration::from_secs(3600),
            reuse_leeway: Duration::from_secs(5),
            rate_limited: None,
            issue_failures: (0, 500),
            token_failures: 0,
            token_endpoint_down: false,
            token_delay: Duration::ZERO,
            issue_delay: Duration::ZERO,
            slow_issues: HashMap::new(),
            issue_requests_by_key: HashMap::new(),
            every_issue: false,
            faults_after_rotating: (0, FaultAfterRotating::ServerError),
            consent_sites: fixtures::json("accessible_resources_response.json")
                .as_array()
                .cloned()
                .unwrap_or_default(),
            consent_account: ACCOUNT_ID.to_owned(),
            codes: HashMap::new(),
            grants: HashMap::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            next_grant: 1,
            webhooks: Vec::new(),
            // The ids of the fixtures.
            next_webhook: 7731,
        }
    }
}

/// What a grant (one consent) is: whether it still works, who consented, which sites it lists.
#[derive(Clone)]
struct ConsentGrant {
    valid: bool,
    account: String,
    sites: Vec<serde_json::Value>,
}

impl ConsentGrant {
    fn lists(&self, cloud_id: &str) -> bool {
        self.sites.iter().any(|site| site["id"] == cloud_id)
    }
}

/// How a refresh request answers after it rotated the refresh token.
#[derive(Clone, Copy, Debug)]
pub enum FaultAfterRotating {
    /// 500, as a token endpoint failing after its database commit would.
    ServerError,
    /// 200 with a body that is not a token answer.
    UnreadableOk,
}

/// A site for [`FakeAtlassian::set_consent_sites`]: `name`.atlassian.net with a fresh cloud id.
pub fn site(name: &str) -> serde_json::Value {
    serde_json::json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "url": format!("https://{name}.atlassian.net"),
        "name": name,
        "scopes": ["read:jira-work", "read:jira-user", "manage:jira-webhook"],
        "avatarUrl": "https://site-admin-avatar-cdn.prod.public.atl-paas.net/avatars/240/rocket.png",
    })
}

impl Inner {
    fn issue_pair(&mut self, grant: u64) -> serde_json::Value {
        let access = format!("fake-access-{}", uuid::Uuid::new_v4().simple());
        let refresh = format!("fake-refresh-{}", uuid::Uuid::new_v4().simple());
        self.access_tokens.insert(
            access.clone(),
            (grant, Instant::now() + self.access_lifetime),
        );
        self.refresh_tokens.insert(refresh.clone(), (grant, None));
        serde_json::json!({
            "access_token": access,
            "expires_in": self.access_lifetime.as_secs(),
            "token_type": "Bearer",
            "refresh_token": refresh,
            "scope": "read:jira-work read:jira-user manage:jira-webhook offline_access",
        })
    }

    /// The grant of a valid access token.
    fn access_grant(&self, token: &str) -> Option<&ConsentGrant> {
        let (grant, expires) = self.access_tokens.get(token)?;
        let grant = self.grants.get(grant)?;
        (*expires > Instant::now() && grant.valid).then_some(grant)
    }

    /// A new code for a consent with the configured sites and account.
    fn issue_code(&mut self, redirect_uri: String) -> String {
        let code = format!("fake-code-{}", uuid::Uuid::new_v4().simple());
        let consent = ConsentGrant {
            valid: true,
            account: self.consent_account.clone(),
            sites: self.consent_sites.clone(),
        };
        self.codes.insert(code.clone(), (redirect_uri, consent));
        code
    }
}

impl FakeAtlassian {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .expect("fake Atlassian binds");
        let addr = acceptor
            .local_addr()
            .into_iter()
            .find_map(|addr| addr.as_socket_addr().copied())
            .expect("fake Atlassian address");
        let app = Route::new()
            .at("/authorize", get(authorize_endpoint))
            .at("/oauth/token", post(token_endpoint))
            .at(
                "/oauth/token/accessible-resources",
                get(accessible_resources),
            )
            .at("/ex/jira/:cloud_id/rest/api/3/issue/:key", get(issue))
            .at("/ex/jira/:cloud_id/rest/api/3/myself", get(myself))
            .at(
                "/ex/jira/:cloud_id/rest/api/3/webhook",
                get(list_webhooks)
                    .post(register_webhooks)
                    .delete(delete_webhooks),
            )
            .at(
                "/ex/jira/:cloud_id/rest/api/3/webhook/refresh",
                poem::put(refresh_webhooks),
            )
            .data(state.clone());
        let server = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(app).await;
        });
        Self {
            url: format!("http://{addr}"),
            state,
            server,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.inner.lock().expect("fake state")
    }

    /// What Atlassian's consent page does when the person consents: checks the authorize URL
    /// and returns the callback URL (with `code` and `state`) the browser is sent to.
    pub fn consent(&self, authorize_url: &str) -> String {
        let url = reqwest::Url::parse(authorize_url).expect("authorize URL");
        assert_eq!(url.path(), "/authorize", "authorize path");
        let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(query.get("client_id").map(String::as_str), Some(CLIENT_ID));
        assert_eq!(query.get("response_type").map(String::as_str), Some("code"));
        assert_eq!(
            query.get("audience").map(String::as_str),
            Some("api.atlassian.com")
        );
        assert_eq!(query.get("prompt").map(String::as_str), Some("consent"));
        assert!(
            query
                .get("scope")
                .is_some_and(|scope| scope.split(' ').any(|s| s == "offline_access")),
            "offline_access is asked for"
        );
        let state = query.get("state").expect("state").clone();
        let redirect_uri = query.get("redirect_uri").expect("redirect_uri").clone();
        let code = self.inner().issue_code(redirect_uri.clone());
        let mut callback = reqwest::Url::parse(&redirect_uri).expect("redirect_uri");
        callback
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &state);
        callback.to_string()
    }

    /// Access tokens issued from now on expire after `lifetime`.
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        self.inner().access_lifetime = lifetime;
    }

    /// Expires every access token issued so far.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for (_, expires) in self.inner().access_tokens.values_mut() {
            *expires = now;
        }
    }

    /// Revokes every grant (as a person removing the app's access would).
    pub fn revoke_all(&self) {
        for grant in self.inner().grants.values_mut() {
            grant.valid = false;
        }
    }

    /// While `Some(seconds)`, the issue API answers 429 with that `Retry-After`.
    pub fn set_rate_limited(&self, retry_after: Option<u64>) {
        self.inner().rate_limited = retry_after.map(|seconds| seconds.to_string());
    }

    /// While `Some`, the issue API answers 429 with exactly this `Retry-After` (e.g. an HTTP
    /// date).
    pub fn set_rate_limited_header(&self, retry_after: Option<&str>) {
        self.inner().rate_limited = retry_after.map(str::to_owned);
    }

    /// The next `count` issue requests answer `status` (a 429 carries `Retry-After: 1`);
    /// `usize::MAX` for all of them.
    pub fn fail_issue_requests(&self, count: usize, status: u16) {
        self.inner().issue_failures = (count, status);
    }

    /// The next `count` token requests fail with 503.
    pub fn fail_token_requests(&self, count: usize) {
        self.inner().token_failures = count;
    }

    /// While `down`, the token endpoint answers every request with 503.
    pub fn set_token_endpoint_down(&self, down: bool) {
        self.inner().token_endpoint_down = down;
    }

    /// Token requests wait `delay` before they are handled (a slow token endpoint). The wait
    /// comes first: a refresh token is rotated only after it, as a slow Atlassian would.
    pub fn set_token_delay(&self, delay: Duration) {
        self.inner().token_delay = delay;
    }

    /// A rotated-out refresh token presented within `leeway` of its rotation gets a new pair;
    /// after it, the whole grant is revoked. Zero: any second use revokes it.
    pub fn set_reuse_leeway(&self, leeway: Duration) {
        self.inner().reuse_leeway = leeway;
    }

    /// The next `count` token requests that issue a pair (a rotation, or a code exchange) do
    /// issue it and then answer `fault` instead (the client cannot know it happened).
    pub fn fault_after_rotating(&self, count: usize, fault: FaultAfterRotating) {
        self.inner().faults_after_rotating = (count, fault);
    }

    /// The next consents list `sites` (see [`site`]); by default the two sites of
    /// `accessible_resources_response.json`.
    pub fn set_consent_sites(&self, sites: Vec<serde_json::Value>) {
        self.inner().consent_sites = sites;
    }

    /// The next consents are made by `account_id` (its `accountId` at `/myself`).
    pub fn set_consent_account(&self, account_id: &str) {
        self.inner().consent_account = account_id.to_owned();
    }

    /// Whether every grant issued so far still works (none was revoked).
    pub fn all_grants_valid(&self) -> bool {
        self.inner().grants.values().all(|grant| grant.valid)
    }

    /// How many refresh requests presented a rotated-out refresh token.
    pub fn rotated_tokens_presented(&self) -> usize {
        self.state.rotated_presented.load(Ordering::SeqCst)
    }

    /// How many token requests arrived, counted as they arrive (before a delay).
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// How many refresh requests arrived (whatever their answer).
    pub fn refresh_requests(&self) -> usize {
        self.state.refresh_requests.load(Ordering::SeqCst)
    }

    /// Issue requests wait `delay` before they are answered (a slow Jira).
    pub fn set_issue_delay(&self, delay: Duration) {
        self.inner().issue_delay = delay;
    }

    /// Requests for issue `key` (key or id as requested) wait `delay` before they are answered.
    pub fn set_issue_delay_for(&self, key: &str, delay: Duration) {
        self.inner().slow_issues.insert(key.to_owned(), delay);
    }

    /// Answer every issue `ORB-<n>` with the fixture issue under that key (benchmarks).
    pub fn serve_every_issue(&self) {
        self.inner().every_issue = true;
    }

    /// How many requests for issue `key` (key or id as requested) were made.
    pub fn issue_requests_for(&self, key: &str) -> usize {
        self.inner()
            .issue_requests_by_key
            .get(key)
            .copied()
            .unwrap_or_default()
    }

    /// How many refresh-token grants succeeded.
    pub fn refreshes(&self) -> usize {
        self.state.refreshes.load(Ordering::SeqCst)
    }

    /// How many authorization codes were exchanged.
    pub fn code_exchanges(&self) -> usize {
        self.state.code_exchanges.load(Ordering::SeqCst)
    }

    /// How many issue requests arrived.
    pub fn issue_requests(&self) -> usize {
        self.state.issue_requests.load(Ordering::SeqCst)
    }

    /// The dynamic webhooks registered at the fake, in registration order.
    pub fn webhooks(&self) -> Vec<FakeWebhook> {
        self.inner().webhooks.clone()
    }

    /// Deletes webhook `id` as a person could at Jira (hookline is not told).
    pub fn forget_webhook(&self, id: i64) {
        self.inner().webhooks.retain(|webhook| webhook.id != id);
    }

    /// How many webhook refresh requests arrived.
    pub fn webhook_refreshes(&self) -> usize {
        self.state.webhook_refreshes.load(Ordering::SeqCst)
    }

    /// What Jira does when an event happens: posts `body` (a fixture's bytes) to the URL of every
    /// dynamic webhook that has its `webhookEvent`, with `matchedWebhookIds` set to the matching
    /// webhooks of that URL and `Authorization: Bearer <JWT>` signed HS256 with the client
    /// secret. Returns the answers' statuses, one per URL.
    pub async fn deliver_event(&self, body: &[u8]) -> Vec<u16> {
        self.deliver_event_signed(body, CLIENT_SECRET.as_bytes())
            .await
    }

    /// Like [`FakeAtlassian::deliver_event`], with the JWT signed with `secret`.
    pub async fn deliver_event_signed(&self, body: &[u8], secret: &[u8]) -> Vec<u16> {
        let event: serde_json::Value = serde_json::from_slice(body).expect("a JSON fixture");
        let name = event["webhookEvent"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut by_url: Vec<(String, Vec<i64>)> = Vec::new();
        for webhook in self.webhooks() {
            if !webhook.events.contains(&name) {
                continue;
            }
            match by_url.iter_mut().find(|(url, _)| *url == webhook.url) {
                Some((_, ids)) => ids.push(webhook.id),
                None => by_url.push((webhook.url.clone(), vec![webhook.id])),
            }
        }
        let now = chrono::Utc::now().timestamp();
        let token =
            plugins::jira::jwt::sign(secret, &serde_json::json!({ "iat": now, "exp": now + 300 }));
        let client = reqwest::Client::new();
        let mut statuses = Vec::new();
        for (url, ids) in by_url {
            let mut event = event.clone();
            event["matchedWebhookIds"] = serde_json::json!(ids);
            let response = client
                .post(&url)
                .header("content-type", "application/json; charset=utf-8")
                .header("authorization", format!("Bearer {token}"))
                .header(
                    "x-atlassian-webhook-identifier",
                    uuid::Uuid::new_v4().to_string(),
                )
                .header("x-atlassian-webhook-flow", "Primary")
                .body(event.to_string())
                .send()
                .await
                .expect("delivery to the registered URL");
            statuses.push(response.status().as_u16());
        }
        statuses
    }

    /// Every access token currently valid (tests look for them in the database).
    pub fn issued_tokens(&self) -> Vec<String> {
        let inner = self.inner();
        inner
            .access_tokens
            .keys()
            .chain(inner.refresh_tokens.keys())
            .cloned()
            .collect()
    }
}

impl Drop for FakeAtlassian {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body.to_string())
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        serde_json::json!({ "error": error, "error_description": description }),
    )
}

/// The token endpoint: JSON (as Atlassian documents) or form bodies (as RFC 6749 has it).
#[handler]
async fn token_endpoint(req: &Request, body: Body, state: Data<&Arc<FakeState>>) -> Response {
    let bytes = body.into_vec().await.unwrap_or_default();
    let is_json = req
        .content_type()
        .is_some_and(|content_type| content_type.starts_with("application/json"));
    let params: HashMap<String, String> = if is_json {
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        value
            .as_object()
            .map(|object| {
                object
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        let text = String::from_utf8_lossy(&bytes);
        reqwest::Url::parse(&format!("http://form/?{text}"))
            .map(|url| url.query_pairs().into_owned().collect())
            .unwrap_or_default()
    };
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let delay = state.inner.lock().expect("fake state").token_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut inner = state.inner.lock().expect("fake state");
    if inner.token_endpoint_down {
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body("unavailable");
    }
    if inner.token_failures > 0 {
        inner.token_failures -= 1;
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body("unavailable");
    }
    let param = |name: &str| params.get(name).map(String::as_str);
    if param("client_id") != Some(CLIENT_ID) || param("client_secret") != Some(CLIENT_SECRET) {
        return oauth_error(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized");
    }
    match param("grant_type") {
        Some("authorization_code") => {
            let code = param("code").unwrap_or_default();
            match inner.codes.remove(code) {
                Some((redirect_uri, consent))
                    if param("redirect_uri") == Some(redirect_uri.as_str()) =>
                {
                    let grant = inner.next_grant;
                    inner.next_grant += 1;
                    inner.grants.insert(grant, consent);
                    state.code_exchanges.fetch_add(1, Ordering::SeqCst);
                    let pair = inner.issue_pair(grant);
                    fault_after_rotating(&mut inner)
                        .unwrap_or_else(|| json_response(StatusCode::OK, pair))
                }
                _ => oauth_error(
                    StatusCode::FORBIDDEN,
                    "invalid_grant",
                    "Invalid authorization code",
                ),
            }
        }
        Some("refresh_token") => refresh_grant(&state, &mut inner, param("refresh_token")),
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "unsupported grant type",
        ),
    }
}

/// The refresh-token grant: rotation on every use, reuse within the leeway answered, reuse
/// after it revoking the whole grant, scripted faults after rotating.
fn refresh_grant(state: &FakeState, inner: &mut Inner, token: Option<&str>) -> Response {
    state.refresh_requests.fetch_add(1, Ordering::SeqCst);
    let token = token.unwrap_or_default().to_owned();
    let invalid = || {
        oauth_error(
            StatusCode::FORBIDDEN,
            "invalid_grant",
            "Unknown or invalid refresh token.",
        )
    };
    let Some(&(grant, rotated_at)) = inner.refresh_tokens.get(&token) else {
        return invalid();
    };
    if !inner.grants.get(&grant).is_some_and(|grant| grant.valid) {
        return invalid();
    }
    if let Some(rotated_at) = rotated_at {
        state.rotated_presented.fetch_add(1, Ordering::SeqCst);
        if rotated_at.elapsed() > inner.reuse_leeway {
            // Reuse of a rotated-out token after the leeway: the grant is compromised.
            if let Some(grant) = inner.grants.get_mut(&grant) {
                grant.valid = false;
            }
            return invalid();
        }
    } else {
        inner
            .refresh_tokens
            .insert(token, (grant, Some(Instant::now())));
    }
    let pair = inner.issue_pair(grant);
    if let Some(fault) = fault_after_rotating(inner) {
        return fault;
    }
    state.refreshes.fetch_add(1, Ordering::SeqCst);
    json_response(StatusCode::OK, pair)
}

/// The scripted bad answer of a token request that issued a pair, if one is due.
fn fault_after_rotating(inner: &mut Inner) -> Option<Response> {
    if inner.faults_after_rotating.0 == 0 {
        return None;
    }
    inner.faults_after_rotating.0 -= 1;
    Some(match inner.faults_after_rotating.1 {
        FaultAfterRotating::ServerError => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body("internal error"),
        FaultAfterRotating::UnreadableOk => Response::builder()
            .status(StatusCode::OK)
            .content_type("application/json")
            .body("{\"access_tok"),
    })
}

/// Atlassian's consent page for a browser: the person consents at once, and the browser is
/// redirected to the `redirect_uri` with a `code` and the `state` (what
/// [`FakeAtlassian::consent`] does for tests without a browser). A request that is not a valid
/// authorize request gets 400, as Atlassian shows an error page.
#[handler]
fn authorize_endpoint(req: &Request, state: Data<&Arc<FakeState>>) -> Response {
    let query: HashMap<String, String> = reqwest::Url::parse(&format!("http://fake{}", req.uri()))
        .map(|url| url.query_pairs().into_owned().collect())
        .unwrap_or_default();
    let param = |name: &str| query.get(name).map(String::as_str);
    let valid = param("client_id") == Some(CLIENT_ID)
        && param("response_type") == Some("code")
        && param("audience") == Some("api.atlassian.com")
        && param("prompt") == Some("consent")
        && param("scope").is_some_and(|scope| scope.split(' ').any(|s| s == "offline_access"));
    let (Some(flow_state), Some(redirect_uri)) = (param("state"), param("redirect_uri")) else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body("state and redirect_uri are required");
    };
    let Ok(mut callback) = reqwest::Url::parse(redirect_uri) else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body("redirect_uri is not a URL");
    };
    if !valid {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body("not a valid authorize request");
    }
    let code = state
        .inner
        .lock()
        .expect("fake state")
        .issue_code(redirect_uri.to_owned());
    callback
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", flow_state);
    Response::builder()
        .status(StatusCode::FOUND)
        .header("location", callback.to_string())
        .finish()
}

fn bearer(req: &Request) -> String {
    req.header("authorization")
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

#[handler]
fn accessible_resources(req: &Request, state: Data<&Arc<FakeState>>) -> Response {
    let inner = state.inner.lock().expect("fake state");
    match inner.access_grant(&bearer(req)) {
        Some(grant) => json_response(StatusCode::OK, serde_json::json!(grant.sites)),
        None => unauthorized(),
    }
}

fn unauthorized() -> Response {
    json_response(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({ "code": 401, "message": "Unauthorized" }),
    )
}

/// `/rest/api/3/myself` of a site of the token's grant: the account that consented.
#[handler]
fn myself(req: &Request, Path(cloud_id): Path<String>, state: Data<&Arc<FakeState>>) -> Response {
    let inner = state.inner.lock().expect("fake state");
    match inner.access_grant(&bearer(req)) {
        Some(grant) if grant.lists(&cloud_id) => json_response(
            StatusCode::OK,
            serde_json::json!({
                "accountId": grant.account,
                "accountType": "atlassian",
                "displayName": "Fake Person",
                "active": true,
            }),
        ),
        _ => unauthorized(),
    }
}

#[handler]
async fn issue(
    req: &Request,
    Path((cloud_id, key)): Path<(String, String)>,
    state: Data<&Arc<FakeState>>,
) -> Response {
    state.issue_requests.fetch_add(1, Ordering::SeqCst);
    let delay = {
        let mut inner = state.inner.lock().expect("fake state");
        *inner.issue_requests_by_key.entry(key.clone()).or_default() += 1;
        inner
            .slow_issues
            .get(&key)
            .copied()
            .unwrap_or(inner.issue_delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut inner = state.inner.lock().expect("fake state");
    if inner.issue_failures.0 > 0 {
        let (count, status) = inner.issue_failures;
        inner.issue_failures.0 = count.saturating_sub(if count == usize::MAX { 0 } else { 1 });
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Response::builder()
            .status(status)
            .content_type("application/json")
            .header("retry-after", "1")
            .body(r#"{"errorMessages":["scripted failure"]}"#);
    }
    // A token reaches the sites of its grant only (Atlassian: 401 for any other site).
    if !inner
        .access_grant(&bearer(req))
        .is_some_and(|grant| grant.lists(&cloud_id))
    {
        return unauthorized();
    }
    if let Some(retry_after) = &inner.rate_limited {
        return Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .content_type("application/json;charset=UTF-8")
            .header("retry-after", retry_after.as_str())
            .body(fixtures::json("rest_error_429_body.json").to_string());
    }
    if key == "ORB-417" || key == "20417" {
        json_response(
            StatusCode::OK,
            fixtures::json("rest_get_issue_v3_response.json"),
        )
    } else if inner.every_issue
        && key
            .strip_prefix("ORB-")
            .is_some_and(|n| n.parse::<u64>().is_ok())
    {
        let text = String::from_utf8_lossy(&fixtures::bytes("rest_get_issue_v3_response.json"))
            .replace("ORB-417", &key);
        Response::builder()
            .status(StatusCode::OK)
            .content_type("application/json")
            .body(text)
    } else {
        json_response(
            StatusCode::NOT_FOUND,
            fixtures::json("rest_error_404_issue_body.json"),
        )
    }
}

/// The account of a token valid for `cloud_id` (None: Jira answers 401).
fn webhook_caller(req: &Request, inner: &Inner, cloud_id: &str) -> Option<String> {
    inner
        .access_grant(&bearer(req))
        .filter(|grant| grant.lists(cloud_id))
        .map(|grant| grant.account.clone())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `POST /rest/api/3/webhook`: per-entry results, 200 even when an entry failed (as
/// `dynamic_webhook_register_response.json`).
#[handler]
async fn register_webhooks(
    req: &Request,
    Path(cloud_id): Path<String>,
    body: Body,
    state: Data<&Arc<FakeState>>,
) -> Response {
    let body: serde_json::Value =
        serde_json::from_slice(&body.into_vec().await.unwrap_or_default()).unwrap_or_default();
    let mut inner = state.inner.lock().expect("fake state");
    let Some(account) = webhook_caller(req, &inner, &cloud_id) else {
        return unauthorized();
    };
    let Some(url) = body["url"].as_str().map(str::to_owned) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"errorMessages": ["url is required"], "errors": {}}),
        );
    };
    let entries = body["webhooks"].as_array().cloned().unwrap_or_default();
    let mut results = Vec::new();
    for entry in entries {
        let events: Vec<String> = entry["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter_map(|event| event.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let jql = entry["jqlFilter"].as_str().unwrap_or_default().to_owned();
        let registered = inner
            .webhooks
            .iter()
            .filter(|webhook| webhook.cloud_id == cloud_id && webhook.account == account)
            .count();
        let mut errors = Vec::new();
        if let Some(event) = events
            .iter()
            .find(|event| !DYNAMIC_EVENTS.contains(&event.as_str()))
        {
            errors.push(format!("Event {event} is not supported"));
        }
        if jql.trim().is_empty() {
            errors.push("JQL filter is required".to_owned());
        } else if jql.contains(" is not ") {
            // As in dynamic_webhook_register_response.json.
            errors.push("Operator is not is unsupported".to_owned());
        }
        if registered >= 5 {
            errors.push(
                "The app has reached the limit of 5 webhooks per user on this site".to_owned(),
            );
        }
        if errors.is_empty() {
            let id = inner.next_webhook;
            inner.next_webhook += 1;
            inner.webhooks.push(FakeWebhook {
                id,
                cloud_id: cloud_id.clone(),
                account: account.clone(),
                url: url.clone(),
                events,
                jql_filter: jql,
                expiration_ms: now_ms() + WEBHOOK_LIFETIME_MS,
            });
            results.push(serde_json::json!({ "createdWebhookId": id }));
        } else {
            results.push(serde_json::json!({ "errors": errors }));
        }
    }
    json_response(
        StatusCode::OK,
        serde_json::json!({ "webhookRegistrationResult": results }),
    )
}

/// `GET /rest/api/3/webhook`: the caller's webhooks of the site, paged (as
/// `dynamic_webhook_list_response.json`).
#[handler]
fn list_webhooks(
    req: &Request,
    Path(cloud_id): Path<String>,
    state: Data<&Arc<FakeState>>,
) -> Response {
    let inner = state.inner.lock().expect("fake state");
    let Some(account) = webhook_caller(req, &inner, &cloud_id) else {
        return unauthorized();
    };
    let query: HashMap<String, String> = reqwest::Url::parse(&format!("http://fake{}", req.uri()))
        .map(|url| url.query_pairs().into_owned().collect())
        .unwrap_or_default();
    let start: usize = query
        .get("startAt")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let max: usize = query
        .get("maxResults")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mine: Vec<&FakeWebhook> = inner
        .webhooks
        .iter()
        .filter(|webhook| webhook.cloud_id == cloud_id && webhook.account == account)
        .collect();
    let values: Vec<serde_json::Value> = mine
        .iter()
        .skip(start)
        .take(max)
        .map(|webhook| {
            serde_json::json!({
                "id": webhook.id,
                "events": webhook.events,
                "jqlFilter": webhook.jql_filter,
                "expirationDate": webhook.expiration_ms,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        serde_json::json!({
            "isLast": start + values.len() >= mine.len(),
            "maxResults": max,
            "startAt": start,
            "total": mine.len(),
            "values": values,
        }),
    )
}

fn webhook_ids(body: &[u8]) -> Vec<i64> {
    serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default()["webhookIds"]
        .as_array()
        .map(|ids| ids.iter().filter_map(serde_json::Value::as_i64).collect())
        .unwrap_or_default()
}

/// `PUT /rest/api/3/webhook/refresh`: extends the caller's webhooks of those ids (unknown ids
/// are ignored, as Jira does) and answers the new expiry (as
/// `dynamic_webhook_refresh_response.json`).
#[handler]
async fn refresh_webhooks(
    req: &Request,
    Path(cloud_id): Path<String>,
    body: Body,
    state: Data<&Arc<FakeState>>,
) -> Response {
    let ids = webhook_ids(&body.into_vec().await.unwrap_or_default());
    state.webhook_refreshes.fetch_add(1, Ordering::SeqCst);
    let mut inner = state.inner.lock().expect("fake state");
    let Some(account) = webhook_caller(req, &inner, &cloud_id) else {
        return unauthorized();
    };
    let expiration = now_ms() + WEBHOOK_LIFETIME_MS;
    for webhook in inner.webhooks.iter_mut().filter(|webhook| {
        webhook.cloud_id == cloud_id && webhook.account == account && ids.contains(&webhook.id)
    }) {
        webhook.expiration_ms = expiration;
    }
    json_response(
        StatusCode::OK,
        serde_json::json!({ "expirationDate": expiration }),
    )
}

/// `DELETE /rest/api/3/webhook` with `{"webhookIds": [...]}`: 202.
#[handler]
async fn delete_webhooks(
    req: &Request,
    Path(cloud_id): Path<String>,
    body: Body,
    state: Data<&Arc<FakeState>>,
) -> Response {
    let ids = webhook_ids(&body.into_vec().await.unwrap_or_default());
    let mut inner = state.inner.lock().expect("fake state");
    let Some(account) = webhook_caller(req, &inner, &cloud_id) else {
        return unauthorized();
    };
    inner.webhooks.retain(|webhook| {
        !(webhook.cloud_id == cloud_id && webhook.account == account && ids.contains(&webhook.id))
    });
    Response::builder().status(StatusCode::ACCEPTED).finish()
}
