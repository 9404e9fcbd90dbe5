//! The apalis jobs, one file per job. Payloads carry ids only: the rows are the truth.

pub mod deliver;
pub mod process_events;

pub use deliver::{Deliver, DeliverRetry};
pub use process_events::ProcessEvents;
