//! The event-store ports, split by capability, and what every backend shares.
//!
//! A backend implements [`EventAppender`], [`EventReader`], [`SnapshotStore`] and
//! [`StreamAdmin`]; the blanket [`EventStore`] recombines them. The rules of an append
//! (expectations, idempotent re-sends, contiguous versions) live once, in [`plan`]: backends
//! load state, ask the planner, and write what it decided.

mod memory;
pub mod plan;

use async_trait::async_trait;
use flexcore_domain::{EventEnvelope, EventId, ExpectedVersion, NewEvent, RawJson, StreamId};
use serde::Serialize;
use tokio::sync::watch;

pub use memory::InMemoryStore;

use crate::Result;

/// The most events one read may return; larger limits are clamped.
pub const MAX_READ_LIMIT: usize = 10_000;

/// Events for one stream, with the writer's expectation of that stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamWrite {
    /// The target stream.
    pub stream_id: StreamId,
    /// What the writer expects the stream's version to be.
    pub expected: ExpectedVersion,
    /// The events, appended contiguously; may be empty to assert an expectation only.
    pub events: Vec<NewEvent>,
}

impl StreamWrite {
    /// Bundles a write.
    pub fn new(stream_id: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            stream_id,
            expected,
            events,
        }
    }
}

/// Where one appended event landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppendedEvent {
    /// The event's id.
    pub event_id: EventId,
    /// Its type.
    pub event_type: String,
    /// Its version within its stream.
    pub stream_version: u64,
    /// Its position in the global log.
    pub global_position: u64,
}

/// The outcome of one [`StreamWrite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamWriteResult {
    /// The stream written.
    pub stream_id: StreamId,
    /// The stream's version after the write (the version of its last event), `None` when the
    /// stream still does not exist (an empty write to a missing stream).
    pub current_version: Option<u64>,
    /// The events written, in order.
    pub events: Vec<AppendedEvent>,
}

impl StreamWriteResult {
    /// The global position of the first event written, if any.
    pub fn first_position(&self) -> Option<u64> {
        self.events.first().map(|e| e.global_position)
    }

    /// The global position of the last event written, if any.
    pub fn last_position(&self) -> Option<u64> {
        self.events.last().map(|e| e.global_position)
    }
}

/// The outcome of an atomic append: one result per write, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// Per-stream outcomes.
    pub streams: Vec<StreamWriteResult>,
}

/// Appends events atomically.
#[async_trait]
pub trait EventAppender: Send + Sync {
    /// Appends to several streams at once, all or nothing: every write's expectation must hold,
    /// or nothing is written and the first failing expectation is reported as
    /// [`flexcore_domain::DomainError::WrongExpectedVersion`]. Re-sending events whose ids are
    /// already stored, where they were stored, returns the original result and writes nothing.
    async fn append_atomic(&self, writes: Vec<StreamWrite>) -> Result<AppendResult>;

    /// Appends to one stream.
    async fn append(
        &self,
        stream_id: StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<StreamWriteResult> {
        let mut result = self
            .append_atomic(vec![StreamWrite::new(stream_id, expected, events)])
            .await?;
        result
            .streams
            .pop()
            .ok_or_else(|| crate::Error::internal("append returned no stream result"))
    }
}

/// Which way to read a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// A page request over one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadStream {
    /// The stream.
    pub stream_id: StreamId,
    /// The first version to return (inclusive); `None` starts at the beginning (forward) or the
    /// end (backward).
    pub from_version: Option<u64>,
    /// At most this many events (clamped to [`MAX_READ_LIMIT`]).
    pub limit: usize,
    /// Reading direction.
    pub direction: Direction,
}

impl ReadStream {
    /// Reads a whole stream forward, from the start.
    pub fn forward(stream_id: StreamId) -> Self {
        Self {
            stream_id,
            from_version: None,
            limit: MAX_READ_LIMIT,
            direction: Direction::Forward,
        }
    }
}

/// A page of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSlice {
    /// The stream read.
    pub stream_id: StreamId,
    /// The stream's current version; `None` when it does not exist or was deleted.
    pub current_version: Option<u64>,
    /// The events of the page.
    pub events: Vec<EventEnvelope>,
}

