//! A fake Atlassian on loopback: the OAuth token endpoint (authorization-code and refresh grants,
//! rotating refresh tokens with reuse detection), `accessible-resources`, and the Jira issue API
//! with 429 injection. Counters let tests assert how often tokens were refreshed.
//!
//! Like Atlassian: refresh tokens rotate on every use; a rotated-out refresh token reused after
//! a short grace period gets 403 `invalid_grant` and revokes the whole grant (every token of it).

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
}

struct Inner {
    access_lifetime: Duration,
    reuse_grace: Duration,
    rate_limited: Option<u64>,
    /// The next `.0` issue requests answer status `.1` (429s carry `Retry-After: 1`).
    issue_failures: (usize, u16),
    token_failures: usize,
    /// While true, every token request answers 503 (the token endpoint is down).
    token_endpoint_down: bool,
    /// How long token requests wait before they are answered.
    token_delay: Duration,
    /// How long issue requests wait before they are answered.
    issue_delay: Duration,
    codes: HashMap<String, String>,
    grants: HashMap<u64, bool>,
    access_tokens: HashMap<String, (u64, Instant)>,
    refresh_tokens: HashMap<String, (u64, Option<Instant>)>,
    next_grant: u64,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            access_lifetime: Duration::from_secs(3600),
            reuse_grace: Duration::from_millis(200),
            rate_limited: None,
            issue_failures: (0, 500),
            token_failures: 0,
            token_endpoint_down: false,
            token_delay: Duration::ZERO,
            issue_delay: Duration::ZERO,
            codes: HashMap::new(),
            grants: HashMap::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            next_grant: 1,
        }
    }
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

    fn valid_access(&self, token: &str) -> bool {
        match self.access_tokens.get(token) {
            Some((grant, expires)) => {
                *expires > Instant::now() && self.grants.get(grant) == Some(&true)
            }
            None => false,
        }
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
        let code = format!("fake-code-{}", uuid::Uuid::new_v4().simple());
        self.inner()
            .codes
            .insert(code.clone(), redirect_uri.clone());
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
        for valid in self.inner().grants.values_mut() {
            *valid = false;
        }
    }

    /// While `Some(seconds)`, the issue API answers 429 with that `Retry-After`.
    pub fn set_rate_limited(&self, retry_after: Option<u64>) {
        self.inner().rate_limited = retry_after;
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

    /// Issue requests wait `delay` before they are answered (a slow Jira).
    pub fn set_issue_delay(&self, delay: Duration) {
        self.inner().issue_delay = delay;
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
                Some(redirect_uri) if param("redirect_uri") == Some(redirect_uri.as_str()) => {
                    let grant = inner.next_grant;
                    inner.next_grant += 1;
                    inner.grants.insert(grant, true);
                    state.code_exchanges.fetch_add(1, Ordering::SeqCst);
                    json_response(StatusCode::OK, inner.issue_pair(grant))
                }
                _ => oauth_error(
                    StatusCode::FORBIDDEN,
                    "invalid_grant",
                    "Invalid authorization code",
                ),
            }
        }
        Some("refresh_token") => {
            let token = param("refresh_token").unwrap_or_default().to_owned();
            let Some(&(grant, rotated_at)) = inner.refresh_tokens.get(&token) else {
                return oauth_error(
                    StatusCode::FORBIDDEN,
                    "invalid_grant",
                    "Unknown or invalid refresh token.",
                );
            };
            if inner.grants.get(&grant) != Some(&true) {
                return oauth_error(
                    StatusCode::FORBIDDEN,
                    "invalid_grant",
                    "Unknown or invalid refresh token.",
                );
            }
            if let Some(rotated_at) = rotated_at
                && rotated_at.elapsed() > inner.reuse_grace
            {
                // Reuse of a rotated-out token: the grant is compromised.
                inner.grants.insert(grant, false);
                return oauth_error(
                    StatusCode::FORBIDDEN,
                    "invalid_grant",
                    "Unknown or invalid refresh token.",
                );
            }
            inner
                .refresh_tokens
                .insert(token, (grant, Some(Instant::now())));
            state.refreshes.fetch_add(1, Ordering::SeqCst);
            json_response(StatusCode::OK, inner.issue_pair(grant))
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "unsupported grant type",
        ),
    }
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
    let code = format!("fake-code-{}", uuid::Uuid::new_v4().simple());
    state
        .inner
        .lock()
        .expect("fake state")
        .codes
        .insert(code.clone(), redirect_uri.to_owned());
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
    if !inner.valid_access(&bearer(req)) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "code": 401, "message": "Unauthorized" }),
        );
    }
    json_response(
        StatusCode::OK,
        fixtures::json("accessible_resources_response.json"),
    )
}

#[handler]
async fn issue(
    req: &Request,
    Path((cloud_id, key)): Path<(String, String)>,
    state: Data<&Arc<FakeState>>,
) -> Response {
    state.issue_requests.fetch_add(1, Ordering::SeqCst);
    let delay = state.inner.lock().expect("fake state").issue_delay;
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
    if !inner.valid_access(&bearer(req)) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "code": 401, "message": "Unauthorized" }),
        );
    }
    if let Some(retry_after) = inner.rate_limited {
        return Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .content_type("application/json;charset=UTF-8")
            .header("retry-after", retry_after.to_string())
            .body(fixtures::json("rest_error_429_body.json").to_string());
    }
    if cloud_id == CLOUD_ID && (key == "ORB-417" || key == "20417") {
        json_response(
            StatusCode::OK,
            fixtures::json("rest_get_issue_v3_response.json"),
        )
    } else {
        json_response(
            StatusCode::NOT_FOUND,
            fixtures::json("rest_error_404_issue_body.json"),
        )
    }
}
