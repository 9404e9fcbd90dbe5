//! The entities under their table names, for `use entity::prelude::*`.

pub use super::api_key::Entity as ApiKey;
pub use super::company::Entity as Company;
pub use super::console_session::Entity as ConsoleSession;
pub use super::delivery::Entity as Delivery;
pub use super::delivery_attempt::Entity as DeliveryAttempt;
pub use super::jira_webhook::Entity as JiraWebhook;
pub use super::oauth_grant::Entity as OauthGrant;
pub use super::oauth_state::Entity as OauthState;
pub use super::periodic_task::Entity as PeriodicTask;
pub use super::plugin_connection::Entity as PluginConnection;
pub use super::subscription::Entity as Subscription;
pub use super::webhook_event::Entity as WebhookEvent;
