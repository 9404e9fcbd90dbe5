//! The apalis jobs, one file per job. Payloads carry ids only: the row is the truth.

pub mod deliver;
pub mod process_event;

pub use deliver::{Deliver, DeliverRetry};
pub use process_event::ProcessEvent;
