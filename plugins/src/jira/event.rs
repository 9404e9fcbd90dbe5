//! Jira webhook payloads parsed into typed events (DESIGN §4 "ProcessEvents").
//!
//! Parsing is total: a field of an unexpected type counts as absent instead of failing the
//! whole event, ids are accepted as strings or numbers (issue links carry numeric ids), and an
//! unknown `webhookEvent` is kept as is. The only failures are a body that is not JSON or not an
//! object; parsing never panics (see the randomized tests below). The body is read straight into
//! the typed event ([`super::lenient`]), without a `serde_json::Value` of the whole body; the
//! tests check it against the same rules written as a walk over a `Value` tree.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// Why a body is not a Jira event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body is not JSON (or nested deeper than the parser allows).
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("the body is JSON but not an object")]
    NotObject,
}

/// A Jira webhook event, typed. Serialises to the camelCase shape subscribers receive.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JiraEvent {
    /// `webhookEvent`, e.g. `jira:issue_updated`; `unknown` when Jira sent none.
    pub event_type: String,
    /// `timestamp` (epoch milliseconds) as an instant.
    pub occurred_at: Option<DateTime<Utc>>,
    /// `issue_event_type_name`, e.g. `issue_generic`, `issue_assigned`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issue_event_type_name: Option<String>,
    /// Who caused the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// The issue as Jira sent it (complete for issue events, trimmed for comment events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issue: Option<Issue>,
    /// What changed (issue events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changelog: Option<Changelog>,
    /// The comment (comment events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<Comment>,
    /// The worklog (worklog events; they carry only the issue's id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worklog: Option<Worklog>,
    /// The issue link (issuelink events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issue_link: Option<IssueLink>,
}

/// A Jira user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The Atlassian account id.
    pub account_id: String,
    /// Display name, when Jira sent it.
    pub display_name: Option<String>,
}

/// The issue fields subscribers match and route on most.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Issue {
    /// Numeric id, as a string.
    pub id: String,
    /// Key, e.g. `ORB-417`.
    pub key: Option<String>,
    /// `fields.summary`.
    pub summary: Option<String>,
    /// `fields.project.key`.
    pub project_key: Option<String>,
    /// `fields.issuetype.name`.
    pub issue_type: Option<String>,
    /// `fields.status.name`.
    pub status: Option<String>,
    /// `fields.priority.name`.
    pub priority: Option<String>,
    /// `fields.assignee.accountId`.
    pub assignee_account_id: Option<String>,
}

/// The changelog of an issue event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Changelog {
    /// Changelog id (Jira sends a string or a number).
    pub id: Option<String>,
    /// The changed fields.
    pub items: Vec<ChangeItem>,
}

/// One changed field. Match on `field_id`: `field` is a display name and changes with locale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeItem {
    /// Display name of the field, e.g. `Status`.
    pub field: String,
    /// Stable field id, e.g. `status`, `assignee`, `customfield_10019`.
    pub field_id: Option<String>,
    /// `jira` or `custom`.
    pub field_type: Option<String>,
    /// Old raw value (an id for most fields).
    pub from: Option<String>,
    /// Old value as displayed.
    pub from_string: Option<String>,
    /// New raw value.
    pub to: Option<String>,
    /// New value as displayed.
    pub to_string: Option<String>,
}

/// A comment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    /// Comment id.
    pub id: String,
    /// The body: wiki markup (a string) in webhooks, ADF (an object) in REST v3.
    pub body: Option<Value>,
    /// Who wrote it.
    pub author: Option<User>,
    /// When it was created, as Jira formats it.
    pub created: Option<String>,
    /// When it was last updated, as Jira formats it.
    pub updated: Option<String>,
}

/// A worklog entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Worklog {
    /// Worklog id.
    pub id: String,
    /// The issue's numeric id (worklog events carry no issue object).
    pub issue_id: Option<String>,
    /// Time logged, in seconds.
    pub time_spent_seconds: Option<i64>,
    /// When the work started, as Jira formats it.
    pub started: Option<String>,
    /// Who logged it.
    pub author: Option<User>,
}

/// A link between two issues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssueLink {
    /// Link id (numeric in Jira's payload).
    pub id: String,
    /// The linking issue's id.
    pub source_issue_id: Option<String>,
    /// The linked issue's id.
    pub destination_issue_id: Option<String>,
    /// The link type's name, e.g. `Blocks`.
    pub link_type: Option<String>,
}

