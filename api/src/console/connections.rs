//! `/connections`: the company's Jira sites with their webhook URLs and status; `Connect Jira`
//! (the OAuth flow), registering a site without OAuth, deleting one, the dynamic webhooks of an
//! OAuth site (`console/jira_webhooks.rs`), and, in the embedded mode without an Atlassian app,
//! `Send a test event`.

use maud::{Markup, html};
use poem::web::{Data, Form, Path, Query};
use poem::{Request, Response, handler};
use serde::Deserialize;

use crate::connect_flow;
use crate::console::connected::{ConnectedSite, connected_page};
use crate::console::jira_webhooks;
use crate::console::layout::{self, OrErrorPage as _, Section, Viewer};
use crate::console::notice::Notice;
use crate::console::session::{self, CompanySession};
use crate::error::ApiError;
use crate::payload::UnreadJson;
use crate::routes::connections::{
    ConnectionIn, ConnectionOut, delete_connection, find_connection, list_connections,
    register_connection,
};
use crate::routes::jira_webhooks::{JiraWebhookOut, list_webhooks};
use crate::routes::page::{MAX_PAGE, Page};
use crate::routes::webhook::ingest;
use crate::state::AppState;

/// The sample webhook `Send a test event` posts: Jira's `jira:issue_created`.
const TEST_EVENT: &[u8] = include_bytes!("../../../fixtures/jira/webhook_issue_created.json");

/// A form that carries only its CSRF token.
#[derive(Debug, Deserialize)]
pub struct ButtonForm {
    #[serde(default)]
    pub csrf_token: String,
}

/// The form registering a connection without OAuth.
#[derive(Debug, Deserialize)]
pub struct RegisterForm {
    #[serde(default)]
    external_id: String,
    #[serde(default)]
    external_name: String,
    #[serde(default)]
    csrf_token: String,
}

/// What a page's query string may carry.
#[derive(Debug, Default, Deserialize)]
pub struct NoticeQuery {
    pub notice: Option<String>,
}

/// `GET /connections`.
#[handler]
pub async fn connections_page(
    state: Data<&AppState>,
    req: &Request,
    Query(query): Query<NoticeQuery>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    let notice = Notice::parse(query.notice.as_deref());
    let page = render(&state, &session, notice.map(Notice::text), None, None, None).await?;
    Ok(layout::html_response(page))
}

/// The page with `webhook_error` (a connection and why registering its dynamic webhook was
/// refused) shown on that connection's card.
pub(super) async fn render_page(
    state: &AppState,
    session: &CompanySession,
    webhook_error: Option<(uuid::Uuid, &str)>,
) -> poem::Result<Markup> {
    render(state, session, None, None, None, webhook_error).await
}

/// `POST /connections/connect`: starts the OAuth flow and sends the browser to Atlassian.
#[handler]
pub async fn connect(
    state: Data<&AppState>,
    req: &Request,
    Form(form): Form<ButtonForm>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    session.check_csrf(&form.csrf_token)?;
    // The flow's cookie binds the `state` to this browser; the callback refuses it without.
    let flow = connect_flow::start(&state, session.company.id)
        .await
        .or_page()?;
    let mut response = layout::see_other(&flow.authorize_url);
    let cookie = poem::http::HeaderValue::from_str(&flow.set_cookie).map_err(|error| {
        poem::Error::from_string(
            format!("the connect flow's cookie is not a header value: {error}"),
            poem::http::StatusCode::INTERNAL_SERVER_ERROR,
        )
    })?;
    response
        .headers_mut()
        .append(poem::http::header::SET_COOKIE, cookie);
    Ok(response)
}

/// `POST /connections/register`: registers a site without OAuth and shows its secret once.
#[handler]
pub async fn register(
    state: Data<&AppState>,
    req: &Request,
    Form(form): Form<RegisterForm>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    session.check_csrf(&form.csrf_token)?;
    let input = ConnectionIn {
        plugin_id: plugins::jira::PLUGIN_ID.to_owned(),
        external_id: form.external_id.trim().to_owned(),
        external_name: form.external_name.trim().to_owned(),
        metadata: None,
    };
    match register_connection(&state, session.company.id, input).await {
        Ok(created) => {
            let connection = &created.connection;
            let sites = [ConnectedSite {
                id: connection.id,
                name: &connection.external_name,
                external_id: &connection.external_id,
                webhook_url: &connection.webhook_url,
                webhook_secret: &created.webhook_secret,
            }];
            Ok(layout::html_response(connected_page(
                "Connection registered",
                &sites,
                Viewer::Company(&session),
            )))
        }
        Err(error) if error.status().is_client_error() => {
            let detail = match error {
                ApiError::Conflict(_) => {
                    "This site is already connected: delete it first to register it again."
                        .to_owned()
                }
                other => other.body().detail.clone(),
            };
            let page = render(&state, &session, None, Some(&detail), Some(&form), None).await?;
            Ok(layout::html_with_status(
                poem::http::StatusCode::UNPROCESSABLE_ENTITY,
                page,
            ))
        }
        Err(error) => Err(layout::error_page(error)),
    }
}

