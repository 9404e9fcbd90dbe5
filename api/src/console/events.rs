//! `/events`: received events newest first, with filters and cursor paging; an event's page with
//! its raw payload, the parsed and enriched event, its deliveries with every attempt, `Replay`.

use std::collections::HashMap;

use maud::{Markup, html};
use poem::web::{Data, Form, Path, Query};
use poem::{Request, Response, handler};
use serde::Deserialize;
use uuid::Uuid;

use crate::console::connections::ButtonForm;
use crate::console::layout::{self, OrErrorPage as _, Section, Viewer};
use crate::console::notice::Notice;
use crate::console::session::{self, CompanySession};
use crate::console::{deliveries, names};
use crate::routes::events::{
    EVENT_STATUSES, EventFilter, EventOut, event_detail, list_events, replay_event,
};
use crate::routes::page::Page;
use crate::state::AppState;

/// Events per page.
const EVENTS_PER_PAGE: u64 = 25;

/// The list's query string: filters, cursor, notice.
#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    status: Option<String>,
    event_type: Option<String>,
    connection: Option<String>,
    cursor: Option<String>,
    notice: Option<String>,
}

impl EventsQuery {
    fn filter(&self) -> EventFilter {
        let non_empty = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        EventFilter {
            connection_id: non_empty(&self.connection).and_then(|id| Uuid::parse_str(&id).ok()),
            event_type: non_empty(&self.event_type),
            status: non_empty(&self.status)
                .filter(|status| EVENT_STATUSES.contains(&status.as_str())),
        }
    }

    /// The query string of the same filters with another cursor.
    fn with_cursor(&self, cursor: Option<&str>) -> String {
        let filter = self.filter();
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(status) = &filter.status {
            query.append_pair("status", status);
        }
        if let Some(event_type) = &filter.event_type {
            query.append_pair("event_type", event_type);
        }
        if let Some(connection_id) = filter.connection_id {
            query.append_pair("connection", &connection_id.to_string());
        }
        if let Some(cursor) = cursor {
            query.append_pair("cursor", cursor);
        }
        query.finish()
    }
}

/// `GET /events`.
#[handler]
pub async fn events_page(
    state: Data<&AppState>,
    req: &Request,
    Query(query): Query<EventsQuery>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    let filter = query.filter();
    let page = Page {
        limit: EVENTS_PER_PAGE,
        cursor: query
            .cursor
            .as_deref()
            .and_then(|cursor| Uuid::parse_str(cursor).ok()),
    };
    let events = list_events(&state, session.company.id, &filter, page)
        .await
        .or_page()?;
    let connections = names::connection_names(&state, session.company.id).await?;
    let notice = Notice::parse(query.notice.as_deref()).map(Notice::text);
    let first_page = page.cursor.is_none();
    let body = html! {
        div class="page-header" {
            div {
                h1 { "Events" }
                p { "What Jira sent, newest first, and how far each event got." }
            }
            span id="live-status" class="live-status" hidden { "Updates every 3 seconds" }
        }
        (layout::notice(notice))
        (filters(&query, &filter, &connections))
        section class="card" aria-labelledby="events-heading" {
            h2 id="events-heading" class="visually-hidden" { "Event list" }
            // Live refresh only where new events appear: the first page.
            div data-live=[first_page.then_some("3")] {
                (event_table(&events.items, &connections))
            }
            div class="pager" {
                @if first_page { span {} } @else {
                    a class="button" href={ "/events?" (query.with_cursor(None)) } { "← Newest" }
                }
                @if let Some(next) = &events.next_cursor {
                    a class="button" href={ "/events?" (query.with_cursor(Some(next))) } rel="next" { "Older →" }
                }
            }
        }
    };
    Ok(layout::html_response(layout::page(
        "Events",
        Section::Events,
        Viewer::Company(&session),
        body,
    )))
}

fn filters(
    query: &EventsQuery,
    filter: &EventFilter,
    connections: &HashMap<Uuid, String>,
) -> Markup {
    let mut connections: Vec<(&Uuid, &String)> = connections.iter().collect();
    connections.sort_by(|a, b| a.1.cmp(b.1));
    html! {
        form method="get" action="/events" class="card filters" role="search" aria-label="Filter events" {
            div class="field" {
                label for="status" { "Status" }
                select id="status" name="status" {
                    option value="" { "Any status" }
                    @for status in EVENT_STATUSES {
                        option value=(status) selected[filter.status.as_deref() == Some(status)] { (status) }
                    }
                }
            }
            div class="field" {
                label for="event_type" { "Event type" }
                input type="text" id="event_type" name="event_type" placeholder="jira:issue_created"
                    value=(query.event_type.as_deref().unwrap_or_default());
            }
            div class="field" {
                label for="connection" { "Connection" }
                select id="connection" name="connection" {
                    option value="" { "All connections" }
                    @for (id, name) in connections {
                        option value=(id) selected[filter.connection_id == Some(*id)] { (name) }
                    }
                }
            }
            div class="actions" {
                button type="submit" class="button button-primary" { "Filter" }
                a class="button" href="/events" { "Clear" }
            }
        }
    }
}

