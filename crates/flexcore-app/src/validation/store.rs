//! [`ValidatingStore`]: the one place every append is checked.

use std::sync::Arc;

use async_trait::async_trait;
use flexcore_domain::{ExpectedVersion, NewEvent, StreamId};
use serde_json::Value;
use tokio::sync::watch;

use super::{PayloadSchemas, WriteLimits};
use crate::store::{
    AllSlice, AppendResult, EventAppender, EventReader, EventStore, ReadAll, ReadStream, Snapshot,
    SnapshotStore, StreamAdmin, StreamSlice, StreamWrite, StreamWriteResult,
};
use crate::{Error, Result};

/// An event store that checks every append against [`WriteLimits`] and the schemas of event
/// types before the store it wraps sees it; reads, snapshots and stream maintenance pass
/// through unchanged.
///
/// The server installs it once over the store it opens, so raw appends (HTTP, gRPC), command
/// handlers (Rust, Python) and the message gateway are held to the same rules. A refused
/// append writes nothing, not even its valid events.
pub struct ValidatingStore {
    inner: Arc<dyn EventStore>,
    limits: WriteLimits,
    event_schemas: PayloadSchemas,
}

impl ValidatingStore {
    /// Wraps `inner`: appends must respect `limits`, and the data of an event whose type has a
    /// schema in `event_schemas` must match it.
    pub fn new(
        inner: Arc<dyn EventStore>,
        limits: WriteLimits,
        event_schemas: PayloadSchemas,
    ) -> Self {
        Self {
            inner,
            limits,
            event_schemas,
        }
    }

    /// The limits appends are held to.
    pub fn limits(&self) -> &WriteLimits {
        &self.limits
    }

    /// Checks an append: first how many events it carries, then each stream id, then each
    /// event's size and schema, in request order; the first failure is reported.
    fn check(&self, writes: &[StreamWrite]) -> Result<()> {
        self.limits.check_event_count(writes)?;
        for write in writes {
            self.limits.check_stream_id(&write.stream_id)?;
            for (index, event) in write.events.iter().enumerate() {
                let describe = || describe_event(index, event, &write.stream_id);
                self.limits.check_event_size(event, describe)?;
                self.check_schema(event, describe)?;
            }
        }
        Ok(())
    }

    fn check_schema(&self, event: &NewEvent, describe: impl Fn() -> String) -> Result<()> {
        if !self.event_schemas.contains(&event.event_type) {
            return Ok(());
        }
        // Parsed only for the types that have a schema: the hot path keeps the text as is.
        let data: Value = event.data.decode().map_err(|e| {
            Error::internal_from(format!("{} holds unparsable JSON", describe()), e)
        })?;
        self.event_schemas.check(&event.event_type, &data, describe)
    }
}

/// `event 2 ('order.placed') of stream 'order-1'`: which event of an append a refusal is about.
fn describe_event(index: usize, event: &NewEvent, stream_id: &StreamId) -> String {
    format!(
        "event {index} ('{}') of stream '{stream_id}'",
        event.event_type
    )
}

#[async_trait]
impl EventAppender for ValidatingStore {
    async fn append_atomic(&self, writes: Vec<StreamWrite>) -> Result<AppendResult> {
        self.check(&writes)?;
        self.inner.append_atomic(writes).await
    }

    async fn append(
        &self,
        stream_id: StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<StreamWriteResult> {
        let write = StreamWrite::new(stream_id, expected, events);
        self.check(std::slice::from_ref(&write))?;
        self.inner
            .append(write.stream_id, write.expected, write.events)
            .await
    }
}

#[async_trait]
impl EventReader for ValidatingStore {
    async fn read_stream(&self, request: ReadStream) -> Result<StreamSlice> {
        self.inner.read_stream(request).await
    }

    async fn read_all(&self, request: ReadAll) -> Result<AllSlice> {
        self.inner.read_all(request).await
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.inner.head()
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

#[async_trait]
impl SnapshotStore for ValidatingStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>> {
        self.inner.load_snapshot(stream_id).await
    }
}

#[async_trait]
impl StreamAdmin for ValidatingStore {
    async fn delete_stream(&self, stream_id: &StreamId, expected: ExpectedVersion) -> Result<()> {
        self.inner.delete_stream(stream_id, expected).await
    }

    async fn truncate_before(&self, stream_id: &StreamId, version: u64) -> Result<()> {
        self.inner.truncate_before(stream_id, version).await
    }
}
