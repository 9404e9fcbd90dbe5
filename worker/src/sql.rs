//! Small pieces of hand-written SQL shared by the batch jobs: id lists and placeholders that
//! keep one statement shape per backend, and Postgres arrays with NULLs for `unnest`.

use sea_orm::DatabaseBackend;
use sea_orm::sea_query::{ArrayType, Expr, Value};
use uuid::Uuid;

/// `status = '<value>'` with the value written into the statement, not bound. The status
/// indexes are partial (only the statuses still waiting for work, see the migration
/// `m20261202_010000_narrow_pipeline_indexes`): a planner can use one only when it sees the
/// value, which a bound parameter hides from SQLite's planner and from a generic Postgres plan.
/// `value` is one of the entity crate's status constants, never input.
pub fn status_is(value: &'static str) -> Expr {
    debug_assert!(
        value.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "status constants are plain words"
    );
    Expr::cust(format!("status = '{value}'"))
}

/// `status IN ('<a>', '<b>', …)`, written into the statement (see [`status_is`]).
pub fn status_in(values: &[&'static str]) -> Expr {
    debug_assert!(
        values
            .iter()
            .all(|value| value.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
        "status constants are plain words"
    );
    let list: Vec<String> = values.iter().map(|value| format!("'{value}'")).collect();
    Expr::cust(format!("status IN ({})", list.join(", ")))
}

/// `id = ANY($first)` with one array on Postgres (one statement shape whatever the batch size,
/// so Postgres plans it once), or `id IN ($first, …)` on SQLite; with the values to bind.
pub fn id_list(backend: DatabaseBackend, ids: &[Uuid], first: usize) -> (String, Vec<Value>) {
    match backend {
        DatabaseBackend::Postgres => (format!("id = ANY(${first})"), vec![ids.to_vec().into()]),
        _ => {
            let placeholders: Vec<String> =
                (0..ids.len()).map(|i| format!("${}", first + i)).collect();
            (
                format!("id IN ({})", placeholders.join(", ")),
                ids.iter().map(|&id| id.into()).collect(),
            )
        }
    }
}

/// Every column of `E` as `alias."column" AS "prefix_column"`: the select list of a joined table
/// whose rows are read back with `Model::from_query_result(row, prefix)`.
pub fn prefixed_columns<E: sea_orm::EntityTrait>(alias: &str, prefix: &str) -> String {
    use sea_orm::{IdenStatic as _, Iterable as _};
    E::Column::iter()
        .map(|column| {
            let name = column.as_str();
            format!("{alias}.\"{name}\" AS \"{prefix}{name}\"")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$n` placeholders as the backend wants them (SQLite: `?n`). The text must hold no other `$`.
pub fn numbered(backend: DatabaseBackend, text: &str) -> String {
    match backend {
        DatabaseBackend::Postgres => text.to_owned(),
        _ => text.replace('$', "?"),
    }
}

/// A Postgres `text[]` in which `None` is the empty string: read it back with
/// `NULLIF(x, '')` (and a cast for other types). sea-query 1.0 cannot bind NULL elements of
/// an array (it panics), so nullable columns travel this way through `unnest`.
pub fn text_array(values: impl Iterator<Item = Option<String>>) -> Value {
    Value::Array(
        ArrayType::String,
        Some(Box::new(
            values
                .map(|value| Value::String(Some(value.unwrap_or_default())))
                .collect(),
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_gets_numbered_question_marks_and_postgres_one_array() {
        let ids = [Uuid::nil(), Uuid::max()];
        let (postgres, values) = id_list(DatabaseBackend::Postgres, &ids, 3);
        assert_eq!(postgres, "id = ANY($3)");
        assert_eq!(values.len(), 1);
        let (sqlite, values) = id_list(DatabaseBackend::Sqlite, &ids, 3);
        assert_eq!(numbered(DatabaseBackend::Sqlite, &sqlite), "id IN (?3, ?4)");
        assert_eq!(values.len(), 2);
    }
}
