//! Cursor pagination of the list operations: rows in id order (UUIDv7, so time order), a page
//! is `limit` rows after (or, newest first, before) the id in `cursor`.

use uuid::Uuid;

use crate::error::ApiError;

/// Default page size of list operations.
pub(crate) const DEFAULT_PAGE: u64 = 50;
/// The largest page a list operation returns.
pub(crate) const MAX_PAGE: u64 = 200;

/// One page request of a list operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page {
    /// Rows in the page (1 to [`MAX_PAGE`]).
    pub limit: u64,
    /// The id the page continues from (the last id of the previous page), if any.
    pub cursor: Option<Uuid>,
}

impl Page {
    /// From the `cursor` and `limit` query parameters; the limit is clamped to 1–[`MAX_PAGE`].
    pub fn new(cursor: Option<String>, limit: Option<u64>) -> Result<Self, ApiError> {
        let cursor = cursor
            .map(|cursor| {
                Uuid::parse_str(&cursor)
                    .map_err(|_| ApiError::bad_request("cursor is not a cursor this API returned"))
            })
            .transpose()?;
        Ok(Self {
            limit: limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
            cursor,
        })
    }

    /// How many rows to fetch: one more than the page, to know whether another page follows.
    pub fn fetch(&self) -> u64 {
        self.limit + 1
    }

    /// Cuts the fetched `rows` to the page and returns the cursor of the next page (`None` on
    /// the last page).
    pub fn finish<M>(&self, rows: &mut Vec<M>, id: impl Fn(&M) -> Uuid) -> Option<String> {
        if rows.len() as u64 > self.limit {
            rows.truncate(self.limit as usize);
            rows.last().map(|row| id(row).to_string())
        } else {
            None
        }
    }
}