/// `POST /connections/:id/delete`.
#[handler]
pub async fn delete(
    state: Data<&AppState>,
    req: &Request,
    Path(id): Path<String>,
    Form(form): Form<ButtonForm>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    session.check_csrf(&form.csrf_token)?;
    delete_connection(&state, session.company.id, &id)
        .await
        .or_page()?;
    Ok(layout::see_other(
        &Notice::ConnectionDeleted.url("/connections"),
    ))
}

/// `POST /connections/:id/test-event`: posts a sample Jira webhook, signed with the
/// connection's secret, through the ingest (embedded mode without an Atlassian app only).
#[handler]
pub async fn send_test_event(
    state: Data<&AppState>,
    req: &Request,
    Path(id): Path<String>,
    Form(form): Form<ButtonForm>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    session.check_csrf(&form.csrf_token)?;
    if !test_events_offered(&state) {
        return Err(layout::error_page(ApiError::conflict(
            "test events are offered only in the embedded mode without an Atlassian app",
        )));
    }
    let connection = find_connection(&state, session.company.id, &id)
        .await
        .or_page()?;
    let mut webhook = poem::Request::builder()
        .header(poem::http::header::CONTENT_TYPE, "application/json")
        .header(poem::http::header::CONTENT_LENGTH, TEST_EVENT.len())
        .header(
            plugins::jira::webhook::IDENTIFIER_HEADER,
            format!("hookline-test-{}", uuid::Uuid::now_v7()),
        );
    if let Some(stored) = &connection.webhook_secret {
        let secret = state
            .cipher
            .decrypt(stored)
            .map_err(|error| layout::error_page(ApiError::internal(error)))?;
        webhook = webhook.header(
            plugins::jira::webhook::SIGNATURE_HEADER,
            plugins::jira::webhook::sign(secret.as_bytes(), TEST_EVENT),
        );
    }
    let recorded = ingest(
        &state,
        &webhook.finish(),
        &connection.id.to_string(),
        UnreadJson(poem::Body::from_bytes(bytes::Bytes::from_static(
            TEST_EVENT,
        ))),
        tokio::time::Instant::now(),
    )
    .await
    .or_page()?;
    tracing::info!(event.id = %recorded.event_id, connection.id = %connection.id, "console test event sent");
    Ok(layout::see_other(&format!(
        "/events/{}?notice={}",
        recorded.event_id,
        Notice::TestEventSent.code()
    )))
}

/// Whether `Send a test event` is offered: the embedded mode, without an Atlassian app (with
/// one, real events come from Jira).
fn test_events_offered(state: &AppState) -> bool {
    state.embedded && state.jira.tokens().oauth().is_none()
}

async fn render(
    state: &AppState,
    session: &CompanySession,
    notice: Option<&str>,
    error: Option<&str>,
    form: Option<&RegisterForm>,
    webhook_error: Option<(uuid::Uuid, &str)>,
) -> poem::Result<Markup> {
    let connections = list_connections(
        state,
        session.company.id,
        Page {
            limit: MAX_PAGE,
            cursor: None,
        },
    )
    .await
    .or_page()?
    .items;
    let mut registrations = Vec::new();
    for connection in &connections {
        if connection.grant.is_some() {
            registrations.push(
                list_webhooks(state, session.company.id, connection.id)
                    .await
                    .or_page()?,
            );
        } else {
            registrations.push(Vec::new());
        }
    }
    let oauth_configured = state.jira.tokens().oauth().is_some();
    let test_events = test_events_offered(state);
    let csrf = &session.csrf_token;
    let body = html! {
        div class="page-header" {
            div {
                h1 { "Connections" }
                p { "Each connected Jira site posts its webhooks to its own URL." }
            }
            div class="actions" {
                (connect_button(csrf, oauth_configured, "Connect Jira"))
            }
        }
        (layout::notice(notice))
        @if !oauth_configured {
            p class="secret-warning" role="note" {
                "Connecting through Atlassian needs an OAuth app: set JIRA_CLIENT_ID and "
                "JIRA_CLIENT_SECRET. Until then, register a site by hand below and paste its "
                "webhook URL and secret into Jira."
            }
        }
        @if connections.is_empty() {
            section class="card empty" {
                h2 { "No Jira site connected yet" }
                p {
                    "Connect Jira to approve hookline at Atlassian; you come back here with the "
                    "webhook URL to paste into Jira's settings."
                }
            }
        }
        @for (connection, registrations) in connections.iter().zip(&registrations) {
            (connection_card(connection, registrations, csrf, oauth_configured, test_events,
                webhook_error.filter(|(id, _)| *id == connection.id).map(|(_, error)| error)))
        }
        (register_card(csrf, error, form))
    };
    Ok(layout::page(
        "Connections",
        Section::Connections,
        Viewer::Company(session),
        body,
    ))
}

