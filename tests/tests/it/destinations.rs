//! Broker destinations (Redis Streams, RabbitMQ, NATS JetStream) against the real services:
//! the same envelope and signature as HTTP, delivered only once the broker confirmed it,
//! retries through a broker outage, refusals retried then dead and retried from the API, a
//! worker killed mid-publish, credentials never shown, and one event to every kind at once.
//!
//! Each test uses its own stream / exchange and queue / stream and subject (named from a uuid),
//! so tests run in parallel against the shared servers. A suite whose broker is unreachable is
//! skipped with a notice (a failure under `HOOKLINE_REQUIRE_SERVICES=1`).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use api::Role;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use sea_orm::EntityTrait as _;
use tests::fake_subscriber::{FakeSubscriber, Reply};
use tests::proxy::TcpProxy;
use tests::{Backend, TestApp, TestEnv, wait_until};
use uuid::Uuid;

use crate::helpers::*;
use crate::on_both_backends;

/// Generates, for each `async fn name(kind: Kind, backend: Backend)`, a module `name` with one
/// test per broker and backend: `name::redis_stream::embedded`, `name::amqp::postgres_redis`, …
macro_rules! for_each_broker {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            use super::{Backend, Kind};

            async fn redis_stream(backend: Backend) {
                super::$test(Kind::RedisStream, backend).await
            }

            async fn amqp(backend: Backend) {
                super::$test(Kind::Amqp, backend).await
            }

            async fn nats(backend: Backend) {
                super::$test(Kind::Nats, backend).await
            }

            crate::on_both_backends!(redis_stream, amqp, nats);
        }
    )+};
}

for_each_broker!(
    a_webhook_reaches_the_broker_with_the_envelope_and_a_valid_signature,
    a_broker_down_for_a_while_gets_every_message_after_retries,
    a_broker_refusing_is_retried_then_dead_and_the_api_retry_delivers,
    a_worker_killed_mid_publish_delivers_at_least_once_with_the_same_dedupe_id,
);

on_both_backends!(
    one_event_reaches_http_and_every_broker,
    broker_credentials_never_appear_in_answers_pages_or_the_database,
    destinations_are_validated_and_can_be_changed,
);

/// A broker kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RedisStream,
    Amqp,
    Nats,
}

/// One message as a broker holds it.
#[derive(Debug, Clone)]
struct BrokerMessage {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    /// AMQP `message_id` / NATS `Nats-Msg-Id` (Redis: `id` again).
    dedupe_id: String,
}

/// One test's place at a broker: a Redis stream; an exchange with a bound queue; a JetStream
/// stream and its subject. All named from a uuid.
struct Place {
    kind: Kind,
    /// The broker's URL (with credentials) as the services give it.
    url: String,
    /// Redis stream key; AMQP exchange; NATS stream name.
    name: String,
    /// AMQP queue and routing key; NATS subject.
    queue: String,
    /// AMQP messages already taken from the queue (basic.get consumes them).
    taken: Mutex<Vec<BrokerMessage>>,
}

impl Place {
    /// A fresh place at `kind`'s broker, or None (after a notice) when it is unreachable.
    async fn new(kind: Kind) -> Option<Self> {
        let unique = Uuid::new_v4().simple().to_string();
        let url = match kind {
            Kind::RedisStream => tests::services::redis().await?,
            Kind::Amqp => tests::services::rabbitmq().await?,
            Kind::Nats => tests::services::nats().await?,
        }
        .to_owned();
        let place = Self {
            kind,
            url,
            name: format!("hookline-test-{unique}"),
            queue: format!("hookline.test.{unique}"),
            taken: Mutex::new(Vec::new()),
        };
        place.fix().await;
        Some(place)
    }

    /// The broker's address (for a proxy in front of it).
    fn addr(&self) -> SocketAddr {
        let url = url::Url::parse(&self.url).expect("broker url");
        let port = url.port_or_known_default().unwrap_or(match self.kind {
            Kind::RedisStream => 6379,
            Kind::Amqp => 5672,
            Kind::Nats => 4222,
        });
        let host = url.host_str().expect("host");
        std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .expect("resolves")
            .next()
            .expect("an address")
    }

    /// The broker's URL pointed at `addr` instead (a proxy), with the same credentials.
    fn url_via(&self, addr: SocketAddr) -> String {
        let mut url = url::Url::parse(&self.url).expect("broker url");
        url.set_ip_host(addr.ip()).expect("ip host");
        url.set_port(Some(addr.port())).expect("port");
        url.to_string()
    }

