//! `/subscriptions`: where events are delivered. Create (destination: an HTTP URL or a Redis
//! stream, RabbitMQ exchange or NATS subject; event type patterns, project keys, connection),
//! edit, enable or disable, rotate the signing secret, delete; each subscription's page shows
//! its recent deliveries. Broker URLs are shown with their credentials as `***`.

use std::collections::HashMap;

use maud::{Markup, html};
use poem::http::StatusCode;
use poem::web::{Data, Form, Path, Query};
use poem::{Request, Response, handler};
use serde::Deserialize;
use uuid::Uuid;

use crate::console::connections::{ButtonForm, NoticeQuery};
use crate::console::deliveries::{delivery_block, listed_with_attempts};
use crate::console::layout::{self, OrErrorPage as _, Section, Viewer};
use crate::console::names;
use crate::console::notice::Notice;
use crate::console::session::{self, CompanySession};
use crate::routes::deliveries::{DeliveryFilter, recent_deliveries};
use crate::routes::subscriptions::{
    AmqpDestination, Destination, HttpDestination, NatsDestination, RedisStreamDestination,
    SubscriptionIn, SubscriptionOut, SubscriptionPatch, SubscriptionWithSecretOut,
    create_subscription, delete_subscription, find_subscription, rotate_secret,
    update_subscription,
};
use crate::state::AppState;

/// How many deliveries a subscription's page shows.
const RECENT_DELIVERIES: u64 = 20;

/// The subscription form's fields (create and edit).
#[derive(Debug, Default, Deserialize)]
pub struct SubscriptionForm {
    /// `http`, `redis_stream`, `amqp` or `nats`; empty: `http`.
    #[serde(default)]
    kind: String,
    #[serde(default)]
    url: String,
    /// Redis stream key.
    #[serde(default)]
    stream: String,
    /// Redis stream's approximate cap; empty: unbounded.
    #[serde(default)]
    max_len: String,
    /// AMQP exchange.
    #[serde(default)]
    exchange: String,
    /// AMQP routing key.
    #[serde(default)]
    routing_key: String,
    /// NATS subject.
    #[serde(default)]
    subject: String,
    /// Patterns separated by commas or new lines.
    #[serde(default)]
    event_types: String,
    /// Project keys separated by commas or spaces; empty: every project.
    #[serde(default)]
    project_keys: String,
    /// A connection id; empty: every connection.
    #[serde(default)]
    connection: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    csrf_token: String,
}

impl SubscriptionForm {
    fn event_types(&self) -> Vec<String> {
        split_list(&self.event_types, &[',', '\n', '\r'])
    }

    fn project_keys(&self) -> Vec<String> {
        split_list(&self.project_keys, &[',', ' ', '\n', '\r', '\t'])
            .into_iter()
            .map(|key| key.to_ascii_uppercase())
            .collect()
    }

    fn filters(&self) -> serde_json::Value {
        let keys = self.project_keys();
        if keys.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::json!({ "projectKeys": keys })
        }
    }

    fn description(&self) -> Option<String> {
        Some(self.description.trim().to_owned()).filter(|text| !text.is_empty())
    }

    /// The destination the form describes, or what is wrong with it.
    fn destination(&self) -> Result<Destination, &'static str> {
        let url = self.url.trim().to_owned();
        let text = |value: &str| value.trim().to_owned();
        Ok(match self.kind.as_str() {
            "" | "http" => Destination::Http(HttpDestination { url }),
            "redis_stream" => {
                let max_len = match self.max_len.trim() {
                    "" => None,
                    value => Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| "the stream's length cap must be a whole number")?,
                    ),
                };
                Destination::RedisStream(RedisStreamDestination {
                    url,
                    stream: text(&self.stream),
                    max_len,
                })
            }
            "amqp" => Destination::Amqp(AmqpDestination {
                url,
                exchange: text(&self.exchange),
                routing_key: text(&self.routing_key),
            }),
            "nats" => Destination::Nats(NatsDestination {
                url,
                subject: text(&self.subject),
            }),
            _ => return Err("choose a destination type from the list"),
        })
    }

    fn from_subscription(subscription: &SubscriptionOut) -> Self {
        let mut form = Self::default();
        match &subscription.destination {
            Destination::Http(_) => form.kind = "http".to_owned(),
            Destination::RedisStream(d) => {
                form.kind = "redis_stream".to_owned();
                form.stream = d.stream.clone();
                form.max_len = d.max_len.map(|n| n.to_string()).unwrap_or_default();
            }
            Destination::Amqp(d) => {
                form.kind = "amqp".to_owned();
                form.exchange = d.exchange.clone();
                form.routing_key = d.routing_key.clone();
            }
            Destination::Nats(d) => {
                form.kind = "nats".to_owned();
                form.subject = d.subject.clone();
            }
        }
        Self {
            url: subscription.url.clone(),
            event_types: event_types_of(subscription).join(", "),
            project_keys: project_keys_of(subscription).join(", "),
            connection: subscription
                .connection_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            description: subscription.description.clone().unwrap_or_default(),
            csrf_token: String::new(),
            ..form
        }
    }
}

