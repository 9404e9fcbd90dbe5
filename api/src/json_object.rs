//! Checks that a webhook body is one JSON object, as the worker's parser will read it, without
//! building the document.
//!
//! The check runs serde_json's own parser (the one the worker's `serde_json::from_slice` uses)
//! with a visitor that keeps nothing: every string is still checked for UTF-8 and its escapes,
//! every number is still parsed (a float out of range is refused, as the worker would refuse
//! it), nesting is still limited to serde_json's 128 levels, and trailing characters are still
//! refused. What is skipped is the work the worker needs and ingest does not: the allocation of
//! every map, vector and string of a `serde_json::Value`. Because both sides run the same
//! parser, ingest accepts exactly the bodies the worker can parse (the unit tests below, and
//! `tests/tests/it/bad_input.rs`, hold that against hostile inputs).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Checks that `body` is one JSON object, as the worker's parser reads it (UTF-8, within
/// serde_json's recursion limit of 128, i.e. at most 127 levels of nesting, nothing after it but
/// whitespace); says what is wrong otherwise.
pub fn check_json_object(body: &[u8]) -> Result<(), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the body is empty: a Jira webhook is a JSON object".to_owned());
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let kind = Kind::deserialize(&mut deserializer)
        .and_then(|kind| deserializer.end().map(|()| kind))
        .map_err(|error| format!("the body is not valid JSON: {error}"))?;
    match kind {
        Kind::Object => Ok(()),
        other => Err(format!(
            "the body is JSON {} but a Jira webhook is a JSON object",
            other.name()
        )),
    }
}

