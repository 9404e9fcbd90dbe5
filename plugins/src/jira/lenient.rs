//! Reads a Jira webhook body straight into [`JiraEvent`](super::event::JiraEvent), without
//! building a `serde_json::Value` tree of the whole body first.
//!
//! The rules are those of a tree walk with total accessors (see [`super::event`]): a field of an
//! unexpected type counts as absent, ids are strings or numbers, unknown fields are skipped
//! (their bytes are checked as JSON, within the nesting limit, but nothing is allocated
//! for them), and with duplicate keys
//! the last one wins. Only the comment's `body` (wiki markup or an ADF document, passed on as
//! is) becomes a `Value`. The nesting limit is the JSON parser's own (128 levels), as for a tree.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::event::{ChangeItem, Changelog, Comment, Issue, IssueLink, JiraEvent, User, Worklog};

/// The root of a body: the event, or `None` when the body is JSON but not an object.
pub(super) struct Root(pub(super) Option<JiraEvent>);

impl<'de> Deserialize<'de> for Root {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self(Object::<JiraEvent>::deserialize(deserializer)?.0))
    }
}

/// Builds `Self` from the entries of a JSON object; `None` when a required field is missing.
trait FromObject: Sized {
    fn from_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error>;
}

/// Calls `field` with each key of `map`; `field` must read exactly one value per key.
fn for_each_field<'de, A: MapAccess<'de>>(
    mut map: A,
    mut field: impl FnMut(&str, &mut A) -> Result<(), A::Error>,
) -> Result<(), A::Error> {
    while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
        field(&key, &mut map)?;
    }
    Ok(())
}

/// Reads and discards the value of a field nobody uses.
fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<Skip>().map(|_| ())
}

/// A value read and discarded. Unlike `serde::de::IgnoredAny` (which serde_json skips without
/// a nesting limit) it descends through `deserialize_any`, so the parser's 128-level limit holds
/// for skipped values too, as it does for a decoded tree and for the ingest's check.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SkipVisitor;
        impl<'de> Visitor<'de> for SkipVisitor {
            type Value = Skip;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        deserializer.deserialize_any(SkipVisitor)
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Any JSON value, reduced to what the accessors look at; arrays and objects are skipped.
enum Scalar<'de> {
    Str(Cow<'de, str>),
    U64(u64),
    I64(i64),
    F64(f64),
    /// `null`, a boolean, an array or an object.
    Other,
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(text.to_owned())))
            }
            fn visit_u64<E: de::Error>(self, number: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::U64(number))
            }
            fn visit_i64<E: de::Error>(self, number: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::I64(number))
            }
            fn visit_f64<E: de::Error>(self, number: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::F64(number))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// A string field; anything else is absent.
struct Text(Option<String>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self(match Scalar::deserialize(deserializer)? {
            Scalar::Str(text) => Some(text.into_owned()),
            _ => None,
        }))
    }
}

/// An id: a string, or a number rendered as one (Jira is inconsistent about ids).
struct Id(Option<String>);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self(match Scalar::deserialize(deserializer)? {
            Scalar::Str(text) => Some(text.into_owned()),
            // Rendered as a parsed `serde_json::Number` renders.
            Scalar::U64(number) => Some(serde_json::Number::from(number).to_string()),
            Scalar::I64(number) => Some(serde_json::Number::from(number).to_string()),
            Scalar::F64(number) => serde_json::Number::from_f64(number).map(|n| n.to_string()),
            Scalar::Other => None,
        }))
    }
}

/// A whole number that fits an `i64`; floats and anything else are absent.
struct Int(Option<i64>);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self(match Scalar::deserialize(deserializer)? {
            Scalar::U64(number) => i64::try_from(number).ok(),
            Scalar::I64(number) => Some(number),
            _ => None,
        }))
    }
}

/// Epoch milliseconds as a number (floats accepted) or a numeric string, as an instant.
struct EpochMillis(Option<DateTime<Utc>>);

impl<'de> Deserialize<'de> for EpochMillis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let millis = match Scalar::deserialize(deserializer)? {
            Scalar::U64(number) => i64::try_from(number).ok(),
            Scalar::I64(number) => Some(number),
            // Some senders emit floats; anything outside i64 is not a timestamp.
            Scalar::F64(number) => {
                (number.is_finite() && number.abs() < 9.0e15).then_some(number as i64)
            }
            Scalar::Str(text) => text.trim().parse().ok(),
            Scalar::Other => None,
        };
        Ok(Self(millis.and_then(DateTime::from_timestamp_millis)))
    }
}

/// A nested object read into `T`; any other value (or an object lacking what `T` requires) is
/// absent.
struct Object<T>(Option<T>);

impl<'de, T: FromObject> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: FromObject> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                T::from_object(map).map(Object)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Object<T>, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Object(None))
            }
            fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Object<T>, E> {
                Ok(Object(None))
            }
        }
        deserializer.deserialize_any(ObjectVisitor(PhantomData))
    }
}

