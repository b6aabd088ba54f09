//! A store decorator timing the appends `create_user` makes, so a layer's latency can be set
//! against its own appends' in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flexcore_app::Result as AppResult;
use flexcore_app::store::{
    AllSlice, AppendResult, EventAppender, EventReader, EventStore, ReadAll, ReadStream, Snapshot,
    SnapshotStore, StreamAdmin, StreamSlice, StreamWrite,
};
use flexcore_domain::{ExpectedVersion, StreamId};

/// Times the appends `create_user` makes (those holding a `user.created` event) around the
/// store of a case, so a gateway's latency can be set against the store's own in the same run.
#[derive(Clone, Default)]
pub(super) struct TimedAppends(Arc<std::sync::Mutex<Vec<Duration>>>);

impl TimedAppends {
    /// A store that records into this.
    pub(super) fn wrap(&self, store: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        Arc::new(TimedStore {
            inner: store,
            appends: self.clone(),
        })
    }

    /// The recorded latencies, sorted.
    pub(super) fn take(&self) -> Vec<Duration> {
        let mut taken = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        taken.sort_unstable();
        taken
    }
}

/// The store decorator of [`TimedAppends`]; everything else passes through.
struct TimedStore {
    inner: Arc<dyn EventStore>,
    appends: TimedAppends,
}

#[async_trait::async_trait]
impl EventAppender for TimedStore {
    async fn append_atomic(&self, writes: Vec<StreamWrite>) -> AppResult<AppendResult> {
        let creates_user = writes
            .iter()
            .any(|w| w.events.iter().any(|e| e.event_type == "user.created"));
        let started = Instant::now();
        let result = self.inner.append_atomic(writes).await;
        if creates_user && result.is_ok() {
            let elapsed = started.elapsed();
            self.appends
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(elapsed);
        }
        result
    }
}

#[async_trait::async_trait]
impl EventReader for TimedStore {
    async fn read_stream(&self, request: ReadStream) -> AppResult<StreamSlice> {
        self.inner.read_stream(request).await
    }
    async fn read_all(&self, request: ReadAll) -> AppResult<AllSlice> {
        self.inner.read_all(request).await
    }
    fn head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.head()
    }
    async fn ping(&self) -> AppResult<()> {
        self.inner.ping().await
    }
}

#[async_trait::async_trait]
impl SnapshotStore for TimedStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> AppResult<()> {
        self.inner.save_snapshot(snapshot).await
    }
    async fn load_snapshot(&self, stream_id: &StreamId) -> AppResult<Option<Snapshot>> {
        self.inner.load_snapshot(stream_id).await
    }
}

#[async_trait::async_trait]
impl StreamAdmin for TimedStore {
    async fn delete_stream(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
    ) -> AppResult<()> {
        self.inner.delete_stream(stream_id, expected).await
    }
    async fn truncate_before(&self, stream_id: &StreamId, version: u64) -> AppResult<()> {
        self.inner.truncate_before(stream_id, version).await
    }
}
