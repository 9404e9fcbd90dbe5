//! Subscriptions per company, cached between batches, and never stale for an event: a cached
//! list serves an event only if it was read after the event was received (DESIGN §4), so a
//! subscription created or changed before an event arrived is always seen by it.
//!
//! During a backlog every event was received long before the cache was filled, so one read per
//! company serves the whole backlog; at a steady trickle each batch reads once, in one query for
//! all its companies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::subscription;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use uuid::Uuid;

/// Allowance for the clocks of the API (which stamps `received_at`) and the worker (which
/// stamps the read) being apart.
const CLOCK_SKEW: chrono::Duration = chrono::Duration::milliseconds(500);

/// Entries not read again for this long are dropped, so the cache holds active companies only.
const IDLE: Duration = Duration::from_secs(300);

/// The enabled subscriptions of each company, with when they were read.
#[derive(Debug, Default)]
pub struct SubscriptionCache {
    entries: Mutex<HashMap<Uuid, Entry>>,
}

#[derive(Debug, Clone)]
struct Entry {
    read_at: DateTime<Utc>,
    subscriptions: Arc<Vec<subscription::Model>>,
}

impl SubscriptionCache {
    /// The enabled subscriptions of every company in `wanted`, each read after the newest
    /// `received_at` given for it. Reads what the cache cannot serve, in one query.
    pub async fn for_companies(
        &self,
        db: &DatabaseConnection,
        wanted: &HashMap<Uuid, DateTime<Utc>>,
    ) -> Result<HashMap<Uuid, Arc<Vec<subscription::Model>>>, DbErr> {
        let mut found = HashMap::with_capacity(wanted.len());
        let mut missing = Vec::new();
        {
            let entries = self.lock();
            for (&company_id, &newest_received_at) in wanted {
                match entries.get(&company_id) {
                    Some(entry) if entry.read_at > newest_received_at + CLOCK_SKEW => {
                        found.insert(company_id, entry.subscriptions.clone());
                    }
                    _ => missing.push(company_id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let read_at = Utc::now();
        let rows = subscription::Entity::find()
            .filter(subscription::Column::CompanyId.is_in(missing.iter().copied()))
            .filter(subscription::Column::Enabled.eq(true))
            .all(db)
            .await?;
        let mut by_company: HashMap<Uuid, Vec<subscription::Model>> = missing
            .iter()
            .map(|&company_id| (company_id, Vec::new()))
            .collect();
        for row in rows {
            by_company.entry(row.company_id).or_default().push(row);
        }
        let mut entries = self.lock();
        let idle = chrono::Duration::from_std(IDLE).unwrap_or(chrono::Duration::MAX);
        entries.retain(|_, entry| read_at - entry.read_at < idle);
        for (company_id, subscriptions) in by_company {
            let subscriptions = Arc::new(subscriptions);
            entries.insert(
                company_id,
                Entry {
                    read_at,
                    subscriptions: subscriptions.clone(),
                },
            );
            found.insert(company_id, subscriptions);
        }
        Ok(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
