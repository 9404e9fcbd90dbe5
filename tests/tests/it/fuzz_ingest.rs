//! A property test of ingest: random bodies, sizes, content types, signatures, identifiers and
//! headers from a seeded RNG. Every answer is the one the rules of ingest give (200, 400, 401,
//! 404, 413 or 415, with the error envelope), never a 5xx; the server stays up; every event
//! answered 200 is stored and reaches a terminal status.
//!
//! `HOOKLINE_FUZZ_CASES` (default 300) sets the number of requests per backend and
//! `HOOKLINE_FUZZ_SEED` replays a run; the seed is printed on every run.

use std::collections::HashSet;
use std::time::Duration;

use api::Role;
use tests::{Backend, TestEnv, wait_until};
use uuid::Uuid;

use crate::helpers::*;
use crate::on_both_backends;

on_both_backends!(random_requests_get_the_answer_the_rules_give_and_never_a_5xx);

const BODY_LIMIT: usize = 16 * 1024;

/// xorshift64*: small, fast, and the same sequence for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

/// A random JSON string: ASCII, escapes (NUL included), multi-byte characters.
fn json_string(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "a",
        "Z",
        "jira",
        " ",
        "\\u0000",
        "\\n",
        "\\\"",
        "\\\\",
        "\\ud83d\\ude00",
        "é",
        "日本",
        "🙂",
        "\\u00ff",
        "<script>",
        "%00",
        "\\/",
        "\\t",
    ];
    let mut text = String::from("\"");
    for _ in 0..rng.below(8) {
        let piece: &&str = rng.pick(PIECES);
        text.push_str(piece);
    }
    text.push('"');
    text
}

/// A random JSON value, at most `depth` levels deep.
fn json_value(rng: &mut Rng, depth: usize) -> String {
    let kind = if depth == 0 {
        rng.below(4)
    } else {
        rng.below(6)
    };
    match kind {
        0 => json_string(rng),
        1 => rng
            .pick(&["0", "-1", "1.5e300", "12345678901234567890", "-0.0"])
            .to_string(),
        2 => rng.pick(&["true", "false", "null"]).to_string(),
        3 => json_string(rng),
        4 => {
            let items: Vec<String> = (0..rng.below(4))
                .map(|_| json_value(rng, depth - 1))
                .collect();
            format!("[{}]", items.join(","))
        }
        _ => json_object(rng, depth - 1),
    }
}

fn json_object(rng: &mut Rng, depth: usize) -> String {
    let mut fields: Vec<String> = (0..rng.below(5))
        .map(|_| format!("{}:{}", json_string(rng), json_value(rng, depth)))
        .collect();
    if rng.chance(50) {
        let event = rng.pick(&[
            "\"jira:issue_created\"",
            "\"jira:issue_updated\"",
            "\"comment_created\"",
            "\"jira:issue_\\u0000\"",
            "\"\"",
            "42",
        ]);
        fields.push(format!("\"webhookEvent\":{event}"));
    }
    format!("{{{}}}", fields.join(","))
}

/// A random body: a JSON object, a mangled one, other JSON, random bytes, deep nesting, or one
/// over the limit.
fn body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0..=3 => json_object(rng, 4).into_bytes(),
        4 => {
            let mut bytes = json_object(rng, 3).into_bytes();
            let cut = rng.below(bytes.len() + 1);
            bytes.truncate(cut);
            bytes
        }
        5 => {
            let mut bytes = json_object(rng, 3).into_bytes();
            for _ in 0..=rng.below(3) {
                let at = rng.below(bytes.len());
                if let Some(byte) = bytes.get_mut(at) {
                    *byte = rng.next() as u8;
                }
            }
            bytes
        }
        6 => json_value(rng, 3).into_bytes(),
        7 => {
            let len = rng.below(2048);
            rng.bytes(len)
        }
        8 => {
            let depth = *rng.pick(&[127, 128, 129, 1000]);
            format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }
        _ => {
            let len = BODY_LIMIT + 1 + rng.below(BODY_LIMIT);
            let mut bytes = br#"{"webhookEvent":"jira:issue_created","pad":""#.to_vec();
            bytes.resize(len, b'x');
            bytes.extend_from_slice(br#""}"#);
            bytes
        }
    }
}

/// Whether ingest takes this content type as JSON (what `RawJson` accepts).
fn is_json_content_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A printable header value of `len` bytes (obs-text included).
fn header_value(rng: &mut Rng, len: usize) -> String {
    (0..len)
        .map(|_| {
            let byte = 0x20 + rng.below(0x5f) as u8;
            byte as char
        })
        .collect()
}