fn connect_button(csrf: &str, oauth_configured: bool, label: &str) -> Markup {
    html! {
        form method="post" action="/connections/connect" class="inline" {
            (layout::csrf_field(csrf))
            @if oauth_configured {
                button type="submit" class="button button-primary" { (label) }
            } @else {
                button type="submit" class="button button-primary" disabled
                    title="Set JIRA_CLIENT_ID and JIRA_CLIENT_SECRET to connect through Atlassian" { (label) }
            }
        }
    }
}

fn connection_card(
    connection: &ConnectionOut,
    registrations: &[JiraWebhookOut],
    csrf: &str,
    oauth_configured: bool,
    test_events: bool,
    webhook_error: Option<&str>,
) -> Markup {
    let id = connection.id;
    let through_oauth = connection.metadata.get("cloudId").is_some();
    let webhooks_page = format!(
        "https://{}/plugins/servlet/webhooks",
        connection.external_id
    );
    html! {
        section class="card connection" aria-labelledby={ "connection-" (id) } data-connection-id=(id) {
            div class="card-header" {
                div {
                    h2 id={ "connection-" (id) } { (connection.external_name) }
                    p class="mono" { (connection.external_id) }
                }
                (layout::status_badge(&connection.status))
            }
            @if connection.status == entity::plugin_connection::status::REAUTH_REQUIRED {
                div class="form-error" role="alert" {
                    p { "Atlassian no longer accepts this site's grant: events still arrive, but are delivered without enrichment until you reconnect." }
                    (connect_button(csrf, oauth_configured, "Reconnect"))
                }
            }
            div class="grid" {
                div {
                    (layout::copy_field(&format!("webhook-url-{id}"), "Webhook URL", &connection.webhook_url))
                    dl class="facts" {
                        dt { "Connected" } dd { @if through_oauth { "through Atlassian OAuth (events are enriched)" } @else { "by hand (webhook only, no enrichment)" } }
                        dt { "Signature" } dd { @if connection.signed { "required (X-Hub-Signature)" } @else { "none" } }
                        dt { "Since" } dd { (layout::time(connection.created_at)) }
                        dt { "Connection id" } dd { code { (id) } }
                    }
                }
                div {
                    details {
                        summary { "How to register this webhook in Jira" }
                        (crate::console::connected::jira_steps(&webhooks_page, &connection.external_id))
                        p class="muted" { "The secret was shown once, when the site was connected. Lost it? Delete the connection and connect the site again." }
                    }
                }
            }
            @if connection.grant.is_some() {
                (jira_webhooks::section(connection, registrations, csrf, webhook_error))
            }
            div class="actions card-actions" {
                a class="button" href={ "/events?connection=" (id) } { "Events" }
                @if test_events {
                    form method="post" action={ "/connections/" (id) "/test-event" } class="inline" {
                        (layout::csrf_field(csrf))
                        button type="submit" class="button" { "Send a test event" }
                    }
                }
                details class="danger-zone" {
                    summary { "Delete…" }
                    p { "The webhook URL stops accepting events at once; this site's events and deliveries are deleted, and the webhooks hookline registered in Jira for it are deleted there." }
                    form method="post" action={ "/connections/" (id) "/delete" } class="inline" {
                        (layout::csrf_field(csrf))
                        button type="submit" class="button button-danger" { "Delete " (connection.external_name) }
                    }
                }
            }
        }
    }
}

fn register_card(csrf: &str, error: Option<&str>, form: Option<&RegisterForm>) -> Markup {
    let (external_id, external_name) = form
        .map(|form| (form.external_id.as_str(), form.external_name.as_str()))
        .unwrap_or_default();
    html! {
        section class="card" aria-labelledby="register-heading" {
            h2 id="register-heading" { "Register a site without OAuth" }
            p class="muted" {
                "For a webhook a Jira admin configures by hand. Events are delivered as Jira sends "
                "them, without enrichment through the Jira API."
            }
            (layout::form_error(error))
            form method="post" action="/connections/register" {
                (layout::csrf_field(csrf))
                div class="form-row" {
                    div class="field" {
                        label for="external_id" { "Site" }
                        input type="text" id="external_id" name="external_id" required maxlength="255"
                            placeholder="northwind.atlassian.net" value=(external_id)
                            aria-describedby="external_id_hint";
                        p class="hint" id="external_id_hint" { "The site's host name." }
                    }
                    div class="field" {
                        label for="external_name" { "Name" }
                        input type="text" id="external_name" name="external_name" required maxlength="255"
                            placeholder="Northwind" value=(external_name);
                    }
                }
                button type="submit" class="button" { "Register site" }
            }
        }
    }
}
