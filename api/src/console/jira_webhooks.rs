//! The dynamic webhooks of a connection on its card of `/connections`: the registrations with
//! their expiry and last renewal (a registration that could not be renewed is shown as such),
//! `Register webhook in Jira` (events and a JQL filter) and deleting one. Through the same
//! functions as `/api/v1/connections/{id}/jira/webhooks`.

use maud::{Markup, html};
use poem::web::{Data, Form, Path};
use poem::{Request, Response, handler};

use crate::console::layout::{self, OrErrorPage as _};
use crate::console::notice::Notice;
use crate::console::session;
use crate::routes::connections::ConnectionOut;
use crate::routes::jira_webhooks::{
    JiraWebhookIn, JiraWebhookOut, delete_webhook, register_webhooks,
};
use crate::state::AppState;

/// `POST /connections/:id/jira-webhooks`: registers a dynamic webhook at Jira. The form has
/// `events` (repeated, one per ticked box), `jql_filter` and `csrf_token`.
#[handler]
pub async fn register(
    state: Data<&AppState>,
    req: &Request,
    Path(id): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    };
    session.check_csrf(&field("csrf_token"))?;
    let input = JiraWebhookIn {
        events: fields
            .iter()
            .filter(|(key, _)| key == "events")
            .map(|(_, value)| value.clone())
            .collect(),
        jql_filter: Some(field("jql_filter")),
        field_ids_filter: None,
    };
    match register_webhooks(&state, session.company.id, &id, vec![input]).await {
        Ok(_) => Ok(layout::see_other(
            &Notice::JiraWebhookRegistered.url("/connections"),
        )),
        Err(error) if error.status().is_client_error() => {
            let connection_id = uuid::Uuid::parse_str(&id).ok();
            let detail = error.body().detail.clone();
            let page = crate::console::connections::render_page(
                &state,
                &session,
                connection_id.map(|connection_id| (connection_id, detail.as_str())),
            )
            .await?;
            Ok(layout::html_with_status(
                poem::http::StatusCode::UNPROCESSABLE_ENTITY,
                page,
            ))
        }
        Err(error) => Err(layout::error_page(error)),
    }
}

/// `POST /connections/:id/jira-webhooks/:webhook_id/delete`: deletes it at Jira and here.
#[handler]
pub async fn delete(
    state: Data<&AppState>,
    req: &Request,
    Path((id, webhook_id)): Path<(String, String)>,
    Form(form): Form<crate::console::connections::ButtonForm>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    session.check_csrf(&form.csrf_token)?;
    delete_webhook(&state, session.company.id, &id, &webhook_id)
        .await
        .or_page()?;
    Ok(layout::see_other(
        &Notice::JiraWebhookDeleted.url("/connections"),
    ))
}

/// The dynamic webhooks part of an OAuth connection's card; `error` is the refusal of the
/// last registration, shown on the form.
pub fn section(
    connection: &ConnectionOut,
    registrations: &[JiraWebhookOut],
    csrf: &str,
    error: Option<&str>,
) -> Markup {
    let id = connection.id;
    html! {
        section class="jira-webhooks" aria-labelledby={ "jira-webhooks-" (id) } {
            h3 id={ "jira-webhooks-" (id) } { "Webhooks registered in Jira" }
            @if let Some(problem) = &connection.webhook_problem {
                div class="form-error" role="alert" {
                    p { strong { "Not renewed: " } (problem) }
                }
            }
            @if registrations.is_empty() {
                p class="muted" {
                    "None yet. hookline can register the webhook in Jira itself, with this "
                    "site's OAuth grant (no Jira admin needed), and renews it before Jira's "
                    "30-day expiry."
                }
            } @else {
                table class="table" {
                    thead {
                        tr {
                            th scope="col" { "Jira id" }
                            th scope="col" { "Events" }
                            th scope="col" { "JQL filter" }
                            th scope="col" { "Status" }
                            th scope="col" { "Expires" }
                            th scope="col" { "Last renewal" }
                            th scope="col" { span class="visually-hidden" { "Actions" } }
                        }
                    }
                    tbody {
                        @for registration in registrations {
                            tr data-webhook-id=(registration.webhook_id) {
                                td { code { (registration.webhook_id) } }
                                td { (registration.events.join(", ")) }
                                td { code { (registration.jql_filter) } }
                                td { (layout::status_badge(&registration.status)) }
                                td { (layout::time(registration.expires_at)) }
                                td {
                                    (layout::maybe_time(registration.last_refresh_at))
                                    @if let Some(error) = &registration.last_refresh_error {
                                        p class="form-error" { (error) }
                                    }
                                }
                                td {
                                    form method="post" action={ "/connections/" (id) "/jira-webhooks/" (registration.webhook_id) "/delete" } class="inline" {
                                        (layout::csrf_field(csrf))
                                        button type="submit" class="button button-small button-danger" { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            details open[error.is_some()] {
                summary { "Register webhook in Jira" }
                (layout::form_error(error))
                form method="post" action={ "/connections/" (id) "/jira-webhooks" } {
                    (layout::csrf_field(csrf))
                    fieldset {
                        legend { "Events" }
                        @for event in plugins::jira::dynamic_webhooks::ALLOWED_EVENTS {
                            div class="checkbox" {
                                input type="checkbox" name="events" value=(event)
                                    id={ "event-" (id) "-" (event.replace(':', "-")) }
                                    checked[event.starts_with("jira:issue_")];
                                label for={ "event-" (id) "-" (event.replace(':', "-")) } { (event) }
                            }
                        }
                        p class="hint" {
                            "Worklog, attachment and issue-link events are delivered only to admin "
                            "webhooks: register the webhook URL by hand for those."
                        }
                    }
                    div class="field" {
                        label for={ "jql-" (id) } { "JQL filter" }
                        input type="text" id={ "jql-" (id) } name="jql_filter" required
                            maxlength="4000" placeholder="project = ORB"
                            aria-describedby={ "jql-hint-" (id) };
                        p class="hint" id={ "jql-hint-" (id) } { "Required by Jira: the issues whose events are sent." }
                    }
                    button type="submit" class="button" { "Register webhook in Jira" }
                }
            }
        }
    }
}