/// A comment body kept as it came (wiki markup or ADF); `null` is absent.
struct Body(Option<Value>);

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let body = Value::deserialize(deserializer)?;
        Ok(Self((!body.is_null()).then_some(body)))
    }
}

/// A changelog's `items`: the entries that are change items; anything but an array is none.
struct Items(Vec<ChangeItem>);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor;
        impl<'de> Visitor<'de> for ItemsVisitor {
            type Value = Items;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
                let mut items = Vec::new();
                while let Some(Object(item)) = seq.next_element::<Object<ChangeItem>>()? {
                    items.extend(item);
                }
                Ok(Items(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Items, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Items(Vec::new()))
            }
            fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<Items, E> {
                Ok(Items(Vec::new()))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Items, E> {
                Ok(Items(Vec::new()))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Items, E> {
                Ok(Items(Vec::new()))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Items, E> {
                Ok(Items(Vec::new()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Items, E> {
                Ok(Items(Vec::new()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Items, E> {
                Ok(Items(Vec::new()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Items, E> {
                Ok(Items(Vec::new()))
            }
        }
        deserializer.deserialize_any(ItemsVisitor)
    }
}

/// A changelog is present whatever its value's type (an object gives its id and items).
struct PresentChangelog(Changelog);

impl<'de> Deserialize<'de> for PresentChangelog {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = Object::<Changelog>::deserialize(deserializer)?;
        Ok(Self(object.0.unwrap_or(Changelog {
            id: None,
            items: Vec::new(),
        })))
    }
}

/// The text of field `wanted` of a nested object, every other field skipped (the last one
/// wins if it is repeated, as in a tree).
fn text_field<'de, A: MapAccess<'de>>(map: A, wanted: &str) -> Result<Option<String>, A::Error> {
    let mut value = None;
    for_each_field(map, |key, map| {
        if key == wanted {
            value = map.next_value::<Text>()?.0;
        } else {
            skip(map)?;
        }
        Ok(())
    })?;
    Ok(value)
}

/// The name of a nested object (`{"name": …}`), e.g. `fields.status`.
struct Named(Option<String>);

impl FromObject for Named {
    fn from_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        Ok(Some(Self(text_field(map, "name")?)))
    }
}

/// The key of a nested object (`{"key": …}`): `fields.project`.
struct Keyed(Option<String>);

impl FromObject for Keyed {
    fn from_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        Ok(Some(Self(text_field(map, "key")?)))
    }
}

/// The account id of a nested user object: `fields.assignee`.
struct AccountId(Option<String>);

impl FromObject for AccountId {
    fn from_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        Ok(Some(Self(text_field(map, "accountId")?)))
    }
}

/// Reads a nested object's single field of interest, flattened.
fn nested<'de, A: MapAccess<'de>, T: FromObject>(map: &mut A) -> Result<Option<T>, A::Error> {
    Ok(map.next_value::<Object<T>>()?.0)
}

impl FromObject for JiraEvent {
    fn from_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut event = JiraEvent {
            event_type: String::new(),
            occurred_at: None,
            issue_event_type_name: None,
            user: None,
            issue: None,
            changelog: None,
            comment: None,
            worklog: None,
            issue_link: None,
        };
        let mut event_type = None;
        for_each_field(map, |key, map| {
            match key {
                "webhookEvent" => event_type = map.next_value::<Text>()?.0,
                "timestamp" => event.occurred_at = map.next_value::<EpochMillis>()?.0,
                "issue_event_type_name" => {
                    event.issue_event_type_name = map.next_value::<Text>()?.0;
                }
                "user" => event.user = nested(map)?,
                "issue" => event.issue = nested(map)?,
                "changelog" => event.changelog = Some(map.next_value::<PresentChangelog>()?.0),
                "comment" => event.comment = nested(map)?,
                "worklog" => event.worklog = nested(map)?,
                "issueLink" => event.issue_link = nested(map)?,
                _ => skip(map)?,
            }
            Ok(())
        })?;
        event.event_type = event_type
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(Some(event))
    }
}

impl FromObject for User {
    fn from_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let (mut account_id, mut display_name) = (None, None);
        for_each_field(map, |key, map| {
            match key {
                "accountId" => account_id = map.next_value::<Text>()?.0,
                "displayName" => display_name = map.next_value::<Text>()?.0,
                _ => skip(map)?,
            }
            Ok(())
        })?;
        Ok(account_id.map(|account_id| User {
            account_id,
            display_name,
        }))
    }
}

/// `issue.fields`: the fields [`Issue`] carries.
#[derive(Default)]
struct Fields {
    summary: Option<String>,
    project_key: Option<String>,
    issue_type: Option<String>,
    status: Option<String>,
    priority: Option<String>,
    assignee_account_id: Option<String>,
}

impl FromObject for Fields {
    fn from_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut fields = Fields::default();
        for_each_field(map, |key, map| {
            match key {
                "summary" => fields.summary = map.next_value::<Text>()?.0,
                "project" => fields.project_key = nested::<_, Keyed>(map)?.and_then(|k| k.0),
                "issuetype" => fields.issue_type = nested::<_, Named>(map)?.and_then(|n| n.0),
                "status" => fields.status = nested::<_, Named>(map)?.and_then(|n| n.0),
                "priority" => fields.priority = nested::<_, Named>(map)?.and_then(|n| n.0),
                "assignee" => {
                    fields.assignee_account_id = nested::<_, AccountId>(map)?.and_then(|a| a.0);
                }
                _ => skip(map)?,
            }
            Ok(())
        })?;
        Ok(Some(fields))
    }
}

impl FromObject for Issue {
    fn from_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let (mut id, mut key_field, mut fields) = (None, None, None);
        for_each_field(map, |key, map| {
            match key {
                "id" => id = map.next_value::<Id>()?.0,
                "key" => key_field = map.next_value::<Text>()?.0,
                "fields" => fields = nested::<_, Fields>(map)?,
                _ => skip(map)?,
            }
            Ok(())
        })?;
        let fields = fields.unwrap_or_default();
        Ok(id.map(|id| Issue {
            id,
            key: key_field,
            summary: fields.summary,
            project_key: fields.project_key,
            issue_type: fields.issue_type,
            status: fields.status,
            priority: fields.priority,
            assignee_account_id: fields.assignee_account_id,
        }))
    }
}

impl FromObject for Changelog {
    fn from_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut changelog = Changelog {
            id: None,
            items: Vec::new(),
        };
        for_each_field(map, |key, map| {
            match key {
                "id" => changelog.id = map.next_value::<Id>()?.0,
                "items" => changelog.items = map.next_value::<Items>()?.0,
                _ => skip(map)?,
            }
            Ok(())
        })?;
        Ok(Some(changelog))
    }
}

impl FromObject for ChangeItem {
    fn from_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut field = None;
        let mut item = ChangeItem {
            field: String::new(),
            field_id: None,
            field_type: None,
            from: None,
            from_string: None,
            to: None,
            to_string: None,
        };
        for_each_field(map, |key, map| {
            match key {
                "field" => field = map.next_value::<Text>()?.0,
                "fieldId" => item.field_id = map.next_value::<Text>()?.0,
                "fieldtype" => item.field_type = map.next_value::<Text>()?.0,
                "from" => item.from = map.next_value::<Id>()?.0,
                "fromString" => item.from_string = map.next_value::<Text>()?.0,
                "to" => item.to = map.next_value::<Id>()?.0,
                "toString" => item.to_string = map.next_value::<Text>()?.0,
                _ => skip(map)?,
            }
            Ok(())
        })?;
        Ok(field.map(|field| ChangeItem { field, ..item }))
    }
}

