//! One error envelope for every API answer: `{"code": "...", "detail": "..."}` (DESIGN §5).
//!
//! Internal errors are logged once, where they are turned into an [`ApiError`], with the caller's
//! location, and answered as an opaque 500 (or 503 when the database or queue is unavailable).

use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

/// The body of every error answer.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// Machine-readable error code, e.g. `not_found`.
    pub code: String,
    /// What went wrong, for a person.
    pub detail: String,
}

/// An error answer of the API.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "ApiError::from_poem")]
pub enum ApiError {
    /// The request is malformed.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Credentials or signature missing or wrong.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// Not found, or not this company's.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The request body arrived too slowly; retry.
    #[oai(status = 408)]
    RequestTimeout(Json<ErrorBody>),
    /// Conflicts with existing data.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The body is larger than the configured limit.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body's content type is not accepted.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// The request is well-formed but its content is invalid.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// Rate-limited (by us or by Jira); retry after the `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(
        Json<ErrorBody>,
        /// Seconds to wait before retrying.
        #[oai(header = "Retry-After")]
        Option<u64>,
    ),
    /// An unexpected error; details are in the server log.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// An upstream service (Jira, Atlassian) failed.
    #[oai(status = 502)]
    BadGateway(Json<ErrorBody>),
    /// A dependency (database, queue) is unavailable, or the service is busy; retry after the
    /// `Retry-After` seconds.
    #[oai(status = 503)]
    Unavailable(
        Json<ErrorBody>,
        /// Seconds to wait before retrying.
        #[oai(header = "Retry-After")]
        u64,
    ),
}

/// How many seconds a `503` asks the caller to wait before retrying, unless it says otherwise.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

/// The result of an API operation.
pub type ApiResult<T> = Result<T, ApiError>;

fn envelope(code: &str, detail: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        code: code.to_owned(),
        detail: detail.into(),
    })
}

impl ApiError {
    /// 400 with a detail.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest(envelope("bad_request", detail))
    }

    /// 401 with a detail.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::Unauthorized(envelope("unauthorized", detail))
    }

    /// 404 for a named kind of thing.
    pub fn not_found(what: &str) -> Self {
        Self::NotFound(envelope("not_found", format!("{what} not found")))
    }

    /// 408: the body arrived too slowly.
    pub fn request_timeout(detail: impl Into<String>) -> Self {
        Self::RequestTimeout(envelope("request_timeout", detail))
    }

    /// 409 with a detail.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::Conflict(envelope("conflict", detail))
    }

    /// 413 for a body over `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::PayloadTooLarge(envelope(
            "payload_too_large",
            format!("the body is larger than the limit of {limit} bytes"),
        ))
    }

    /// 422 with a detail.
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        Self::Unprocessable(envelope("unprocessable", detail))
    }

    /// 422 `jira_refused`: Jira refused what it was asked, with its reasons.
    pub fn jira_refused(detail: impl Into<String>) -> Self {
        Self::Unprocessable(envelope("jira_refused", detail))
    }

    /// 429 with a detail and, if known, how many seconds to wait.
    pub fn too_many_requests(detail: impl Into<String>, retry_after_secs: Option<u64>) -> Self {
        Self::TooManyRequests(envelope("too_many_requests", detail), retry_after_secs)
    }

    /// 429 for a client over its rate limit, with the whole seconds to wait (at least 1).
    pub fn rate_limited(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::TooManyRequests(
            envelope("rate_limited", detail),
            Some(retry_after_secs.max(1)),
        )
    }

    /// 502: an upstream service failed; logged here, once, at warning level.
    #[track_caller]
    pub fn bad_gateway(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let location = std::panic::Location::caller();
        tracing::warn!(detail = %detail, at = %location, "upstream failure");
        Self::BadGateway(envelope("bad_gateway", detail))
    }

    /// 503 with a detail a person can act on (e.g. a missing setting), not logged as an error.
    pub fn unavailable_because(detail: impl Into<String>) -> Self {
        Self::Unavailable(
            envelope("unavailable", detail),
            UNAVAILABLE_RETRY_AFTER_SECS,
        )
    }

    /// 503 because this process is busy, with a detail and the whole seconds to wait (at
    /// least 1); not logged as an error.
    pub fn busy(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::Unavailable(envelope("busy", detail), retry_after_secs.max(1))
    }

    /// An unexpected failure: logged here, once, and answered as an opaque 500.
    #[track_caller]
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        let error = error.into();
        let location = std::panic::Location::caller();
        tracing::error!(error = format!("{error:#}"), at = %location, "internal error");
        Self::Internal(envelope("internal", "an internal error occurred"))
    }

    /// A dependency is unavailable: logged here, once, and answered 503 so callers retry.
    #[track_caller]
    pub fn unavailable(error: impl Into<anyhow::Error>) -> Self {
        let error = error.into();
        let location = std::panic::Location::caller();
        tracing::error!(error = format!("{error:#}"), at = %location, "dependency unavailable");
        Self::Unavailable(
            envelope(
                "unavailable",
                "the service is temporarily unavailable, retry later",
            ),
            UNAVAILABLE_RETRY_AFTER_SECS,
        )
    }

    /// Maps request-parsing errors (bad JSON, missing parameters, auth, unknown routes) into
    /// the envelope.
    pub fn from_poem(error: poem::Error) -> Self {
        // Our own payload and auth extractors already produce an `ApiError`.
        let detail = error.to_string();
        match error.downcast::<Rejection>() {
            Ok(rejection) => rejection.0,
            Err(error) => match error.status() {
                StatusCode::UNAUTHORIZED => Self::unauthorized(detail),
                StatusCode::NOT_FOUND => Self::NotFound(envelope("not_found", detail)),
                StatusCode::PAYLOAD_TOO_LARGE => {
                    Self::PayloadTooLarge(envelope("payload_too_large", detail))
                }
                StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                    Self::UnsupportedMediaType(envelope("unsupported_media_type", detail))
                }
                StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable(
                    envelope("unavailable", detail),
                    UNAVAILABLE_RETRY_AFTER_SECS,
                ),
                status if status.is_server_error() => Self::internal(anyhow::anyhow!(detail)),
                _ => Self::bad_request(detail),
            },
        }
    }

    /// The envelope of this error.
    pub fn body(&self) -> &ErrorBody {
        let (Self::BadRequest(Json(body))
        | Self::Unauthorized(Json(body))
        | Self::NotFound(Json(body))
        | Self::RequestTimeout(Json(body))
        | Self::Conflict(Json(body))
        | Self::PayloadTooLarge(Json(body))
        | Self::UnsupportedMediaType(Json(body))
        | Self::Unprocessable(Json(body))
        | Self::TooManyRequests(Json(body), _)
        | Self::Internal(Json(body))
        | Self::BadGateway(Json(body))
        | Self::Unavailable(Json(body), _)) = self;
        body
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Unavailable(..) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self.body();
        write!(f, "{}: {}", body.code, body.detail)
    }
}

