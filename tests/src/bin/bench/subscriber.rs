//! A lean subscriber for the benchmark: it verifies the Standard Webhooks signature of every
//! delivery, notes when it arrived, which event it carries and the enrichment status, and
//! answers 204. Unlike `tests::fake_subscriber` it keeps no headers or bodies, so it stays cheap
//! at thousands of deliveries per second.

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
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

struct State {
    /// The `whsec_…` secrets of the subscriptions delivering here (one per company).
    secrets: Mutex<Vec<String>>,
    received: Mutex<Received>,
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
        let state = Arc::new(State {
            secrets: Mutex::new(Vec::new()),
            received: Mutex::new(Received::default()),
        });
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .context("binding the benchmark subscriber")?;
        let addr: SocketAddr = acceptor
            .local_addr()
            .into_iter()
            .find_map(|addr| addr.as_socket_addr().copied())
            .context("the subscriber's listener has no address")?;
        let app = Route::new().at("/hook", post(receive)).data(state.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = Server::new_with_acceptor(acceptor).run(app).await {
                eprintln!("the benchmark subscriber stopped: {error}");
            }
        });
        Ok(Self {
            url: format!("http://{addr}/hook"),
            state,
            server,
        })
    }

    /// The signing secret of one more subscription delivering here.
    pub fn add_secret(&self, secret: &str) {
        self.state
            .secrets
            .lock()
            .expect("subscriber lock")
            .push(secret.to_owned());
    }

    /// How many distinct events were delivered so far.
    pub fn distinct_events(&self) -> usize {
        self.state
            .received
            .lock()
            .expect("subscriber lock")
            .per_event
            .len()
    }

    /// Everything received so far (taken out; the subscriber starts afresh).
    pub fn take(&self) -> Received {
        std::mem::take(&mut *self.state.received.lock().expect("subscriber lock"))
    }
}

impl Drop for BenchSubscriber {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[handler]
async fn receive(req: &Request, body: Body, state: Data<&Arc<State>>) -> StatusCode {
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
    let secrets = state.secrets.lock().expect("subscriber lock").clone();
    let verified = secrets.iter().any(|secret| {
        api::sink::verify(
            secret,
            header("webhook-id"),
            header("webhook-timestamp"),
            &body,
            header("webhook-signature"),
        )
        .is_ok()
    });
    if !verified {
        state
            .received
            .lock()
            .expect("subscriber lock")
            .bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope>(&body) else {
        state.received.lock().expect("subscriber lock").unparsable += 1;
        return StatusCode::BAD_REQUEST;
    };
    let data = envelope.data;
    let mut received = state.received.lock().expect("subscriber lock");
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
    StatusCode::NO_CONTENT
}
