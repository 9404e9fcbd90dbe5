//! Where a delivery goes: one [`Destination`] per kind, one file each.
//!
//! The `Deliver` job signs the event's envelope once and hands every destination the same
//! [`Message`]; a destination sends it and says what happened as an [`AttemptResult`]. A
//! destination never fails: every problem (refused, unreachable, timed out) is an attempt result,
//! which the job records and schedules a retry for.
//!
//! Kinds: [`http`] (a POST), [`redis_stream`] (XADD), [`amqp`] (RabbitMQ with publisher
//! confirms), [`nats`] (JetStream with its ack). The broker kinds' settings are described in
//! [`broker`], and their connections are kept in the [`pool`].

pub mod amqp;
pub mod broker;
pub mod http;
pub mod nats;
pub mod pool;
pub mod redis_stream;

use futures::future::BoxFuture;

/// One signed message, the same bytes and headers for every kind of destination (DESIGN §10).
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// `webhook-id`: the delivery's id, stable across its retries (the subscriber's dedupe key).
    pub id: &'a str,
    /// `webhook-timestamp`: Unix seconds at signing.
    pub timestamp: i64,
    /// `webhook-signature`: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    pub signature: &'a str,
    /// The JSON envelope `{"type", "timestamp", "data"}`.
    pub body: &'a [u8],
}

/// What one attempt produced.
#[derive(Debug, Default, Clone)]
pub struct AttemptResult {
    /// The HTTP status the subscriber answered (HTTP destinations only).
    pub status_code: Option<u16>,
    /// Why the attempt failed; `None` when it succeeded.
    pub error: Option<String>,
    /// The start of the subscriber's answer, storable as text.
    pub excerpt: Option<String>,
    /// How long the subscriber asked to wait before the next attempt.
    pub retry_after: Option<std::time::Duration>,
    /// No later attempt can succeed (target refused by the SSRF guard, unusable settings).
    pub permanent: bool,
}

impl AttemptResult {
    /// A failure that no retry can fix.
    pub fn permanent(error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            permanent: true,
            ..Self::default()
        }
    }

    /// A failure that a later attempt may not have.
    pub fn transient(error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            ..Self::default()
        }
    }

    /// Whether the destination accepted the message.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
            && self
                .status_code
                .is_none_or(|code| (200..300).contains(&code))
    }

    /// The `outcome` label of `hookline_delivery_attempts_total`.
    pub fn outcome_label(&self) -> &'static str {
        match (&self.status_code, self.succeeded()) {
            (_, true) => "success",
            (Some(_), false) => "http_error",
            (None, false) if self.permanent => "refused",
            (None, false) => "network_error",
        }
    }
}

/// A place deliveries are sent to.
pub trait Destination: Send + Sync {
    /// Sends `message` and reports what happened; never fails.
    fn send<'a>(&'a self, message: Message<'a>) -> BoxFuture<'a, AttemptResult>;
}

/// An error with its causes, `a: b: c`, as reqwest's own `Display` stops at the first.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(current) = source {
        let cause = current.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_without_error_or_with_a_2xx_succeeded() {
        assert!(AttemptResult::default().succeeded());
        let ok = AttemptResult {
            status_code: Some(204),
            ..AttemptResult::default()
        };
        assert!(ok.succeeded());
        let refused = AttemptResult {
            status_code: Some(500),
            ..AttemptResult::default()
        };
        assert!(!refused.succeeded());
        assert_eq!(refused.outcome_label(), "http_error");
        assert_eq!(AttemptResult::permanent("no").outcome_label(), "refused");
        assert_eq!(
            AttemptResult::transient("down").outcome_label(),
            "network_error"
        );
    }
}