    /// The API's `destination` for this place, reached at `url`.
    fn destination(&self, url: &str) -> serde_json::Value {
        match self.kind {
            Kind::RedisStream => {
                serde_json::json!({ "type": "redis_stream", "url": url, "stream": self.name, "maxLen": 10000 })
            }
            Kind::Amqp => serde_json::json!({
                "type": "amqp", "url": url, "exchange": self.name, "routingKey": self.queue,
            }),
            Kind::Nats => serde_json::json!({ "type": "nats", "url": url, "subject": self.queue }),
        }
    }

    /// Makes the broker refuse this place's messages: a Redis key of another type (WRONGTYPE),
    /// an unknown exchange, a subject no stream captures.
    async fn break_it(&self) {
        match self.kind {
            Kind::RedisStream => {
                let mut conn = self.redis().await;
                let _: () = redis::cmd("DEL")
                    .arg(&self.name)
                    .query_async(&mut conn)
                    .await
                    .expect("DEL");
                let _: () = redis::cmd("SET")
                    .arg(&self.name)
                    .arg("not a stream")
                    .query_async(&mut conn)
                    .await
                    .expect("SET");
            }
            Kind::Amqp => {
                let channel = self.amqp().await;
                channel
                    .exchange_delete(self.name.as_str().into(), ExchangeDeleteOptions::default())
                    .await
                    .expect("exchange.delete");
            }
            Kind::Nats => {
                let _ = self.jetstream().await.delete_stream(&self.name).await;
            }
        }
    }

