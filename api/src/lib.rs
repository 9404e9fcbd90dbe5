//! hookline's HTTP API and the process that runs it.
//!
//! [`Application::build`] turns [`config::Settings`] into a running process (API, workers or
//! both) bound to its port, so that tests can start the real thing on port 0 in-process.

pub mod allow;
pub mod auth;
pub mod body_budget;
pub mod body_guard;
pub mod check;
pub mod config;
pub mod connect_flow;
pub mod connection_cache;
pub mod consent;
pub mod console;
pub mod embedded;
pub mod error;
pub mod event_writer;
pub mod json_object;
pub mod metrics_catalog;
pub mod payload;
pub mod process_metrics;
pub mod rate_limit;
pub mod routes;
pub mod sink;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod webhook_body;

pub use startup::{Application, Role, openapi_spec};
