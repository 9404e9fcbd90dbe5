//! The HTTP API, one file per resource.

pub mod companies;
pub mod connections;
pub mod deliveries;
pub mod health;
pub mod subscriptions;
pub mod webhook;

use poem_openapi::Tags;

/// The groups operations are listed under in the OpenAPI document.
#[derive(Tags)]
pub enum ApiTags {
    /// Where Jira posts its webhooks.
    Webhooks,
    /// Tenants and their API keys (admin).
    Companies,
    /// Connected Jira sites and their webhook URLs.
    Connections,
    /// Where a company's events are delivered.
    Subscriptions,
    /// Deliveries to subscribers, their attempts, and retries.
    Deliveries,
    /// Health, readiness and metrics.
    Operations,
}

/// Every API of the service, as one OpenAPI service.
pub fn apis() -> (
    webhook::WebhookApi,
    companies::CompanyApi,
    connections::ConnectionApi,
    health::HealthApi,
    subscriptions::SubscriptionApi,
    deliveries::DeliveryApi,
) {
    (
        webhook::WebhookApi,
        companies::CompanyApi,
        connections::ConnectionApi,
        health::HealthApi,
        subscriptions::SubscriptionApi,
        deliveries::DeliveryApi,
    )
}

/// Default and maximum page sizes of list operations.
pub(crate) const DEFAULT_PAGE: u64 = 50;
/// The largest page a list operation returns.
pub(crate) const MAX_PAGE: u64 = 200;
