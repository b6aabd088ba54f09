//! An in-memory event store for unit tests and examples. Never the server's default.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use flexcore_domain::{DomainError, EventEnvelope, EventId, ExpectedVersion, StreamId};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::plan::{self, KnownEvent, Outcome, StreamState};
use super::{
    AllSlice, AppendResult, Direction, EventAppender, EventReader, ReadAll, ReadStream, Snapshot,
    SnapshotStore, StreamAdmin, StreamSlice, StreamWrite, clamp_limit,
};
use crate::{Error, Result};

#[derive(Default)]
struct Stream {
    state: StreamState,
    truncate_before: u64,
    /// Indexes into `Inner::log`, in version order.
    events: Vec<usize>,
}

#[derive(Default)]
struct Inner {
    log: Vec<EventEnvelope>,
    by_id: HashMap<EventId, usize>,
    streams: HashMap<StreamId, Stream>,
    snapshots: HashMap<StreamId, Snapshot>,
}

/// A complete event store held in memory, with the same semantics as the durable backends.
pub struct InMemoryStore {
    inner: Mutex<Inner>,
    head: watch::Sender<u64>,
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            head: watch::Sender::new(0),
        }
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied append: appends mutate
        // only after planning succeeded. Recover the guard.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl EventAppender for InMemoryStore {
    async fn append_atomic(&self, writes: Vec<StreamWrite>) -> Result<AppendResult> {
        let mut inner = self.lock();
        let requests = vec![writes];
        let states = plan::stream_ids(&requests)
            .into_iter()
            .filter_map(|id| inner.streams.get(&id).map(|s| (id, s.state)))
            .collect();
        let known = plan::event_ids(&requests)
            .into_iter()
            .filter_map(|id| {
                let e = &inner.log[*inner.by_id.get(&id)?];
                Some((
                    id,
                    KnownEvent {
                        stream_id: e.stream_id.clone(),
                        stream_version: e.stream_version,
                        global_position: e.global_position,
                        event_type: e.event_type.clone(),
                    },
                ))
            })
            .collect();
        let plan = plan::plan_batch(requests, states, &known);
        for (id, state) in plan.changed_streams() {
            inner.streams.entry(id.clone()).or_default().state = *state;
        }
        let first_position = inner.log.len() as u64 + 1;
        let recorded_at = OffsetDateTime::now_utc();
        for row in &plan.rows {
            let index = inner.log.len();
            inner.by_id.insert(row.event.event_id, index);
            inner
                .streams
                .get_mut(&row.stream_id)
                .expect("planned streams exist")
                .events
                .push(index);
            inner.log.push(EventEnvelope {
                event_id: row.event.event_id,
                stream_id: row.stream_id.clone(),
                stream_version: row.stream_version,
                global_position: index as u64 + 1,
                event_type: row.event.event_type.clone(),
                schema_version: row.event.schema_version,
                data: row.event.data.clone(),
                metadata: row.event.metadata.to_raw(),
                recorded_at,
            });
        }
        let head = inner.log.len() as u64;
        drop(inner);
        self.head.send_replace(head);
        match plan.into_outcomes(first_position).pop() {
            Some(Outcome::Done(result)) => result,
            _ => Err(Error::internal("a lone request cannot be deferred")),
        }
    }
}

#[async_trait]
impl EventReader for InMemoryStore {
    async fn read_stream(&self, request: ReadStream) -> Result<StreamSlice> {
        let inner = self.lock();
        let Some(stream) = inner.streams.get(&request.stream_id) else {
            return Ok(StreamSlice {
                stream_id: request.stream_id,
                current_version: None,
                events: Vec::new(),
            });
        };
        let limit = clamp_limit(request.limit);
        let visible = stream
            .events
            .iter()
            .map(|&i| &inner.log[i])
            .filter(|e| !stream.state.deleted && e.stream_version >= stream.truncate_before);
        let events: Vec<EventEnvelope> = match request.direction {
            Direction::Forward => visible
                .filter(|e| e.stream_version >= request.from_version.unwrap_or(0))
                .take(limit)
                .cloned()
                .collect(),
            Direction::Backward => visible
                .rev()
                .filter(|e| request.from_version.is_none_or(|v| e.stream_version <= v))
                .take(limit)
                .cloned()
                .collect(),
        };
        Ok(StreamSlice {
            stream_id: request.stream_id,
            current_version: stream.state.current_version(),
            events,
        })
    }

    async fn read_all(&self, request: ReadAll) -> Result<AllSlice> {
        let inner = self.lock();
        let limit = clamp_limit(request.limit);
        let start = request.from_position.saturating_sub(1) as usize;
        let mut events = Vec::new();
        let mut next_position = (inner.log.len() as u64 + 1).max(request.from_position);
        for event in inner.log.iter().skip(start) {
            if events.len() == limit {
                next_position = event.global_position;
                break;
            }
            if request.filter.matches(&event.event_type, &event.stream_id) {
                events.push(event.clone());
            }
        }
        Ok(AllSlice {
            events,
            next_position,
        })
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl SnapshotStore for InMemoryStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let mut inner = self.lock();
        let newer_stored = inner
            .snapshots
            .get(&snapshot.stream_id)
            .is_some_and(|s| s.version >= snapshot.version);
        if !newer_stored {
            inner.snapshots.insert(snapshot.stream_id.clone(), snapshot);
        }
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>> {
        Ok(self.lock().snapshots.get(stream_id).cloned())
    }
}

#[async_trait]
impl StreamAdmin for InMemoryStore {
    async fn delete_stream(&self, stream_id: &StreamId, expected: ExpectedVersion) -> Result<()> {
        let mut inner = self.lock();
        let current = inner
            .streams
            .get(stream_id)
            .and_then(|s| s.state.current_version());
        plan::check_delete(stream_id, expected, current)?;
        let stream = inner.streams.get_mut(stream_id).expect("checked above");
        stream.state.deleted = true;
        stream.truncate_before = stream.state.next_version();
        inner.snapshots.remove(stream_id);
        Ok(())
    }

    async fn truncate_before(&self, stream_id: &StreamId, version: u64) -> Result<()> {
        let mut inner = self.lock();
        let stream = inner
            .streams
            .get_mut(stream_id)
            .filter(|s| s.state.current_version().is_some())
            .ok_or_else(|| DomainError::NotFound(format!("stream '{stream_id}' does not exist")))?;
        stream.truncate_before = stream.truncate_before.max(version);
        Ok(())
    }
}
