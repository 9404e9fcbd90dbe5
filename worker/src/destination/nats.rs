//! The `nats` destination: a JetStream publish, counted as delivered when the stream's
//! acknowledgement (`PubAck`) arrives (DESIGN §4, §10).
//!
//! Each message carries the headers `webhook-id`, `webhook-timestamp`, `webhook-signature` and
//! `Nats-Msg-Id` = `webhook-id`, so JetStream drops a redelivery of the same delivery within
//! the stream's duplicate window on its own. A subject no stream captures is refused by the
//! server (`no responders`) and is a failed attempt.

use async_nats::jetstream;
use serde::{Deserialize, Serialize};

use super::Message;
use super::broker::{BrokerTimeouts, Published, credentials, scrub};

/// URL schemes of this kind (`tls://` for NATS over TLS).
pub const SCHEMES: &[&str] = &["nats", "tls"];

/// Longest subject accepted.
const MAX_SUBJECT: usize = 1024;

/// Where a `nats` subscription publishes its messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NatsSettings {
    /// `nats://[token@ | user:password@]host[:port]` (`tls://` for TLS).
    pub url: String,
    /// The subject; a JetStream stream must capture it.
    pub subject: String,
}

/// Checks the names of the settings (the URL is checked by the caller).
pub fn check_names(settings: &NatsSettings) -> Result<(), String> {
    let subject = &settings.subject;
    if subject.is_empty() || subject.len() > MAX_SUBJECT {
        return Err(format!(
            "destination.subject must be 1 to {MAX_SUBJECT} bytes, e.g. \"jira.events\""
        ));
    }
    let valid = subject.split('.').all(|token| {
        !token.is_empty()
            && token != "*"
            && token != ">"
            && !token.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    if !valid {
        return Err(
            "destination.subject must be dot-separated tokens without spaces or wildcards, \
             e.g. \"jira.events\""
                .to_owned(),
        );
    }
    Ok(())
}

/// A NATS connection and its JetStream context.
#[derive(Debug, Clone)]
pub struct NatsConnection {
    jetstream: jetstream::Context,
}

/// Connects to `url` (the settings' URL, its host possibly pinned to the address the SSRF guard
/// checked), authenticating with the URL's token or user and password.
pub async fn connect(
    url: &url::Url,
    original_url: &str,
    timeouts: BrokerTimeouts,
) -> Result<NatsConnection, String> {
    // Only the address the SSRF guard checked: a server's INFO may announce other cluster
    // members (`connect_urls`), which the client would otherwise reconnect to unchecked.
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(timeouts.connect)
        .request_timeout(Some(timeouts.publish))
        .ignore_discovered_servers()
        .name(concat!("hookline/", env!("CARGO_PKG_VERSION")));
    options = match credentials(url) {
        (Some(user), Some(password)) => options.user_and_password(user, password),
        (Some(token), None) => options.token(token),
        _ => options,
    };
    let mut address = url.clone();
    let _ = address.set_username("");
    let _ = address.set_password(None);
    match tokio::time::timeout(
        timeouts.connect + timeouts.publish,
        options.connect(address.as_str()),
    )
    .await
    {
        Ok(Ok(client)) => Ok(NatsConnection {
            jetstream: jetstream::new(client),
        }),
        Ok(Err(error)) => Err(format!(
            "could not connect to NATS: {}",
            scrub(&error.to_string(), original_url)
        )),
        Err(_) => Err("connecting to NATS timed out".to_owned()),
    }
}

/// Publishes `message` to the subject and waits for the stream's acknowledgement.
pub async fn publish(
    connection: &NatsConnection,
    settings: &NatsSettings,
    message: Message<'_>,
    timeouts: BrokerTimeouts,
) -> Published {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", message.id);
    headers.insert("webhook-id", message.id);
    headers.insert("webhook-timestamp", message.timestamp.to_string().as_str());
    headers.insert("webhook-signature", message.signature);
    headers.insert("content-type", "application/json");
    let acknowledged = async {
        connection
            .jetstream
            .publish_with_headers(
                settings.subject.clone(),
                headers,
                message.body.to_vec().into(),
            )
            .await?
            .await
    };
    match tokio::time::timeout(timeouts.publish, acknowledged).await {
        Ok(Ok(_ack)) => Published::confirmed(),
        Ok(Err(error)) => {
            use async_nats::jetstream::context::PublishErrorKind;
            let text = format!(
                "NATS JetStream did not take the message for {}: {}",
                settings.subject,
                scrub(&error.to_string(), &settings.url)
            );
            match error.kind() {
                // The server answered: the connection is fine.
                PublishErrorKind::StreamNotFound
                | PublishErrorKind::WrongLastMessageId
                | PublishErrorKind::WrongLastSequence
                | PublishErrorKind::MaxAckPending
                | PublishErrorKind::MaxPayloadExceeded => Published::refused(text),
                _ => Published::broken(text),
            }
        }
        Err(_) => Published::broken(format!(
            "NATS JetStream did not acknowledge the message within {:?}",
            timeouts.publish
        )),
    }
}
