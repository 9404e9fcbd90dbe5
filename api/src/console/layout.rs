//! The page shell every console page shares (head, navigation, notices) and the small pieces
//! pages are built from: status badges, copy fields, CSRF fields, times, redirects, error pages.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use poem::Response;
use poem::http::{StatusCode, header};

use crate::console::assets;
use crate::console::session::CompanySession;
use crate::error::ApiError;

/// The part of the console a page belongs to (highlighted in the navigation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Connected Jira sites.
    Connections,
    /// Where events are delivered.
    Subscriptions,
    /// Received events.
    Events,
    /// Deliveries that gave up.
    DeadLetters,
    /// The admin's pages.
    Admin,
    /// Pages before sign-in.
    SignIn,
}

/// Who the page is for: a signed-in company (with navigation) or nobody yet.
pub enum Viewer<'a> {
    /// A company's session: navigation and a sign-out button.
    Company(&'a CompanySession),
    /// The admin's session: a sign-out button.
    Admin {
        /// The session's CSRF token, for the sign-out form.
        csrf_token: &'a str,
    },
    /// Not signed in.
    Anonymous,
}

/// A whole page: the shell around `body`.
pub fn page(title: &str, section: Section, viewer: Viewer<'_>, body: Markup) -> Markup {
    let nav = [
        (Section::Connections, "/connections", "Connections"),
        (Section::Subscriptions, "/subscriptions", "Subscriptions"),
        (Section::Events, "/events", "Events"),
        (Section::DeadLetters, "/dead-letters", "Dead letters"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · hookline" }
                link rel="stylesheet" href=(assets::STYLESHEET_PATH);
                link rel="icon" href=(assets::ICON_PATH) type="image/svg+xml";
                script src=(assets::SCRIPT_PATH) defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="topbar" {
                    div class="topbar-inner" {
                        a class="brand" href="/" aria-label="hookline home" {
                            span class="brand-mark" aria-hidden="true" { "⚓" }
                            span { "hookline" }
                        }
                        @match &viewer {
                            Viewer::Company(session) => {
                                nav aria-label="Console" {
                                    ul {
                                        @for (item, href, label) in nav {
                                            li {
                                                @if item == section {
                                                    a href=(href) aria-current="page" { (label) }
                                                } @else {
                                                    a href=(href) { (label) }
                                                }
                                            }
                                        }
                                    }
                                }
                                div class="account" {
                                    span class="company" title="Signed in as" { (session.company.name) }
                                    (sign_out_form(&session.csrf_token))
                                }
                            }
                            Viewer::Admin { csrf_token } => {
                                nav aria-label="Console" {
                                    ul { li { a href="/admin" aria-current="page" { "Companies" } } }
                                }
                                div class="account" {
                                    span class="company" { "Admin" }
                                    (sign_out_form(csrf_token))
                                }
                            }
                            Viewer::Anonymous => {}
                        }
                    }
                }
                main id="main" class="container" {
                    (body)
                }
                footer class="container footer" {
                    "hookline " (env!("CARGO_PKG_VERSION")) " · "
                    a href="/docs" { "API docs" } " · "
                    a href="/openapi.json" { "OpenAPI" }
                }
            }
        }
    }
}

fn sign_out_form(csrf_token: &str) -> Markup {
    html! {
        form method="post" action="/sign-out" class="inline" {
            (csrf_field(csrf_token))
            button type="submit" class="button button-quiet" { "Sign out" }
        }
    }
}

/// The hidden field every form carries.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf_token" value=(token); }
}

/// A 200 HTML answer that no cache keeps (pages show secrets and tenant data).
pub fn html_response(markup: Markup) -> Response {
    html_with_status(StatusCode::OK, markup)
}

/// An HTML answer with `status` that no cache keeps.
pub fn html_with_status(status: StatusCode, markup: Markup) -> Response {
    Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-frame-options", "DENY")
        .header(header::REFERRER_POLICY, "same-origin")
        .header(
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        )
        .body(markup.into_string())
}