impl JiraEvent {
    /// The issue to fetch for enrichment: the issue's key or id, else the worklog's issue id.
    pub fn issue_id_or_key(&self) -> Option<&str> {
        match &self.issue {
            Some(issue) => Some(issue.key.as_deref().unwrap_or(&issue.id)),
            None => self.worklog.as_ref()?.issue_id.as_deref(),
        }
    }

    /// The change of a field in this event's changelog, matched on the stable `fieldId`.
    pub fn change(&self, field_id: &str) -> Option<&ChangeItem> {
        self.changelog
            .as_ref()?
            .items
            .iter()
            .find(|item| item.field_id.as_deref() == Some(field_id))
    }

    /// The project key, when the payload carries one.
    pub fn project_key(&self) -> Option<&str> {
        self.issue.as_ref()?.project_key.as_deref()
    }
}

/// Parses a Jira webhook body.
pub fn parse(body: &[u8]) -> Result<JiraEvent, ParseError> {
    let root: super::lenient::Root =
        serde_json::from_slice(body).map_err(|error| ParseError::NotJson(error.to_string()))?;
    root.0.ok_or(ParseError::NotObject)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The parsing rules written as a walk over a decoded `Value` tree: the oracle the
    /// streaming parser is checked against.
    mod tree_walk {
        use chrono::{DateTime, Utc};
        use serde_json::Value;

        use super::super::*;

        /// The parsing rules as a walk over a decoded tree: the reference [`parse`] is tested against.
        pub(super) fn parse_value(value: &Value) -> Result<JiraEvent, ParseError> {
            let root = value.as_object().ok_or(ParseError::NotObject)?;
            let event_type = root
                .get("webhookEvent")
                .and_then(Value::as_str)
                .filter(|name| !name.is_empty())
                .unwrap_or("unknown")
                .to_owned();
            Ok(JiraEvent {
                event_type,
                occurred_at: root.get("timestamp").and_then(epoch_millis),
                issue_event_type_name: string(root.get("issue_event_type_name")),
                user: root.get("user").and_then(user),
                issue: root.get("issue").and_then(issue),
                changelog: root.get("changelog").and_then(changelog),
                comment: root.get("comment").and_then(comment),
                worklog: root.get("worklog").and_then(worklog),
                issue_link: root.get("issueLink").and_then(issue_link),
            })
        }

        /// A string, or a number rendered as one (Jira is inconsistent about ids).
        fn id(value: Option<&Value>) -> Option<String> {
            match value? {
                Value::String(text) => Some(text.clone()),
                Value::Number(number) => Some(number.to_string()),
                _ => None,
            }
        }

        fn string(value: Option<&Value>) -> Option<String> {
            value?.as_str().map(str::to_owned)
        }

        fn path<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a Value> {
            keys.iter().try_fold(value, |value, key| value.get(key))
        }

        fn epoch_millis(value: &Value) -> Option<DateTime<Utc>> {
            let millis = match value {
                Value::Number(number) => number.as_i64().or_else(|| {
                    // Some senders emit floats; anything outside i64 is not a timestamp.
                    number
                        .as_f64()
                        .filter(|f| f.is_finite() && f.abs() < 9.0e15)
                        .map(|f| f as i64)
                })?,
                Value::String(text) => text.trim().parse().ok()?,
                _ => return None,
            };
            DateTime::from_timestamp_millis(millis)
        }

        fn user(value: &Value) -> Option<User> {
            Some(User {
                account_id: string(value.get("accountId"))?,
                display_name: string(value.get("displayName")),
            })
        }

        fn issue(value: &Value) -> Option<Issue> {
            let fields = value.get("fields");
            let field = |keys: &[&str]| fields.and_then(|fields| string(path(fields, keys)));
            Some(Issue {
                id: id(value.get("id"))?,
                key: string(value.get("key")),
                summary: field(&["summary"]),
                project_key: field(&["project", "key"]),
                issue_type: field(&["issuetype", "name"]),
                status: field(&["status", "name"]),
                priority: field(&["priority", "name"]),
                assignee_account_id: field(&["assignee", "accountId"]),
            })
        }

        fn changelog(value: &Value) -> Option<Changelog> {
            let items = value
                .get("items")
                .and_then(Value::as_array)
                .map(|items| items.iter().filter_map(change_item).collect())
                .unwrap_or_default();
            Some(Changelog {
                id: id(value.get("id")),
                items,
            })
        }

        fn change_item(value: &Value) -> Option<ChangeItem> {
            Some(ChangeItem {
                field: string(value.get("field"))?,
                field_id: string(value.get("fieldId")),
                field_type: string(value.get("fieldtype")),
                from: id(value.get("from")),
                from_string: string(value.get("fromString")),
                to: id(value.get("to")),
                to_string: string(value.get("toString")),
            })
        }

        fn comment(value: &Value) -> Option<Comment> {
            Some(Comment {
                id: id(value.get("id"))?,
                body: value.get("body").filter(|body| !body.is_null()).cloned(),
                author: value.get("author").and_then(user),
                created: string(value.get("created")),
                updated: string(value.get("updated")),
            })
        }

        fn worklog(value: &Value) -> Option<Worklog> {
            Some(Worklog {
                id: id(value.get("id"))?,
                issue_id: id(value.get("issueId")),
                time_spent_seconds: value.get("timeSpentSeconds").and_then(Value::as_i64),
                started: string(value.get("started")),
                author: value.get("author").and_then(user),
            })
        }

        fn issue_link(value: &Value) -> Option<IssueLink> {
            Some(IssueLink {
                id: id(value.get("id"))?,
                source_issue_id: id(value.get("sourceIssueId")),
                destination_issue_id: id(value.get("destinationIssueId")),
                link_type: value
                    .get("issueLinkType")
                    .and_then(|link_type| string(link_type.get("name"))),
            })
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/jira")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    fn parsed(name: &str) -> JiraEvent {
        parse(&fixture(name)).expect("parses")
    }

    #[test]
    fn issue_created_is_parsed_with_issue_user_and_changelog() {
        let event = parsed("webhook_issue_created.json");
        assert_eq!(event.event_type, "jira:issue_created");
        let issue = event.issue.as_ref().expect("issue");
        assert_eq!(issue.id, "20417");
        assert_eq!(issue.key.as_deref(), Some("ORB-417"));
        assert_eq!(
            issue.summary.as_deref(),
            Some("Relay drops telemetry batches above 4k queue depth")
        );
        assert_eq!(event.project_key(), Some("ORB"));
        assert_eq!(issue.status.as_deref(), Some("To Do"));
        assert_eq!(
            event.change("status").and_then(|c| c.to_string.as_deref()),
            Some("To Do")
        );
        assert_eq!(
            event.change("priority").and_then(|c| c.to.as_deref()),
            Some("2")
        );
        assert!(event.user.is_some());
        assert_eq!(event.issue_id_or_key(), Some("ORB-417"));
    }

    #[test]
    fn the_timestamp_is_epoch_milliseconds() {
        let event = parsed("webhook_issuelink_created.json");
        let expected = DateTime::from_timestamp_millis(1_762_171_500_021).expect("instant");
        assert_eq!(event.occurred_at, Some(expected));
        assert_eq!(
            event.occurred_at.map(|t| t.to_rfc3339()),
            Some("2025-11-03T12:05:00.021+00:00".to_owned())
        );
    }

    #[test]
    fn status_change_is_matched_on_field_id() {
        let event = parsed("webhook_issue_updated_status.json");
        assert_eq!(event.event_type, "jira:issue_updated");
        assert_eq!(
            event.issue_event_type_name.as_deref(),
            Some("issue_generic")
        );
        let change = event.change("status").expect("status change");
        assert_eq!(change.from_string.as_deref(), Some("To Do"));
        assert_eq!(change.to_string.as_deref(), Some("In Progress"));
        assert_eq!(change.to.as_deref(), Some("10001"));
        assert_eq!(
            event.changelog.as_ref().and_then(|c| c.id.as_deref()),
            Some("58244")
        );
    }

    #[test]
    fn assignee_change_carries_account_ids() {
        let event = parsed("webhook_issue_updated_assignee.json");
        assert_eq!(
            event.issue_event_type_name.as_deref(),
            Some("issue_assigned")
        );
        let change = event.change("assignee").expect("assignee change");
        assert!(change.to.is_some() || change.to_string.is_some());
    }

    #[test]
    fn issue_deleted_keeps_the_last_snapshot() {
        let event = parsed("webhook_issue_deleted.json");
        assert_eq!(event.event_type, "jira:issue_deleted");
        assert_eq!(
            event.issue.as_ref().and_then(|i| i.key.as_deref()),
            Some("ORB-417")
        );
        assert!(event.changelog.is_none());
    }

    #[test]
    fn comment_events_carry_the_comment_and_a_trimmed_issue() {
        for (name, event_type) in [
            ("webhook_comment_created.json", "comment_created"),
            ("webhook_comment_updated.json", "comment_updated"),
            ("webhook_comment_deleted.json", "comment_deleted"),
        ] {
            let event = parsed(name);
            assert_eq!(event.event_type, event_type);
            let comment = event.comment.as_ref().expect("comment");
            assert_eq!(comment.id, "90311", "{name}");
            assert!(
                comment.body.as_ref().is_some_and(Value::is_string),
                "{name}: wiki markup"
            );
            assert!(comment.author.is_some());
            assert_eq!(event.issue.as_ref().map(|i| i.id.as_str()), Some("20417"));
            assert_eq!(event.project_key(), Some("ORB"));
        }
    }

    #[test]
    fn a_comment_without_an_issue_still_parses() {
        let event =
            parse(br#"{"webhookEvent":"comment_created","comment":{"id":"1","body":"hi"}}"#)
                .expect("parses");
        assert!(event.issue.is_none());
        assert_eq!(event.comment.expect("comment").id, "1");
    }

    #[test]
    fn worklog_events_resolve_their_issue_through_the_issue_id() {
        let event = parsed("webhook_worklog_created.json");
        assert_eq!(event.event_type, "worklog_created");
        assert!(event.issue.is_none() && event.user.is_none());
        let worklog = event.worklog.as_ref().expect("worklog");
        assert_eq!(worklog.id, "41877");
        assert_eq!(worklog.issue_id.as_deref(), Some("20417"));
        assert_eq!(worklog.time_spent_seconds, Some(8100));
        assert_eq!(event.issue_id_or_key(), Some("20417"));
    }

    #[test]
    fn issue_links_have_numeric_ids() {
        let event = parsed("webhook_issuelink_created.json");
        assert_eq!(event.event_type, "issuelink_created");
        let link = event.issue_link.expect("link");
        assert_eq!(link.id, "31590");
        assert_eq!(link.source_issue_id.as_deref(), Some("20417"));
        assert_eq!(link.destination_issue_id.as_deref(), Some("20388"));
        assert_eq!(link.link_type.as_deref(), Some("Blocks"));
    }

    #[test]
    fn unknown_event_types_are_kept() {
        let event =
            parse(br#"{"webhookEvent":"sprint_started","sprint":{"id":5}}"#).expect("parses");
        assert_eq!(event.event_type, "sprint_started");
        let event = parse(br#"{"something":"else"}"#).expect("parses");
        assert_eq!(event.event_type, "unknown");
    }

    #[test]
    fn numeric_changelog_ids_and_values_are_strings() {
        let event = parse(
            br#"{"webhookEvent":"jira:issue_updated","changelog":{"id":58244,"items":[{"field":"x","fieldId":"x","from":1,"to":2}]}}"#,
        )
        .expect("parses");
        assert_eq!(
            event.changelog.as_ref().and_then(|c| c.id.as_deref()),
            Some("58244")
        );
        assert_eq!(event.change("x").and_then(|c| c.to.as_deref()), Some("2"));
    }

    #[test]
    fn non_json_and_non_objects_are_errors() {
        assert!(matches!(parse(b"{truncated"), Err(ParseError::NotJson(_))));
        assert!(matches!(parse(b"\xff\xfe"), Err(ParseError::NotJson(_))));
        assert_eq!(parse(b"[1,2]"), Err(ParseError::NotObject));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            parse(deep.as_bytes()),
            Err(ParseError::NotJson(_))
        ));
    }

    /// Keys Jira uses, so random trees hit the parser's paths with wrong types.
    const KEYS: &[&str] = &[
        "webhookEvent",
        "timestamp",
        "issue",
        "id",
        "key",
        "fields",
        "summary",
        "project",
        "changelog",
        "items",
        "field",
        "fieldId",
        "from",
        "to",
        "comment",
        "body",
        "author",
        "accountId",
        "worklog",
        "issueId",
        "issueLink",
        "issueLinkType",
        "name",
        "user",
        "timeSpentSeconds",
        "status",
        "assignee",
    ];

    fn random_value(rng: &mut StdRng, depth: u32) -> Value {
        let choice = if depth == 0 {
            rng.random_range(0..5)
        } else {
            rng.random_range(0..7)
        };
        match choice {
            0 => Value::Null,
            1 => Value::Bool(rng.random()),
            2 => serde_json::json!(rng.random::<i64>()),
            3 => serde_json::json!(rng.random::<f64>() * 1e20),
            4 => Value::String(KEYS[rng.random_range(0..KEYS.len())].to_owned()),
            5 => Value::Array(
                (0..rng.random_range(0..4))
                    .map(|_| random_value(rng, depth - 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.random_range(0..6))
                    .map(|_| {
                        let key = KEYS[rng.random_range(0..KEYS.len())].to_owned();
                        (key, random_value(rng, depth - 1))
                    })
                    .collect(),
            ),
        }
    }

    /// Replaces random subtrees of a fixture with random values.
    fn mutate(rng: &mut StdRng, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (_, child) in map.iter_mut() {
                    if rng.random_range(0..8) == 0 {
                        *child = random_value(rng, 3);
                    } else {
                        mutate(rng, child);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|child| mutate(rng, child)),
            _ => {}
        }
    }

    /// The streaming parser against the tree walk, on the same JSON text.
    fn assert_same(value: &Value) {
        // Both read the same text (a float does not always survive a round trip unchanged).
        let text = serde_json::to_vec(value).expect("serialises");
        let tree: Value = serde_json::from_slice(&text).expect("parses back");
        assert_eq!(
            parse(&text),
            tree_walk::parse_value(&tree),
            "{}",
            String::from_utf8_lossy(&text)
        );
    }

    #[test]
    fn streaming_matches_the_tree_walk_on_arbitrary_json() {
        let mut rng = StdRng::seed_from_u64(0x6a69_7261);
        for _ in 0..20_000 {
            assert_same(&random_value(&mut rng, 5));
        }
        let fixtures: Vec<Value> = std::fs::read_dir(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/jira"),
        )
        .expect("fixtures")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("webhook_"))
        .filter_map(|entry| serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok())
        .collect();
        assert!(fixtures.len() >= 10, "the webhook fixtures are there");
        for fixture in &fixtures {
            assert_same(fixture);
        }
        for _ in 0..2_000 {
            for fixture in &fixtures {
                let mut value = fixture.clone();
                mutate(&mut rng, &mut value);
                assert_same(&value);
            }
        }
    }

    #[test]
    fn the_nesting_limit_is_the_trees_also_in_skipped_fields() {
        for depth in [120, 126, 127, 128, 129, 140, 10_000] {
            // One object level, then `depth - 1` arrays in a field nobody reads.
            let body = format!(
                "{{\"ignored\":{}1{}}}",
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            );
            let tree = serde_json::from_slice::<Value>(body.as_bytes());
            assert_eq!(
                parse(body.as_bytes()).is_ok(),
                tree.is_ok(),
                "depth {depth}"
            );
        }
    }

    #[test]
    fn duplicate_keys_and_escaped_keys_read_as_a_tree_reads_them() {
        // The last duplicate wins, as in a decoded tree; escaped keys are the same keys.
        let body = br#"{"webhookEvent":"a","webhookEvent":"jira:issue_updated",
            "issue":{"id":1,"k\u0065y":"ORB-1","fields":{"status":{"name":"x"},"status":5}},
            "changelog":{"items":[{"field":"f","to":1.5e300}]},"changelog":null,
            "timestamp":"  1762171500021 ","worklog":{"id":2,"timeSpentSeconds":1.0}}"#;
        let event = parse(body).expect("parses");
        let tree: Value = serde_json::from_slice(body).expect("json");
        assert_eq!(Ok(event.clone()), tree_walk::parse_value(&tree));
        assert_eq!(event.event_type, "jira:issue_updated");
        let issue = event.issue.expect("issue");
        assert_eq!(
            (issue.id.as_str(), issue.key.as_deref()),
            ("1", Some("ORB-1"))
        );
        assert_eq!(issue.status, None);
        assert_eq!(event.changelog.map(|c| c.items.len()), Some(0));
        assert!(event.occurred_at.is_some());
        assert_eq!(event.worklog.and_then(|w| w.time_spent_seconds), None);
    }

    #[test]
    fn parsing_never_panics_on_arbitrary_bytes() {
        let mut rng = StdRng::seed_from_u64(7);
        let base = fixture("webhook_issue_created.json");
        for _ in 0..5_000 {
            let mut bytes = base.clone();
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
            bytes.truncate(rng.random_range(0..=bytes.len()));
            let _ = parse(&bytes);
        }
    }
}
