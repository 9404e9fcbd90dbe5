//! What a broker destination is (Redis Streams, AMQP, NATS JetStream): its settings as a
//! subscription stores them, how they are validated, how their URL is shown without its
//! credentials, and how a failure is described without them.
//!
//! A broker subscription's settings are stored as JSON in `subscription.destination`,
//! encrypted with the application's cipher, because the URLs carry credentials
//! (`amqp://user:pass@…`, `nats://token@…`, `redis://:password@…`). Whatever is shown
//! (answers, the console, logs, stored errors) goes through [`redacted_url`] or [`scrub`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::AttemptResult;
use super::amqp::AmqpSettings;
use super::nats::NatsSettings;
use super::redis_stream::RedisStreamSettings;
use crate::target;

/// The `destination_kind` of each kind of destination.
pub mod kind {
    /// An HTTP POST to the subscription's URL.
    pub const HTTP: &str = "http";
    /// XADD to a Redis stream.
    pub const REDIS_STREAM: &str = "redis_stream";
    /// A persistent, confirmed publish to a RabbitMQ (AMQP 0.9.1) exchange.
    pub const AMQP: &str = "amqp";
    /// A JetStream publish, acknowledged by the stream.
    pub const NATS: &str = "nats";
}

/// A broker destination's settings, tagged by `type` as in the API (DESIGN §10).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BrokerSettings {
    /// A Redis stream.
    RedisStream(RedisStreamSettings),
    /// A RabbitMQ exchange.
    Amqp(AmqpSettings),
    /// A NATS JetStream subject.
    Nats(NatsSettings),
}

impl BrokerSettings {
    /// The `destination_kind` of these settings.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RedisStream(_) => kind::REDIS_STREAM,
            Self::Amqp(_) => kind::AMQP,
            Self::Nats(_) => kind::NATS,
        }
    }

    /// The broker URL (with its credentials).
    pub fn url(&self) -> &str {
        match self {
            Self::RedisStream(settings) => &settings.url,
            Self::Amqp(settings) => &settings.url,
            Self::Nats(settings) => &settings.url,
        }
    }

    /// The same settings with the URL's credentials replaced by `***`, for display.
    pub fn redacted(&self) -> Self {
        let mut redacted = self.clone();
        let url = redacted_url(self.url());
        match &mut redacted {
            Self::RedisStream(settings) => settings.url = url,
            Self::Amqp(settings) => settings.url = url,
            Self::Nats(settings) => settings.url = url,
        }
        redacted
    }

    /// Checks the settings: a URL of the kind's schemes whose host is allowed by the SSRF rules
    /// (resolved, unless `allow_private`), and the kind's names. Returns why they are refused,
    /// in words for the person who sent them (never with the URL's credentials).
    pub async fn validate(&self, allow_private: bool) -> Result<(), String> {
        let (schemes, names) = match self {
            Self::RedisStream(settings) => (
                super::redis_stream::SCHEMES,
                super::redis_stream::check_names(settings),
            ),
            Self::Amqp(settings) => (super::amqp::SCHEMES, super::amqp::check_names(settings)),
            Self::Nats(settings) => (super::nats::SCHEMES, super::nats::check_names(settings)),
        };
        names?;
        target::validate_broker_url(self.url(), schemes, allow_private)
            .await
            .map(|_| ())
    }

    /// Reads settings stored by [`BrokerSettings::to_stored`].
    pub fn from_stored(json: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        serde_json::from_str(json).context("the stored destination settings are not readable")
    }

    /// The JSON stored (encrypted) in `subscription.destination`.
    pub fn to_stored(&self) -> String {
        // A map of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// How long broker calls may take (the subscriber timeouts of the settings).
#[derive(Debug, Clone, Copy)]
pub struct BrokerTimeouts {
    /// Time allowed to connect (TCP, TLS, the protocol's handshake).
    pub connect: Duration,
    /// Time allowed for one publish until the broker confirmed it.
    pub publish: Duration,
}

/// What one publish produced, and whether the connection it used should be dropped.
#[derive(Debug)]
pub struct Published {
    /// The attempt's result.
    pub result: AttemptResult,
    /// The connection failed (closed, timed out, protocol error): drop it, so the next attempt
    /// connects again (after a broker restart, say).
    pub broken: bool,
}

impl Published {
    /// The broker confirmed the message.
    pub fn confirmed() -> Self {
        Self {
            result: AttemptResult::default(),
            broken: false,
        }
    }

    /// The broker refused the message; the connection is still usable.
    pub fn refused(error: String) -> Self {
        Self {
            result: AttemptResult::transient(error),
            broken: false,
        }
    }

    /// The connection failed; it is dropped.
    pub fn broken(error: String) -> Self {
        Self {
            result: AttemptResult::transient(error),
            broken: true,
        }
    }
}

/// `url` with its credentials replaced by `***`: the password when there is one, else the user
/// name (a NATS token is written as the user name). Text that is not a URL is hidden whole.
pub fn redacted_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "***".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    } else if !parsed.username().is_empty() {
        let _ = parsed.set_username("***");
    }
    parsed.to_string()
}