async fn random_requests_get_the_answer_the_rules_give_and_never_a_5xx(backend: Backend) {
    let Some(env) = TestEnv::new(backend).await else {
        return;
    };
    env.migrate().await;
    let app = env
        .spawn_with(Role::All, |settings| {
            settings.body_limit_bytes = BODY_LIMIT;
            // The limiter is tested on its own; here every signed request must be judged on
            // its content.
            settings.ingest_rate_limit = 0;
        })
        .await;
    let (_, connection) = company_with_connection(&app).await;
    let connection_uuid = connection_id(&connection);
    let secret = connection["webhookSecret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let base = app.url("/webhook/jira/");

    let seed = env_number("HOOKLINE_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(1)
    });
    let cases = env_number("HOOKLINE_FUZZ_CASES").unwrap_or(300);
    eprintln!("fuzz_ingest ({backend:?}): HOOKLINE_FUZZ_SEED={seed} HOOKLINE_FUZZ_CASES={cases}");
    let mut rng = Rng::new(seed);

    let mut accepted: HashSet<Uuid> = HashSet::new();
    let mut identifiers: Vec<String> = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for case in 0..cases {
        let body = body(&mut rng);
        let (path, known) = match rng.below(20) {
            0 => (Uuid::new_v4().to_string(), false),
            1 => (
                (*rng.pick(&["not-a-uuid", "%ff%fe", "..%2f..%2fetc", "0"])).to_owned(),
                false,
            ),
            _ => (connection_uuid.to_string(), true),
        };
        let content_type = rng
            .pick(&[
                Some("application/json"),
                Some("application/json; charset=utf-8"),
                Some("APPLICATION/JSON"),
                Some("application/vnd.atlassian+json"),
                Some("text/plain"),
                Some("application/xml"),
                Some("application/x-www-form-urlencoded"),
                Some("json"),
                Some(""),
                None,
            ])
            .map(str::to_owned);
        let content_type = if rng.chance(60) {
            Some("application/json".to_owned())
        } else {
            content_type
        };
        let valid_signature = plugins::jira::webhook::sign(secret.as_bytes(), &body);
        let signature = match rng.below(10) {
            0 => None,
            1 => Some(format!("sha256={}", hex_of(&rng.bytes(32)))),
            2 => Some(valid_signature.replace("sha256=", "sha1=")),
            3 => Some(header_value(&mut rng, 80)),
            4 => Some(valid_signature.to_uppercase()),
            _ => Some(valid_signature.clone()),
        };
        // The algorithm name and the hex digest compare whatever their case.
        let signed = signature
            .as_deref()
            .is_some_and(|s| s.trim().eq_ignore_ascii_case(&valid_signature));

        let mut request = app.client.post(format!("{base}{path}")).body(body.clone());
        if let Some(content_type) = &content_type {
            request = request.header("content-type", content_type.as_str());
        }
        if let Some(signature) = &signature {
            request = request.header("x-hub-signature", signature.as_str());
        }
        if rng.chance(70) {
            let identifier = if !identifiers.is_empty() && rng.chance(20) {
                rng.pick(&identifiers).clone()
            } else {
                let len = 1 + rng.below(64);
                let fresh = header_value(&mut rng, len);
                identifiers.push(fresh.clone());
                fresh
            };
            request = request.header("x-atlassian-webhook-identifier", identifier);
        }
        for n in 0..rng.below(4) {
            let len = if rng.chance(10) {
                16 * 1024 + rng.below(48 * 1024)
            } else {
                rng.below(200)
            };
            request = request.header(format!("x-fuzz-{n}"), header_value(&mut rng, len));
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        *statuses.entry(status).or_default() += 1;
        let text = response.text().await.expect("body");

        // A path parameter that does not decode to UTF-8 is refused before anything else.
        let expected = if path.contains("%ff") {
            400
        } else if !is_json_content_type(content_type.as_deref()) {
            415
        } else if body.len() > BODY_LIMIT {
            413
        } else if !known {
            404
        } else if !signed {
            401
        } else if !serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.is_object()) {
            400
        } else {
            200
        };
        let context = format!(
            "case {case} (HOOKLINE_FUZZ_SEED={seed}): content type {content_type:?}, {} body bytes, \
             signature {:?}, path {path}: {status} {text}",
            body.len(),
            signature.as_deref().map(|s| &s[..s.len().min(20)])
        );
        assert!(status < 500, "a 5xx: {context}");
        assert_eq!(status, expected, "{context}");
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {context}"));
        if status == 200 {
            let id: Uuid = json["eventId"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("no eventId: {context}"));
            assert!(json["duplicate"].is_boolean(), "{context}");
            accepted.insert(id);
        } else {
            assert!(json["code"].is_string(), "no code: {context}");
            assert!(
                json["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "no detail: {context}"
            );
        }
    }
    eprintln!("fuzz_ingest ({backend:?}): answers by status {statuses:?}");

    // The server is up, and everything accepted is stored and reaches a terminal status.
    let health = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    assert_eq!(
        event_count(&app, connection_uuid).await,
        accepted.len() as u64,
        "HOOKLINE_FUZZ_SEED={seed}"
    );
    for id in &accepted {
        let stored = wait_until(Duration::from_secs(30), "the event is terminal", || async {
            let stored = event(&app, *id).await;
            matches!(stored.status.as_str(), "processed" | "failed").then_some(stored)
        })
        .await;
        assert_eq!(
            stored.status, "processed",
            "event {id} (HOOKLINE_FUZZ_SEED={seed}): {:?}",
            stored.error
        );
    }
    app.stop().await;
    env.cleanup().await;
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
