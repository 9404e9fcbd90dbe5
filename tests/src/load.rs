//! A load driver for the fault and soak tests: signed Jira webhooks at a steady rate, and the
//! tally of what became of them.
//!
//! [`start`] posts `rate_per_sec` webhooks a second for a duration, round-robin over one or more
//! connections, each with its own `X-Atlassian-Webhook-Identifier` (so each is a new event), and
//! records every answer: `200` with its `eventId`, `503` with its body and `Retry-After`, any
//! other status, transport errors. [`settle`] then waits until every accepted event reached
//! every subscriber and checks the database for double processing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sea_orm::{DatabaseConnection, EntityTrait, QuerySelect};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use uuid::Uuid;

use crate::fake_subscriber::FakeSubscriber;

/// One connection's webhook URL and secret.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    /// The connection's `webhookUrl`.
    pub url: String,
    /// The connection's `webhookSecret`, if it has one (the body is then signed).
    pub secret: Option<String>,
}

impl WebhookTarget {
    /// The target of a connection as the connections API returns it.
    pub fn of_connection(connection: &serde_json::Value) -> Self {
        Self {
            url: connection["webhookUrl"]
                .as_str()
                .expect("webhookUrl")
                .to_owned(),
            secret: connection["webhookSecret"].as_str().map(str::to_owned),
        }
    }
}

/// What to send.
#[derive(Debug, Clone)]
pub struct Load {
    /// Webhooks per second, over all targets.
    pub rate_per_sec: f64,
    /// How long to send for.
    pub duration: Duration,
    /// Where to send, round-robin.
    pub targets: Vec<WebhookTarget>,
    /// The body of every webhook (a Jira payload; each request gets its own identifier).
    pub body: Vec<u8>,
}

/// A webhook answered `200` as a new event.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The `eventId` of the answer.
    pub event_id: Uuid,
    /// When the request was sent.
    pub sent_at: Instant,
    /// Which target (index into [`Load::targets`]).
    pub target: usize,
}

/// A webhook answered with something other than `200`.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The HTTP status.
    pub status: u16,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The body.
    pub body: String,
}

/// What the driver sent and what it got back.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Requests sent.
    pub sent: usize,
    /// Answered `200` as new events.
    pub accepted: Vec<Accepted>,
    /// Answered `200` as duplicates (should not happen: each request has its own identifier).
    pub duplicates: usize,
    /// Answered `503`.
    pub unavailable: Vec<Refused>,
    /// Answered any other status.
    pub other: Vec<Refused>,
    /// No answer (connection refused, timeout).
    pub transport_errors: Vec<String>,
}

impl LoadReport {
    /// The ids of the accepted events.
    pub fn accepted_ids(&self) -> Vec<Uuid> {
        self.accepted
            .iter()
            .map(|accepted| accepted.event_id)
            .collect()
    }

    /// A one-line summary for logs and assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "sent {}, accepted {}, duplicates {}, 503 {}, other {}, transport errors {}",
            self.sent,
            self.accepted.len(),
            self.duplicates,
            self.unavailable.len(),
            self.other.len(),
            self.transport_errors.len()
        )
    }
}

/// A running load; [`LoadHandle::finish`] waits for it and returns the report.
pub struct LoadHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<LoadReport>,
}

impl LoadHandle {
    /// Stops sending before the duration is over (requests in flight are still answered).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the duration is over and every request is answered.
    pub async fn finish(self) -> LoadReport {
        self.task.await.expect("the load driver panicked")
    }
}

/// Starts sending `load` in the background.
pub fn start(load: Load) -> LoadHandle {
    assert!(!load.targets.is_empty(), "the load needs a target");
    assert!(load.rate_per_sec > 0.0, "the load needs a rate");
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(load, stopped));
    LoadHandle { stop, task }
}

enum Answer {
    Accepted(Accepted),
    Duplicate,
    Unavailable(Refused),
    Other(Refused),
    Transport(String),
}