    /// Makes the place accept messages (again).
    async fn fix(&self) {
        match self.kind {
            Kind::RedisStream => {
                let mut conn = self.redis().await;
                let kind: String = redis::cmd("TYPE")
                    .arg(&self.name)
                    .query_async(&mut conn)
                    .await
                    .expect("TYPE");
                if kind != "stream" && kind != "none" {
                    let _: () = redis::cmd("DEL")
                        .arg(&self.name)
                        .query_async(&mut conn)
                        .await
                        .expect("DEL");
                }
            }
            Kind::Amqp => {
                let channel = self.amqp().await;
                channel
                    .exchange_declare(
                        self.name.as_str().into(),
                        lapin::ExchangeKind::Direct,
                        ExchangeDeclareOptions {
                            auto_delete: false,
                            ..ExchangeDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .expect("exchange.declare");
                channel
                    .queue_declare(
                        self.queue.as_str().into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .expect("queue.declare");
                channel
                    .queue_bind(
                        self.queue.as_str().into(),
                        self.name.as_str().into(),
                        self.queue.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .expect("queue.bind");
            }
            Kind::Nats => {
                self.jetstream()
                    .await
                    .get_or_create_stream(async_nats::jetstream::stream::Config {
                        name: self.name.clone(),
                        subjects: vec![self.queue.clone()],
                        ..Default::default()
                    })
                    .await
                    .expect("create stream");
            }
        }
    }

    /// Every message the place has received so far, oldest first.
    async fn messages(&self) -> Vec<BrokerMessage> {
        match self.kind {
            Kind::RedisStream => {
                let mut conn = self.redis().await;
                let entries: redis::Value = redis::cmd("XRANGE")
                    .arg(&self.name)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(redis::Value::Nil);
                redis_entries(entries)
            }
            Kind::Amqp => {
                let channel = self.amqp().await;
                loop {
                    let got = channel
                        .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
                        .await
                        .expect("basic.get");
                    let Some(got) = got else { break };
                    let delivery = got.delivery;
                    let headers = delivery.properties.headers().clone().unwrap_or_default();
                    let header = |name: &str| match headers.inner().get(name) {
                        Some(AMQPValue::LongString(value)) => {
                            String::from_utf8_lossy(value.as_bytes()).into_owned()
                        }
                        other => panic!("header {name} is {other:?}"),
                    };
                    assert_eq!(
                        delivery
                            .properties
                            .content_type()
                            .as_ref()
                            .map(|t| t.as_str()),
                        Some("application/json")
                    );
                    assert_eq!(*delivery.properties.delivery_mode(), Some(2), "persistent");
                    let message = BrokerMessage {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body: delivery.data.clone(),
                        dedupe_id: delivery
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|id| id.as_str().to_owned())
                            .unwrap_or_default(),
                    };
                    self.taken.lock().expect("taken").push(message);
                }
                self.taken.lock().expect("taken").clone()
            }
            Kind::Nats => {
                let jetstream = self.jetstream().await;
                let Ok(mut stream) = jetstream.get_stream(&self.name).await else {
                    return Vec::new();
                };
                let state = stream.info().await.expect("stream info").state.clone();
                let mut messages = Vec::new();
                if state.messages == 0 {
                    return messages;
                }
                for sequence in state.first_sequence..=state.last_sequence {
                    let Ok(message) = stream.get_raw_message(sequence).await else {
                        continue;
                    };
                    let header = |name: &str| {
                        message
                            .headers
                            .get(name)
                            .map(|value| value.as_str().to_owned())
                            .unwrap_or_default()
                    };
                    messages.push(BrokerMessage {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body: message.payload.to_vec(),
                        dedupe_id: header("Nats-Msg-Id"),
                    });
                }
                messages
            }
        }
    }

    /// Waits until the place holds a message of `webhook_id`, and returns those.
    async fn wait_for(&self, webhook_id: &str) -> Vec<BrokerMessage> {
        wait_until(
            Duration::from_secs(30),
            &format!("the broker holds {webhook_id}"),
            || async {
                let found: Vec<BrokerMessage> = self
                    .messages()
                    .await
                    .into_iter()
                    .filter(|message| message.id == webhook_id)
                    .collect();
                (!found.is_empty()).then_some(found)
            },
        )
        .await
    }

    async fn cleanup(&self) {
        match self.kind {
            Kind::RedisStream => {
                let mut conn = self.redis().await;
                let _: Result<(), _> = redis::cmd("DEL")
                    .arg(&self.name)
                    .query_async(&mut conn)
                    .await;
            }
            Kind::Amqp => {
                let channel = self.amqp().await;
                let _ = channel
                    .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
                let _ = channel
                    .exchange_delete(self.name.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            Kind::Nats => {
                let _ = self.jetstream().await.delete_stream(&self.name).await;
            }
        }
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    async fn amqp(&self) -> lapin::Channel {
        let connection =
            lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default())
                .await
                .expect("amqp connection");
        let channel = connection.create_channel().await.expect("amqp channel");
        // The channel keeps its connection open while it lives.
        std::mem::forget(connection);
        channel
    }

    async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.url.as_str())
            .await
            .expect("nats connection");
        async_nats::jetstream::new(client)
    }
}

/// The entries of an XRANGE reply as messages.
fn redis_entries(value: redis::Value) -> Vec<BrokerMessage> {
    let redis::Value::Array(entries) = value else {
        return Vec::new();
    };
    let text = |value: &redis::Value| -> Vec<u8> {
        match value {
            redis::Value::BulkString(bytes) => bytes.clone(),
            redis::Value::SimpleString(text) => text.clone().into_bytes(),
            other => panic!("not a string: {other:?}"),
        }
    };
    let mut messages = Vec::new();
    for entry in entries {
        let redis::Value::Array(parts) = entry else {
            continue;
        };
        let Some(redis::Value::Array(fields)) = parts.get(1) else {
            continue;
        };
        let mut field = std::collections::HashMap::new();
        for pair in fields.chunks(2) {
            if let [name, value] = pair {
                field.insert(
                    String::from_utf8_lossy(&text(name)).into_owned(),
                    text(value),
                );
            }
        }
        let get = |name: &str| String::from_utf8_lossy(&field[name]).into_owned();
        messages.push(BrokerMessage {
            id: get("webhook-id"),
            timestamp: get("webhook-timestamp"),
            signature: get("webhook-signature"),
            body: field["body"].clone(),
            dedupe_id: get("webhook-id"),
        });
    }
    messages
}

/// Creates a subscription to `destination` through the API; returns its JSON.
async fn subscribe(
    app: &TestApp,
    api_key: &str,
    destination: serde_json::Value,
) -> serde_json::Value {
    let response = app
        .client
        .post(app.url("/api/v1/subscriptions"))
        .bearer_auth(api_key)
        .json(&serde_json::json!({ "destination": destination, "eventTypes": ["jira:issue_*"] }))
        .send()
        .await
        .expect("request");
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(status, 201, "create subscription: {body}");
    body
}

/// Checks a broker message against its delivery: the envelope, the signature (hookline's own
/// signer and, when installed, the reference `standardwebhooks` library), the dedupe id.
fn check_message(message: &BrokerMessage, secret: &str, delivery_id: Uuid, event_id: Uuid) {
    assert_eq!(
        message.id,
        delivery_id.to_string(),
        "webhook-id is the delivery id"
    );
    assert_eq!(message.dedupe_id, message.id, "the dedupe id is webhook-id");
    let timestamp: i64 = message.timestamp.parse().expect("webhook-timestamp");
    let expected =
        worker::signature::sign(secret, &message.id, timestamp, &message.body).expect("signs");
    assert_eq!(message.signature, expected, "webhook-signature");
    let body: serde_json::Value = serde_json::from_slice(&message.body).expect("JSON body");
    assert_eq!(body["type"], "jira:issue_updated");
    assert_eq!(body["data"]["eventId"], event_id.to_string());
    assert_eq!(body["data"]["raw"]["issue"]["key"], "ENG-1");
    crate::delivery::check_with_standardwebhooks(
        secret,
        &message.id,
        &message.timestamp,
        &message.signature,
        &message.body,
    );
}

async fn wait_for_status(app: &TestApp, id: Uuid, status: &str) -> entity::delivery::Model {
    wait_until(
        Duration::from_secs(60),
        &format!("the delivery is {status}"),
        || async {
            let stored = delivery(app, id).await;
            (stored.status == status).then_some(stored)
        },
    )
    .await
}

async fn a_webhook_reaches_the_broker_with_the_envelope_and_a_valid_signature(
    kind: Kind,
    backend: Backend,
) {
    let Some(place) = Place::new(kind).await else {
        return;
    };
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let (api_key, connection) = company_with_connection(&app).await;
    let subscription = subscribe(&app, &api_key, place.destination(&place.url)).await;
    let secret = subscription["secret"].as_str().expect("secret").to_owned();
    let (event_id, delivery_id) =
        event_with_delivery(&app, &connection, id_of(&subscription)).await;
    let done = wait_for_status(&app, delivery_id, "succeeded").await;
    assert_eq!(done.attempts, 1);
    let messages = place.wait_for(&delivery_id.to_string()).await;
    assert_eq!(messages.len(), 1, "one message per delivery");
    check_message(&messages[0], &secret, delivery_id, event_id);
    let recorded = attempts(&app, delivery_id).await;
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].error.is_none(), "{:?}", recorded[0].error);
    assert_eq!(recorded[0].status_code, None, "brokers have no HTTP status");
    app.stop().await;
    env.cleanup().await;
    place.cleanup().await;
}

async fn a_broker_down_for_a_while_gets_every_message_after_retries(kind: Kind, backend: Backend) {
    let Some(place) = Place::new(kind).await else {
        return;
    };
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    // Retries every 300 ms for long enough to outlast the outage.
    let app = env
        .spawn_with(Role::All, |settings| {
            settings.retry_schedule =
                api::config::RetrySchedule(vec![Duration::from_millis(300); 30]);
        })
        .await;
    let proxy = TcpProxy::start(place.addr()).await;
    let (api_key, connection) = company_with_connection(&app).await;
    let subscription = subscribe(
        &app,
        &api_key,
        place.destination(&place.url_via(proxy.addr)),
    )
    .await;
    let subscription_id = id_of(&subscription);

    // A first delivery opens the pooled connection.
    let (_, first) = event_with_delivery(&app, &connection, subscription_id).await;
    wait_for_status(&app, first, "succeeded").await;

    proxy.cut();
    let mut during = Vec::new();
    for _ in 0..5 {
        during.push(
            event_with_delivery(&app, &connection, subscription_id)
                .await
                .1,
        );
    }
    for id in &during {
        wait_until(
            Duration::from_secs(30),
            "the delivery failed twice while the broker is down",
            || async { (attempts(&app, *id).await.len() >= 2).then_some(()) },
        )
        .await;
        assert_eq!(delivery(&app, *id).await.status, "pending", "retrying");
    }
    let failed = attempts(&app, during[0]).await;
    assert!(failed[0].error.is_some(), "the failure is recorded");

    proxy.restore();
    for id in &during {
        wait_for_status(&app, *id, "succeeded").await;
        let messages = place.wait_for(&id.to_string()).await;
        assert!(!messages.is_empty());
    }
    let ids: std::collections::HashSet<String> =
        place.messages().await.into_iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 6, "every delivery reached the broker");
    app.stop().await;
    env.cleanup().await;
    place.cleanup().await;
}

