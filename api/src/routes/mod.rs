//! The HTTP API, one file per resource.

pub mod companies;
pub mod connections;
pub mod deliveries;
pub mod events;
pub mod health;
pub mod jira_issues;
pub mod jira_webhooks;
pub mod oauth;
pub(crate) mod page;
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
    /// Received events, their processing and deliveries; replays.
    Events,
    /// Where a company's events are delivered.
    Subscriptions,
    /// Deliveries to subscribers, their attempts, and retries.
    Deliveries,
    /// Health, readiness and metrics.
    Operations,
    /// Jira data read through a connection's OAuth token, and the dynamic webhooks registered
    /// with it.
    Jira,
}

/// Every API of the service, combined into one OpenAPI document.
pub type Apis = (
    webhook::WebhookApi,
    companies::CompanyApi,
    connections::ConnectionApi,
    events::EventApi,
    health::HealthApi,
    oauth::OAuthApi,
    jira_issues::JiraIssueApi,
    jira_webhooks::JiraWebhookApi,
    subscriptions::SubscriptionApi,
    deliveries::DeliveryApi,
);

/// Every API of the service, as one OpenAPI service.
pub fn apis() -> Apis {
    (
        webhook::WebhookApi,
        companies::CompanyApi,
        connections::ConnectionApi,
        events::EventApi,
        health::HealthApi,
        oauth::OAuthApi,
        jira_issues::JiraIssueApi,
        jira_webhooks::JiraWebhookApi,
        subscriptions::SubscriptionApi,
        deliveries::DeliveryApi,
    )
}