async fn run(load: Load, mut stopped: watch::Receiver<bool>) -> LoadReport {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate_per_sec));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = tokio::time::Instant::now() + load.duration;
    let mut requests = JoinSet::new();
    let mut report = LoadReport::default();
    let mut seq = 0usize;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => break,
        }
        if tokio::time::Instant::now() >= end {
            break;
        }
        let target_index = seq % load.targets.len();
        let target = load.targets[target_index].clone();
        let identifier = format!("load-{run_id}-{seq}");
        let client = client.clone();
        let body = load.body.clone();
        requests.spawn(send(client, target, target_index, identifier, body));
        seq += 1;
        report.sent += 1;
        // Collect what is already answered, so the set does not grow for a long run.
        while let Some(joined) = requests.try_join_next() {
            record(&mut report, joined.expect("a load request panicked"));
        }
    }
    while let Some(joined) = requests.join_next().await {
        record(&mut report, joined.expect("a load request panicked"));
    }
    report
}

fn record(report: &mut LoadReport, answer: Answer) {
    match answer {
        Answer::Accepted(accepted) => report.accepted.push(accepted),
        Answer::Duplicate => report.duplicates += 1,
        Answer::Unavailable(refused) => report.unavailable.push(refused),
        Answer::Other(refused) => report.other.push(refused),
        Answer::Transport(error) => report.transport_errors.push(error),
    }
}

async fn send(
    client: reqwest::Client,
    target: WebhookTarget,
    target_index: usize,
    identifier: String,
    body: Vec<u8>,
) -> Answer {
    let sent_at = Instant::now();
    let mut request = client
        .post(&target.url)
        .header("content-type", "application/json; charset=utf-8")
        .header("x-atlassian-webhook-identifier", identifier);
    if let Some(secret) = &target.secret {
        request = request.header(
            "x-hub-signature",
            plugins::jira::webhook::sign(secret.as_bytes(), &body),
        );
    }
    let response = match request.body(body).send().await {
        Ok(response) => response,
        Err(error) => return Answer::Transport(format!("{error:#}")),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let text = match response.text().await {
        Ok(text) => text,
        Err(error) => return Answer::Transport(format!("reading the answer: {error:#}")),
    };
    let refused = || Refused {
        status,
        retry_after: retry_after.clone(),
        body: text.clone(),
    };
    match status {
        200 => {
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
                return Answer::Other(refused());
            };
            let event_id = json["eventId"].as_str().and_then(|id| id.parse().ok());
            match (event_id, json["duplicate"].as_bool()) {
                (Some(event_id), Some(false)) => Answer::Accepted(Accepted {
                    event_id,
                    sent_at,
                    target: target_index,
                }),
                (Some(_), Some(true)) => Answer::Duplicate,
                _ => Answer::Other(refused()),
            }
        }
        503 => Answer::Unavailable(refused()),
        _ => Answer::Other(refused()),
    }
}

/// What became of the accepted events.
#[derive(Debug, Default)]
pub struct Tally {
    /// Events answered `200`.
    pub accepted: usize,
    /// Accepted events every subscriber acknowledged (2xx) at least once.
    pub delivered: usize,
    /// Accepted events some subscriber never acknowledged (within the wait).
    pub lost: usize,
    /// Acknowledged receipts beyond the first of an event at a subscriber (at-least-once
    /// redeliveries, e.g. after a worker was killed between the POST and recording it).
    pub redelivered: usize,
    /// Events processed into more than one set of deliveries: a subscription with more than one
    /// delivery row of the event, or a subscriber that got the event under two `webhook-id`s.
    pub double_processed: usize,
    /// Accepted events without exactly one delivery row per subscription.
    pub wrong_delivery_rows: usize,
    /// From sending the webhook to its first acknowledged receipt, per (event, subscriber).
    pub latencies: Vec<Duration>,
    /// A few ids of lost events, for the assertion message.
    pub lost_examples: Vec<Uuid>,
}

