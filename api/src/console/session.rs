//! Console sessions: who a browser is signed in as, kept server-side in `console_session`.
//!
//! Signing in with an API key (or the admin token) creates a row and sets a cookie holding a
//! random 256-bit token; the row holds only the token's SHA-256, so neither the cookie nor the
//! database ever holds the API key, and a copy of the table signs nobody in. Server-side rows
//! (rather than a cookie signed or encrypted with the cipher) make signing out real (the row is
//! deleted, a copied cookie stops working at once), work the same across several API processes
//! sharing one database, and keep the per-session CSRF token next to the session. The cost is
//! one indexed read per page, nothing for a console.
//!
//! The cookie is `HttpOnly`, `SameSite=Lax` and, when the public URL is `https`, `Secure`.
//! Every form carries the session's CSRF token, checked in constant time.

use base64::Engine as _;
use chrono::{Duration, Utc};
use entity::{company, console_session};
use poem::Request;
use poem::http::header;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::console::layout;
use crate::error::ApiError;
use crate::state::AppState;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "hookline_session";
/// The sign-in forms' cookie (double-submit CSRF token of the forms shown before a session).
pub const SIGN_IN_COOKIE: &str = "hookline_sign_in";
/// How long a session lasts after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::hours(12);

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The session row's key.
    token_hash: String,
    /// The token every form of this session carries.
    pub csrf_token: String,
    /// The company signed in; `None` for the admin.
    pub company: Option<company::Model>,
}

/// A browser signed in as a company.
#[derive(Debug, Clone)]
pub struct CompanySession {
    /// The token every form of this session carries.
    pub csrf_token: String,
    /// The company signed in.
    pub company: company::Model,
}

/// A random URL-safe token of 256 bits.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether two tokens are equal, in constant time.
pub fn tokens_match(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// The value of cookie `name` in the request, if any.
pub fn cookie(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// A `Set-Cookie` value for the console's cookies: `HttpOnly`, `SameSite=Lax`, `Path=/`, and
/// `Secure` when the console is served over https. `max_age` 0 deletes the cookie.
pub fn set_cookie(state: &AppState, name: &str, value: &str, max_age_secs: i64) -> String {
    let secure = if state.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}")
}

/// Creates a session for `company_id` (`None`: the admin); returns the cookie's token.
pub async fn create(state: &AppState, company_id: Option<uuid::Uuid>) -> Result<String, ApiError> {
    let now = Utc::now();
    // Expired sessions are removed now and then: at every sign-in.
    console_session::Entity::delete_many()
        .filter(console_session::Column::ExpiresAt.lte(now))
        .exec(&state.db)
        .await?;
    let token = random_token();
    console_session::Entity::insert(console_session::ActiveModel {
        token_hash: sea_orm::ActiveValue::Set(hash(&token)),
        company_id: sea_orm::ActiveValue::Set(company_id),
        csrf_token: sea_orm::ActiveValue::Set(random_token()),
        created_at: sea_orm::ActiveValue::Set(now),
        expires_at: sea_orm::ActiveValue::Set(now + SESSION_LIFETIME),
    })
    .exec_without_returning(&state.db)
    .await?;
    Ok(token)
}

/// The request's session, if its cookie names one that has not expired.
pub async fn find(state: &AppState, req: &Request) -> Result<Option<Session>, ApiError> {
    let Some(token) = cookie(req, SESSION_COOKIE) else {
        return Ok(None);
    };
    let found = console_session::Entity::find_by_id(hash(&token))
        .filter(console_session::Column::ExpiresAt.gt(Utc::now()))
        .find_also_related(company::Entity)
        .one(&state.db)
        .await?;
    Ok(match found {
        // A company's session whose company is gone is no session.
        Some((row, company)) if row.company_id.is_none() || company.is_some() => Some(Session {
            token_hash: row.token_hash,
            csrf_token: row.csrf_token,
            company,
        }),
        _ => None,
    })
}

impl Session {
    /// Signs out: deletes the session row.
    pub async fn delete(&self, state: &AppState) -> Result<(), ApiError> {
        console_session::Entity::delete_by_id(self.token_hash.clone())
            .exec(&state.db)
            .await?;
        Ok(())
    }

    /// Whether this is the admin's session.
    pub fn is_admin(&self) -> bool {
        self.company.is_none()
    }
}

/// The request's company session; without one, a redirect to the sign-in page.
pub async fn require_company(state: &AppState, req: &Request) -> poem::Result<CompanySession> {
    match find(state, req).await.map_err(layout::error_page)? {
        Some(Session {
            csrf_token,
            company: Some(company),
            ..
        }) => Ok(CompanySession {
            csrf_token,
            company,
        }),
        _ => Err(poem::Error::from_response(layout::see_other("/"))),
    }
}

/// The request's admin session; without one, a redirect to the admin sign-in page.
pub async fn require_admin(state: &AppState, req: &Request) -> poem::Result<Session> {
    match find(state, req).await.map_err(layout::error_page)? {
        Some(session) if session.is_admin() => Ok(session),
        _ => Err(poem::Error::from_response(layout::see_other("/admin"))),
    }
}

impl CompanySession {
    /// Refuses a form whose CSRF token is not this session's (403 page).
    pub fn check_csrf(&self, given: &str) -> poem::Result<()> {
        check_csrf(&self.csrf_token, given)
    }
}

/// Refuses a form whose CSRF token is not `expected` (403 page).
pub fn check_csrf(expected: &str, given: &str) -> poem::Result<()> {
    if tokens_match(expected, given) {
        Ok(())
    } else {
        Err(layout::forbidden(
            "This form has expired or did not come from this console (its security token is \
             missing or wrong). Go back, reload the page and try again.",
        ))
    }
}
