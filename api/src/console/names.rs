//! Names the console shows instead of ids: connections by site name, subscriptions by URL.

use std::collections::HashMap;

use maud::{Markup, html};
use uuid::Uuid;

use crate::console::layout::OrErrorPage as _;
use crate::routes::connections::list_connections;
use crate::routes::page::{MAX_PAGE, Page};
use crate::routes::subscriptions::{SubscriptionOut, list_subscriptions};
use crate::state::AppState;

const ALL: Page = Page {
    limit: MAX_PAGE,
    cursor: None,
};

/// The company's connections: id → site name.
pub async fn connection_names(
    state: &AppState,
    company_id: Uuid,
) -> poem::Result<HashMap<Uuid, String>> {
    let connections = list_connections(state, company_id, ALL).await.or_page()?;
    Ok(connections
        .items
        .into_iter()
        .map(|connection| (connection.id, connection.external_name))
        .collect())
}

/// A connection's name, or its id when it is not known.
pub fn connection_label(names: &HashMap<Uuid, String>, id: Uuid) -> Markup {
    html! {
        @match names.get(&id) {
            Some(name) => (name),
            None => code { (id) },
        }
    }
}

/// The company's subscriptions, oldest first.
pub async fn subscriptions(
    state: &AppState,
    company_id: Uuid,
) -> poem::Result<Vec<SubscriptionOut>> {
    Ok(list_subscriptions(state, company_id, ALL)
        .await
        .or_page()?
        .items)
}
