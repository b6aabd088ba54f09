//! Consumer state held in memory, for tests and examples.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{CheckpointStore, DeadLetter, DeadLetterStore};
use crate::Result;

/// Checkpoints and dead letters in memory (lost on restart: never the server's choice).
#[derive(Default)]
pub struct InMemoryCheckpoints {
    checkpoints: Mutex<HashMap<String, u64>>,
    letters: Mutex<HashMap<String, BTreeMap<u64, DeadLetter>>>,
}

impl InMemoryCheckpoints {
    /// Empty state.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CheckpointStore for InMemoryCheckpoints {
    async fn load_checkpoint(&self, consumer: &str) -> Result<Option<u64>> {
        Ok(lock(&self.checkpoints).get(consumer).copied())
    }

    async fn save_checkpoint(&self, consumer: &str, position: u64) -> Result<()> {
        let mut checkpoints = lock(&self.checkpoints);
        let stored = checkpoints.entry(consumer.to_owned()).or_insert(position);
        *stored = (*stored).max(position);
        Ok(())
    }

    async fn reset_checkpoint(&self, consumer: &str) -> Result<()> {
        lock(&self.checkpoints).remove(consumer);
        Ok(())
    }
}

#[async_trait]
impl DeadLetterStore for InMemoryCheckpoints {
    async fn park(&self, letters: &[DeadLetter]) -> Result<()> {
        let mut all = lock(&self.letters);
        for letter in letters {
            all.entry(letter.consumer.clone())
                .or_default()
                .insert(letter.global_position, letter.clone());
        }
        Ok(())
    }

    async fn dead_letters(&self, consumer: &str) -> Result<Vec<DeadLetter>> {
        Ok(lock(&self.letters)
            .get(consumer)
            .map(|letters| letters.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn remove_dead_letter(&self, consumer: &str, global_position: u64) -> Result<bool> {
        Ok(lock(&self.letters)
            .get_mut(consumer)
            .and_then(|letters| letters.remove(&global_position))
            .is_some())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
