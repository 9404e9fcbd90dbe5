//! `/admin`: the operator signs in with `HOOKLINE_ADMIN_TOKEN`, creates companies and sees each
//! new company's API key once.

use maud::{Markup, html};
use poem::http::StatusCode;
use poem::web::{Data, Form};
use poem::{Request, Response, handler};
use serde::Deserialize;

use crate::auth::admin_token_matches;
use crate::console::layout::{self, Section, Viewer};
use crate::console::session;
use crate::console::sign_in::{check_sign_in_token, sign_in_token, signed_in, with_sign_in_cookie};
use crate::routes::companies::create_company;
use crate::state::AppState;

/// The admin sign-in form's fields.
#[derive(Debug, Deserialize)]
pub struct AdminSignInForm {
    #[serde(default)]
    admin_token: String,
    #[serde(default)]
    csrf_token: String,
}

/// The company form's fields.
#[derive(Debug, Deserialize)]
pub struct CompanyForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    csrf_token: String,
}

/// `GET /admin`: the admin sign-in, or the company form for the signed-in admin.
#[handler]
pub async fn admin_home(state: Data<&AppState>, req: &Request) -> poem::Result<Response> {
    match session::find(&state, req)
        .await
        .map_err(layout::error_page)?
    {
        Some(session) if session.is_admin() => Ok(layout::html_response(companies_page(
            &session.csrf_token,
            None,
            "",
        ))),
        _ => Ok(admin_sign_in_page(&state, req, StatusCode::OK, None)),
    }
}

/// `POST /admin/sign-in`.
#[handler]
pub async fn admin_sign_in(
    state: Data<&AppState>,
    req: &Request,
    Form(form): Form<AdminSignInForm>,
) -> poem::Result<Response> {
    check_sign_in_token(req, &form.csrf_token)?;
    match admin_token_matches(&state, form.admin_token.trim()) {
        Some(true) => {
            let token = session::create(&state, None)
                .await
                .map_err(layout::error_page)?;
            tracing::info!("console admin sign-in");
            Ok(signed_in(&state, &token, "/admin"))
        }
        Some(false) => Ok(admin_sign_in_page(
            &state,
            req,
            StatusCode::UNAUTHORIZED,
            Some("That admin token is not valid."),
        )),
        None => Ok(admin_sign_in_page(
            &state,
            req,
            StatusCode::SERVICE_UNAVAILABLE,
            Some("Admin sign-in is disabled: HOOKLINE_ADMIN_TOKEN is not set."),
        )),
    }
}

/// `POST /admin/companies`: creates a company and shows its API key, once.
#[handler]
pub async fn admin_create_company(
    state: Data<&AppState>,
    req: &Request,
    Form(form): Form<CompanyForm>,
) -> poem::Result<Response> {
    let session = session::require_admin(&state, req).await?;
    session::check_csrf(&session.csrf_token, &form.csrf_token)?;
    match create_company(&state, &form.name).await {
        Ok(created) => {
            let body = html! {
                div class="page-header" {
                    div {
                        h1 { "Company created" }
                        p { (created.name) }
                    }
                }
                section class="card" {
                    h2 { "API key" }
                    p class="secret-warning" role="note" {
                        strong { "Shown only once. " }
                        "hookline stores only a hash of this key: copy it now and hand it to the company."
                    }
                    (layout::copy_field("api-key", "API key", &created.api_key))
                    dl class="facts" {
                        dt { "Company id" } dd { code { (created.id) } }
                        dt { "Created" } dd { (layout::time(created.created_at)) }
                    }
                    h3 { "Next" }
                    p {
                        "Sign out, then sign in at " a href="/" { "the console" }
                        " with this key to connect Jira."
                    }
                }
                (company_form(&session.csrf_token, None, ""))
            };
            Ok(layout::html_response(admin_page(
                "Company created",
                &session.csrf_token,
                body,
            )))
        }
        Err(error) if error.status().is_client_error() => Ok(layout::html_with_status(
            error.status(),
            companies_page(&session.csrf_token, Some(&error.body().detail), &form.name),
        )),
        Err(error) => Err(layout::error_page(error)),
    }
}

fn admin_page(title: &str, csrf_token: &str, body: Markup) -> Markup {
    layout::page(title, Section::Admin, Viewer::Admin { csrf_token }, body)
}

fn companies_page(csrf_token: &str, error: Option<&str>, name: &str) -> Markup {
    let body = html! {
        div class="page-header" {
            div {
                h1 { "Companies" }
                p { "Each company is a tenant with its own API key, connections and subscriptions." }
            }
        }
        (company_form(csrf_token, error, name))
    };
    admin_page("Companies", csrf_token, body)
}

fn company_form(csrf_token: &str, error: Option<&str>, name: &str) -> Markup {
    html! {
        section class="card" aria-labelledby="new-company" {
            h2 id="new-company" { "Create a company" }
            (layout::form_error(error))
            form method="post" action="/admin/companies" {
                (layout::csrf_field(csrf_token))
                div class="field" {
                    label for="name" { "Company name" }
                    input type="text" id="name" name="name" required maxlength="200" value=(name);
                }
                button type="submit" class="button button-primary" { "Create company" }
            }
        }
    }
}

fn admin_sign_in_page(
    state: &AppState,
    req: &Request,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let (token, fresh) = sign_in_token(req);
    let body = html! {
        section class="card narrow" aria-labelledby="admin-heading" {
            div class="hero" {
                h1 id="admin-heading" { "Admin sign-in" }
                p { "For the operator: create companies and their API keys." }
            }
            (layout::form_error(error))
            form method="post" action="/admin/sign-in" {
                (layout::csrf_field(&token))
                div class="field" {
                    label for="admin_token" { "Admin token" }
                    input type="password" id="admin_token" name="admin_token" required
                        autocomplete="current-password" spellcheck="false"
                        aria-describedby="admin_token_hint";
                    p class="hint" id="admin_token_hint" {
                        "HOOKLINE_ADMIN_TOKEN; in the embedded mode it is in .hookline/secrets.json (adminToken)."
                    }
                }
                button type="submit" class="button button-primary button-large button-block" { "Sign in" }
            }
            p class="muted small-print" { a href="/" { "Company sign-in" } }
        }
    };
    let markup = layout::page("Admin sign-in", Section::SignIn, Viewer::Anonymous, body);
    with_sign_in_cookie(
        state,
        fresh,
        &token,
        layout::html_with_status(status, markup),
    )
}
