//! Atlassian OAuth 2.0 (3LO): the authorize URL, the code exchange, the refresh, and the sites a
//! token can reach (`accessible-resources`).
//!
//! The protocol is spoken by the `oauth2` crate (without its bundled reqwest 0.12 client) over
//! [`OAuthHttp`], a small adapter on the project's reqwest 0.13 client. Tokens are never logged:
//! they only ever travel in the secret newtypes of `oauth2` and in the values returned here.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, HttpRequest, HttpResponse, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    TokenResponse as _, TokenUrl,
};
use serde::Deserialize;

/// The scopes asked for when none are configured.
pub const DEFAULT_SCOPES: &str = "offline_access read:jira-work read:jira-user manage:jira-webhook";

/// Connect timeout of every call to Atlassian.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Total timeout of every call to Atlassian.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(15);

/// The HTTP client for Atlassian: no redirects followed, connect and total timeouts.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(TOTAL_TIMEOUT)
        .build()
}

/// The configuration of the Atlassian OAuth app.
#[derive(Clone)]
pub struct OAuthConfig {
    /// The app's client id.
    pub client_id: String,
    /// The app's client secret.
    pub client_secret: String,
    /// Base URL of Atlassian's OAuth server, e.g. `https://auth.atlassian.com`.
    pub auth_url: String,
    /// Base URL of Atlassian's API gateway, e.g. `https://api.atlassian.com`.
    pub api_url: String,
    /// Where Atlassian sends the browser back: `{public_url}/oauth/jira/callback`.
    pub redirect_url: String,
    /// Space-separated scopes to ask for.
    pub scopes: String,
}

impl std::fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("client_id", &self.client_id)
            .field("auth_url", &self.auth_url)
            .field("api_url", &self.api_url)
            .field("redirect_url", &self.redirect_url)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// A token pair as the token endpoint returned it.
#[derive(Clone)]
pub struct TokenSet {
    /// The access token (a bearer token for the API gateway).
    pub access_token: String,
    /// The refresh token; Atlassian rotates it on every refresh.
    pub refresh_token: String,
    /// When the access token expires.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// Granted scopes, space-separated.
    pub scope: String,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A Jira site a token can reach (`accessible-resources`).
#[derive(Debug, Clone, Deserialize)]
pub struct Site {
    /// The cloud id, used in API gateway URLs.
    pub id: String,
    /// The site URL, e.g. `https://northwind-labs.atlassian.net`.
    pub url: String,
    /// The site name, e.g. `northwind-labs`.
    pub name: String,
}

impl Site {
    /// The host of the site URL (`northwind-labs.atlassian.net`), or the name if the URL has none.
    pub fn host(&self) -> String {
        reqwest::Url::parse(&self.url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .unwrap_or_else(|| self.name.clone())
    }
}

/// Why a call to the token endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The grant is dead (`invalid_grant`, HTTP 403 at Atlassian): the user has to connect again.
    /// Never worth retrying.
    #[error("the grant was rejected ({0}): the site has to be connected again")]
    InvalidGrant(String),
    /// Atlassian refused the request for another reason (bad client, bad request).
    #[error("the token endpoint refused the request: {0}")]
    Rejected(String),
    /// The request reached the token endpoint but no usable answer came back (5xx, a timeout
    /// after sending, an answer that cannot be read, even with status 200): worth retrying,
    /// but a refresh token sent this way may have been rotated.
    #[error("the token endpoint is unavailable: {0}")]
    Transient(String),
    /// No connection to the token endpoint could be made, so the request was not sent: worth
    /// retrying, and a refresh token sent this way was certainly not used.
    #[error("the token endpoint cannot be reached: {0}")]
    Unreachable(String),
}

impl OAuthError {
    /// Whether trying again later may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_) | Self::Unreachable(_))
    }

