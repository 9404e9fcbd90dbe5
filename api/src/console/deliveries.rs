//! Deliveries as the event and subscription pages show them (with every attempt), and
//! `POST /deliveries/:id/retry`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use maud::{Markup, html};
use poem::web::{Data, Form, Path};
use poem::{Request, Response, handler};
use serde::Deserialize;
use uuid::Uuid;

use crate::console::layout::{self, OrErrorPage as _};
use crate::console::names;
use crate::console::notice::Notice;
use crate::console::session::{self, CompanySession};
use crate::routes::deliveries::{DeliveryAttemptOut, DeliveryOut, attempts_of, retry_delivery};
use crate::routes::events::EventDeliveryOut;
use crate::state::AppState;

/// A delivery with what the page shows about it.
pub struct DeliveryView {
    /// The delivery's id (the `webhook-id` subscribers see).
    pub id: Uuid,
    /// The event delivered.
    pub event_id: Option<Uuid>,
    /// The subscription.
    pub subscription_id: Uuid,
    /// Where the subscription delivers.
    pub subscription_url: Option<String>,
    /// `pending`, `in_flight`, `succeeded` or `dead`.
    pub status: String,
    /// When the next attempt is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it succeeded.
    pub delivered_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first.
    pub attempts: Vec<DeliveryAttemptOut>,
}

/// The event's deliveries with their attempts and subscription URLs.
pub async fn deliveries_with_attempts(
    state: &AppState,
    session: &CompanySession,
    deliveries: &[EventDeliveryOut],
) -> poem::Result<Vec<DeliveryView>> {
    let ids: Vec<Uuid> = deliveries.iter().map(|delivery| delivery.id).collect();
    let mut attempts = attempts_of(state, &ids).await.or_page()?;
    let urls = subscription_urls(state, session).await?;
    Ok(deliveries
        .iter()
        .map(|delivery| DeliveryView {
            id: delivery.id,
            event_id: None,
            subscription_id: delivery.subscription_id,
            subscription_url: urls.get(&delivery.subscription_id).cloned(),
            status: delivery.status.clone(),
            next_attempt_at: delivery.next_attempt_at,
            delivered_at: delivery.delivered_at,
            attempts: attempts.remove(&delivery.id).unwrap_or_default(),
        })
        .collect())
}

/// Listed deliveries (of one subscription) with their attempts.
pub async fn listed_with_attempts(
    state: &AppState,
    deliveries: Vec<DeliveryOut>,
) -> poem::Result<Vec<DeliveryView>> {
    let ids: Vec<Uuid> = deliveries.iter().map(|delivery| delivery.id).collect();
    let mut attempts = attempts_of(state, &ids).await.or_page()?;
    Ok(deliveries
        .into_iter()
        .map(|delivery| DeliveryView {
            attempts: attempts.remove(&delivery.id).unwrap_or_default(),
            id: delivery.id,
            event_id: Some(delivery.event_id),
            subscription_id: delivery.subscription_id,
            subscription_url: None,
            status: delivery.status,
            next_attempt_at: delivery.next_attempt_at,
            delivered_at: delivery.delivered_at,
        })
        .collect())
}

async fn subscription_urls(
    state: &AppState,
    session: &CompanySession,
) -> poem::Result<HashMap<Uuid, String>> {
    Ok(names::subscriptions(state, session.company.id)
        .await?
        .into_iter()
        .map(|subscription| (subscription.id, subscription.url))
        .collect())
}

/// One delivery: its status, a `Retry` button, and its attempts.
pub fn delivery_block(delivery: &DeliveryView, csrf: &str, return_to: &str) -> Markup {
    html! {
        article class="delivery" aria-label={ "Delivery " (delivery.id) } data-delivery-id=(delivery.id) {
            div class="delivery-header" {
                div {
                    h3 {
                        @if let Some(url) = &delivery.subscription_url {
                            "To " a href={ "/subscriptions/" (delivery.subscription_id) } class="mono" { (url) }
                        } @else if let Some(event_id) = delivery.event_id {
                            "Event " a href={ "/events/" (event_id) } class="mono" { (event_id) }
                        }
                    }
                    p class="muted mono" { "webhook-id " (delivery.id) }
                }
                div class="actions" {
                    (layout::status_badge(&delivery.status))
                    @if delivery.status != entity::delivery::status::IN_FLIGHT {
                        form method="post" action={ "/deliveries/" (delivery.id) "/retry" } class="inline" {
                            (layout::csrf_field(csrf))
                            input type="hidden" name="return_to" value=(return_to);
                            button type="submit" class="button button-small" { "Retry" }
                        }
                    }
                }
            }
            @if let Some(at) = delivery.delivered_at {
                p class="muted" { "Delivered " (layout::time(at)) }
            } @else if let Some(at) = delivery.next_attempt_at.filter(|_| delivery.status == entity::delivery::status::PENDING) {
                p class="muted" { "Next attempt " (layout::time(at)) }
            }
            (attempts_table(&delivery.attempts))
        }
    }
}

fn attempts_table(attempts: &[DeliveryAttemptOut]) -> Markup {
    html! {
        @if attempts.is_empty() {
            p class="muted" { "No attempt yet." }
        } @else {
            div class="table-wrap" {
                table {
                    thead {
                        tr {
                            th scope="col" { "Attempt" }
                            th scope="col" { "Started" }
                            th scope="col" { "Duration" }
                            th scope="col" { "Status code" }
                            th scope="col" { "Error" }
                            th scope="col" { "Response" }
                        }
                    }
                    tbody {
                        @for attempt in attempts {
                            tr {
                                td { (attempt.attempt) }
                                td class="nowrap" { (layout::time(attempt.started_at)) }
                                td class="nowrap" { (attempt.duration_ms) " ms" }
                                td {
                                    @match attempt.status_code {
                                        Some(code) if (200..300).contains(&code) => (layout::status_badge_text("ok", &code.to_string())),
                                        Some(code) => (layout::status_badge_text("bad", &code.to_string())),
                                        None => span class="muted" { "no response" },
                                    }
                                }
                                td { (attempt.error.as_deref().unwrap_or("—")) }
                                td class="excerpt" { (attempt.response_excerpt.as_deref().unwrap_or("—")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The retry form's fields.
#[derive(Debug, Deserialize)]
pub struct RetryForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    return_to: String,
}

/// `POST /deliveries/:id/retry`: one more attempt now, then back to the page it came from.
#[handler]
pub async fn retry(
    state: Data<&AppState>,
    req: &Request,
    Path(id): Path<String>,
    Form(form): Form<RetryForm>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    session.check_csrf(&form.csrf_token)?;
    let delivery = retry_delivery(&state, session.company.id, &id)
        .await
        .or_page()?;
    let back = local_path(&form.return_to)
        .map_or_else(|| format!("/events/{}", delivery.event_id), str::to_owned);
    Ok(layout::see_other(&Notice::DeliveryRetried.url(&back)))
}

/// `path` if it is a path of this console (not another site's URL).
pub fn local_path(path: &str) -> Option<&str> {
    (path.starts_with('/') && !path.starts_with("//") && !path.contains('\\')).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_of_the_console_are_returned_to() {
        assert_eq!(local_path("/events/1"), Some("/events/1"));
        assert_eq!(local_path("//evil.example/x"), None);
        assert_eq!(local_path("https://evil.example/"), None);
        assert_eq!(local_path("/\\evil.example"), None);
        assert_eq!(local_path(""), None);
    }
}
