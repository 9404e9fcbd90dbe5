//! One task at a time per key: the per-key single flight of hookline.
//!
//! The TokenManager refreshes each OAuth grant in one task per process (the others wait and then
//! find the fresh token), and the API's connection cache reads each connection once while a
//! burst of webhooks for it waits. Both use this one mechanism: a map of async mutexes by key,
//! whose entry goes away when the last holder or waiter is done with it, so the map stays as
//! small as the number of keys in use.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

type Locks<K> = Arc<Mutex<HashMap<K, Arc<AsyncMutex<()>>>>>;

/// Async mutexes by key. Cheap to clone; clones share the locks.
#[derive(Debug)]
pub struct KeyedLock<K> {
    locks: Locks<K>,
}

impl<K> Clone for KeyedLock<K> {
    fn clone(&self) -> Self {
        Self {
            locks: Arc::clone(&self.locks),
        }
    }
}

impl<K: Eq + Hash + Clone> Default for KeyedLock<K> {
    fn default() -> Self {
        Self {
            locks: Arc::default(),
        }
    }
}

impl<K: Eq + Hash + Clone> KeyedLock<K> {
    /// An empty set of locks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until no other task holds `key`, then holds it until the guard is dropped.
    /// Abandoning the wait (dropping the future) is safe.
    pub async fn lock(&self, key: K) -> KeyedGuard<K> {
        let lock = {
            let mut locks = self.map();
            Arc::clone(locks.entry(key.clone()).or_default())
        };
        let guard = lock.lock_owned().await;
        KeyedGuard {
            key: Some(key),
            locks: Arc::clone(&self.locks),
            guard: Some(guard),
        }
    }

    /// How many keys have an entry (held or waited for); for tests.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no key is held or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<AsyncMutex<()>>>> {
        // A panic inside the short critical sections below leaves the map intact.
        self.locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Holds one key of a [`KeyedLock`]; releases it when dropped.
#[derive(Debug)]
pub struct KeyedGuard<K: Eq + Hash> {
    key: Option<K>,
    locks: Locks<K>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl<K: Eq + Hash> Drop for KeyedGuard<K> {
    fn drop(&mut self) {
        let (Some(key), Some(guard)) = (self.key.take(), self.guard.take()) else {
            return;
        };
        let lock = Arc::clone(OwnedMutexGuard::mutex(&guard));
        drop(guard);
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The map's reference and ours: nobody else holds or waits for the key. Waiters take
        // their reference under the map's lock, which is held here, so none can appear now.
        if Arc::strong_count(&lock) <= 2 {
            locks.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_key_and_entries_go_away() {
        let locks = KeyedLock::<u32>::new();
        let first = locks.lock(1).await;
        // Another key is independent.
        let other = locks.lock(2).await;
        drop(other);
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _second = locks.lock(1).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the second holder waits");
        drop(first);
        waiting.await.expect("the waiter gets the key");
        assert!(
            locks.is_empty(),
            "no entry is kept once nobody uses the key"
        );
    }
}
