//! The benchmark's consumers of the broker destinations: a place on the broker for one run (a
//! Redis stream, a RabbitMQ exchange bound to a queue, a JetStream stream capturing a subject),
//! the subscription's `destination` pointing at it, and a task that reads every message from it
//! and hands its `webhook-*` headers and body to the same [`Recorder`] the HTTP subscriber uses
//! (signature verified, event counted). The place is deleted when the run stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};

use crate::subscriber::Recorder;

/// A destination kind the benchmark can deliver to (DESIGN §10's `destination.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DestinationKind {
    /// An HTTP subscriber (the benchmark's own server).
    Http,
    /// `XADD` to a Redis stream.
    #[value(name = "redis_stream")]
    RedisStream,
    /// A RabbitMQ exchange, with publisher confirms.
    Amqp,
    /// A NATS JetStream subject.
    Nats,
}

impl DestinationKind {
    /// The API's name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::RedisStream => "redis_stream",
            Self::Amqp => "amqp",
            Self::Nats => "nats",
        }
    }
}

/// Where the brokers are.
#[derive(Debug, Clone)]
pub struct BrokerUrls {
    /// Redis (the queue's server; the stream lives beside the queue's keys).
    pub redis: String,
    /// RabbitMQ.
    pub amqp: String,
    /// NATS with JetStream.
    pub nats: String,
}

/// One run's place on a broker and the task reading it.
pub struct BrokerConsumer {
    kind: DestinationKind,
    /// The `destination` of the subscriptions delivering here.
    pub destination: serde_json::Value,
    /// Stream key, exchange or JetStream stream name.
    name: String,
    /// AMQP queue, or NATS subject.
    queue: String,
    urls: BrokerUrls,
    reader: tokio::task::JoinHandle<()>,
}

impl BrokerConsumer {
    /// Creates the place named after `run` on the broker of `kind` and starts reading it into
    /// `recorder`. `kind` must not be `http`.
    pub async fn start(
        kind: DestinationKind,
        urls: &BrokerUrls,
        run: &str,
        recorder: Arc<Recorder>,
    ) -> anyhow::Result<Self> {
        let name = format!("{run}-deliveries");
        let queue = format!("{run}.deliveries");
        let (destination, reader) = match kind {
            DestinationKind::Http => anyhow::bail!("http deliveries go to the HTTP subscriber"),
            DestinationKind::RedisStream => {
                let destination = serde_json::json!({
                    "type": "redis_stream", "url": urls.redis, "stream": name,
                });
                let reader = read_redis_stream(&urls.redis, &name, recorder).await?;
                (destination, reader)
            }
            DestinationKind::Amqp => {
                let destination = serde_json::json!({
                    "type": "amqp", "url": urls.amqp, "exchange": name, "routingKey": queue,
                });
                let reader = read_amqp(&urls.amqp, &name, &queue, recorder).await?;
                (destination, reader)
            }
            DestinationKind::Nats => {
                let destination = serde_json::json!({
                    "type": "nats", "url": urls.nats, "subject": queue,
                });
                let reader = read_nats(&urls.nats, &name, &queue, recorder).await?;
                (destination, reader)
            }
        };
        Ok(Self {
            kind,
            destination,
            name,
            queue,
            urls: urls.clone(),
            reader,
        })
    }

    /// Stops reading and deletes the place (best effort).
    pub async fn stop(self) {
        self.reader.abort();
        let deleted = match self.kind {
            DestinationKind::Http => Ok(()),
            DestinationKind::RedisStream => delete_redis_stream(&self.urls.redis, &self.name).await,
            DestinationKind::Amqp => delete_amqp(&self.urls.amqp, &self.name, &self.queue).await,
            DestinationKind::Nats => delete_nats(&self.urls.nats, &self.name).await,
        };
        if let Err(error) = deleted {
            eprintln!("could not delete {}: {error:#}", self.name);
        }
    }
}

