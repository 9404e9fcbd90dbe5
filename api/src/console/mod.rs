//! The console: pages for people, served by the binary itself at `/` (DESIGN §5 "Console",
//! §10). Server-rendered with maud (templates are Rust, checked at compile time); the
//! stylesheet and a small script are compiled in; every form works without JavaScript.
//!
//! A page calls the same functions as the JSON API (`crate::routes::*`), never its own queries,
//! so the console and the API cannot disagree. Pages need a session (else they redirect to the
//! sign-in page) and forms their session's CSRF token (else 403); see [`session`].

mod admin;
mod assets;
pub mod connected;
mod connections;
mod dead_letters;
mod deliveries;
mod events;
mod jira_webhooks;
pub mod layout;
mod names;
mod notice;
pub mod session;
mod sign_in;
mod subscriptions;

use std::sync::Arc;

use poem::http::Method;
use poem::{Endpoint, IntoResponse, Request, Response, Route, get, post};

/// Adds the console's pages and assets to `route` (the API's routes, nested at `/`). `GET /`
/// itself is answered by [`home_first`], since the nested API would take it.
pub fn mount(route: Route) -> Route {
    route
        // A reload of a sign-in's answer (GET) goes back to the form.
        .at("/sign-in", get(sign_in::home).post(sign_in::sign_in))
        .at("/sign-out", post(sign_in::sign_out))
        .at("/admin", get(admin::admin_home))
        .at(
            "/admin/sign-in",
            get(admin::admin_home).post(admin::admin_sign_in),
        )
        .at(
            "/admin/companies",
            get(admin::admin_home).post(admin::admin_create_company),
        )
        .at("/connections", get(connections::connections_page))
        .at("/connections/connect", post(connections::connect))
        .at("/connections/register", post(connections::register))
        .at("/connections/:id/delete", post(connections::delete))
        .at(
            "/connections/:id/test-event",
            post(connections::send_test_event),
        )
        .at(
            "/connections/:id/jira-webhooks",
            post(jira_webhooks::register),
        )
        .at(
            "/connections/:id/jira-webhooks/:webhook_id/delete",
            post(jira_webhooks::delete),
        )
        .at(
            "/subscriptions",
            get(subscriptions::subscriptions_page).post(subscriptions::create),
        )
        .at(
            "/subscriptions/:id",
            get(subscriptions::subscription_page).post(subscriptions::update),
        )
        .at("/subscriptions/:id/enable", post(subscriptions::enable))
        .at("/subscriptions/:id/disable", post(subscriptions::disable))
        .at(
            "/subscriptions/:id/rotate-secret",
            post(subscriptions::rotate),
        )
        .at("/subscriptions/:id/delete", post(subscriptions::delete))
        .at("/events", get(events::events_page))
        .at("/events/:id", get(events::event_page))
        .at("/events/:id/replay", post(events::replay))
        .at("/deliveries/:id/retry", post(deliveries::retry))
        .at("/dead-letters", get(dead_letters::dead_letters_page))
        .at(
            "/dead-letters/:subscription_id/retry-all",
            post(dead_letters::retry_all),
        )
        .at(assets::STYLESHEET_PATH, get(assets::stylesheet))
        .at(assets::SCRIPT_PATH, get(assets::script))
        .at(assets::ICON_PATH, get(assets::icon))
}

/// Middleware that answers `GET /` (and `HEAD /`) with the console's home page and passes every
/// other request on. The API is nested at `/` and its router claims the bare `/` path, so the
/// console's home cannot be one more route of the same router.
pub async fn home_first<E: Endpoint>(endpoint: Arc<E>, request: Request) -> poem::Result<Response> {
    if request.uri().path() == "/" && matches!(*request.method(), Method::GET | Method::HEAD) {
        return sign_in::home.call(request).await;
    }
    endpoint
        .call(request)
        .await
        .map(IntoResponse::into_response)
}
