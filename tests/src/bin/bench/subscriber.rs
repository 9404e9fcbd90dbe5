//! A lean subscriber for the benchmark: it verifies the Standard Webhooks signature of every
//! delivery, notes when it arrived, which event it carries and the enrichment status, and
//! answers 204. Unlike `tests::fake_subscriber` it keeps no headers or bodies, so it stays cheap
//! at thousands of deliveries per second. Its [`Recorder`] also counts what the broker consumers
//! (`consumer.rs`) read, so every destination kind is checked the same way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use poem::http::StatusCode;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::Data;
use poem::{Body, EndpointExt, Request, Route, Server, handler, post};
use serde::Deserialize;
use uuid::Uuid;

/// One delivery as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// When the request was read.
    pub at: Instant,
    /// `data.eventId`.
    pub event_id: Uuid,
    /// The benchmark's sequence number, from `data.raw.hooklineBenchSeq`.
    pub seq: Option<u64>,
}

/// What the subscriber saw, for the report.
#[derive(Debug, Default)]
pub struct Received {
    /// Every delivery that verified and parsed, in arrival order.
    pub arrivals: Vec<Arrival>,
    /// Deliveries per distinct `data.eventId`.
    pub per_event: HashMap<Uuid, u32>,
    /// Deliveries whose signature did not verify (answered 401, so hookline retries).
    pub bad_signatures: u64,
    /// Deliveries whose body was not the documented envelope (answered 400).
    pub unparsable: u64,
    /// Deliveries by `data.enrichment.status`.
    pub enrichment: HashMap<String, u64>,
}

/// The running subscriber. Stops when dropped.
pub struct BenchSubscriber {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    recorder: Arc<Recorder>,
    server: tokio::task::JoinHandle<()>,
}

/// Verifies and counts deliveries, whatever carried them (HTTP or a broker).
#[derive(Default)]
pub struct Recorder {
    /// The `whsec_…` secrets of the subscriptions delivering here (one per company).
    secrets: Mutex<Vec<String>>,
    received: Mutex<Received>,
}

/// Why a delivery was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No subscription's secret verifies its signature.
    BadSignature,
    /// The body is not the documented envelope.
    Unparsable,
}

impl Recorder {
    /// The signing secret of one more subscription delivering here.
    pub fn add_secret(&self, secret: &str) {
        self.secrets
            .lock()
            .expect("recorder lock")
            .push(secret.to_owned());
    }

    /// How many distinct events were delivered so far.
    pub fn distinct_events(&self) -> usize {
        self.received.lock().expect("recorder lock").per_event.len()
    }

    /// Everything received so far (taken out; counting starts afresh).
    pub fn take(&self) -> Received {
        std::mem::take(&mut *self.received.lock().expect("recorder lock"))
    }

    /// Verifies one delivery's Standard Webhooks signature (`id`, `timestamp`, `signature`
    /// headers over `body`), reads its envelope and counts it as arrived `at`.
    pub fn record(
        &self,
        at: Instant,
        id: &str,
        timestamp: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<(), Refused> {
        let secrets = self.secrets.lock().expect("recorder lock").clone();
        let verified = secrets
            .iter()
            .any(|secret| api::sink::verify(secret, id, timestamp, body, signature).is_ok());
        if !verified {
            self.received.lock().expect("recorder lock").bad_signatures += 1;
            return Err(Refused::BadSignature);
        }
        let Ok(envelope) = serde_json::from_slice::<Envelope>(body) else {
            self.received.lock().expect("recorder lock").unparsable += 1;
            return Err(Refused::Unparsable);
        };
        let data = envelope.data;
        let mut received = self.received.lock().expect("recorder lock");
        received.arrivals.push(Arrival {
            at,
            event_id: data.event_id,
            seq: data.raw.hookline_bench_seq,
        });
        *received.per_event.entry(data.event_id).or_default() += 1;
        *received
            .enrichment
            .entry(data.enrichment.status)
            .or_default() += 1;
        Ok(())
    }
}

/// The part of a delivery the benchmark reads (DESIGN §10).
#[derive(Deserialize)]
struct Envelope {
    data: EventData,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventData {
    event_id: Uuid,
    enrichment: Enrichment,
    raw: Raw,
}

#[derive(Deserialize)]
struct Enrichment {
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    hookline_bench_seq: Option<u64>,
}

impl BenchSubscriber {
    /// Starts the subscriber on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let recorder = Arc::new(Recorder::default());
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .context("binding the benchmark subscriber")?;
        let addr: SocketAddr = acceptor
            .local_addr()
            .into_iter()
            .find_map(|addr| addr.as_socket_addr().copied())
            .context("the subscriber's listener has no address")?;
        let app = Route::new()
            .at("/hook", post(receive))
            .data(recorder.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = Server::new_with_acceptor(acceptor).run(app).await {
                eprintln!("the benchmark subscriber stopped: {error}");
            }
        });
        Ok(Self {
            url: format!("http://{addr}/hook"),
            recorder,
            server,
        })
    }

    /// What counts the deliveries made here (broker consumers can feed it too).
    pub fn recorder(&self) -> Arc<Recorder> {
        self.recorder.clone()
    }

    /// The signing secret of one more subscription delivering here.
    pub fn add_secret(&self, secret: &str) {
        self.recorder.add_secret(secret);
    }

    /// How many distinct events were delivered so far.
    pub fn distinct_events(&self) -> usize {
        self.recorder.distinct_events()
    }

    /// Everything received so far (taken out; the subscriber starts afresh).
    pub fn take(&self) -> Received {
        self.recorder.take()
    }
}

impl Drop for BenchSubscriber {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[handler]
async fn receive(req: &Request, body: Body, recorder: Data<&Arc<Recorder>>) -> StatusCode {
    let at = Instant::now();
    let Ok(body) = body.into_bytes_limit(16 * 1024 * 1024).await else {
        return StatusCode::PAYLOAD_TOO_LARGE;
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    };
    match recorder.record(
        at,
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        &body,
    ) {
        Ok(()) => StatusCode::NO_CONTENT,
        // 401 and 400: hookline retries, so a bad delivery shows as a duplicate too.
        Err(Refused::BadSignature) => StatusCode::UNAUTHORIZED,
        Err(Refused::Unparsable) => StatusCode::BAD_REQUEST,
    }
}