/// A destination in one line for the lists: its type and where (credentials redacted).
fn destination_summary(destination: &Destination) -> String {
    match destination {
        Destination::Http(d) => d.url.clone(),
        Destination::RedisStream(d) => format!("Redis stream {} at {}", d.stream, d.url),
        Destination::Amqp(d) => format!(
            "RabbitMQ exchange \"{}\" key \"{}\" at {}",
            d.exchange, d.routing_key, d.url
        ),
        Destination::Nats(d) => format!("NATS subject {} at {}", d.subject, d.url),
    }
}

fn split_list(text: &str, separators: &[char]) -> Vec<String> {
    text.split(separators)
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

fn event_types_of(subscription: &SubscriptionOut) -> Vec<String> {
    subscription
        .event_types
        .as_array()
        .map(|patterns| {
            patterns
                .iter()
                .filter_map(|pattern| pattern.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn project_keys_of(subscription: &SubscriptionOut) -> Vec<String> {
    subscription
        .filters
        .as_ref()
        .and_then(|filters| filters.get("projectKeys"))
        .and_then(serde_json::Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter_map(|key| key.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /subscriptions`.
#[handler]
pub async fn subscriptions_page(
    state: Data<&AppState>,
    req: &Request,
    Query(query): Query<NoticeQuery>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    let notice = Notice::parse(query.notice.as_deref()).map(Notice::text);
    let page = list_page(&state, &session, notice, None, &SubscriptionForm::default()).await?;
    Ok(layout::html_response(page))
}

async fn list_page(
    state: &AppState,
    session: &CompanySession,
    notice: Option<&str>,
    error: Option<&str>,
    form: &SubscriptionForm,
) -> poem::Result<Markup> {
    let subscriptions = names::subscriptions(state, session.company.id).await?;
    let connections = names::connection_names(state, session.company.id).await?;
    let body = html! {
        div class="page-header" {
            div {
                h1 { "Subscriptions" }
                p { "Where hookline delivers matching events, signed with Standard Webhooks headers." }
            }
            div class="actions" { a class="button button-primary" href="#new-subscription" { "New subscription" } }
        }
        (layout::notice(notice))
        section class="card" aria-labelledby="subscriptions-heading" {
            h2 id="subscriptions-heading" { "Your subscriptions" }
            @if subscriptions.is_empty() {
                div class="empty" {
                    p { "No subscription yet: events are recorded but delivered nowhere. Create one below." }
                }
            } @else {
                div class="table-wrap" {
                    table {
                        thead {
                            tr {
                                th scope="col" { "Destination" }
                                th scope="col" { "Event types" }
                                th scope="col" { "Projects" }
                                th scope="col" { "Connection" }
                                th scope="col" { "Status" }
                            }
                        }
                        tbody {
                            @for subscription in &subscriptions {
                                tr data-subscription-id=(subscription.id) {
                                    td {
                                        a class="mono" href={ "/subscriptions/" (subscription.id) } { (destination_summary(&subscription.destination)) }
                                        @if let Some(description) = &subscription.description {
                                            div class="muted" { (description) }
                                        }
                                    }
                                    td class="mono" { (event_types_of(subscription).join(", ")) }
                                    td class="mono" {
                                        @let keys = project_keys_of(subscription);
                                        @if keys.is_empty() { span class="muted" { "all" } } @else { (keys.join(", ")) }
                                    }
                                    td {
                                        @match subscription.connection_id {
                                            Some(id) => (names::connection_label(&connections, id)),
                                            None => span class="muted" { "all" },
                                        }
                                    }
                                    td { (enabled_badge(subscription)) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section class="card" id="new-subscription" aria-labelledby="new-subscription-heading" {
            h2 id="new-subscription-heading" { "New subscription" }
            (layout::form_error(error))
            form method="post" action="/subscriptions" {
                (subscription_fields(&session.csrf_token, form, &connections, true))
                button type="submit" class="button button-primary" { "Create subscription" }
            }
        }
    };
    Ok(layout::page(
        "Subscriptions",
        Section::Subscriptions,
        Viewer::Company(session),
        body,
    ))
}

fn enabled_badge(subscription: &SubscriptionOut) -> Markup {
    html! {
        @if subscription.enabled {
            (layout::status_badge("enabled"))
        } @else {
            (layout::status_badge("disabled"))
        }
    }
}

fn subscription_fields(
    csrf: &str,
    form: &SubscriptionForm,
    connections: &HashMap<Uuid, String>,
    connection_editable: bool,
) -> Markup {
    let mut connections: Vec<(&Uuid, &String)> = connections.iter().collect();
    connections.sort_by(|a, b| a.1.cmp(b.1));
    let event_types = if form.event_types.is_empty() {
        "jira:issue_*"
    } else {
        form.event_types.as_str()
    };
    html! {
        (layout::csrf_field(csrf))
        div class="form-row" {
            div class="field" {
                label for="kind" { "Destination type" }
                select id="kind" name="kind" aria-describedby="kind_hint" {
                    @for (value, label) in DESTINATION_KINDS {
                        option value=(value) selected[form.kind == *value || (form.kind.is_empty() && *value == "http")] { (label) }
                    }
                }
                p class="hint" id="kind_hint" { "Brokers get the same JSON body and signature values as HTTP." }
            }
            div class="field" {
                label for="url" { "Destination URL" }
                input type="url" id="url" name="url" required maxlength="2048"
                    placeholder="https://example.com/hooks/jira" value=(form.url)
                    aria-describedby="url_hint";
                p class="hint" id="url_hint" {
                    "HTTP: hookline POSTs each matching event here as JSON. Brokers: "
                    code { "redis://…" } ", " code { "amqp://user:pass@host/%2f" } ", "
                    code { "nats://host:4222" } "; credentials are stored encrypted and shown as "
                    code { "***" } " (leave them as shown to keep them)."
                }
            }
        }
        fieldset class="field" {
            legend { "Broker settings (for the chosen type only)" }
            div class="form-row" {
                div class="field" {
                    label for="stream" { "Redis stream" }
                    input type="text" id="stream" name="stream" maxlength="1024" value=(form.stream) placeholder="jira-events";
                }
                div class="field" {
                    label for="max_len" { "Stream length cap" }
                    input type="text" id="max_len" name="max_len" inputmode="numeric" value=(form.max_len) placeholder="optional, e.g. 100000";
                }
            }
            div class="form-row" {
                div class="field" {
                    label for="exchange" { "RabbitMQ exchange" }
                    input type="text" id="exchange" name="exchange" maxlength="255" value=(form.exchange) placeholder="empty: the default exchange";
                }
                div class="field" {
                    label for="routing_key" { "RabbitMQ routing key" }
                    input type="text" id="routing_key" name="routing_key" maxlength="255" value=(form.routing_key) placeholder="jira.events";
                }
                div class="field" {
                    label for="subject" { "NATS subject" }
                    input type="text" id="subject" name="subject" maxlength="1024" value=(form.subject) placeholder="jira.events";
                }
            }
        }
        div class="form-row" {
            div class="field" {
                label for="event_types" { "Event types" }
                input type="text" id="event_types" name="event_types" required
                    value=(event_types) aria-describedby="event_types_hint";
                p class="hint" id="event_types_hint" {
                    "Comma-separated patterns; " code { "*" } " matches anything, e.g. "
                    code { "jira:issue_*" } ", " code { "comment_*" } "."
                }
            }
            div class="field" {
                label for="project_keys" { "Project keys" }
                input type="text" id="project_keys" name="project_keys" value=(form.project_keys)
                    placeholder="ENG, OPS" aria-describedby="project_keys_hint";
                p class="hint" id="project_keys_hint" { "Only these Jira projects; empty for all." }
            }
        }
        div class="form-row" {
            @if connection_editable {
                div class="field" {
                    label for="connection" { "Connection" }
                    select id="connection" name="connection" {
                        option value="" { "All connections" }
                        @for (id, name) in &connections {
                            option value=(id) selected[form.connection == id.to_string()] { (name) }
                        }
                    }
                }
            } @else {
                div class="field" {
                    span class="field-label" id="connection-label" { "Connection" }
                    p aria-labelledby="connection-label" {
                        @match connections.iter().find(|(id, _)| id.to_string() == form.connection) {
                            Some((_, name)) => (name),
                            None => "All connections",
                        }
                    }
                    p class="hint" { "Fixed once created: create another subscription for another connection." }
                }
            }
            div class="field" {
                label for="description" { "Description" }
                input type="text" id="description" name="description" maxlength="1000"
                    value=(form.description) placeholder="optional";
            }
        }
    }
}

/// The destination types the form offers: (`type`, label).
const DESTINATION_KINDS: &[(&str, &str)] = &[
    ("http", "HTTP (POST)"),
    ("redis_stream", "Redis stream"),
    ("amqp", "RabbitMQ (AMQP)"),
    ("nats", "NATS JetStream"),
];

/// `POST /subscriptions`: creates one and shows its signing secret once.
#[handler]
pub async fn create(
    state: Data<&AppState>,
    req: &Request,
    Form(form): Form<SubscriptionForm>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    session.check_csrf(&form.csrf_token)?;
    let connection_id = match parse_connection(&form.connection) {
        Ok(connection_id) => connection_id,
        Err(problem) => return form_refused(&state, &session, problem, &form).await,
    };
    let destination = match form.destination() {
        Ok(destination) => destination,
        Err(problem) => return form_refused(&state, &session, problem, &form).await,
    };
    let filters = form.filters();
    let input = SubscriptionIn {
        url: None,
        destination: Some(destination),
        event_types: form.event_types(),
        connection_id,
        description: form.description(),
        filters: filters
            .as_object()
            .is_some_and(|filters| !filters.is_empty())
            .then_some(filters),
    };
    match create_subscription(&state, session.company.id, input).await {
        Ok(created) => Ok(layout::html_response(secret_page(
            &session,
            "Subscription created",
            &created,
        ))),
        Err(error) if error.status().is_client_error() => {
            form_refused(&state, &session, &error.body().detail, &form).await
        }
        Err(error) => Err(layout::error_page(error)),
    }
}

async fn form_refused(
    state: &AppState,
    session: &CompanySession,
    problem: &str,
    form: &SubscriptionForm,
) -> poem::Result<Response> {
    let page = list_page(state, session, None, Some(problem), form).await?;
    Ok(layout::html_with_status(
        StatusCode::UNPROCESSABLE_ENTITY,
        page,
    ))
}

fn parse_connection(value: &str) -> Result<Option<Uuid>, &'static str> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(value)
        .map(Some)
        .map_err(|_| "choose a connection from the list")
}

fn secret_page(
    session: &CompanySession,
    heading: &str,
    created: &SubscriptionWithSecretOut,
) -> Markup {
    let subscription = &created.subscription;
    let body = html! {
        div class="page-header" {
            div {
                h1 { (heading) }
                p class="mono" { (destination_summary(&subscription.destination)) }
            }
            div class="actions" {
                a class="button" href={ "/subscriptions/" (subscription.id) } { "Go to the subscription" }
            }
        }
        section class="card" {
            h2 { "Signing secret" }
            p class="secret-warning" role="note" {
                strong { "Shown only once. " }
                "Your endpoint verifies the " code { "webhook-signature" }
                " header of every delivery with this secret (Standard Webhooks)."
            }
            (layout::copy_field("signing-secret", "Signing secret", &created.secret))
            dl class="facts" {
                dt { "Subscription id" } dd { code { (subscription.id) } }
                dt { "Event types" } dd class="mono" { (event_types_of(subscription).join(", ")) }
            }
        }
    };
    layout::page(
        heading,
        Section::Subscriptions,
        Viewer::Company(session),
        body,
    )
}

/// `GET /subscriptions/:id`: details, edit form, actions and recent deliveries.
#[handler]
pub async fn subscription_page(
    state: Data<&AppState>,
    req: &Request,
    Path(id): Path<String>,
    Query(query): Query<NoticeQuery>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    let subscription = SubscriptionOut::from_model(
        find_subscription(&state, session.company.id, &id)
            .await
            .or_page()?,
        &state.cipher,
    );
    let notice = Notice::parse(query.notice.as_deref()).map(Notice::text);
    let form = SubscriptionForm::from_subscription(&subscription);
    let page = detail_page(&state, &session, &subscription, notice, None, &form).await?;
    Ok(layout::html_response(page))
}

async fn detail_page(
    state: &AppState,
    session: &CompanySession,
    subscription: &SubscriptionOut,
    notice: Option<&str>,
    error: Option<&str>,
    form: &SubscriptionForm,
) -> poem::Result<Markup> {
    let connections = names::connection_names(state, session.company.id).await?;
    let filter = DeliveryFilter {
        subscription_id: Some(subscription.id),
        ..DeliveryFilter::default()
    };
    let recent = recent_deliveries(state, session.company.id, &filter, RECENT_DELIVERIES)
        .await
        .or_page()?;
    let recent = listed_with_attempts(state, recent).await?;
    let csrf = &session.csrf_token;
    let id = subscription.id;
    let return_to = format!("/subscriptions/{id}");
    let body = html! {
        nav aria-label="Breadcrumb" class="muted" { a href="/subscriptions" { "Subscriptions" } " / " (id) }
        div class="page-header" {
            div {
                h1 class="mono" { (destination_summary(&subscription.destination)) }
                p { (enabled_badge(subscription))
                    @if let Some(reason) = &subscription.disabled_reason { " " (reason) } }
            }
            div class="actions" {
                @if subscription.enabled {
                    form method="post" action={ "/subscriptions/" (id) "/disable" } class="inline" {
                        (layout::csrf_field(csrf))
                        button type="submit" class="button" { "Disable" }
                    }
                } @else {
                    form method="post" action={ "/subscriptions/" (id) "/enable" } class="inline" {
                        (layout::csrf_field(csrf))
                        button type="submit" class="button button-primary" { "Enable" }
                    }
                }
                form method="post" action={ "/subscriptions/" (id) "/rotate-secret" } class="inline" {
                    (layout::csrf_field(csrf))
                    button type="submit" class="button" { "Rotate secret" }
                }
                a class="button" href={ "/dead-letters?subscription=" (id) } { "Dead letters" }
            }
        }
        (layout::notice(notice))
        @if let Some(since) = subscription.failing_since {
            p class="form-error" role="alert" { "Deliveries have been failing since " (layout::time(since)) "." }
        }
        section class="card" aria-labelledby="recent-heading" {
            h2 id="recent-heading" { "Recent deliveries" }
            div data-live="3" {
                @if recent.is_empty() {
                    p class="muted" { "Nothing delivered yet." }
                }
                @for delivery in &recent {
                    (delivery_block(delivery, csrf, &return_to))
                }
            }
        }
        section class="card" aria-labelledby="edit-heading" {
            h2 id="edit-heading" { "Edit" }
            (layout::form_error(error))
            form method="post" action={ "/subscriptions/" (id) } {
                (subscription_fields(csrf, form, &connections, false))
                button type="submit" class="button button-primary" { "Save changes" }
            }
        }
        section class="card" aria-labelledby="delete-heading" {
            h2 id="delete-heading" { "Delete" }
            details class="danger-zone" {
                summary { "Delete this subscription…" }
                p { "Its deliveries are deleted with it; events are no longer delivered here." }
                form method="post" action={ "/subscriptions/" (id) "/delete" } {
                    (layout::csrf_field(csrf))
                    button type="submit" class="button button-danger" { "Delete subscription" }
                }
            }
        }
    };
    Ok(layout::page(
        "Subscription",
        Section::Subscriptions,
        Viewer::Company(session),
        body,
    ))
}

/// `POST /subscriptions/:id`: saves the edit form.
#[handler]
pub async fn update(
    state: Data<&AppState>,
    req: &Request,
    Path(id): Path<String>,
    Form(form): Form<SubscriptionForm>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    session.check_csrf(&form.csrf_token)?;
    let destination = form.destination();
    let patch = SubscriptionPatch {
        url: None,
        destination: destination.as_ref().ok().cloned(),
        event_types: Some(form.event_types()),
        enabled: None,
        description: Some(form.description.trim().to_owned()),
        filters: Some(form.filters()),
    };
    let saved = match destination {
        Ok(_) => update_subscription(&state, session.company.id, &id, patch).await,
        Err(problem) => Err(crate::error::ApiError::unprocessable(problem)),
    };
    match saved {
        Ok(saved) => Ok(layout::see_other(
            &Notice::SubscriptionSaved.url(&format!("/subscriptions/{}", saved.id)),
        )),
        Err(error)
            if error.status().is_client_error() && error.status() != StatusCode::NOT_FOUND =>
        {
            let subscription = SubscriptionOut::from_model(
                find_subscription(&state, session.company.id, &id)
                    .await
                    .or_page()?,
                &state.cipher,
            );
            let page = detail_page(
                &state,
                &session,
                &subscription,
                None,
                Some(&error.body().detail),
                &form,
            )
            .await?;
            Ok(layout::html_with_status(
                StatusCode::UNPROCESSABLE_ENTITY,
                page,
            ))
        }
        Err(error) => Err(layout::error_page(error)),
    }
}

async fn set_enabled(
    state: &AppState,
    req: &Request,
    id: &str,
    form: &ButtonForm,
    enabled: bool,
) -> poem::Result<Response> {
    let session = session::require_company(state, req).await?;
    session.check_csrf(&form.csrf_token)?;
    let patch = SubscriptionPatch {
        url: None,
        destination: None,
        event_types: None,
        enabled: Some(enabled),
        description: None,
        filters: None,
    };
    let saved = update_subscription(state, session.company.id, id, patch)
        .await
        .or_page()?;
    let notice = if enabled {
        Notice::SubscriptionEnabled
    } else {
        Notice::SubscriptionDisabled
    };
    Ok(layout::see_other(
        &notice.url(&format!("/subscriptions/{}", saved.id)),
    ))
}

/// `POST /subscriptions/:id/enable`.
#[handler]
pub async fn enable(
    state: Data<&AppState>,
    req: &Request,
    Path(id): Path<String>,
    Form(form): Form<ButtonForm>,
) -> poem::Result<Response> {
    set_enabled(&state, req, &id, &form, true).await
}

/// `POST /subscriptions/:id/disable`.
#[handler]
pub async fn disable(
    state: Data<&AppState>,
    req: &Request,
    Path(id): Path<String>,
    Form(form): Form<ButtonForm>,
) -> poem::Result<Response> {
    set_enabled(&state, req, &id, &form, false).await
}

/// `POST /subscriptions/:id/rotate-secret`: a new signing secret, shown once.
#[handler]
pub async fn rotate(
    state: Data<&AppState>,
    req: &Request,
    Path(id): Path<String>,
    Form(form): Form<ButtonForm>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    session.check_csrf(&form.csrf_token)?;
    let rotated = rotate_secret(&state, session.company.id, &id)
        .await
        .or_page()?;
    Ok(layout::html_response(secret_page(
        &session,
        "Secret rotated",
        &rotated,
    )))
}

/// `POST /subscriptions/:id/delete`.
#[handler]
pub async fn delete(
    state: Data<&AppState>,
    req: &Request,
    Path(id): Path<String>,
    Form(form): Form<ButtonForm>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    session.check_csrf(&form.csrf_token)?;
    delete_subscription(&state, session.company.id, &id)
        .await
        .or_page()?;
    Ok(layout::see_other(
        &Notice::SubscriptionDeleted.url("/subscriptions"),
    ))
}
