//! A key table in memory, for tests and the in-memory store.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{KeyTable, StoredKey};
use crate::Result;

/// A [`KeyTable`] kept in a map (nothing survives the process).
#[derive(Debug, Default)]
pub struct InMemoryKeyTable {
    rows: Mutex<HashMap<String, StoredKey>>,
}

impl InMemoryKeyTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, HashMap<String, StoredKey>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl KeyTable for InMemoryKeyTable {
    async fn load(&self, subject: &str) -> Result<Option<StoredKey>> {
        Ok(self.rows().get(subject).cloned())
    }

    async fn insert(&self, subject: &str, wrapped: &[u8]) -> Result<StoredKey> {
        Ok(self
            .rows()
            .entry(subject.to_owned())
            .or_insert_with(|| StoredKey::Wrapped(wrapped.to_vec()))
            .clone())
    }

    async fn forget(&self, subject: &str) -> Result<bool> {
        let previous = self.rows().insert(subject.to_owned(), StoredKey::Forgotten);
        Ok(matches!(previous, Some(StoredKey::Wrapped(_))))
    }

    async fn any_wrapped(&self) -> Result<Option<(String, Vec<u8>)>> {
        Ok(self.rows().iter().find_map(|(subject, row)| match row {
            StoredKey::Wrapped(wrapped) => Some((subject.clone(), wrapped.clone())),
            StoredKey::Forgotten => None,
        }))
    }
}