/// An [`ApiError`] raised where poem expects a `poem::Error` (request extractors, auth
/// checkers). [`ApiError::from_poem`] unwraps it again, so the envelope keeps its detail.
#[derive(Debug)]
pub struct Rejection(pub ApiError);

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Rejection {}

impl poem::error::ResponseError for Rejection {
    fn status(&self) -> StatusCode {
        self.0.status()
    }

    fn as_response(&self) -> poem::Response {
        let body = self.0.body();
        let json = serde_json::json!({ "code": body.code, "detail": body.detail });
        poem::Response::builder()
            .status(self.0.status())
            .content_type("application/json")
            .body(json.to_string())
    }
}

impl From<ApiError> for Rejection {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

/// Maps a database error: unique violation → 409, connection trouble → 503, else 500.
impl From<sea_orm::DbErr> for ApiError {
    #[track_caller]
    fn from(error: sea_orm::DbErr) -> Self {
        use sea_orm::{DbErr, RuntimeErr, SqlErr};
        if let Some(SqlErr::UniqueConstraintViolation(detail)) = error.sql_err() {
            return Self::conflict(format!("already exists: {detail}"));
        }
        if refuses_nul(&error) {
            return Self::bad_request(
                "a text value contains the NUL character (\\u0000), which cannot be stored",
            );
        }
        match &error {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => Self::unavailable(error),
            DbErr::Exec(RuntimeErr::SqlxError(sqlx_error))
            | DbErr::Query(RuntimeErr::SqlxError(sqlx_error))
                if is_unavailable(sqlx_error) =>
            {
                Self::unavailable(error)
            }
            _ => Self::internal(error),
        }
    }
}

/// Whether Postgres refused a NUL character in a `text` (22021) or `jsonb` (22P05) value: the
/// client's input, not our fault.
fn refuses_nul(error: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    match error {
        DbErr::Exec(RuntimeErr::SqlxError(sqlx_error))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx_error)) => match sqlx_error.as_ref() {
            sea_orm::sqlx::Error::Database(db) => {
                matches!(db.code().as_deref(), Some("22021" | "22P05"))
            }
            _ => false,
        },
        _ => false,
    }
}

/// Whether a sqlx error means "the database is not reachable right now".
fn is_unavailable(error: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error;
    match error {
        Error::Io(_) | Error::PoolTimedOut | Error::PoolClosed | Error::WorkerCrashed => true,
        // SQLite: the database is locked or busy past the busy timeout.
        Error::Database(db) => matches!(
            db.code().as_deref(),
            Some("5" | "6" | "517" | "57P01" | "57P03")
        ),
        _ => false,
    }
}
