//! The key vault: data keys per subject, wrapped in the store's key table, cached unwrapped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::gdpr::{DataKey, KeyTable, StoredKey, SubjectKey, SubjectKeys};
use flexcore_app::{Error, Result};
use moka::future::Cache;

use crate::MasterKey;

/// How the vault caches.
#[derive(Debug, Clone, Copy)]
pub struct VaultOptions {
    /// How long an unwrapped key (or a subject's forgotten state) stays cached. A subject
    /// forgotten on another node stays readable here for at most this long; forgetting on this
    /// node takes effect at once.
    pub cache_ttl: Duration,
    /// The most subjects cached.
    pub cache_capacity: u64,
}

impl Default for VaultOptions {
    /// 60 s, 100,000 subjects.
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(60),
            cache_capacity: 100_000,
        }
    }
}

/// What the cache holds for a subject (an absent key is never cached: another node may
/// create it at any time).
#[derive(Clone)]
enum Cached {
    Active(Arc<dyn DataKey>),
    Forgotten,
}

/// The [`SubjectKeys`] of a store: random AES-256 data keys, wrapped by the [`MasterKey`] in
/// the store's [`KeyTable`], unwrapped keys cached.
pub struct KeyVault {
    table: Arc<dyn KeyTable>,
    master: MasterKey,
    cache: Cache<String, Cached>,
}

impl KeyVault {
    /// A vault over `table`. Checks the master key against a stored wrapped key first, so a
    /// wrong master key file stops the start instead of failing reads later.
    pub async fn open(
        table: Arc<dyn KeyTable>,
        master: MasterKey,
        options: VaultOptions,
    ) -> Result<Self> {
        if let Some((subject, wrapped)) = table.any_wrapped().await? {
            master.unwrap_data_key(&subject, &wrapped)?;
        }
        Ok(Self {
            table,
            master,
            cache: Cache::builder()
                .max_capacity(options.cache_capacity)
                .time_to_live(options.cache_ttl)
                .build(),
        })
    }

    /// Unwraps and caches a stored row.
    async fn remember(&self, subject: &str, stored: StoredKey) -> Result<Cached> {
        let cached = match stored {
            StoredKey::Wrapped(wrapped) => {
                Cached::Active(Arc::new(self.master.unwrap_data_key(subject, &wrapped)?))
            }
            StoredKey::Forgotten => Cached::Forgotten,
        };
        self.cache.insert(subject.to_owned(), cached.clone()).await;
        Ok(cached)
    }

    async fn lookup(&self, subject: &str) -> Result<Option<Cached>> {
        if let Some(cached) = self.cache.get(subject).await {
            return Ok(Some(cached));
        }
        match self.table.load(subject).await? {
            Some(stored) => Ok(Some(self.remember(subject, stored).await?)),
            None => Ok(None),
        }
    }
}

fn forgotten(subject: &str) -> Error {
    Error::validation(format!(
        "the personal data of subject '{subject}' was erased (forgotten); it cannot take new \
         personal data"
    ))
}

#[async_trait]
impl SubjectKeys for KeyVault {
    async fn get_or_create(&self, subject: &str) -> Result<Arc<dyn DataKey>> {
        let cached = match self.lookup(subject).await? {
            Some(cached) => cached,
            None => {
                let (_, wrapped) = self.master.new_data_key(subject)?;
                // The row that is stored wins: ours, another node's key, or a tombstone.
                let stored = self.table.insert(subject, &wrapped).await?;
                self.remember(subject, stored).await?
            }
        };
        match cached {
            Cached::Active(key) => Ok(key),
            Cached::Forgotten => Err(forgotten(subject)),
        }
    }

    async fn get(&self, subject: &str) -> Result<SubjectKey> {
        Ok(match self.lookup(subject).await? {
            Some(Cached::Active(key)) => SubjectKey::Active(key),
            Some(Cached::Forgotten) => SubjectKey::Forgotten,
            None => SubjectKey::Absent,
        })
    }

    async fn forget(&self, subject: &str) -> Result<bool> {
        let existed = self.table.forget(subject).await?;
        self.cache
            .insert(subject.to_owned(), Cached::Forgotten)
            .await;
        Ok(existed)
    }
}