/// Which events `read_all` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only event types starting with this text.
    pub type_prefix: Option<String>,
    /// Only streams of this category (the part of the stream id before the first `-`).
    pub category: Option<String>,
}

impl EventFilter {
    /// Whether an event passes the filter.
    pub fn matches(&self, event_type: &str, stream_id: &StreamId) -> bool {
        self.type_prefix
            .as_deref()
            .is_none_or(|p| event_type.starts_with(p))
            && self
                .category
                .as_deref()
                .is_none_or(|c| stream_id.category() == c)
    }
}

/// A page request over the global log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadAll {
    /// The first position to return (inclusive); `0` is the beginning.
    pub from_position: u64,
    /// At most this many events (clamped to [`MAX_READ_LIMIT`]).
    pub limit: usize,
    /// Which events to return.
    pub filter: EventFilter,
}

/// A page of the global log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllSlice {
    /// The events, in increasing position.
    pub events: Vec<EventEnvelope>,
    /// Where the next page starts. Everything before it that matches the filter has been
    /// returned, now or earlier: a reader that always continues from here sees every event
    /// exactly once, even events whose transactions commit out of position order.
    pub next_position: u64,
}

/// Reads streams and the global log.
#[async_trait]
pub trait EventReader: Send + Sync {
    /// Reads a page of one stream.
    async fn read_stream(&self, request: ReadStream) -> Result<StreamSlice>;

    /// Reads a page of the global log in increasing position, never past an event that an
    /// in-flight transaction could still commit before.
    async fn read_all(&self, request: ReadAll) -> Result<AllSlice>;

    /// A wake-up signal carrying the last position this process saw committed. It is only a
    /// hint (other processes may write too): readers go by position, not by this value.
    fn head(&self) -> watch::Receiver<u64>;

    /// Checks that the backend is reachable.
    async fn ping(&self) -> Result<()>;
}

/// An aggregate's state at a stream version, saved to shorten loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// The version of the last event folded into `state`.
    pub version: u64,
    /// The serialised state.
    pub state: RawJson,
}

/// Saves and loads the latest snapshot per stream.
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// Saves a snapshot unless a newer one is already stored.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()>;

    /// Loads the latest snapshot of a stream.
    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>>;
}

/// Stream maintenance.
#[async_trait]
pub trait StreamAdmin: Send + Sync {
    /// Soft-deletes a stream: it reads as missing and a later append (expecting `no_stream` or
    /// `any`) starts it again, continuing its version numbers. Its events stay in the global
    /// log, which remains replayable.
    async fn delete_stream(&self, stream_id: &StreamId, expected: ExpectedVersion) -> Result<()>;

    /// Hides every event of a stream before `version` from stream reads.
    async fn truncate_before(&self, stream_id: &StreamId, version: u64) -> Result<()>;
}

/// A complete event store.
pub trait EventStore: EventAppender + EventReader + SnapshotStore + StreamAdmin {}

impl<T: EventAppender + EventReader + SnapshotStore + StreamAdmin> EventStore for T {}

/// Every event of `stream_id`, oldest first (read page by page), and the stream's version
/// (`None` when it does not exist): what a handler that decides from a whole stream reads.
pub async fn read_whole_stream<R: EventReader + ?Sized>(
    reader: &R,
    stream_id: &StreamId,
) -> Result<(Vec<EventEnvelope>, Option<u64>)> {
    let mut events = Vec::new();
    let mut request = ReadStream::forward(stream_id.clone());
    loop {
        let slice = reader.read_stream(request.clone()).await?;
        let full_page = slice.events.len() >= MAX_READ_LIMIT;
        let next = slice.events.last().map(|event| event.stream_version + 1);
        events.extend(slice.events);
        if !full_page {
            return Ok((events, slice.current_version));
        }
        request.from_version = next;
    }
}

/// Clamps a requested page size to `1..=MAX_READ_LIMIT`.
pub fn clamp_limit(limit: usize) -> usize {
    limit.clamp(1, MAX_READ_LIMIT)
}