async fn a_broker_refusing_is_retried_then_dead_and_the_api_retry_delivers(
    kind: Kind,
    backend: Backend,
) {
    let Some(place) = Place::new(kind).await else {
        return;
    };
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let (api_key, connection) = company_with_connection(&app).await;
    let subscription = subscribe(&app, &api_key, place.destination(&place.url)).await;
    let secret = subscription["secret"].as_str().expect("secret").to_owned();
    place.break_it().await;
    let (event_id, delivery_id) =
        event_with_delivery(&app, &connection, id_of(&subscription)).await;
    let dead = wait_for_status(&app, delivery_id, "dead").await;
    // The test schedule has three retries: four attempts.
    assert_eq!(dead.attempts, 4);
    let recorded = attempts(&app, delivery_id).await;
    assert_eq!(recorded.len(), 4);
    for attempt in &recorded {
        let error = attempt.error.as_deref().expect("an error per attempt");
        assert!(!error.is_empty());
    }
    assert!(place.messages().await.is_empty(), "nothing was taken");

    place.fix().await;
    let response = app
        .client
        .post(app.url(&format!("/api/v1/deliveries/{delivery_id}/retry")))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert!(
        response.status().is_success(),
        "retry: {}",
        response.status()
    );
    wait_for_status(&app, delivery_id, "succeeded").await;
    let messages = place.wait_for(&delivery_id.to_string()).await;
    check_message(&messages[0], &secret, delivery_id, event_id);
    app.stop().await;
    env.cleanup().await;
    place.cleanup().await;
}

