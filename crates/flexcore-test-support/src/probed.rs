//! [`ProbedStore`]: an event-store decorator that lets a test see what the code under test read,
//! make the backend look unreachable, and let another writer in just before an append.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use flexcore_app::store::{
    AllSlice, AppendResult, EventAppender, EventReader, EventStore, ReadAll, ReadStream, Snapshot,
    SnapshotStore, StreamAdmin, StreamSlice, StreamWrite,
};
use flexcore_app::{Error, Result};
use flexcore_domain::{ExpectedVersion, NewEvent, RawJson, StreamId};
use tokio::sync::watch;

/// Delegates everything to another store, counting the events stream reads return; `ping` can
/// be made to fail with a chosen error, and the next append can be raced.
pub struct ProbedStore {
    inner: Arc<dyn EventStore>,
    stream_events_read: AtomicU64,
    /// The message of the `Unavailable` error `ping` answers with, when set.
    ping_failure: Mutex<Option<String>>,
    /// The stream a racing writer appends to just before the next append, when set.
    racing_writer: Mutex<Option<StreamId>>,
    /// The message of the `Unavailable` error `read_stream` answers with, when set.
    read_failure: Mutex<Option<String>>,
}

impl ProbedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn EventStore>) -> Self {
        Self {
            inner,
            stream_events_read: AtomicU64::new(0),
            ping_failure: Mutex::new(None),
            racing_writer: Mutex::new(None),
            read_failure: Mutex::new(None),
        }
    }

    /// Makes every later `read_stream` fail with `Error::unavailable(message)`.
    pub fn fail_stream_reads_with(&self, message: impl Into<String>) {
        *self.read_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.into());
    }

    /// Just before the next `append_atomic`, another writer appends one [`RACING_EVENT`] to
    /// `stream_id` (with no expectation): the race a caller loses between reading a stream and
    /// appending to it, made deterministic.
    pub fn race_next_append_on(&self, stream_id: StreamId) {
        *self.racing_writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream_id);
    }

    /// How many events `read_stream` has returned so far, over every call.
    pub fn stream_events_read(&self) -> u64 {
        self.stream_events_read.load(Ordering::SeqCst)
    }

    /// Makes every later `ping` fail with `Error::unavailable(message)`, as a store whose
    /// server went away would (the message stands for the driver's text, which must not reach
    /// clients).
    pub fn fail_pings_with(&self, message: impl Into<String>) {
        *self.ping_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.into());
    }
}

/// The event type the racing writer of [`ProbedStore::race_next_append_on`] appends (data `{}`).
pub const RACING_EVENT: &str = "race.won";

#[async_trait]
impl EventAppender for ProbedStore {
    async fn append_atomic(&self, writes: Vec<StreamWrite>) -> Result<AppendResult> {
        let racing = self
            .racing_writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(stream_id) = racing {
            let event = NewEvent::new(RACING_EVENT, RawJson::from_string("{}".to_owned())?)?;
            self.inner
                .append(stream_id, ExpectedVersion::Any, vec![event])
                .await?;
        }
        self.inner.append_atomic(writes).await
    }
}

#[async_trait]
impl EventReader for ProbedStore {
    async fn read_stream(&self, request: ReadStream) -> Result<StreamSlice> {
        let failure = self
            .read_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(message) = failure {
            return Err(Error::unavailable(message));
        }
        let slice = self.inner.read_stream(request).await?;
        self.stream_events_read
            .fetch_add(slice.events.len() as u64, Ordering::SeqCst);
        Ok(slice)
    }

    async fn read_all(&self, request: ReadAll) -> Result<AllSlice> {
        self.inner.read_all(request).await
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.inner.head()
    }

    async fn ping(&self) -> Result<()> {
        let failure = self
            .ping_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match failure {
            Some(message) => Err(Error::unavailable(message)),
            None => self.inner.ping().await,
        }
    }
}

#[async_trait]
impl SnapshotStore for ProbedStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>> {
        self.inner.load_snapshot(stream_id).await
    }
}

#[async_trait]
impl StreamAdmin for ProbedStore {
    async fn delete_stream(&self, stream_id: &StreamId, expected: ExpectedVersion) -> Result<()> {
        self.inner.delete_stream(stream_id, expected).await
    }

    async fn truncate_before(&self, stream_id: &StreamId, version: u64) -> Result<()> {
        self.inner.truncate_before(stream_id, version).await
    }
}
