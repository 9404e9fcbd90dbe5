//! Provider plugins for hookline.
//!
//! A plugin knows one provider's webhooks and API. Today there is one, [`jira`]: how Jira signs
//! its webhooks, how a delivery is identified for deduplication, and (in later stages) how its
//! payloads parse into typed events and how its REST API is called.

pub mod jira;
pub mod keyed_lock;
pub mod retry_after;