    /// Whether the token endpoint may have acted on the request (and so rotated the refresh
    /// token it carried) although it answered no usable token pair.
    pub fn may_have_rotated(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

type AtlassianClient =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// Speaks OAuth 2.0 with Atlassian. Cheap to clone.
#[derive(Clone)]
pub struct JiraOAuth {
    config: OAuthConfig,
    client: AtlassianClient,
    http: OAuthHttp,
}

impl std::fmt::Debug for JiraOAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JiraOAuth")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl JiraOAuth {
    /// Builds the client; fails when a configured URL is not a URL.
    pub fn new(config: OAuthConfig, http: reqwest::Client) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let auth_base = config.auth_url.trim_end_matches('/');
        let client = BasicClient::new(ClientId::new(config.client_id.clone()))
            .set_client_secret(ClientSecret::new(config.client_secret.clone()))
            .set_auth_uri(
                AuthUrl::new(format!("{auth_base}/authorize"))
                    .context("ATLASSIAN_AUTH_URL is not a URL")?,
            )
            .set_token_uri(
                TokenUrl::new(format!("{auth_base}/oauth/token"))
                    .context("ATLASSIAN_AUTH_URL is not a URL")?,
            )
            .set_redirect_uri(
                RedirectUrl::new(config.redirect_url.clone())
                    .context("the OAuth callback URL is not a URL")?,
            )
            // Atlassian documents client_id and client_secret in the request body.
            .set_auth_type(AuthType::RequestBody);
        Ok(Self {
            config,
            client,
            http: OAuthHttp(http),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// The URL to send the browser to, carrying `state`.
    pub fn authorize_url(&self, state: &str) -> String {
        let state = state.to_owned();
        let (url, _) = self
            .client
            .authorize_url(move || CsrfToken::new(state))
            .add_scopes(
                self.config
                    .scopes
                    .split_whitespace()
                    .map(|scope| Scope::new(scope.to_owned())),
            )
            .add_extra_param("audience", "api.atlassian.com")
            .add_extra_param("prompt", "consent")
            .url();
        url.to_string()
    }

    /// Exchanges an authorization code for a token pair.
    pub async fn exchange_code(&self, code: &str) -> Result<TokenSet, OAuthError> {
        let response = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .request_async(&self.http)
            .await;
        token_set(response, None)
    }

    /// Exchanges a refresh token for a new pair (Atlassian rotates the refresh token).
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenSet, OAuthError> {
        let refresh_token = RefreshToken::new(refresh_token.to_owned());
        let response = self
            .client
            .exchange_refresh_token(&refresh_token)
            .request_async(&self.http)
            .await;
        token_set(response, Some(refresh_token.secret()))
    }

    /// The Atlassian account `access_token` acts for (its `accountId`), read through one of
    /// the consent's sites (`/rest/api/3/myself`, scope `read:jira-user`).
    pub async fn account_id(&self, access_token: &str, site: &Site) -> anyhow::Result<String> {
        use anyhow::Context as _;
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Myself {
            account_id: String,
        }
        anyhow::ensure!(
            crate::jira::rest::is_cloud_id(&site.id),
            "the site's cloudId {:?} is not a valid id",
            site.id
        );
        let url = format!(
            "{}/ex/jira/{}/rest/api/3/myself",
            self.config.api_url.trim_end_matches('/'),
            site.id
        );
        let response = self
            .http
            .0
            .get(url)
            .bearer_auth(access_token)
            .header("accept", "application/json")
            .send()
            .await
            .context("could not reach Jira's /myself")?
            .error_for_status()
            .context("Jira's /myself failed")?;
        let myself: Myself = response
            .json()
            .await
            .context("Jira's /myself answered something without an accountId")?;
        anyhow::ensure!(
            !myself.account_id.is_empty(),
            "Jira's /myself answered an empty accountId"
        );
        Ok(myself.account_id)
    }

    /// The Jira sites `access_token` can reach.
    pub async fn accessible_resources(&self, access_token: &str) -> anyhow::Result<Vec<Site>> {
        use anyhow::Context as _;
        let url = format!(
            "{}/oauth/token/accessible-resources",
            self.config.api_url.trim_end_matches('/')
        );
        let response = self
            .http
            .0
            .get(url)
            .bearer_auth(access_token)
            .header("accept", "application/json")
            .send()
            .await
            .context("could not reach accessible-resources")?
            .error_for_status()
            .context("accessible-resources failed")?;
        response
            .json()
            .await
            .context("accessible-resources answered something that is not a list of sites")
    }
}

fn token_set(
    response: Result<
        oauth2::basic::BasicTokenResponse,
        RequestTokenError<HttpError, oauth2::basic::BasicErrorResponse>,
    >,
    previous_refresh_token: Option<&str>,
) -> Result<TokenSet, OAuthError> {
    let response = match response {
        Ok(response) => response,
        Err(RequestTokenError::ServerResponse(error)) => {
            let description = error.error_description().cloned().unwrap_or_default();
            return Err(match error.error() {
                BasicErrorResponseType::InvalidGrant => OAuthError::InvalidGrant(description),
                other => OAuthError::Rejected(format!("{other}: {description}")),
            });
        }
        Err(RequestTokenError::Request(HttpError {
            message,
            sent: false,
        })) => return Err(OAuthError::Unreachable(message)),
        Err(RequestTokenError::Request(HttpError { message, .. })) => {
            return Err(OAuthError::Transient(message));
        }
        // An answer that cannot be read (even a 200) is Atlassian's failure, not a refusal: the
        // request may well have been acted on.
        Err(RequestTokenError::Parse(error, _)) => {
            return Err(OAuthError::Transient(format!(
                "unreadable answer from the token endpoint: {error}"
            )));
        }
        Err(RequestTokenError::Other(error)) => {
            return Err(OAuthError::Transient(format!(
                "unexpected answer from the token endpoint: {error}"
            )));
        }
    };
    let refresh_token = match (response.refresh_token(), previous_refresh_token) {
        (Some(token), _) => token.secret().clone(),
        // Without rotation the old refresh token stays valid.
        (None, Some(previous)) => previous.to_owned(),
        (None, None) => {
            return Err(OAuthError::Rejected(
                "the token endpoint returned no refresh token: is offline_access among the scopes?"
                    .to_owned(),
            ));
        }
    };
    let expires_in = response
        .expires_in()
        .unwrap_or(Duration::from_secs(3600))
        .min(Duration::from_secs(365 * 86_400));
    let scope = response
        .scopes()
        .map(|scopes| {
            scopes
                .iter()
                .map(|scope| scope.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Ok(TokenSet {
        access_token: response.access_token().secret().clone(),
        refresh_token,
        expires_at: chrono::Utc::now()
            + chrono::Duration::from_std(expires_in).unwrap_or(chrono::Duration::hours(1)),
        scope,
    })
}

/// A transport failure, or a 5xx from the token endpoint, as the `oauth2` crate sees it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HttpError {
    message: String,
    /// Whether the request may have reached the endpoint (false: no connection was made).
    sent: bool,
}

impl HttpError {
    fn sent(message: String) -> Self {
        Self {
            message,
            sent: true,
        }
    }
}

/// The `oauth2` crate's HTTP client over reqwest 0.13.
///
/// A 5xx answer is turned into an error of the client here, so that `oauth2` reports it as a
/// request failure (transient, retried) rather than as an unparsable error body.
#[derive(Clone)]
pub struct OAuthHttp(pub reqwest::Client);

impl<'c> oauth2::AsyncHttpClient<'c> for OAuthHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request).map_err(|error| HttpError {
                message: format!("invalid request: {error}"),
                sent: false,
            })?;
            let response = self.0.execute(request).await.map_err(|error| HttpError {
                sent: !error.is_connect(),
                message: format!("{:#}", anyhow::Error::from(error)),
            })?;
            let status = response.status();
            if status.is_server_error() {
                return Err(HttpError::sent(format!(
                    "the token endpoint answered {status}"
                )));
            }
            let headers = response.headers().clone();
            let body = response
                .bytes()
                .await
                .map_err(|error| HttpError::sent(format!("reading the answer failed: {error}")))?;
            let mut http_response = HttpResponse::new(body.to_vec());
            *http_response.status_mut() = status;
            *http_response.headers_mut() = headers;
            Ok(http_response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth() -> JiraOAuth {
        // reqwest is built without a default crypto provider; the binary installs ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        JiraOAuth::new(
            OAuthConfig {
                client_id: "client-1".into(),
                client_secret: "very-secret-value".into(),
                auth_url: "https://auth.example.test/".into(),
                api_url: "https://api.example.test".into(),
                redirect_url: "https://hooks.example.test/oauth/jira/callback".into(),
                scopes: DEFAULT_SCOPES.into(),
            },
            http_client().expect("client"),
        )
        .expect("valid config")
    }

    #[test]
    fn the_authorize_url_carries_what_atlassian_requires() {
        let url = reqwest::Url::parse(&oauth().authorize_url("st-1")).expect("url");
        assert_eq!(
            url.as_str().split('?').next(),
            Some("https://auth.example.test/authorize")
        );
        let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(query["audience"], "api.atlassian.com");
        assert_eq!(query["prompt"], "consent");
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["client_id"], "client-1");
        assert_eq!(query["state"], "st-1");
        assert_eq!(
            query["redirect_uri"],
            "https://hooks.example.test/oauth/jira/callback"
        );
        assert_eq!(query["scope"], DEFAULT_SCOPES);
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let debug = format!("{:?}", oauth());
        assert!(!debug.contains("very-secret-value"), "{debug}");
        assert!(debug.contains("client-1"), "{debug}");
    }
}
