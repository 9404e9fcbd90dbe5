//! The `http` destination: a POST of the envelope with Standard Webhooks headers to the
//! subscription's URL (DESIGN §4 Deliver). 2xx is success; anything else is retried.

use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use plugins::retry_after::parse_retry_after;

use super::{AttemptResult, Destination, Message, error_chain};
use crate::storable;
use crate::target::{self, ForbiddenTarget};

/// Most bytes of a response body kept in `delivery_attempt.response_excerpt`.
pub const EXCERPT_BYTES: usize = 1024;

/// How the subscriber HTTP client behaves.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    /// Time allowed to establish the connection.
    pub connect_timeout: Duration,
    /// Time allowed for the whole request, response body excerpt included.
    pub timeout: Duration,
    /// Let deliveries reach loopback and private addresses.
    pub allow_private_targets: bool,
}

/// The HTTP client deliveries are sent with: bounded timeouts, no redirects, no proxy, and the
/// SSRF guard in its DNS resolver. One client (one connection pool) serves every subscription.
pub fn subscriber_client(settings: ClientSettings) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(std::sync::Arc::new(target::GuardedResolver {
            allow_private: settings.allow_private_targets,
        }))
        .user_agent(concat!("hookline/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("could not build the subscriber HTTP client")
}

/// One subscriber URL, checked against the SSRF rules, and the shared client.
#[derive(Debug, Clone)]
pub struct HttpDestination {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl HttpDestination {
    /// The destination for `url`; refused (permanently) when it is not a URL or names a
    /// forbidden address literally. Host names are checked when they resolve.
    pub fn new(
        client: reqwest::Client,
        url: &str,
        allow_private_targets: bool,
    ) -> Result<Self, AttemptResult> {
        let url = reqwest::Url::parse(url).map_err(|error| {
            AttemptResult::permanent(format!("the target URL is not a URL: {error}"))
        })?;
        target::check_literal_host(&url, allow_private_targets)
            .map_err(|refused| AttemptResult::permanent(refused.to_string()))?;
        Ok(Self { client, url })
    }

    async fn post(&self, message: Message<'_>) -> AttemptResult {
        let sent = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", message.id)
            .header("webhook-timestamp", message.timestamp.to_string())
            .header("webhook-signature", message.signature)
            .body(message.body.to_vec())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => {
                return AttemptResult {
                    permanent: is_forbidden(&error),
                    // Never the URL: its userinfo or query may hold the subscriber's secrets.
                    error: Some(error_chain(&error.without_url())),
                    ..AttemptResult::default()
                };
            }
        };
        let status_code = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, chrono::Utc::now()));
        let mut excerpt = Vec::new();
        let mut read_error = None;
        while excerpt.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(error) => {
                    read_error = Some(error_chain(&error.without_url()));
                    break;
                }
            }
        }
        excerpt.truncate(EXCERPT_BYTES);
        // The subscriber's bytes, made storable (Postgres refuses NUL in text).
        let excerpt = (!excerpt.is_empty())
            .then(|| storable::text(&String::from_utf8_lossy(&excerpt)).into_owned());
        let error = if (200..300).contains(&status_code) {
            // A 2xx counts even when reading its body failed: the subscriber accepted it.
            None
        } else {
            Some(
                read_error.unwrap_or_else(|| format!("the subscriber answered HTTP {status_code}")),
            )
        };
        AttemptResult {
            status_code: Some(status_code),
            error,
            excerpt,
            retry_after,
            permanent: false,
        }
    }
}

impl Destination for HttpDestination {
    fn send<'a>(&'a self, message: Message<'a>) -> BoxFuture<'a, AttemptResult> {
        self.post(message).boxed()
    }
}

/// Whether the request failed because the SSRF guard refused every address.
fn is_forbidden(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<ForbiddenTarget>() {
            return true;
        }
        source = current.source();
    }
    false
}