/// What a JSON value is, and nothing else about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool => "a boolean",
            Self::Number => "a number",
            Self::String => "a string",
            Self::Array => "an array",
            Self::Object => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `deserialize_any`, as `serde_json::Value` does: the same parsing of numbers and
        // strings, the same recursion limit.
        deserializer.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Kind, E> {
        Ok(Kind::Bool)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Kind, E> {
        Ok(Kind::Number)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Kind, E> {
        Ok(Kind::Number)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Kind, E> {
        Ok(Kind::Number)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Kind, E> {
        Ok(Kind::String)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Kind, A::Error> {
        while items.next_element::<Kind>()?.is_some() {}
        Ok(Kind::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Kind, A::Error> {
        while entries.next_key::<Key>()?.is_some() {
            entries.next_value::<Kind>()?;
        }
        Ok(Kind::Object)
    }
}

/// An object key, checked as `serde_json::Value` reads keys (a string) and dropped.
struct Key;

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Key, E> {
        Ok(Key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the worker does with a body: `Ok` when its parser reads it into an event.
    fn worker_accepts(body: &[u8]) -> bool {
        plugins::jira::event::parse(body).is_ok()
    }

    fn nested(depth: usize) -> Vec<u8> {
        // `depth` levels in all: the outer object, then arrays.
        format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
        .into_bytes()
    }

    fn nested_objects(depth: usize) -> Vec<u8> {
        let mut body = "{\"a\":".repeat(depth - 1);
        body.push_str("{}");
        body.push_str(&"}".repeat(depth - 1));
        body.into_bytes()
    }

    /// Bodies chosen to find a disagreement: limits, numbers, strings, encodings, framing.
    fn hostile_bodies() -> Vec<(String, Vec<u8>)> {
        let mut cases: Vec<(String, Vec<u8>)> = vec![
            ("nested 127".into(), nested(127)),
            ("nested 128".into(), nested(128)),
            ("nested 129".into(), nested(129)),
            ("objects nested 127".into(), nested_objects(127)),
            ("objects nested 128".into(), nested_objects(128)),
            ("objects nested 129".into(), nested_objects(129)),
            ("100k brackets".into(), "[".repeat(100_000).into_bytes()),
            (
                "huge integer".into(),
                format!("{{\"n\":{}}}", "9".repeat(400)).into_bytes(),
            ),
            ("float out of range".into(), b"{\"n\":1e400}".to_vec()),
            (
                "negative float out of range".into(),
                b"{\"n\":-1e400}".to_vec(),
            ),
            ("tiny float".into(), b"{\"n\":1e-400}".to_vec()),
            (
                "u64 max + 1".into(),
                b"{\"n\":18446744073709551616}".to_vec(),
            ),
            (
                "i64 min - 1".into(),
                b"{\"n\":-9223372036854775809}".to_vec(),
            ),
            ("leading zero".into(), b"{\"n\":01}".to_vec()),
            ("bare minus".into(), b"{\"n\":-}".to_vec()),
            ("dot without digits".into(), b"{\"n\":1.}".to_vec()),
            ("exponent without digits".into(), b"{\"n\":1e}".to_vec()),
            ("NaN".into(), b"{\"n\":NaN}".to_vec()),
            ("Infinity".into(), b"{\"n\":Infinity}".to_vec()),
            (
                "escapes".into(),
                br#"{"s":"\" \\ \/ \b \f \n \r \t \u00e9 \ud83d\ude00"}"#.to_vec(),
            ),
            ("escaped NUL".into(), br#"{"s":"a\u0000b"}"#.to_vec()),
            (
                "lone leading surrogate".into(),
                br#"{"s":"\ud800"}"#.to_vec(),
            ),
            (
                "lone trailing surrogate".into(),
                br#"{"s":"\udc00"}"#.to_vec(),
            ),
            (
                "surrogate then letter".into(),
                br#"{"s":"\ud800x"}"#.to_vec(),
            ),
            ("bad escape".into(), br#"{"s":"\x"}"#.to_vec()),
            ("short unicode escape".into(), br#"{"s":"\u12"}"#.to_vec()),
            ("escaped key".into(), br#"{"k\u00e9\n":1}"#.to_vec()),
            ("lone surrogate in key".into(), br#"{"\udfff":1}"#.to_vec()),
            (
                "raw control character".into(),
                b"{\"s\":\"a\x01b\"}".to_vec(),
            ),
            ("raw newline in string".into(), b"{\"s\":\"a\nb\"}".to_vec()),
            ("raw NUL".into(), b"{\"s\":\"a\x00b\"}".to_vec()),
            (
                "invalid UTF-8 in a string".into(),
                b"{\"s\":\"\xff\xfe\"}".to_vec(),
            ),
            (
                "invalid UTF-8 in a key".into(),
                b"{\"\xc3\x28\":1}".to_vec(),
            ),
            ("overlong UTF-8".into(), b"{\"s\":\"\xc0\xaf\"}".to_vec()),
            (
                "UTF-8 surrogate".into(),
                b"{\"s\":\"\xed\xa0\x80\"}".to_vec(),
            ),
            ("truncated UTF-8".into(), b"{\"s\":\"\xe2\x82\"}".to_vec()),
            (
                "valid multi-byte".into(),
                "{\"s\":\"日本 🙂 é\"}".as_bytes().to_vec(),
            ),
            (
                "invalid UTF-8 outside strings".into(),
                b"{\"a\":1}\xff".to_vec(),
            ),
            ("BOM".into(), b"\xef\xbb\xbf{\"a\":1}".to_vec()),
            ("trailing garbage".into(), b"{\"a\":1}x".to_vec()),
            ("trailing comma in object".into(), b"{\"a\":1,}".to_vec()),
            ("trailing comma in array".into(), b"{\"a\":[1,]}".to_vec()),
            ("two objects".into(), b"{\"a\":1}{\"b\":2}".to_vec()),
            ("trailing whitespace".into(), b"{\"a\":1} \r\n\t".to_vec()),
            ("leading whitespace".into(), b" \n{\"a\":1}".to_vec()),
            ("trailing NUL".into(), b"{\"a\":1}\x00".to_vec()),
            ("form feed as whitespace".into(), b"\x0c{\"a\":1}".to_vec()),
            ("duplicate keys".into(), b"{\"a\":1,\"a\":{}}".to_vec()),
            ("number key".into(), b"{1:2}".to_vec()),
            ("single quotes".into(), b"{'a':1}".to_vec()),
            ("comment".into(), b"{/* c */\"a\":1}".to_vec()),
            ("unterminated string".into(), b"{\"a\":\"x}".to_vec()),
            ("truncated".into(), b"{\"a\":{".to_vec()),
            ("empty object".into(), b"{}".to_vec()),
            ("null".into(), b"null".to_vec()),
            ("array".into(), b"[{}]".to_vec()),
            ("number".into(), b"42".to_vec()),
            ("string".into(), b"\"x\"".to_vec()),
            ("true".into(), b"true".to_vec()),
            ("empty".into(), Vec::new()),
            ("whitespace only".into(), b" \t\r\n".to_vec()),
            ("capitalised literal".into(), b"{\"a\":True}".to_vec()),
            ("literal prefix".into(), b"{\"a\":nul}".to_vec()),
        ];
        for fixture in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/jira"))
            .expect("fixtures")
            .flatten()
        {
            let path = fixture.path();
            if path.extension().is_some_and(|ext| ext == "json") {
                let body = std::fs::read(&path).expect("fixture");
                // Every fixture, and every fixture cut short one byte before its end.
                let cut = body[..body.len().saturating_sub(2)].to_vec();
                cases.push((path.display().to_string(), body));
                cases.push((format!("{} cut short", path.display()), cut));
            }
        }
        cases
    }

    #[test]
    fn the_check_accepts_exactly_what_the_workers_parser_accepts() {
        for (case, body) in hostile_bodies() {
            assert_eq!(
                check_json_object(&body).is_ok(),
                worker_accepts(&body),
                "{case}: ingest and worker disagree ({:?})",
                check_json_object(&body)
            );
        }
    }

    #[test]
    fn nesting_stops_where_serde_json_stops_127_levels_in() {
        // serde_json's recursion limit of 128 counts down on entering a container and refuses
        // the container that brings it to zero: 127 levels are read, the 128th is refused.
        assert_eq!(check_json_object(&nested(127)), Ok(()));
        assert_eq!(check_json_object(&nested_objects(127)), Ok(()));
        let error = check_json_object(&nested(128)).expect_err("128 levels");
        assert!(error.contains("recursion limit"), "{error}");
        assert!(check_json_object(&nested_objects(128)).is_err());
    }

    #[test]
    fn every_refusal_says_what_is_wrong() {
        let error = |body: &[u8]| check_json_object(body).expect_err("refused");
        assert!(error(b"").contains("empty"));
        assert!(error(b"[1]").contains("an array"));
        assert!(error(b"null").contains("null"));
        assert!(error(b"\"x\"").contains("a string"));
        assert!(error(b"{\"a\":1}x").contains("trailing"));
        assert!(error(b"{\"n\":1e400}").contains("out of range"));
    }

    #[test]
    fn random_bytes_and_mutations_get_the_same_verdict_on_both_sides() {
        // Seeded xorshift: mutations of a real payload (flipped, dropped, inserted bytes) find
        // the corners of the grammar; the worker's verdict is the reference.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let base = br#"{"webhookEvent":"jira:issue_updated","timestamp":1700000000000,"issue":{"id":"10001","key":"ENG-1","fields":{"summary":"caf\u00e9 \"quoted\"","n":[1,-2.5e3,true,null]}}}"#;
        const NOISE: &[u8] = b"{}[]\",:\\u0eE+-.9 \xff\xc3\x00";
        for round in 0..20_000 {
            let mut body = base.to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % body.len();
                let byte = NOISE[(next() as usize) % NOISE.len()];
                match next() % 3 {
                    0 => body[at] = byte,
                    1 => {
                        body.remove(at);
                    }
                    _ => body.insert(at, byte),
                }
            }
            assert_eq!(
                check_json_object(&body).is_ok(),
                worker_accepts(&body),
                "round {round}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}