impl FromObject for Comment {
    fn from_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut id = None;
        let mut comment = Comment {
            id: String::new(),
            body: None,
            author: None,
            created: None,
            updated: None,
        };
        for_each_field(map, |key, map| {
            match key {
                "id" => id = map.next_value::<Id>()?.0,
                "body" => comment.body = map.next_value::<Body>()?.0,
                "author" => comment.author = nested(map)?,
                "created" => comment.created = map.next_value::<Text>()?.0,
                "updated" => comment.updated = map.next_value::<Text>()?.0,
                _ => skip(map)?,
            }
            Ok(())
        })?;
        Ok(id.map(|id| Comment { id, ..comment }))
    }
}

impl FromObject for Worklog {
    fn from_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut id = None;
        let mut worklog = Worklog {
            id: String::new(),
            issue_id: None,
            time_spent_seconds: None,
            started: None,
            author: None,
        };
        for_each_field(map, |key, map| {
            match key {
                "id" => id = map.next_value::<Id>()?.0,
                "issueId" => worklog.issue_id = map.next_value::<Id>()?.0,
                "timeSpentSeconds" => worklog.time_spent_seconds = map.next_value::<Int>()?.0,
                "started" => worklog.started = map.next_value::<Text>()?.0,
                "author" => worklog.author = nested(map)?,
                _ => skip(map)?,
            }
            Ok(())
        })?;
        Ok(id.map(|id| Worklog { id, ..worklog }))
    }
}

impl FromObject for IssueLink {
    fn from_object<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut id = None;
        let mut link = IssueLink {
            id: String::new(),
            source_issue_id: None,
            destination_issue_id: None,
            link_type: None,
        };
        for_each_field(map, |key, map| {
            match key {
                "id" => id = map.next_value::<Id>()?.0,
                "sourceIssueId" => link.source_issue_id = map.next_value::<Id>()?.0,
                "destinationIssueId" => link.destination_issue_id = map.next_value::<Id>()?.0,
                "issueLinkType" => link.link_type = nested::<_, Named>(map)?.and_then(|n| n.0),
                _ => skip(map)?,
            }
            Ok(())
        })?;
        Ok(id.map(|id| IssueLink { id, ..link }))
    }
}