/// `303 See Other` to `location` (after a form, so reloading does not post again).
pub fn see_other(location: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, location)
        .header(header::CACHE_CONTROL, "no-store")
        .finish()
}

/// A page that says what went wrong, with the error's status.
fn problem_page(status: StatusCode, heading: &str, detail: &str) -> Response {
    let body = html! {
        section class="card narrow" {
            h1 { (heading) }
            p role="alert" { (detail) }
            p { a class="button" href="/" { "Back to the console" } }
        }
    };
    html_with_status(
        status,
        page(heading, Section::SignIn, Viewer::Anonymous, body),
    )
}

/// An API error as a console page (its status, its detail).
pub fn error_page(error: ApiError) -> poem::Error {
    let status = error.status();
    let heading = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::CONFLICT => "Conflict",
        StatusCode::SERVICE_UNAVAILABLE => "Temporarily unavailable",
        status if status.is_server_error() => "Something went wrong",
        _ => "That did not work",
    };
    poem::Error::from_response(problem_page(status, heading, &error.body().detail))
}

/// A 403 page (e.g. a form without its CSRF token).
pub fn forbidden(detail: &str) -> poem::Error {
    poem::Error::from_response(problem_page(StatusCode::FORBIDDEN, "Refused", detail))
}

/// A status as a badge: a symbol and the word, so it is not told by colour alone.
pub fn status_badge(status: &str) -> Markup {
    let (tone, symbol) = match status {
        "active" | "processed" | "succeeded" | "enabled" | "ok" => ("ok", "✓"),
        "received" | "processing" | "pending" | "in_flight" => ("progress", "…"),
        "reauth_required" => ("warn", "!"),
        "failed" | "dead" => ("bad", "✕"),
        "disabled" | "skipped" => ("muted", "–"),
        _ => ("muted", "•"),
    };
    html! {
        span class={ "badge badge-" (tone) } {
            span aria-hidden="true" { (symbol) } " " (status)
        }
    }
}

/// A badge of `tone` (`ok`, `bad`, …) with a short text, e.g. an HTTP status code.
pub fn status_badge_text(tone: &str, text: &str) -> Markup {
    html! { span class={ "badge badge-" (tone) } { (text) } }
}

/// A value with a `Copy` button (the button appears only with JavaScript on).
pub fn copy_field(id: &str, label: &str, value: &str) -> Markup {
    html! {
        div class="copy-field" {
            span class="copy-label" id={ (id) "-label" } { (label) }
            div class="copy-row" {
                code id=(id) aria-labelledby={ (id) "-label" } { (value) }
                button type="button" class="button button-small" data-copy=(id) hidden
                    aria-label={ "Copy " (label) } { "Copy" }
            }
        }
    }
}

/// An instant as text, in UTC, inside a `<time>` element.
pub fn time(at: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S UTC")) }
    }
}

/// An optional instant, or a dash.
pub fn maybe_time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { span class="muted" { "—" } },
    }
}

/// A success message at the top of a page.
pub fn notice(text: Option<&str>) -> Markup {
    html! {
        @if let Some(text) = text {
            div class="notice" role="status" { (text) }
        }
    }
}

/// An error message at the top of a form.
pub fn form_error(text: Option<&str>) -> Markup {
    html! {
        @if let Some(text) = text {
            div class="form-error" role="alert" { strong { "Not saved: " } (text) }
        }
    }
}

/// JSON, pretty-printed, in a scrollable block.
pub fn json_block(label: &str, value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    html! {
        pre class="code" tabindex="0" aria-label=(label) { code { (text) } }
    }
}

/// The console's answer when `ApiError` happened inside a handler.
pub trait OrErrorPage<T> {
    /// Turns the API error into the console's error page.
    fn or_page(self) -> poem::Result<T>;
}

impl<T> OrErrorPage<T> for Result<T, ApiError> {
    fn or_page(self) -> poem::Result<T> {
        self.map_err(error_page)
    }
}
