//! The apalis jobs, one file per job. Payloads carry ids only: the row is the truth.

pub mod process_event;

pub use process_event::ProcessEvent;
