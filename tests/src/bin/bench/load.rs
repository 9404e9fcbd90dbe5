//! The load generator: signed Jira webhooks POSTed to the ingest endpoint, either open-loop at a
//! fixed rate (each request leaves on schedule, whether or not earlier ones were answered, so a
//! slow server cannot slow the offered load down) or closed-loop as fast as a fixed number of
//! concurrent posters can go.
//!
//! Every request is a new event: its body is the fixture with a `hooklineBenchSeq` field added
//! at the front (the subscriber reads it back from `data.raw`), signed with the connection's
//! secret, with a unique `X-Atlassian-Webhook-Identifier`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde::Deserialize;
use uuid::Uuid;

/// What is posted, and where.
#[derive(Clone)]
pub struct Target {
    /// The connections' webhook URLs and secrets; request `seq` goes to `seq % len`.
    pub connections: Vec<(String, String)>,
    /// The fixture body (a JSON object), about issue `ORB-417`.
    pub fixture: Arc<Vec<u8>>,
    /// How many distinct issues the requests are about (request `seq` is about issue
    /// `seq % issues`); 0: every request is about an issue of its own.
    pub issues: u64,
    /// Distinguishes this run's identifiers from any other run's.
    pub run_id: String,
}

impl Target {
    /// The body of request `seq`: the fixture about its issue (`ORB-<1000 + n>` instead of
    /// `ORB-417`), with `"hooklineBenchSeq": seq` as first field.
    fn body(&self, seq: u64) -> Vec<u8> {
        let issue = if self.issues == 0 {
            seq
        } else {
            seq % self.issues
        };
        let text = String::from_utf8_lossy(&self.fixture)
            .replace("ORB-417", &format!("ORB-{}", 1000 + issue));
        let rest = text.strip_prefix('{').unwrap_or(&text);
        format!("{{\"hooklineBenchSeq\":{seq},{rest}").into_bytes()
    }

    /// The webhook URL and secret of request `seq`.
    fn connection(&self, seq: u64) -> &(String, String) {
        &self.connections[(seq % self.connections.len() as u64) as usize]
    }
}

/// Checks that the fixture is a JSON object the benchmark can number.
pub fn check_fixture(fixture: &[u8]) -> anyhow::Result<()> {
    let value: serde_json::Value =
        serde_json::from_slice(fixture).context("the fixture is not JSON")?;
    ensure!(
        value.is_object() && fixture.starts_with(b"{"),
        "the fixture must be a JSON object starting with `{{`"
    );
    Ok(())
}

/// One request as the generator saw it.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its sequence number (0-based).
    pub seq: u64,
    /// When the open-loop schedule wanted it sent (closed loop: when it was sent).
    pub scheduled: Instant,
    /// When it was handed to the HTTP client.
    pub sent: Instant,
    /// When the answer arrived (or the request failed).
    pub answered: Instant,
    /// The recorded event's id, or why the request failed.
    pub outcome: Result<Uuid, String>,
}

/// The ingest endpoint's answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IngestOut {
    event_id: Uuid,
    duplicate: bool,
}

/// An HTTP client for the generator: keep-alive, many idle connections, HTTP/1.1 as Jira uses.
pub fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the load generator's HTTP client")
}

async fn post(client: &reqwest::Client, target: &Target, seq: u64, scheduled: Instant) -> Sent {
    let body = target.body(seq);
    let (url, secret) = target.connection(seq);
    let signature = plugins::jira::webhook::sign(secret.as_bytes(), &body);
    let sent = Instant::now();
    let outcome = async {
        let response = client
            .post(url)
            .header("content-type", "application/json; charset=utf-8")
            .header("x-hub-signature", signature)
            .header(
                "x-atlassian-webhook-identifier",
                format!("{}-{seq}", target.run_id),
            )
            .body(body)
            .send()
            .await
            .map_err(|error| format!("transport: {error}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("status {}", status.as_u16()));
        }
        let out: IngestOut = response
            .json()
            .await
            .map_err(|error| format!("answer: {error}"))?;
        if out.duplicate {
            return Err("answered as a duplicate".to_owned());
        }
        Ok(out.event_id)
    }
    .await;
    Sent {
        seq,
        scheduled,
        sent,
        answered: Instant::now(),
        outcome,
    }
}

/// Posts `rate` requests per second for `duration`, open-loop; returns once every request was
/// answered. `in_flight_peak` reports the most requests outstanding at once.
pub async fn open_loop(
    client: &reqwest::Client,
    target: &Target,
    rate: f64,
    duration: Duration,
) -> (Vec<Sent>, usize) {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let results = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut in_flight_peak = 0;
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut next = 0u64;
    while next < total {
        // Everything due by now leaves now: the schedule is kept even when a tick comes late.
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while next < due {
            let scheduled = start + Duration::from_secs_f64(next as f64 / rate);
            let (client, target, results, in_flight) = (
                client.clone(),
                target.clone(),
                results.clone(),
                in_flight.clone(),
            );
            let seq = next;
            let outstanding = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            in_flight_peak = in_flight_peak.max(outstanding as usize);
            tasks.spawn(async move {
                let sent = post(&client, &target, seq, scheduled).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                results.lock().expect("results lock").push(sent);
            });
            next += 1;
        }
        // Reap finished tasks so the set does not grow for the whole run.
        while tasks.try_join_next().is_some() {}
        let next_due = start + Duration::from_secs_f64(next as f64 / rate);
        tokio::time::sleep_until(next_due.into()).await;
    }
    while tasks.join_next().await.is_some() {}
    let results = std::mem::take(&mut *results.lock().expect("results lock"));
    (results, in_flight_peak)
}

/// Posts `total` requests from `concurrency` posters, each sending its next request as soon as
/// the previous one was answered.
pub async fn closed_loop(
    client: &reqwest::Client,
    target: &Target,
    total: u64,
    concurrency: usize,
) -> Vec<Sent> {
    let next = Arc::new(AtomicU64::new(0));
    let mut posters = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, target, next) = (client.clone(), target.clone(), next.clone());
        posters.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    return mine;
                }
                mine.push(post(&client, &target, seq, Instant::now()).await);
            }
        });
    }
    let mut results = Vec::with_capacity(total as usize);
    while let Some(joined) = posters.join_next().await {
        match joined {
            Ok(mine) => results.extend(mine),
            Err(error) => eprintln!("a poster task failed: {error}"),
        }
    }
    results
}