impl Tally {
    /// The `q` quantile (0..=1) of the delivery latencies.
    pub fn latency_quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    /// Whether the promises hold: everything accepted delivered, nothing processed twice.
    pub fn nothing_lost_nothing_doubled(&self) -> bool {
        self.lost == 0 && self.double_processed == 0 && self.wrong_delivery_rows == 0
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "accepted {}, delivered {}, lost {}, redelivered {}, double-processed {}, \
             wrong delivery rows {}, latency p50 {:?} p90 {:?} p99 {:?} max {:?}{}",
            self.accepted,
            self.delivered,
            self.lost,
            self.redelivered,
            self.double_processed,
            self.wrong_delivery_rows,
            self.latency_quantile(0.5),
            self.latency_quantile(0.9),
            self.latency_quantile(0.99),
            self.latency_quantile(1.0),
            if self.lost_examples.is_empty() {
                String::new()
            } else {
                format!(", e.g. lost {:?}", self.lost_examples)
            }
        )
    }
}

/// Per subscriber: event id → (first acknowledged receipt, acknowledged receipts, webhook-ids).
type Receipts = HashMap<Uuid, (Instant, usize, HashSet<String>)>;

fn receipts(subscriber: &FakeSubscriber) -> Receipts {
    let mut receipts: Receipts = HashMap::new();
    for request in subscriber.acknowledged() {
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&request.body) else {
            continue;
        };
        let Some(event_id) = body["data"]["eventId"]
            .as_str()
            .and_then(|id| id.parse().ok())
        else {
            continue;
        };
        let entry = receipts
            .entry(event_id)
            .or_insert_with(|| (request.at, 0, HashSet::new()));
        entry.0 = entry.0.min(request.at);
        entry.1 += 1;
        entry.2.insert(request.header("webhook-id").to_owned());
    }
    receipts
}

/// Waits (at most `timeout`) until every accepted event was acknowledged by every subscriber,
/// then counts what happened, including the database's delivery rows: exactly one per
/// (event, subscription) is expected, for the `subscriptions` given.
pub async fn settle(
    db: &DatabaseConnection,
    accepted: &[Accepted],
    subscribers: &[&FakeSubscriber],
    subscriptions: &[Uuid],
    timeout: Duration,
) -> Tally {
    let deadline = Instant::now() + timeout;
    loop {
        let all_there = subscribers.iter().all(|subscriber| {
            let receipts = receipts(subscriber);
            accepted
                .iter()
                .all(|event| receipts.contains_key(&event.event_id))
        });
        if all_there || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut tally = Tally {
        accepted: accepted.len(),
        ..Tally::default()
    };
    let per_subscriber: Vec<Receipts> = subscribers.iter().map(|s| receipts(s)).collect();
    for event in accepted {
        let mut everywhere = true;
        let mut doubled = false;
        for receipts in &per_subscriber {
            match receipts.get(&event.event_id) {
                Some((first, count, webhook_ids)) => {
                    tally
                        .latencies
                        .push(first.saturating_duration_since(event.sent_at));
                    tally.redelivered += count - 1;
                    doubled |= webhook_ids.len() > 1;
                }
                None => everywhere = false,
            }
        }
        if everywhere {
            tally.delivered += 1;
        } else {
            tally.lost += 1;
            if tally.lost_examples.len() < 5 {
                tally.lost_examples.push(event.event_id);
            }
        }
        if doubled {
            tally.double_processed += 1;
        }
    }

    let rows: Vec<(Uuid, Uuid)> = entity::delivery::Entity::find()
        .select_only()
        .columns([
            entity::delivery::Column::EventId,
            entity::delivery::Column::SubscriptionId,
        ])
        .into_tuple()
        .all(db)
        .await
        .expect("read the delivery rows");
    let mut rows_per_event: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (event_id, subscription_id) in rows {
        rows_per_event
            .entry(event_id)
            .or_default()
            .push(subscription_id);
    }
    let expected: HashSet<Uuid> = subscriptions.iter().copied().collect();
    for event in accepted {
        let rows = rows_per_event
            .get(&event.event_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let distinct: HashSet<Uuid> = rows.iter().copied().collect();
        if distinct.len() != rows.len() {
            tally.double_processed += 1;
        }
        if rows.len() != expected.len() || distinct != expected {
            tally.wrong_delivery_rows += 1;
        }
    }
    tally
}