/// Reads the stream with `XREAD BLOCK` from its start, in chunks of 1,000 entries.
async fn read_redis_stream(
    url: &str,
    stream: &str,
    recorder: Arc<Recorder>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = redis::Client::open(url).with_context(|| format!("Redis URL {url}"))?;
    let mut conn = client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .context("connecting the stream reader to Redis")?;
    let stream = stream.to_owned();
    Ok(tokio::spawn(async move {
        let mut last = "0-0".to_owned();
        loop {
            let reply: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(200)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&last)
                .query_async(&mut conn)
                .await;
            match reply {
                Ok(value) => {
                    let at = Instant::now();
                    for (id, fields) in stream_entries(value) {
                        let field = |name: &str| {
                            fields
                                .iter()
                                .find(|(field, _)| field == name)
                                .map(|(_, value)| value.as_slice())
                                .unwrap_or_default()
                        };
                        let text = |name: &str| String::from_utf8_lossy(field(name)).into_owned();
                        let _ = recorder.record(
                            at,
                            &text("webhook-id"),
                            &text("webhook-timestamp"),
                            &text("webhook-signature"),
                            field("body"),
                        );
                        last = id;
                    }
                }
                Err(error) => {
                    eprintln!("reading the Redis stream {stream}: {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }))
}

/// One stream entry: its id and its `(field, value)` pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// The entries of an `XREAD` reply of one stream.
fn stream_entries(value: redis::Value) -> Vec<StreamEntry> {
    let bytes = |value: &redis::Value| -> Vec<u8> {
        match value {
            redis::Value::BulkString(bytes) => bytes.clone(),
            redis::Value::SimpleString(text) => text.clone().into_bytes(),
            _ => Vec::new(),
        }
    };
    // RESP2: [[stream, [[id, [field, value, …]], …]]]; RESP3 maps them (one stream).
    let streams = match value {
        redis::Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                redis::Value::Array(mut parts) if parts.len() == 2 => parts.pop(),
                _ => None,
            })
            .collect::<Vec<_>>(),
        redis::Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for entries in streams {
        let redis::Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let redis::Value::Array(parts) = entry else {
                continue;
            };
            let (Some(id), Some(redis::Value::Array(fields))) = (parts.first(), parts.get(1))
            else {
                continue;
            };
            let fields = fields
                .chunks(2)
                .filter_map(|pair| match pair {
                    [name, value] => Some((
                        String::from_utf8_lossy(&bytes(name)).into_owned(),
                        bytes(value),
                    )),
                    _ => None,
                })
                .collect();
            out.push((String::from_utf8_lossy(&bytes(id)).into_owned(), fields));
        }
    }
    out
}

async fn delete_redis_stream(url: &str, stream: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url).with_context(|| format!("Redis URL {url}"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    redis::cmd("DEL")
        .arg(stream)
        .query_async::<()>(&mut conn)
        .await
        .context("DEL")
}

async fn amqp_channel(url: &str) -> anyhow::Result<(lapin::Connection, lapin::Channel)> {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let channel = connection
        .create_channel()
        .await
        .context("opening an AMQP channel")?;
    Ok((connection, channel))
}

/// Declares a direct exchange and a durable queue bound to it, then consumes the queue with
/// automatic acknowledgements (the delivery was confirmed to hookline when the queue took it).
async fn read_amqp(
    url: &str,
    exchange: &str,
    queue: &str,
    recorder: Arc<Recorder>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (connection, channel) = amqp_channel(url).await?;
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("exchange.declare")?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .context("queue.declare")?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("queue.bind")?;
    channel
        .basic_qos(1000, BasicQosOptions::default())
        .await
        .context("basic.qos")?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "hookline-bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("basic.consume")?;
    Ok(tokio::spawn(async move {
        // The connection lives as long as the reader.
        let _connection = connection;
        while let Some(delivery) = consumer.next().await {
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(error) => {
                    eprintln!("consuming the AMQP queue: {error}");
                    return;
                }
            };
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            let header = |name: &str| match headers.inner().get(name) {
                Some(AMQPValue::LongString(value)) => {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                }
                _ => String::new(),
            };
            let _ = recorder.record(
                Instant::now(),
                &header("webhook-id"),
                &header("webhook-timestamp"),
                &header("webhook-signature"),
                &delivery.data,
            );
        }
    }))
}

async fn delete_amqp(url: &str, exchange: &str, queue: &str) -> anyhow::Result<()> {
    let (connection, channel) = amqp_channel(url).await?;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .context("queue.delete")?;
    channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await
        .context("exchange.delete")?;
    connection.close(200, "done".into()).await.ok();
    Ok(())
}

/// Creates a JetStream stream capturing `subject` and reads it with an ephemeral pull consumer
/// that needs no acknowledgements.
async fn read_nats(
    url: &str,
    stream: &str,
    subject: &str,
    recorder: Arc<Recorder>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use async_nats::jetstream::{self, consumer};
    let client = async_nats::connect(url)
        .await
        .context("connecting to NATS")?;
    let context = jetstream::new(client);
    let stream = context
        .get_or_create_stream(jetstream::stream::Config {
            name: stream.to_owned(),
            subjects: vec![subject.to_owned()],
            ..Default::default()
        })
        .await
        .context("creating the JetStream stream")?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .context("creating the JetStream consumer")?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .messages()
        .await
        .context("pulling from the JetStream consumer")?;
    Ok(tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    eprintln!("pulling from JetStream: {error}");
                    continue;
                }
            };
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(name))
                    .map(|value| value.as_str().to_owned())
                    .unwrap_or_default()
            };
            let _ = recorder.record(
                Instant::now(),
                &header("webhook-id"),
                &header("webhook-timestamp"),
                &header("webhook-signature"),
                &message.payload,
            );
        }
    }))
}

async fn delete_nats(url: &str, stream: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(url)
        .await
        .context("connecting to NATS")?;
    async_nats::jetstream::new(client)
        .delete_stream(stream)
        .await
        .context("deleting the JetStream stream")?;
    Ok(())
}
