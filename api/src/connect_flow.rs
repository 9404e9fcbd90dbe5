//! The Atlassian connect flow's `state` (CSRF protection), for every caller that starts a flow:
//! the API's `POST /api/v1/connections/jira/authorize` and the console.
//!
//! A state is random, single use, valid for [`STATE_LIFETIME`], bound to the company that
//! started the flow, and bound to the browser that started it: starting a flow hands out a
//! cookie ([`StartedFlow::set_cookie`], to send with the answer that hands out the authorize
//! URL) whose random value only the state row knows (as a SHA-256), and the callback refuses a
//! state without it. So a consent page URL sent to someone else cannot connect their Jira to the
//! company that started the flow. Each state has a cookie of its own name, so flows started in
//! several tabs do not overwrite each other. Expired states are deleted when a flow starts.

use base64::Engine as _;
use chrono::Utc;
use entity::oauth_state;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// How long a started OAuth flow may take before its `state` is refused.
pub const STATE_LIFETIME: chrono::Duration = chrono::Duration::minutes(10);

/// Where Atlassian sends the browser back; the flow's cookie is sent only there.
pub const CALLBACK_PATH: &str = "/oauth/jira/callback";

/// Expired states are kept this much longer, so that a late callback is told "expired" rather
/// than "unknown", then deleted.
const EXPIRED_STATE_KEPT: chrono::Duration = chrono::Duration::hours(1);

const COOKIE_PREFIX: &str = "hookline_oauth_";

/// A started connect flow.
#[derive(Debug)]
pub struct StartedFlow {
    /// Atlassian's consent page, carrying the state; valid for [`STATE_LIFETIME`], once.
    pub authorize_url: String,
    /// A `Set-Cookie` header value binding the flow to the browser; send it with the answer
    /// that hands out [`StartedFlow::authorize_url`].
    pub set_cookie: String,
}

/// Starts a connect flow for `company_id`: records a new state and deletes expired ones.
pub async fn start(state: &AppState, company_id: Uuid) -> ApiResult<StartedFlow> {
    let oauth = state.jira.tokens().oauth().ok_or_else(not_configured)?;
    let now = Utc::now();
    oauth_state::Entity::delete_many()
        .filter(oauth_state::Column::ExpiresAt.lt(now - EXPIRED_STATE_KEPT))
        .exec(&state.db)
        .await?;
    let flow_state = random_value();
    let browser_key = random_value();
    oauth_state::Entity::insert(oauth_state::ActiveModel {
        state: Set(flow_state.clone()),
        company_id: Set(company_id),
        plugin_id: Set(plugins::jira::PLUGIN_ID.to_owned()),
        expires_at: Set(now + STATE_LIFETIME),
        used_at: Set(None),
        created_at: Set(now),
        browser_key_hash: Set(Some(sha256_hex(&browser_key))),
    })
    .exec_without_returning(&state.db)
    .await?;
    Ok(StartedFlow {
        authorize_url: oauth.authorize_url(&flow_state),
        set_cookie: browser_cookie(&state.public_url, &flow_state, &browser_key),
    })
}

/// The `Set-Cookie` value that binds flow `flow_state` to the browser: sent only to the
/// callback, not readable by scripts, sent on Atlassian's redirect back (`SameSite=Lax`), and
/// `Secure` when hookline is reached over HTTPS.
pub fn browser_cookie(public_url: &str, flow_state: &str, browser_key: &str) -> String {
    let secure = if public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{}={browser_key}; Path={CALLBACK_PATH}; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        cookie_name(flow_state),
        STATE_LIFETIME.num_seconds(),
    )
}

/// The `Set-Cookie` value that removes the cookie of flow `flow_state` (the flow is over).
pub fn expired_browser_cookie(flow_state: &str) -> String {
    format!(
        "{}=; Path={CALLBACK_PATH}; Max-Age=0; HttpOnly; SameSite=Lax",
        cookie_name(flow_state)
    )
}

/// Marks the state used, once, if the browser presents the flow's cookie (from the request's
/// `Cookie` header); returns the company that started the flow.
pub async fn consume(
    state: &AppState,
    flow_state: &str,
    cookie_header: Option<&str>,
) -> ApiResult<Uuid> {
    let now = Utc::now();
    let row = oauth_state::Entity::find_by_id(flow_state.to_owned())
        .one(&state.db)
        .await?
        .filter(|row| row.plugin_id == plugins::jira::PLUGIN_ID)
        .ok_or_else(|| ApiError::bad_request("the state is unknown: start connecting again"))?;
    if row.used_at.is_some() {
        return Err(ApiError::bad_request(
            "the state was already used: start connecting again",
        ));
    }
    if row.expires_at <= now {
        return Err(ApiError::bad_request(
            "the state has expired (a flow must finish within 10 minutes): start connecting again",
        ));
    }
    let presented = cookie_header.and_then(|header| cookie_value(header, &cookie_name(flow_state)));
    let bound = match (&row.browser_key_hash, presented) {
        (Some(expected), Some(key)) => {
            bool::from(sha256_hex(key).as_bytes().ct_eq(expected.as_bytes()))
        }
        _ => false,
    };
    if !bound {
        return Err(ApiError::bad_request(
            "this browser did not start the connect flow (its cookie is missing or wrong): \
             start connecting again in the browser that will consent at Atlassian",
        ));
    }
    let consumed = oauth_state::Entity::update_many()
        .col_expr(oauth_state::Column::UsedAt, Expr::value(now))
        .filter(oauth_state::Column::State.eq(flow_state))
        .filter(oauth_state::Column::UsedAt.is_null())
        .filter(oauth_state::Column::ExpiresAt.gt(now))
        .exec(&state.db)
        .await?;
    if consumed.rows_affected != 1 {
        // A concurrent callback used it first.
        return Err(ApiError::bad_request(
            "the state was already used: start connecting again",
        ));
    }
    Ok(row.company_id)
}

/// The answer when the Atlassian app is not configured.
pub fn not_configured() -> ApiError {
    ApiError::unavailable_because(
        "connecting Jira sites is not configured: set JIRA_CLIENT_ID and JIRA_CLIENT_SECRET",
    )
}

fn cookie_name(flow_state: &str) -> String {
    format!("{COOKIE_PREFIX}{}", &sha256_hex(flow_state)[..16])
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie_value<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

fn random_value() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_is_bound_to_its_state() {
        let set = browser_cookie("https://hooks.example.test", "st-1", "key-1");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax"));
        assert!(set.contains("; Secure"));
        assert!(set.contains(&format!("Path={CALLBACK_PATH}")));
        let pair = set.split(';').next().expect("name=value");
        let header = format!("other=1; {pair}; last=2");
        assert_eq!(cookie_value(&header, &cookie_name("st-1")), Some("key-1"));
        assert_eq!(cookie_value(&header, &cookie_name("st-2")), None);
        assert!(!browser_cookie("http://127.0.0.1:8080", "st-1", "k").contains("Secure"));
    }
}
