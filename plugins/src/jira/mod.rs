//! The Jira Cloud plugin.

pub mod dynamic_webhooks;
pub mod event;
pub mod jwt;
mod lenient;
pub mod oauth;
pub mod rest;
pub mod token_manager;
pub mod webhook;

/// The plugin id stored in `plugin_connection.plugin_id` and sent to subscribers as `pluginId`.
pub const PLUGIN_ID: &str = "jira";
