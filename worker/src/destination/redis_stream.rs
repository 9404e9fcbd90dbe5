//! The `redis_stream` destination: one `XADD` per message to a Redis stream, with the fields
//! `webhook-id`, `webhook-timestamp`, `webhook-signature` and `body` (DESIGN §10), and an
//! optional approximate cap on the stream's length (`MAXLEN ~ n`). The XADD reply (the entry's
//! id) is the broker's confirmation.

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

use super::Message;
use super::broker::{BrokerTimeouts, Published, scrub};

/// URL schemes of this kind (TLS to Redis is not built in).
pub const SCHEMES: &[&str] = &["redis"];

/// Longest stream name accepted.
const MAX_STREAM_NAME: usize = 1024;

/// Where a `redis_stream` subscription appends its messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisStreamSettings {
    /// `redis://[:password@]host[:port][/db]`.
    pub url: String,
    /// The stream's key.
    pub stream: String,
    /// Keep the stream at about this many entries (`XADD … MAXLEN ~ n`); unset: unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<u64>,
}

/// Checks the names of the settings (the URL is checked by the caller).
pub fn check_names(settings: &RedisStreamSettings) -> Result<(), String> {
    if settings.stream.trim().is_empty() {
        return Err("destination.stream must name a stream".to_owned());
    }
    if settings.stream.len() > MAX_STREAM_NAME {
        return Err(format!(
            "destination.stream must be at most {MAX_STREAM_NAME} bytes"
        ));
    }
    if settings.max_len == Some(0) {
        return Err("destination.maxLen must be at least 1 (or left out)".to_owned());
    }
    Ok(())
}

/// Connects to the Redis server at `url` (the settings' URL, its host possibly pinned to the
/// address the SSRF guard checked).
pub async fn connect(
    url: &url::Url,
    original_url: &str,
    timeouts: BrokerTimeouts,
) -> Result<MultiplexedConnection, String> {
    let client = redis::Client::open(url.as_str()).map_err(|error| {
        format!(
            "the Redis URL is not usable: {}",
            scrub(&error.to_string(), original_url)
        )
    })?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeouts.connect))
        .set_response_timeout(Some(timeouts.publish));
    let connect = client.get_multiplexed_async_connection_with_config(&config);
    match tokio::time::timeout(timeouts.connect + timeouts.publish, connect).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(format!(
            "could not connect to Redis: {}",
            scrub(&error.to_string(), original_url)
        )),
        Err(_) => Err("connecting to Redis timed out".to_owned()),
    }
}

/// Appends `message` to the stream and waits for the entry's id.
pub async fn publish(
    connection: &mut MultiplexedConnection,
    settings: &RedisStreamSettings,
    message: Message<'_>,
    timeouts: BrokerTimeouts,
) -> Published {
    let mut command = redis::cmd("XADD");
    command.arg(&settings.stream);
    if let Some(max_len) = settings.max_len {
        command.arg("MAXLEN").arg("~").arg(max_len);
    }
    command
        .arg("*")
        .arg("webhook-id")
        .arg(message.id)
        .arg("webhook-timestamp")
        .arg(message.timestamp)
        .arg("webhook-signature")
        .arg(message.signature)
        .arg("body")
        .arg(message.body);
    let sent = command.query_async::<String>(connection);
    match tokio::time::timeout(timeouts.publish, sent).await {
        Ok(Ok(_entry_id)) => Published::confirmed(),
        Ok(Err(error)) => {
            let text = format!(
                "Redis refused XADD to {}: {}",
                settings.stream,
                scrub(&error.to_string(), &settings.url)
            );
            // A server's answer (WRONGTYPE, NOPERM, OOM) leaves the connection usable.
            if error.is_io_error()
                || error.is_timeout()
                || error.is_connection_dropped()
                || error.is_unrecoverable_error()
                || error.is_connection_refusal()
            {
                Published::broken(text)
            } else {
                Published::refused(text)
            }
        }
        Err(_) => Published::broken(format!(
            "Redis did not answer XADD within {:?}",
            timeouts.publish
        )),
    }
}
