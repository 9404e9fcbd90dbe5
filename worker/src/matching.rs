//! Which subscriptions an event goes to.
//!
//! A subscription matches when it is enabled, belongs to the event's company (the query scopes
//! that), is for all connections or for the event's one, one of its event type patterns matches
//! (`*` matches any run of characters: `jira:issue_*`, `comment_*`, `*`), and its filters pass.
//! Filters today: `{"projectKeys": ["ORB", …]}` keeps events of those projects; an event that
//! carries no project (worklogs, issue links) does not pass a project filter.

use entity::subscription;
use serde_json::Value;
use uuid::Uuid;

/// What of an event matching looks at.
#[derive(Debug, Clone, Copy)]
pub struct EventFacts<'a> {
    /// e.g. `jira:issue_updated`.
    pub event_type: &'a str,
    /// The connection that received it.
    pub connection_id: Uuid,
    /// The project key, if the payload has one.
    pub project_key: Option<&'a str>,
}

/// Whether `subscription` wants the event.
pub fn matches(subscription: &subscription::Model, event: EventFacts<'_>) -> bool {
    if !subscription.enabled {
        return false;
    }
    if subscription
        .connection_id
        .is_some_and(|connection_id| connection_id != event.connection_id)
    {
        return false;
    }
    let type_matches = subscription.event_types.as_array().is_some_and(|patterns| {
        patterns
            .iter()
            .filter_map(Value::as_str)
            .any(|pattern| glob_matches(pattern, event.event_type))
    });
    type_matches && filters_pass(subscription.filters.as_ref(), event)
}

fn filters_pass(filters: Option<&Value>, event: EventFacts<'_>) -> bool {
    let Some(project_keys) = filters
        .and_then(|filters| filters.get("projectKeys"))
        .and_then(Value::as_array)
    else {
        return true;
    };
    event.project_key.is_some_and(|key| {
        project_keys
            .iter()
            .filter_map(Value::as_str)
            .any(|wanted| wanted.eq_ignore_ascii_case(key))
    })
}

/// Glob match where `*` matches any (possibly empty) run of characters; nothing else is special.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*` at all: the pattern must be the whole text.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    #[test]
    fn globs_match_prefixes_suffixes_and_everything() {
        assert!(glob_matches("jira:issue_*", "jira:issue_created"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("comment_*", "comment_deleted"));
        assert!(glob_matches("*_created", "worklog_created"));
        assert!(glob_matches("jira:*_up*ed", "jira:issue_updated"));
        assert!(glob_matches("jira:issue_updated", "jira:issue_updated"));
        assert!(!glob_matches("jira:issue_updated", "jira:issue_updated2"));
        assert!(!glob_matches("jira:issue_*", "comment_created"));
        assert!(!glob_matches("a*b*c", "acb"));
        assert!(!glob_matches("ab*ba", "aba"));
    }

    fn subscription(
        event_types: Value,
        connection_id: Option<Uuid>,
        filters: Option<Value>,
    ) -> subscription::Model {
        let now = Utc::now();
        subscription::Model {
            id: Uuid::now_v7(),
            company_id: Uuid::now_v7(),
            connection_id,
            description: None,
            event_types,
            filters,
            target_url: "https://example.com/hook".into(),
            destination_kind: "http".into(),
            destination: None,
            secret: String::new(),
            enabled: true,
            disabled_reason: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn connection_type_and_project_filters_all_apply() {
        let connection = Uuid::now_v7();
        let event = EventFacts {
            event_type: "jira:issue_updated",
            connection_id: connection,
            project_key: Some("ORB"),
        };
        let all = subscription(serde_json::json!(["jira:issue_*"]), None, None);
        assert!(matches(&all, event));
        let other_connection = subscription(serde_json::json!(["*"]), Some(Uuid::now_v7()), None);
        assert!(!matches(&other_connection, event));
        let comments = subscription(serde_json::json!(["comment_*"]), Some(connection), None);
        assert!(!matches(&comments, event));
        let orb = subscription(
            serde_json::json!(["*"]),
            None,
            Some(serde_json::json!({"projectKeys": ["orb"]})),
        );
        assert!(matches(&orb, event));
        let other_project = subscription(
            serde_json::json!(["*"]),
            None,
            Some(serde_json::json!({"projectKeys": ["XYZ"]})),
        );
        assert!(!matches(&other_project, event));
        let no_project = EventFacts {
            project_key: None,
            ..event
        };
        assert!(!matches(&orb, no_project));
        let mut disabled = all.clone();
        disabled.enabled = false;
        assert!(!matches(&disabled, event));
        let garbage = subscription(serde_json::json!("not a list"), None, None);
        assert!(!matches(&garbage, event));
    }
}
