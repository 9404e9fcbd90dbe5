//! The envelope delivered to subscribers (DESIGN §10): `{"type", "timestamp", "data"}`, where
//! `data` ends with `"raw"`, the payload exactly as Jira sent it.
//!
//! `ProcessEvents` builds it once per event and stores it as text in `webhook_event.payload`,
//! cut just before the raw body: `{"type":…,"timestamp":…,"data":{…,"raw":`. The raw body is
//! already stored once, byte for byte, in `webhook_event.body`; sending splices it in and closes
//! the two objects ([`body`]), with no parse and no copy of the JSON beyond the one output
//! buffer.

use chrono::{DateTime, SecondsFormat, Utc};
use entity::webhook_event;
use serde::Serialize;

/// What closes the envelope after the raw body: the end of `data`, then of the envelope.
const CLOSING: &[u8] = b"}}";

/// The stored form of the envelope of an event of type `event_type` received at `received_at`,
/// whose `data` (without `raw`) serialises to a JSON object.
pub fn stored_payload(
    event_type: &str,
    received_at: DateTime<Utc>,
    data: &impl Serialize,
) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct Head<'a> {
        r#type: &'a str,
        timestamp: String,
    }
    let not_objects = || serde::ser::Error::custom("the envelope's parts are not objects");
    // One buffer, written in place: the head without its closing brace, then `data` without
    // its own, then the start of `raw`.
    let mut out = Vec::with_capacity(PAYLOAD_CAPACITY);
    serde_json::to_writer(
        &mut out,
        &Head {
            r#type: event_type,
            timestamp: received_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        },
    )?;
    if out.pop() != Some(b'}') {
        return Err(not_objects());
    }
    out.extend_from_slice(b",\"data\":");
    let data_start = out.len();
    serde_json::to_writer(&mut out, data)?;
    if out.get(data_start) != Some(&b'{') || out.pop() != Some(b'}') {
        return Err(not_objects());
    }
    if out.len() > data_start + 1 {
        out.push(b',');
    }
    out.extend_from_slice(b"\"raw\":");
    String::from_utf8(out).map_err(serde::ser::Error::custom)
}

/// Room reserved for a stored payload: a typical envelope with an enriched issue fits.
const PAYLOAD_CAPACITY: usize = 8 * 1024;

/// The bytes sent to subscribers: the stored payload, the raw body, and the closing braces.
pub fn body(payload: &str, raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(payload.len() + raw.len() + CLOSING.len());
    body.extend_from_slice(payload.as_bytes());
    body.extend_from_slice(raw);
    body.extend_from_slice(CLOSING);
    body
}

/// The bytes sent to subscribers for `event`: from its stored payload, or, for an event
/// processed before payloads were stored, from its `data`.
pub fn body_of(event: &webhook_event::Model) -> Vec<u8> {
    match &event.payload {
        Some(payload) => body(payload, &event.body),
        None => legacy_body(event),
    }
}

/// `data` as subscribers receive it, for the API and the console; `None` until processed.
pub fn data_of(event: &webhook_event::Model) -> Option<serde_json::Value> {
    if event.payload.is_none() {
        return event.data.clone();
    }
    let mut envelope: serde_json::Value = serde_json::from_slice(&body_of(event)).ok()?;
    Some(envelope.get_mut("data")?.take())
}

/// The envelope of an event processed before `payload` existed: built from its `data`.
fn legacy_body(event: &webhook_event::Model) -> Vec<u8> {
    let event_type = event
        .event_type
        .clone()
        .or_else(|| {
            event
                .data
                .as_ref()
                .and_then(|data| data.get("eventType"))
                .and_then(|value| value.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let data = event.data.clone().unwrap_or_else(|| {
        let raw = serde_json::from_slice::<serde_json::Value>(&event.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&event.body).into_owned())
        });
        serde_json::json!({
            "eventId": event.id,
            "eventType": event_type,
            "raw": raw,
        })
    });
    let body = serde_json::json!({
        "type": event_type,
        "timestamp": event.received_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": data,
    });
    body.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_payload_is_the_envelope_cut_before_raw() {
        let received_at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00.123Z")
            .expect("date")
            .with_timezone(&Utc);
        let head = r#"{"type":"t","timestamp":"2026-12-01T10:00:00.123Z","data":{"#;
        let payload = stored_payload("t", received_at, &serde_json::json!({"a": 1})).expect("ok");
        assert_eq!(payload, format!(r#"{head}"a":1,"raw":"#));
        let payload = stored_payload("t", received_at, &serde_json::json!({})).expect("ok");
        assert_eq!(payload, format!(r#"{head}"raw":"#));
        assert!(stored_payload("t", received_at, &serde_json::json!([1])).is_err());
        assert!(stored_payload("t", received_at, &serde_json::json!("x")).is_err());
    }

    #[test]
    fn the_stored_payload_and_the_raw_body_make_the_envelope() {
        let received_at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00.123Z")
            .expect("date")
            .with_timezone(&Utc);
        let data = serde_json::json!({"eventId": "e1", "enrichment": {"status": "ok"}});
        let payload = stored_payload("jira:issue_updated", received_at, &data).expect("payload");
        let raw = br#"{ "webhookEvent" : "jira:issue_updated", "b": 1, "a": 2 }"#;
        let sent = body(&payload, raw);
        let envelope: serde_json::Value = serde_json::from_slice(&sent).expect("valid JSON");
        assert_eq!(envelope["type"], "jira:issue_updated");
        assert_eq!(envelope["timestamp"], "2026-12-01T10:00:00.123Z");
        assert_eq!(envelope["data"]["eventId"], "e1");
        assert_eq!(envelope["data"]["raw"]["b"], 1);
        // The raw body is there byte for byte, key order and spacing included.
        let text = String::from_utf8(sent).expect("utf-8");
        assert!(
            text.contains(r#""raw":{ "webhookEvent" : "jira:issue_updated", "b": 1, "a": 2 }}}"#)
        );
    }

    #[test]
    fn an_empty_data_object_still_makes_valid_json() {
        let payload = stored_payload("x", Utc::now(), &serde_json::json!({})).expect("payload");
        let envelope: serde_json::Value =
            serde_json::from_slice(&body(&payload, b"{}")).expect("valid JSON");
        assert_eq!(envelope["data"]["raw"], serde_json::json!({}));
    }
}