async fn a_worker_killed_mid_publish_delivers_at_least_once_with_the_same_dedupe_id(
    kind: Kind,
    backend: Backend,
) {
    let Some(place) = Place::new(kind).await else {
        return;
    };
    let Some((env, api)) = start(backend, Role::Serve).await else {
        return;
    };
    let proxy = TcpProxy::start(place.addr()).await;
    let (api_key, connection) = company_with_connection(&api).await;
    let subscription = subscribe(
        &api,
        &api_key,
        place.destination(&place.url_via(proxy.addr)),
    )
    .await;
    let secret = subscription["secret"].as_str().expect("secret").to_owned();
    let subscription_id = id_of(&subscription);
    let (event_id, delivery_id) = event_with_delivery(&api, &connection, subscription_id).await;

    // The doomed worker: its own broker connections, its publish confirmed by the broker but
    // the confirmation held back in the proxy, and then it dies.
    let pool = std::sync::Arc::new(worker::destination::pool::DestinationPool::new(
        worker::destination::broker::BrokerTimeouts {
            connect: Duration::from_secs(5),
            publish: Duration::from_secs(60),
        },
        true,
    ));
    let doomed = worker::JobContext {
        destinations: pool.clone(),
        ..api.job_context.clone()
    };
    // Open the connection first (the proxy must pass the handshake's replies).
    let stored = entity::subscription::Entity::find_by_id(subscription_id)
        .one(&api.db)
        .await
        .expect("query")
        .expect("subscription")
        .destination
        .expect("a broker destination");
    let warm_up = pool
        .destination(subscription_id, &stored, &doomed.cipher)
        .expect("destination")
        .send(worker::destination::Message {
            id: "warm-up",
            timestamp: 0,
            signature: "v1,warm-up",
            body: b"{}",
        })
        .await;
    assert!(warm_up.succeeded(), "{:?}", warm_up.error);
    proxy.hold_replies();
    let run = tokio::spawn({
        let doomed = doomed.clone();
        async move { worker::jobs::deliver::run(&doomed, &[delivery_id]).await }
    });
    let published = place.wait_for(&delivery_id.to_string()).await;
    assert_eq!(published.len(), 1);
    run.abort();
    let _ = run.await;
    drop(doomed);
    drop(pool);
    proxy.release_replies();
    assert_eq!(delivery(&api, delivery_id).await.status, "in_flight");

    // A live worker finds the claim expired and sends the delivery again.
    let worker_app = env.spawn(Role::Worker).await;
    wait_for_status(&api, delivery_id, "succeeded").await;
    let copies = place.wait_for(&delivery_id.to_string()).await;
    for copy in &copies {
        check_message(copy, &secret, delivery_id, event_id);
    }
    if kind == Kind::Nats {
        // JetStream dropped the second publish: same Nats-Msg-Id within its duplicate window.
        assert_eq!(copies.len(), 1, "JetStream dedupes on Nats-Msg-Id");
    } else {
        assert!(!copies.is_empty(), "delivered at least once");
    }
    worker_app.stop().await;
    api.stop().await;
    env.cleanup().await;
    place.cleanup().await;
}

