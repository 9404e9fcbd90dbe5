//! `GET /` (sign in with the company's API key), `POST /sign-in`, `POST /sign-out`.
//!
//! The sign-in form is protected against login CSRF by a double-submit token: the page sets a
//! random `hookline_sign_in` cookie and puts the same value in the form; the post must carry
//! both.

use maud::{Markup, html};
use poem::http::{StatusCode, header};
use poem::web::{Data, Form};
use poem::{Request, Response, handler};
use serde::Deserialize;

use crate::auth::company_for_api_key;
use crate::console::layout::{self, Section, Viewer};
use crate::console::session::{self, SESSION_COOKIE, SIGN_IN_COOKIE};
use crate::state::AppState;

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    api_key: String,
    #[serde(default)]
    csrf_token: String,
}

/// The sign-out form's fields.
#[derive(Debug, Deserialize)]
pub struct SignOutForm {
    #[serde(default)]
    csrf_token: String,
}

/// `GET /`: the sign-in page, or the console for a signed-in browser.
#[handler]
pub async fn home(state: Data<&AppState>, req: &Request) -> poem::Result<Response> {
    match session::find(&state, req)
        .await
        .map_err(layout::error_page)?
    {
        Some(session) if session.is_admin() => Ok(layout::see_other("/admin")),
        Some(_) => Ok(layout::see_other("/connections")),
        None => Ok(sign_in_page(&state, req, StatusCode::OK, None)),
    }
}

/// `POST /sign-in`: checks the API key and starts a session.
#[handler]
pub async fn sign_in(
    state: Data<&AppState>,
    req: &Request,
    Form(form): Form<SignInForm>,
) -> poem::Result<Response> {
    check_sign_in_token(req, &form.csrf_token)?;
    let key = form.api_key.trim();
    if key.is_empty() {
        return Ok(sign_in_page(
            &state,
            req,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("Enter your company's API key."),
        ));
    }
    let Some(company) = company_for_api_key(&state, key)
        .await
        .map_err(layout::error_page)?
    else {
        return Ok(sign_in_page(
            &state,
            req,
            StatusCode::UNAUTHORIZED,
            Some("That API key is not valid. Check it and try again."),
        ));
    };
    let token = session::create(&state, Some(company.id))
        .await
        .map_err(layout::error_page)?;
    tracing::info!(company.id = %company.id, "console sign-in");
    Ok(signed_in(&state, &token, "/connections"))
}

/// `POST /sign-out`: ends the session.
#[handler]
pub async fn sign_out(
    state: Data<&AppState>,
    req: &Request,
    Form(form): Form<SignOutForm>,
) -> poem::Result<Response> {
    if let Some(session) = session::find(&state, req)
        .await
        .map_err(layout::error_page)?
    {
        session::check_csrf(&session.csrf_token, &form.csrf_token)?;
        session.delete(&state).await.map_err(layout::error_page)?;
    }
    let mut response = layout::see_other("/");
    append_cookie(
        &mut response,
        &session::set_cookie(&state, SESSION_COOKIE, "", 0),
    );
    Ok(response)
}

/// A redirect to `location` that sets the session cookie and clears the sign-in cookie.
pub fn signed_in(state: &AppState, token: &str, location: &str) -> Response {
    let mut response = layout::see_other(location);
    let max_age = session::SESSION_LIFETIME.num_seconds();
    append_cookie(
        &mut response,
        &session::set_cookie(state, SESSION_COOKIE, token, max_age),
    );
    append_cookie(
        &mut response,
        &session::set_cookie(state, SIGN_IN_COOKIE, "", 0),
    );
    response
}

/// Adds a `Set-Cookie` header.
pub fn append_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = header::HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// Refuses a sign-in form whose token is not the one in its cookie.
pub fn check_sign_in_token(req: &Request, given: &str) -> poem::Result<()> {
    match session::cookie(req, SIGN_IN_COOKIE) {
        Some(expected) => session::check_csrf(&expected, given),
        None => Err(layout::forbidden(
            "Signing in needs cookies: allow cookies for this site, reload the page and try \
             again.",
        )),
    }
}

/// The sign-in token of this browser: the one in its cookie, or a new one.
pub fn sign_in_token(req: &Request) -> (String, bool) {
    match session::cookie(req, SIGN_IN_COOKIE).filter(|token| token.len() >= 32) {
        Some(token) => (token, false),
        None => (session::random_token(), true),
    }
}

/// A page with a sign-in form (`form`), setting the sign-in cookie if the browser has none.
pub fn with_sign_in_cookie(
    state: &AppState,
    fresh: bool,
    token: &str,
    mut response: Response,
) -> Response {
    if fresh {
        // Long enough to fill in the form; renewed on every visit.
        append_cookie(
            &mut response,
            &session::set_cookie(state, SIGN_IN_COOKIE, token, 3600),
        );
    }
    response
}

fn sign_in_page(
    state: &AppState,
    req: &Request,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let (token, fresh) = sign_in_token(req);
    let markup = layout::page(
        "Sign in",
        Section::SignIn,
        Viewer::Anonymous,
        sign_in_form(&token, error),
    );
    with_sign_in_cookie(
        state,
        fresh,
        &token,
        layout::html_with_status(status, markup),
    )
}

fn sign_in_form(token: &str, error: Option<&str>) -> Markup {
    html! {
        section class="card narrow" aria-labelledby="sign-in-heading" {
            div class="hero" {
                h1 id="sign-in-heading" { "Sign in to hookline" }
                p { "Connect Jira, see where its webhooks go, and watch events arrive." }
            }
            (layout::form_error(error))
            form method="post" action="/sign-in" {
                (layout::csrf_field(token))
                div class="field" {
                    label for="api_key" { "API key" }
                    input type="password" id="api_key" name="api_key" required
                        autocomplete="current-password" spellcheck="false"
                        placeholder="hk_…" aria-describedby="api_key_hint";
                    p class="hint" id="api_key_hint" {
                        "Your company's key, as shown once when the company was created."
                    }
                }
                button type="submit" class="button button-primary button-large button-block" { "Sign in" }
            }
            p class="muted small-print" {
                "No company yet? The operator creates one under "
                a href="/admin" { "admin sign-in" } "."
            }
        }
    }
}
