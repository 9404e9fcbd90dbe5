//! `/dead-letters`: deliveries that used up their attempts, per subscription, with `Retry` and
//! `Retry all`.

use chrono::{DateTime, Utc};
use maud::html;
use poem::web::{Data, Form, Path, Query};
use poem::{Request, Response, handler};
use serde::Deserialize;
use uuid::Uuid;

use crate::console::deliveries::{delivery_block, listed_with_attempts};
use crate::console::layout::{self, OrErrorPage as _, Section, Viewer};
use crate::console::names;
use crate::console::notice::Notice;
use crate::console::session;
use crate::routes::deliveries::{DeliveryFilter, list_deliveries, retry_dead_deliveries};
use crate::routes::page::{MAX_PAGE, Page};
use crate::state::AppState;

/// The page's query string.
#[derive(Debug, Default, Deserialize)]
pub struct DeadLettersQuery {
    /// Only this subscription's dead letters.
    subscription: Option<String>,
    notice: Option<String>,
}

/// `GET /dead-letters`.
#[handler]
pub async fn dead_letters_page(
    state: Data<&AppState>,
    req: &Request,
    Query(query): Query<DeadLettersQuery>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    let only = query
        .subscription
        .as_deref()
        .and_then(|id| Uuid::parse_str(id).ok());
    let subscriptions: Vec<_> = names::subscriptions(&state, session.company.id)
        .await?
        .into_iter()
        .filter(|subscription| only.is_none_or(|id| id == subscription.id))
        .collect();
    let mut groups = Vec::new();
    for subscription in subscriptions {
        let filter = DeliveryFilter {
            status: Some(entity::delivery::status::DEAD.to_owned()),
            subscription_id: Some(subscription.id),
            event_id: None,
        };
        let page = Page {
            limit: MAX_PAGE,
            cursor: None,
        };
        let dead = list_deliveries(&state, session.company.id, &filter, page)
            .await
            .or_page()?;
        let more = dead.next_cursor.is_some();
        let dead = listed_with_attempts(&state, dead.items).await?;
        if !dead.is_empty() || only.is_some() {
            groups.push((subscription, dead, more));
        }
    }
    let notice = Notice::parse(query.notice.as_deref()).map(Notice::text);
    let csrf = &session.csrf_token;
    let return_to = match only {
        Some(id) => format!("/dead-letters?subscription={id}"),
        None => "/dead-letters".to_owned(),
    };
    let body = html! {
        div class="page-header" {
            div {
                h1 { "Dead letters" }
                p { "Deliveries that failed every attempt. Fix the destination, then retry them." }
            }
            @if only.is_some() { a class="button" href="/dead-letters" { "All subscriptions" } }
        }
        (layout::notice(notice))
        @if groups.is_empty() {
            section class="card empty" {
                h2 { "No dead letters" }
                p { "Every delivery succeeded or is still being retried." }
            }
        }
        @for (subscription, dead, more) in &groups {
            section class="card" aria-labelledby={ "dead-" (subscription.id) } data-subscription-id=(subscription.id) {
                div class="card-header" {
                    div {
                        h2 id={ "dead-" (subscription.id) } {
                            a class="mono" href={ "/subscriptions/" (subscription.id) } { (subscription.url) }
                        }
                        p {
                            (dead.len()) @if *more { "+" } " dead "
                            @if dead.len() == 1 { "delivery" } @else { "deliveries" }
                        }
                    }
                    @if !dead.is_empty() {
                        form method="post" action={ "/dead-letters/" (subscription.id) "/retry-all" } class="inline" {
                            (layout::csrf_field(csrf))
                            input type="hidden" name="return_to" value=(return_to);
                            button type="submit" class="button button-primary" { "Retry all" }
                        }
                    }
                }
                @if dead.is_empty() { p class="muted" { "No dead delivery." } }
                @for delivery in dead {
                    (delivery_block(delivery, csrf, &return_to))
                }
            }
        }
    };
    Ok(layout::html_response(layout::page(
        "Dead letters",
        Section::DeadLetters,
        Viewer::Company(&session),
        body,
    )))
}

/// The `Retry all` form's fields.
#[derive(Debug, Deserialize)]
pub struct RetryAllForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    return_to: String,
}

/// `POST /dead-letters/:subscription_id/retry-all`.
#[handler]
pub async fn retry_all(
    state: Data<&AppState>,
    req: &Request,
    Path(subscription_id): Path<String>,
    Form(form): Form<RetryAllForm>,
) -> poem::Result<Response> {
    let session = session::require_company(&state, req).await?;
    session.check_csrf(&form.csrf_token)?;
    retry_dead_deliveries(
        &state,
        session.company.id,
        &subscription_id,
        DateTime::<Utc>::UNIX_EPOCH,
    )
    .await
    .or_page()?;
    let back = crate::console::deliveries::local_path(&form.return_to).unwrap_or("/dead-letters");
    Ok(layout::see_other(&Notice::DeadRetried.url(back)))
}
