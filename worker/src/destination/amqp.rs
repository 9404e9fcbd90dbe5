//! The `amqp` destination: a publish to a RabbitMQ (AMQP 0.9.1) exchange with publisher
//! confirms (DESIGN §4, §10).
//!
//! Each message is persistent (`delivery_mode` 2), `application/json`, has `message_id` =
//! `webhook-id` and the headers `webhook-id`, `webhook-timestamp`, `webhook-signature`. It is
//! published `mandatory`, so a message no queue is bound for comes back instead of being dropped:
//! it counts as delivered only when the broker acked it and did not return it. A nack, a
//! returned message or an unknown exchange (the broker closes the channel) is a failed attempt.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};

use super::Message;
use super::broker::{BrokerTimeouts, Published, scrub};

/// URL schemes of this kind.
pub const SCHEMES: &[&str] = &["amqp", "amqps"];

/// Longest exchange name or routing key AMQP carries (a short string).
const MAX_NAME: usize = 255;

/// Where an `amqp` subscription publishes its messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AmqpSettings {
    /// `amqp[s]://user:password@host[:port]/vhost` (`%2f` is the default vhost `/`).
    pub url: String,
    /// The exchange; `""` is the default exchange, which routes by queue name.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
}

/// Checks the names of the settings (the URL is checked by the caller).
pub fn check_names(settings: &AmqpSettings) -> Result<(), String> {
    if settings.exchange.len() > MAX_NAME {
        return Err(format!(
            "destination.exchange must be at most {MAX_NAME} bytes"
        ));
    }
    if settings.routing_key.len() > MAX_NAME {
        return Err(format!(
            "destination.routingKey must be at most {MAX_NAME} bytes"
        ));
    }
    if settings.exchange.is_empty() && settings.routing_key.is_empty() {
        return Err(
            "destination.routingKey must name a queue when the exchange is the default one (\"\")"
                .to_owned(),
        );
    }
    Ok(())
}

/// A connection to RabbitMQ and the confirm-mode channel messages are published on.
#[derive(Debug)]
pub struct AmqpConnection {
    /// Kept so the connection lives as long as its channel; closed when dropped.
    _connection: Connection,
    channel: Channel,
}

/// Connects to `url` (the settings' URL, its host possibly pinned to the address the SSRF guard
/// checked) and opens a channel in confirm mode.
pub async fn connect(
    url: &url::Url,
    original_url: &str,
    timeouts: BrokerTimeouts,
) -> Result<AmqpConnection, String> {
    let fail = |what: &str, error: lapin::Error| {
        format!("{what}: {}", scrub(&error.to_string(), original_url))
    };
    let properties = ConnectionProperties::default()
        .with_connection_name(concat!("hookline/", env!("CARGO_PKG_VERSION")).into());
    let connection = match tokio::time::timeout(
        timeouts.connect + timeouts.publish,
        Connection::connect(url.as_str(), properties),
    )
    .await
    {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => return Err(fail("could not connect to RabbitMQ", error)),
        Err(_) => return Err("connecting to RabbitMQ timed out".to_owned()),
    };
    let open = async {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok::<_, lapin::Error>(channel)
    };
    let channel = match tokio::time::timeout(timeouts.publish, open).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(error)) => return Err(fail("could not open a RabbitMQ channel", error)),
        Err(_) => return Err("opening a RabbitMQ channel timed out".to_owned()),
    };
    Ok(AmqpConnection {
        _connection: connection,
        channel,
    })
}

/// Publishes `message` and waits for the broker's confirm.
pub async fn publish(
    connection: &AmqpConnection,
    settings: &AmqpSettings,
    message: Message<'_>,
    timeouts: BrokerTimeouts,
) -> Published {
    let (Ok(exchange), Ok(routing_key), Ok(message_id)) = (
        ShortString::try_new(settings.exchange.as_str()),
        ShortString::try_new(settings.routing_key.as_str()),
        ShortString::try_new(message.id),
    ) else {
        return Published::refused("the exchange or routing key is too long for AMQP".to_owned());
    };
    let mut headers = FieldTable::default();
    headers.insert(
        "webhook-id".into(),
        AMQPValue::LongString(message.id.into()),
    );
    headers.insert(
        "webhook-timestamp".into(),
        AMQPValue::LongString(message.timestamp.to_string().into()),
    );
    headers.insert(
        "webhook-signature".into(),
        AMQPValue::LongString(message.signature.into()),
    );
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message_id)
        .with_timestamp(u64::try_from(message.timestamp).unwrap_or_default())
        .with_headers(headers);
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirmed = async {
        connection
            .channel
            .basic_publish(exchange, routing_key, options, message.body, properties)
            .await?
            .await
    };
    let described = |error: lapin::Error| {
        format!(
            "RabbitMQ did not take the message for exchange {:?}: {}",
            settings.exchange,
            scrub(&error.to_string(), &settings.url)
        )
    };
    match tokio::time::timeout(timeouts.publish, confirmed).await {
        Ok(Ok(Confirmation::Ack(None))) => Published::confirmed(),
        Ok(Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)))) => {
            Published::refused(format!(
                "RabbitMQ returned the message as unroutable (exchange {:?}, routing key {:?}): {} {}",
                settings.exchange, settings.routing_key, returned.reply_code, returned.reply_text
            ))
        }
        Ok(Ok(Confirmation::Nack(None))) => {
            Published::refused("RabbitMQ refused the message (nack)".to_owned())
        }
        Ok(Ok(Confirmation::NotRequested)) => {
            Published::broken("the RabbitMQ channel is not in confirm mode".to_owned())
        }
        // An unknown exchange closes the channel (404 NOT_FOUND); a closed connection fails
        // every publish. Either way the channel is unusable: drop it and open a new one.
        Ok(Err(error)) => Published::broken(described(error)),
        Err(_) => Published::broken(format!(
            "RabbitMQ did not confirm the message within {:?}",
            timeouts.publish
        )),
    }
}
