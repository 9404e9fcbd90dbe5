//! `hookline sink`: a small subscriber for trying hookline out and for debugging deliveries.
//!
//! It accepts every POST, checks the Standard Webhooks signature when given the subscription's
//! secret, prints what arrived, and answers 204 (401 for a bad signature, so hookline retries).

use std::net::SocketAddr;

use anyhow::Context as _;
use poem::http::StatusCode;
use poem::{Body, EndpointExt, Request, Route, Server, handler};
use subtle::ConstantTimeEq;

/// How far `webhook-timestamp` may be from now before a delivery is refused (replay guard).
const TOLERANCE_SECONDS: i64 = 300;

/// The sink's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct SinkSettings {
    /// Address to listen on.
    #[arg(
        long = "listen",
        env = "HOOKLINE_SINK_LISTEN",
        default_value = "127.0.0.1:9000"
    )]
    pub listen: SocketAddr,
    /// The subscription's `whsec_…` secret; without it signatures are shown, not checked.
    #[arg(long, env = "HOOKLINE_SINK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
}

/// Serves until the process is stopped.
pub async fn run(settings: SinkSettings) -> anyhow::Result<()> {
    eprintln!(
        "hookline sink listening on http://{} (POST anything here)",
        settings.listen
    );
    let app = Route::new()
        .at("/*path", poem::post(receive))
        .at("/", poem::post(receive))
        .data(settings.secret.clone());
    Server::new(poem::listener::TcpListener::bind(settings.listen))
        .run(app)
        .await
        .context("the sink failed")
}

#[handler]
async fn receive(
    req: &Request,
    body: Body,
    secret: poem::web::Data<&Option<String>>,
) -> StatusCode {
    let body = match body.into_bytes_limit(16 * 1024 * 1024).await {
        Ok(body) => body,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE,
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp, signatures) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let verdict = match secret.0 {
        None => "not checked (no --secret)".to_owned(),
        Some(secret) => match verify(secret, &id, &timestamp, &body, &signatures) {
            Ok(()) => "valid".to_owned(),
            Err(reason) => reason,
        },
    };
    let event_type = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|value| {
            value
                .get("type")
                .and_then(|t| t.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    println!(
        "delivery {id} type={event_type} signature={verdict} bytes={}",
        body.len()
    );
    if verdict == "valid" || secret.0.is_none() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// Checks a Standard Webhooks signature header (several space-separated `v1,<sig>` allowed).
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signatures: &str,
) -> Result<(), String> {
    let sent_at: i64 = timestamp
        .parse()
        .map_err(|_| "invalid webhook-timestamp".to_owned())?;
    if (chrono::Utc::now().timestamp() - sent_at).abs() > TOLERANCE_SECONDS {
        return Err("webhook-timestamp too far from now".to_owned());
    }
    let expected = worker::signature::sign(secret, id, sent_at, body)
        .map_err(|error| format!("bad secret: {error}"))?;
    let matches = signatures
        .split_whitespace()
        .any(|candidate| bool::from(candidate.as_bytes().ct_eq(expected.as_bytes())));
    if matches {
        Ok(())
    } else {
        Err("signature mismatch".to_owned())
    }
}
