//! `Deliver`: POST one delivery to its subscriber.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::queue::Job;

/// Deliver one `delivery` row to its subscription's URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    /// `delivery.id`.
    pub delivery_id: Uuid,
}

impl Job for Deliver {
    const QUEUE: &'static str = "deliver";
}
