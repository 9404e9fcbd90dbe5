//! Text and JSON made storable in every database hookline runs on.
//!
//! Postgres refuses the NUL character in `text` columns ("invalid byte sequence for encoding
//! UTF8: 0x00") and in `jsonb` values ("unsupported Unicode escape sequence"), while JSON allows
//! `\u0000` in strings and HTTP bodies may contain any byte. A worker writing such a value would
//! fail on every attempt and the sweeper would hand the row out again forever, so every value
//! that comes from outside (a webhook payload, a subscriber's answer) goes through here first:
//! each NUL becomes U+FFFD, the replacement character. The raw body of an event is stored as
//! bytes and is never changed.

use std::borrow::Cow;

use serde_json::Value;

/// What replaces a NUL character.
pub const REPLACEMENT: char = '\u{FFFD}';

/// `text` with every NUL replaced; borrowed when there is none (the usual case).
pub fn text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// `value` with every NUL replaced in its strings and object keys.
pub fn json(value: Value) -> Value {
    match value {
        Value::String(string) => Value::String(owned_text(string)),
        Value::Array(items) => Value::Array(items.into_iter().map(json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (owned_text(key), json(value)))
                .collect(),
        ),
        other => other,
    }
}

fn owned_text(string: String) -> String {
    match text(&string) {
        Cow::Borrowed(_) => string,
        Cow::Owned(replaced) => replaced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_replaced_everywhere() {
        let value = serde_json::json!({
            "a\u{0}b": ["x\u{0}", {"deep": "\u{0}\u{0}"}, 1, null, true],
            "clean": "as is",
        });
        let stored = json(value);
        assert!(!stored.to_string().contains("\\u0000"), "{stored}");
        assert_eq!(stored["a\u{FFFD}b"][0], "x\u{FFFD}");
        assert_eq!(stored["a\u{FFFD}b"][1]["deep"], "\u{FFFD}\u{FFFD}");
        assert_eq!(stored["clean"], "as is");
        assert_eq!(stored["a\u{FFFD}b"][2], 1);
    }

    #[test]
    fn clean_text_is_borrowed() {
        assert!(matches!(text("jira:issue_created"), Cow::Borrowed(_)));
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
    }
}
