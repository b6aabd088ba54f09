//! Durable subscriptions: named consumers of the global log with a stored checkpoint.
//!
//! A consumer handles events at least once, in log order: its checkpoint (the first position
//! not yet handled) is saved only after the events before it were handled or parked, so a
//! crash re-delivers, never skips. A failing handler is retried with backoff; after the last
//! attempt the event is *parked* as a dead letter, and every later event of the same stream is
//! parked behind it (waiting, not failed) so a stream's events are never handled out of order.
//! Other streams go on. An operator retries or skips a parked event; the stream's waiting
//! events are then handled in order and the stream is released.
//!
//! Consumer groups split one subscription across members by a stable hash of the stream id:
//! every event of a stream goes to the same member, and each member keeps its own checkpoint.
//!
//! The ports ([`CheckpointStore`], [`DeadLetterStore`]) are implemented by the SQLite and
//! PostgreSQL read-model stores and, for tests, by [`InMemoryCheckpoints`].

mod memory;
mod runner;

use async_trait::async_trait;
use flexcore_domain::{EventId, StreamId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use memory::InMemoryCheckpoints;
pub use runner::{
    ConsumerGroup, DurableConsumer, DurableOptions, SubscriptionControl, SubscriptionStatus,
};

use crate::Result;

/// Stores each consumer's checkpoint: the global position it continues from.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The position `consumer` continues from, `None` if it never saved one.
    async fn load_checkpoint(&self, consumer: &str) -> Result<Option<u64>>;

    /// Saves the position `consumer` continues from. Positions only move forward: saving a
    /// lower position than the stored one is ignored.
    async fn save_checkpoint(&self, consumer: &str, position: u64) -> Result<()>;

    /// Forgets a consumer's checkpoint (it starts over from its configured start).
    async fn reset_checkpoint(&self, consumer: &str) -> Result<()>;
}

/// Why an event is parked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ParkReason {
    /// The handler failed on this event `attempts` times; the last error is kept.
    Failed {
        /// How many times the handler ran on it.
        attempts: u32,
        /// The last error message.
        error: String,
    },
    /// An earlier event of the same stream is parked; this one waits behind it.
    Waiting,
}

/// An event a consumer could not handle (or that waits behind one), kept until an operator
/// retries or skips it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The consumer that parked it.
    pub consumer: String,
    /// The event's position in the global log (the key of the letter).
    pub global_position: u64,
    /// The event's stream.
    pub stream_id: StreamId,
    /// The event's id.
    pub event_id: EventId,
    /// The event's type.
    pub event_type: String,
    /// Why it is parked.
    pub reason: ParkReason,
    /// When it was parked.
    #[serde(with = "time::serde::rfc3339")]
    pub parked_at: OffsetDateTime,
}

/// Stores parked events per consumer.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Parks events (or updates letters already parked at the same positions).
    async fn park(&self, letters: &[DeadLetter]) -> Result<()>;

    /// A consumer's parked events, in position order.
    async fn dead_letters(&self, consumer: &str) -> Result<Vec<DeadLetter>>;

    /// Removes one letter; `false` if there was none at that position.
    async fn remove_dead_letter(&self, consumer: &str, global_position: u64) -> Result<bool>;
}

/// Where durable consumers keep their state.
pub trait ConsumerStateStore: CheckpointStore + DeadLetterStore {}

impl<T: CheckpointStore + DeadLetterStore> ConsumerStateStore for T {}

/// A stable hash of a stream id (FNV-1a, 64 bits): the same on every node and every run, so a
/// consumer group sends each stream to the same member everywhere.
pub fn stream_hash(stream_id: &StreamId) -> u64 {
    crate::fnv1a(stream_id.as_str())
}
