//! The in-process backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flexcore_app::Result;
use flexcore_app::query_cache::CacheBackend;
use moka::Expiry;

/// The default capacity of [`MokaCache`]: 64 MiB of keys and values.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Clone)]
struct Entry {
    value: Arc<[u8]>,
    ttl: Duration,
}

/// Each entry lives for the TTL it was stored with.
struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, entry: &Entry, _now: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &Entry,
        _now: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// An in-process cache: entries in a `moka` cache bounded in bytes (least recently and
/// frequently used first out) with each entry's own TTL; tag versions in a map.
///
/// The map holds one counter per distinct tag name bumped; the query-cache middleware only
/// passes its bounded set of version slots (`flexcore_app::query_cache::TAG_SLOTS`), so the
/// map stays small. Counters are never evicted: a counter that went back to 0 would make old
/// entries reachable again.
pub struct MokaCache {
    entries: moka::future::Cache<String, Entry>,
    versions: Mutex<HashMap<String, u64>>,
}

impl MokaCache {
    /// A cache holding at most `max_bytes` of keys and values.
    pub fn new(max_bytes: u64) -> Self {
        let entries = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, entry: &Entry| {
                u32::try_from(key.len() + entry.value.len()).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        Self {
            entries,
            versions: Mutex::default(),
        }
    }

    /// How many entries are stored (approximate until moka runs its pending maintenance).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    fn versions(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.versions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for MokaCache {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BYTES)
    }
}

impl std::fmt::Debug for MokaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MokaCache")
            .field("entries", &self.entries.entry_count())
            .field("weighted_size", &self.entries.weighted_size())
            .finish()
    }
}

#[async_trait]
impl CacheBackend for MokaCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.entries.get(key).await.map(|e| e.value.to_vec()))
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        let entry = Entry {
            value: value.into(),
            ttl,
        };
        self.entries.insert(key.to_owned(), entry).await;
        Ok(())
    }

    async fn tag_versions(&self, tags: &[String]) -> Result<Vec<u64>> {
        let versions = self.versions();
        Ok(tags
            .iter()
            .map(|t| versions.get(t).copied().unwrap_or(0))
            .collect())
    }

    async fn bump_tags(&self, tags: &[String]) -> Result<()> {
        let mut versions = self.versions();
        for tag in tags {
            *versions.entry(tag.clone()).or_insert(0) += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Entries, TTLs and tag versions: the cache-backend conformance suite (tests/).

    #[tokio::test]
    async fn capacity_is_bounded_in_bytes() {
        let cache = MokaCache::new(10_000);
        for i in 0..100 {
            cache
                .put(&format!("k{i}"), vec![0; 1000], Duration::from_secs(60))
                .await
                .unwrap();
        }
        cache.entries.run_pending_tasks().await;
        assert!(cache.entries.weighted_size() <= 10_000);
        assert!(cache.entry_count() < 100);
    }
}