async fn one_event_reaches_http_and_every_broker(backend: Backend) {
    let mut places = Vec::new();
    for kind in [Kind::RedisStream, Kind::Amqp, Kind::Nats] {
        let Some(place) = Place::new(kind).await else {
            return;
        };
        places.push(place);
    }
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let subscriber = FakeSubscriber::start(Reply::Status(200)).await;
    let (api_key, connection) = company_with_connection(&app).await;
    let http = create_subscription(&app, &api_key, &subscriber.url).await;
    let mut secrets = vec![(
        id_of(&http),
        http["secret"].as_str().expect("secret").to_owned(),
    )];
    for place in &places {
        let created = subscribe(&app, &api_key, place.destination(&place.url)).await;
        secrets.push((
            id_of(&created),
            created["secret"].as_str().expect("secret").to_owned(),
        ));
    }
    let body = tests::fixtures::bytes("webhook_issue_created.json");
    let response = post_webhook(
        &app,
        connection["webhookUrl"].as_str().expect("webhookUrl"),
        &body,
        connection["webhookSecret"].as_str(),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    let event_id: Uuid = response.json::<serde_json::Value>().await.expect("json")["eventId"]
        .as_str()
        .expect("eventId")
        .parse()
        .expect("uuid");
    wait_processed(&app, event_id).await;
    let deliveries = wait_until(
        Duration::from_secs(30),
        "four deliveries succeeded",
        || async {
            let deliveries = deliveries_of(&app, event_id).await;
            (deliveries.len() == 4 && deliveries.iter().all(|d| d.status == "succeeded"))
                .then_some(deliveries)
        },
    )
    .await;
    let delivery_of = |subscription_id: Uuid| {
        deliveries
            .iter()
            .find(|d| d.subscription_id == subscription_id)
            .expect("a delivery per subscription")
            .id
    };
    let requests = subscriber.acknowledged();
    assert_eq!(requests.len(), 1);
    let http_body = requests[0].body.clone();
    assert_eq!(
        requests[0].header("webhook-id"),
        delivery_of(secrets[0].0).to_string()
    );
    for (place, (subscription_id, secret)) in places.iter().zip(&secrets[1..]) {
        let delivery_id = delivery_of(*subscription_id);
        let messages = place.wait_for(&delivery_id.to_string()).await;
        assert_eq!(messages.len(), 1, "{:?}", place.kind);
        let message = &messages[0];
        let timestamp: i64 = message.timestamp.parse().expect("timestamp");
        assert_eq!(
            message.signature,
            worker::signature::sign(secret, &message.id, timestamp, &message.body).expect("signs")
        );
        assert_eq!(message.body, http_body, "the same envelope bytes as HTTP");
    }
    app.stop().await;
    env.cleanup().await;
    for place in &places {
        place.cleanup().await;
    }
}

async fn broker_credentials_never_appear_in_answers_pages_or_the_database(backend: Backend) {
    let (Some(nats), Some(amqp)) = (Place::new(Kind::Nats).await, Place::new(Kind::Amqp).await)
    else {
        return;
    };
    let Some((env, app)) = start(backend, Role::All).await else {
        return;
    };
    let (api_key, connection) = company_with_connection(&app).await;
    // A NATS server without authentication ignores the token: the delivery goes through.
    let token = format!("T0ken{}", Uuid::new_v4().simple());
    let mut token_url = url::Url::parse(nats.url.as_str()).expect("url");
    token_url.set_username(&token).expect("username");
    let with_token = subscribe(&app, &api_key, nats.destination(token_url.as_str())).await;
    // RabbitMQ refuses a wrong password: its error is recorded, without the password.
    let password = format!("Pa55{}", Uuid::new_v4().simple());
    let mut password_url = url::Url::parse(amqp.url.as_str()).expect("url");
    password_url
        .set_password(Some(&password))
        .expect("password");
    let with_password = subscribe(&app, &api_key, amqp.destination(password_url.as_str())).await;

    let (_, delivered) = event_with_delivery(&app, &connection, id_of(&with_token)).await;
    wait_for_status(&app, delivered, "succeeded").await;
    let (_, refused) = event_with_delivery(&app, &connection, id_of(&with_password)).await;
    wait_for_status(&app, refused, "dead").await;
    let errors: Vec<String> = attempts(&app, refused)
        .await
        .into_iter()
        .filter_map(|attempt| attempt.error)
        .collect();
    assert!(!errors.is_empty());

    let mut shown = String::new();
    shown.push_str(&serde_json::to_string(&with_token).expect("json"));
    shown.push_str(&serde_json::to_string(&with_password).expect("json"));
    for path in [
        "/api/v1/subscriptions".to_owned(),
        format!("/api/v1/subscriptions/{}", id_of(&with_token)),
        format!("/api/v1/subscriptions/{}", id_of(&with_password)),
        format!("/api/v1/deliveries/{refused}"),
        format!("/api/v1/deliveries/{delivered}"),
    ] {
        let response = app
            .client
            .get(app.url(&path))
            .bearer_auth(&api_key)
            .send()
            .await
            .expect("request");
        assert!(response.status().is_success(), "GET {path}");
        shown.push_str(&response.text().await.expect("body"));
    }
    // The console: a broker subscription created through its form, the list and a detail page.
    let mut console = crate::console::ConsoleClient::new(&app);
    let csrf = console.sign_in(&api_key).await;
    let console_token = format!("C0nsole{}", Uuid::new_v4().simple());
    let mut console_url = url::Url::parse(nats.url.as_str()).expect("url");
    console_url.set_username(&console_token).expect("username");
    let created = console
        .post(
            "/subscriptions",
            &[
                ("csrf_token", csrf.as_str()),
                ("kind", "nats"),
                ("url", console_url.as_str()),
                ("subject", nats.queue.as_str()),
                ("event_types", "jira:issue_*"),
            ],
        )
        .await;
    let created_status = created.status();
    let created_page = created.text().await.expect("html");
    assert_eq!(created_status, 200, "{created_page}");
    shown.push_str(&created_page);
    let (list, _) = console.page("/subscriptions").await;
    assert!(
        list.contains("NATS subject"),
        "the list shows the destination"
    );
    shown.push_str(&list);
    let (detail, _) = console
        .page(&format!("/subscriptions/{}", id_of(&with_password)))
        .await;
    shown.push_str(&detail);
    assert!(shown.contains("***"), "credentials are shown redacted");
    let stored = format!(
        "{:?}{:?}{:?}",
        entity::subscription::Entity::find()
            .all(&app.db)
            .await
            .expect("subscriptions"),
        entity::delivery::Entity::find()
            .all(&app.db)
            .await
            .expect("deliveries"),
        entity::delivery_attempt::Entity::find()
            .all(&app.db)
            .await
            .expect("attempts"),
    );
    for secret in [&token, &password, &console_token] {
        assert!(
            !shown.contains(secret.as_str()),
            "an answer or page shows {secret}"
        );
        assert!(
            !stored.contains(secret.as_str()),
            "the database holds {secret} in clear"
        );
        assert!(
            !errors.iter().any(|error| error.contains(secret.as_str())),
            "an error quotes {secret}"
        );
    }
    app.stop().await;
    env.cleanup().await;
    nats.cleanup().await;
    amqp.cleanup().await;
}

async fn destinations_are_validated_and_can_be_changed(backend: Backend) {
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    let app = env
        .spawn_with(Role::Serve, |settings| {
            settings.allow_private_targets = Some(false)
        })
        .await;
    let (_, api_key) = app.create_company("Northwind").await;
    let post = |body: serde_json::Value| {
        app.client
            .post(app.url("/api/v1/subscriptions"))
            .bearer_auth(&api_key)
            .json(&body)
            .send()
    };
    let refused = [
        // Private broker hosts are refused like private HTTP targets.
        serde_json::json!({ "type": "amqp", "url": "amqp://guest:guest@127.0.0.1:5672/%2f", "exchange": "x", "routingKey": "k" }),
        serde_json::json!({ "type": "nats", "url": "nats://10.0.0.1:4222", "subject": "a.b" }),
        serde_json::json!({ "type": "redis_stream", "url": "redis://[::1]:6379", "stream": "s" }),
        serde_json::json!({ "type": "redis_stream", "url": "redis://localhost:6379", "stream": "s" }),
        // Wrong schemes and names.
        serde_json::json!({ "type": "amqp", "url": "http://example.com", "exchange": "x", "routingKey": "k" }),
        serde_json::json!({ "type": "nats", "url": "nats://93.184.216.34:4222", "subject": "a.*" }),
        serde_json::json!({ "type": "nats", "url": "nats://93.184.216.34:4222", "subject": "a b" }),
        serde_json::json!({ "type": "amqp", "url": "amqp://93.184.216.34", "exchange": "", "routingKey": "" }),
        serde_json::json!({ "type": "redis_stream", "url": "redis://93.184.216.34", "stream": " " }),
    ];
    for destination in refused {
        let response = post(serde_json::json!({ "destination": destination, "eventTypes": ["*"] }))
            .await
            .expect("request");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(status, 422, "{destination} must be refused: {body}");
        assert!(
            !body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("guest:guest"),
            "{body}"
        );
    }
    // Not the schema: 400.
    for body in [
        serde_json::json!({ "destination": { "type": "kafka", "url": "kafka://x" }, "eventTypes": ["*"] }),
        serde_json::json!({ "destination": { "type": "nats", "url": "nats://93.184.216.34" }, "eventTypes": ["*"] }),
    ] {
        let response = post(body.clone()).await.expect("request");
        assert_eq!(response.status(), 400, "{body}");
    }
    // Both or neither of url and destination.
    for body in [
        serde_json::json!({ "eventTypes": ["*"] }),
        serde_json::json!({ "url": "https://93.184.216.34/hook", "destination": { "type": "http", "url": "https://93.184.216.34/hook" }, "eventTypes": ["*"] }),
    ] {
        let response = post(body.clone()).await.expect("request");
        assert_eq!(response.status(), 422, "{body}");
    }

    // `url` alone is an HTTP destination; PATCH turns it into a broker and back.
    let created =
        post(serde_json::json!({ "url": "https://93.184.216.34/hook", "eventTypes": ["*"] }))
            .await
            .expect("request");
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.expect("json");
    assert_eq!(
        created["destination"],
        serde_json::json!({ "type": "http", "url": "https://93.184.216.34/hook" })
    );
    let id = id_of(&created);
    let patch = |body: serde_json::Value| {
        app.client
            .patch(app.url(&format!("/api/v1/subscriptions/{id}")))
            .bearer_auth(&api_key)
            .json(&body)
            .send()
    };
    let changed = patch(serde_json::json!({ "destination": {
        "type": "amqp", "url": "amqp://hookline:S3cret@93.184.216.34:5672/%2f", "exchange": "jira", "routingKey": "events",
    }}))
    .await
    .expect("request");
    assert_eq!(changed.status(), 200);
    let changed: serde_json::Value = changed.json().await.expect("json");
    assert_eq!(
        changed["destination"],
        serde_json::json!({ "type": "amqp", "url": "amqp://hookline:***@93.184.216.34:5672/%2f", "exchange": "jira", "routingKey": "events" })
    );
    assert_eq!(changed["url"], "amqp://hookline:***@93.184.216.34:5672/%2f");
    // Sending the redacted URL back keeps the stored credentials.
    let renamed = patch(serde_json::json!({ "destination": {
        "type": "amqp", "url": "amqp://hookline:***@93.184.216.34:5672/%2f", "exchange": "jira", "routingKey": "other",
    }}))
    .await
    .expect("request");
    assert_eq!(renamed.status(), 200);
    let model = entity::subscription::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .expect("query")
        .expect("row");
    assert_eq!(model.destination_kind, "amqp");
    let stored = model.destination.expect("stored settings");
    assert!(!stored.contains("S3cret"), "encrypted at rest");
    let cipher = entity::cipher::Cipher::new(&tests::TEST_ENCRYPTION_KEY, &[]);
    let settings: serde_json::Value =
        serde_json::from_str(&cipher.decrypt(&stored).expect("decrypts")).expect("json");
    assert_eq!(
        settings["url"],
        "amqp://hookline:S3cret@93.184.216.34:5672/%2f"
    );
    assert_eq!(settings["routingKey"], "other");
    let back = patch(serde_json::json!({ "url": "https://93.184.216.34/other" }))
        .await
        .expect("request");
    let back: serde_json::Value = back.json().await.expect("json");
    assert_eq!(back["destination"]["type"], "http");
    assert_eq!(back["url"], "https://93.184.216.34/other");
    app.stop().await;
    env.cleanup().await;
}