/// `text` (an error from a broker client) without the URL's user name, password and query,
/// in case a client library quoted them.
pub fn scrub(text: &str, url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else {
        return text.to_owned();
    };
    let mut secrets: Vec<String> = Vec::new();
    for part in [
        parsed.password().unwrap_or_default(),
        parsed.username(),
        parsed.query().unwrap_or_default(),
    ] {
        if part.len() < 2 {
            continue;
        }
        secrets.push(part.to_owned());
        if let Ok(decoded) = percent_decoded(part)
            && decoded != part
        {
            secrets.push(decoded);
        }
    }
    // Longest first, so a secret that contains another is replaced whole.
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    let mut text = text.to_owned();
    for secret in secrets {
        text = text.replace(&secret, "***");
    }
    text
}

fn percent_decoded(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                index += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded)
}

/// The user name and password in a URL's userinfo, percent-decoded.
pub fn credentials(url: &url::Url) -> (Option<String>, Option<String>) {
    let user = (!url.username().is_empty())
        .then(|| percent_decoded(url.username()).unwrap_or_else(|_| url.username().to_owned()));
    let password = url
        .password()
        .map(|password| percent_decoded(password).unwrap_or_else(|_| password.to_owned()));
    (user, password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_credentials() {
        assert_eq!(
            redacted_url("amqp://guest:s3cret@rabbit:5672/%2f"),
            "amqp://guest:***@rabbit:5672/%2f"
        );
        assert_eq!(
            redacted_url("nats://t0ken@nats:4222"),
            "nats://***@nats:4222"
        );
        assert_eq!(
            redacted_url("redis://:pa55@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
        assert_eq!(redacted_url("nats://nats:4222"), "nats://nats:4222");
        assert_eq!(redacted_url("not a url with s3cret"), "***");
    }

    #[test]
    fn errors_lose_the_credentials_they_quote() {
        let url = "amqp://guest:s3cr%40t@rabbit:5672/%2f?auth=abc123";
        let text = scrub(
            "connect to amqp://guest:s3cr%40t@rabbit failed (s3cr@t, auth=abc123)",
            url,
        );
        assert!(!text.contains("s3cr"), "{text}");
        assert!(!text.contains("abc123"), "{text}");
        assert!(!text.contains("guest"), "{text}");
    }

    #[test]
    fn settings_round_trip_tagged_by_type() {
        let settings = BrokerSettings::Amqp(AmqpSettings {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            exchange: "events".to_owned(),
            routing_key: "jira".to_owned(),
        });
        let stored = settings.to_stored();
        assert!(stored.contains(r#""type":"amqp""#), "{stored}");
        assert!(stored.contains(r#""routingKey":"jira""#), "{stored}");
        assert_eq!(
            BrokerSettings::from_stored(&stored).expect("reads"),
            settings
        );
        assert_eq!(
            settings.redacted().url(),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
    }
}