fn event_table(events: &[EventOut], connections: &HashMap<Uuid, String>) -> Markup {
    html! {
        @if events.is_empty() {
            div class="empty" {
                h2 { "No events yet" }
                p { "Events appear here as soon as Jira posts them to a connection's webhook URL." }
            }
        } @else {
            div class="table-wrap" {
                table {
                    thead {
                        tr {
                            th scope="col" { "Received" }
                            th scope="col" { "Type" }
                            th scope="col" { "Issue" }
                            th scope="col" { "Connection" }
                            th scope="col" { "Status" }
                        }
                    }
                    tbody {
                        @for event in events {
                            tr data-event-id=(event.id) {
                                td class="nowrap" {
                                    a href={ "/events/" (event.id) } aria-label={ "Event " (event.id) } {
                                        (layout::time(event.received_at))
                                    }
                                }
                                td class="mono" { (event.event_type.as_deref().unwrap_or("—")) }
                                td class="mono" { (event.issue_key.as_deref().unwrap_or("—")) }
                                td { (names::connection_label(connections, event.connection_id)) }
                                td { (layout::status_badge(&event.status)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The event page's query string.
#[derive(Debug, Default, Deserialize)]
pub struct EventQuery {
    notice: Option<String>,
}

/// `GET /events/:id`.
#[handler]
pub async fn event_page(
    state: Data<&AppState>,
    req: &Request,
    Path(id): Path<String>,
    Query(query): Query<EventQuery>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    let event = event_detail(&state, session.company.id, &id)
        .await
        .or_page()?;
    let connections = names::connection_names(&state, session.company.id).await?;
    let notice = Notice::parse(query.notice.as_deref()).map(Notice::text);
    let deliveries =
        deliveries::deliveries_with_attempts(&state, &session, &event.deliveries).await?;
    let summary = &event.event;
    let title = summary
        .event_type
        .clone()
        .unwrap_or_else(|| "Event".to_owned());
    let return_to = format!("/events/{}", summary.id);
    let body = html! {
        nav aria-label="Breadcrumb" class="muted" { a href="/events" { "Events" } " / " (summary.id) }
        div class="page-header" {
            div {
                h1 { (title) }
                p {
                    (names::connection_label(&connections, summary.connection_id))
                    @if let Some(key) = &summary.issue_key { " · " span class="mono" { (key) } }
                }
            }
            div class="actions" {
                form method="post" action={ "/events/" (summary.id) "/replay" } class="inline" {
                    (layout::csrf_field(&session.csrf_token))
                    button type="submit" class="button" { "Replay" }
                }
            }
        }
        (layout::notice(notice))
        div data-live="3" {
            section class="card" aria-labelledby="event-facts" {
                div class="card-header" {
                    h2 id="event-facts" { "Processing" }
                    (layout::status_badge(&summary.status))
                }
                dl class="facts" {
                    dt { "Event id" } dd { code { (summary.id) } }
                    dt { "Received" } dd { (layout::time(summary.received_at)) }
                    dt { "Processed" } dd { (layout::maybe_time(summary.processed_at)) }
                    dt { "Attempts" } dd { (summary.attempts) }
                    dt { "Delivery key" } dd { code { (summary.delivery_key) } }
                    @if let Some(error) = &summary.error {
                        dt { "Error" } dd class="form-error" { (error) }
                    }
                    @if let Some(original) = summary.replay_of {
                        dt { "Replay of" } dd { a href={ "/events/" (original) } { code { (original) } } }
                    }
                }
            }
            section class="card" aria-labelledby="event-deliveries" {
                h2 id="event-deliveries" { "Deliveries" }
                @if deliveries.is_empty() {
                    p class="muted" {
                        @if summary.status == entity::webhook_event::status::PROCESSED {
                            "No subscription matched this event."
                        } @else {
                            "Deliveries are created once the event is processed."
                        }
                    }
                }
                @for delivery in &deliveries {
                    (deliveries::delivery_block(delivery, &session.csrf_token, &return_to))
                }
            }
        }
        section class="card" aria-labelledby="event-data" {
            h2 id="event-data" { "Parsed and enriched" }
            p class="muted" { "What subscribers receive as " code { "data" } "." }
            @match &event.data {
                Some(data) => (layout::json_block("Parsed and enriched event", data)),
                None => p class="muted" { "Not processed yet." },
            }
        }
        section class="card" aria-labelledby="event-raw" {
            h2 id="event-raw" { "Raw payload" }
            p class="muted" { "The body exactly as Jira sent it." }
            @if let Some(raw) = &event.raw {
                (layout::json_block("Raw payload", raw))
            } @else if let Some(text) = &event.raw_text {
                pre class="code" tabindex="0" aria-label="Raw payload" { code { (text) } }
            }
            details {
                summary { "Request headers" }
                (layout::json_block("Request headers", &event.headers))
            }
        }
    };
    Ok(layout::html_response(layout::page(
        &title,
        Section::Events,
        Viewer::Company(&session),
        body,
    )))
}

/// `POST /events/:id/replay`: records a replay and shows it.
#[handler]
pub async fn replay(
    state: Data<&AppState>,
    req: &Request,
    Path(id): Path<String>,
    Form(form): Form<ButtonForm>,
) -> poem::Result<Response> {
    let session: CompanySession = session::require_company(&state, req).await?;
    session.check_csrf(&form.csrf_token)?;
    let replayed = replay_event(&state, session.company.id, &id)
        .await
        .or_page()?;
    Ok(layout::see_other(
        &Notice::EventReplayed.url(&format!("/events/{}", replayed.event_id)),
    ))
}
