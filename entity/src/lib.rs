//! hookline's sea-orm entities, one module per table of DESIGN §3.
//!
//! The models mirror the `migration` crate column for column. Status columns are plain strings
//! in the database (portable to SQLite without enum types); each module's `status` constants
//! are the only values written to them.
//!
//! Company-owned tables have `Entity::find_for_company` / `Entity::find_by_id_for_company`:
//! request handlers start their queries there, so the tenant filter cannot be forgotten.

pub mod api_key;
pub mod cipher;
pub mod company;
pub mod console_session;
pub mod delivery;
pub mod delivery_attempt;
pub mod jira_webhook;
pub mod oauth_grant;
pub mod oauth_state;
pub mod periodic_task;
pub mod plugin_connection;
pub mod prelude;
pub mod subscription;
pub mod webhook_event;
