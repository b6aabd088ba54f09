//! The aggregate repository: load (latest snapshot + later events), decide, append with the
//! loaded version as expectation, retry on conflict.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flexcore_domain::{Aggregate, DomainEvent, EventMetadata, ExpectedVersion, RawJson, StreamId};

use crate::store::{
    Direction, EventStore, MAX_READ_LIMIT, ReadStream, Snapshot, StreamWrite, StreamWriteResult,
};
use crate::{Error, Result};

/// How often to re-run an operation that lost an optimistic-concurrency race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub base_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(2),
        }
    }
}

/// Runs `operation` until it succeeds, fails with anything but a wrong expected version, or
/// runs out of attempts.
pub async fn retry_on_conflict<T, F, Fut>(policy: RetryPolicy, mut operation: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = policy.base_delay;
    let mut attempt = 1;
    loop {
        match operation().await {
            Err(e) if e.is_wrong_expected_version() && attempt < policy.max_attempts => {
                tracing::debug!(attempt, error = %e, "retrying after a concurrency conflict");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// An aggregate as loaded from its stream.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    /// Its stream.
    pub stream_id: StreamId,
    /// The state after every event.
    pub state: A,
    /// The stream's version (`None`: no stream yet).
    pub version: Option<u64>,
}

impl<A: Aggregate> Loaded<A> {
    /// A new aggregate whose stream cannot exist yet (its id was just generated): nothing to
    /// read. The write it decides expects `no_stream`, so a clash would still be refused.
    pub fn new_instance(id: &str) -> Result<Self> {
        Ok(Self {
            stream_id: StreamId::for_aggregate(A::TYPE, id)?,
            state: A::default(),
            version: None,
        })
    }

    /// The expectation that makes an append fail if anyone wrote since this load.
    pub fn expected(&self) -> ExpectedVersion {
        ExpectedVersion::from_current(self.version)
    }

    /// Decides a command: the state after the new events, and the events packed as a write
    /// guarded by this load's version.
    pub fn decide(
        &self,
        command: &A::Command,
        metadata: &EventMetadata,
    ) -> Result<(A, StreamWrite)> {
        let events = self.state.handle(command)?;
        let mut state = self.state.clone();
        let mut new_events = Vec::with_capacity(events.len());
        for event in &events {
            state.apply(event);
            new_events.push(event.to_new_event()?.with_metadata(metadata.clone()));
        }
        let write = StreamWrite::new(self.stream_id.clone(), self.expected(), new_events);
        Ok((state, write))
    }
}

/// Loads and saves aggregates of any type through an event store.
#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn EventStore>,
    snapshot_every: Option<u64>,
    retry: RetryPolicy,
}

impl Repository {
    /// A repository without snapshots and with the default retry policy.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            snapshot_every: None,
            retry: RetryPolicy::default(),
        }
    }

    /// Saves a snapshot whenever a stream crosses a multiple of `every` events.
    pub fn with_snapshots_every(mut self, every: u64) -> Self {
        self.snapshot_every = (every > 0).then_some(every);
        self
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Loads aggregate `id` of type `A` from stream `{A::TYPE}-{id}`.
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>> {
        let stream_id = StreamId::for_aggregate(A::TYPE, id)?;
        self.load_stream(stream_id).await
    }

    /// Loads an aggregate from an explicit stream.
    pub async fn load_stream<A: Aggregate>(&self, stream_id: StreamId) -> Result<Loaded<A>> {
        let (mut state, version) = match self.load_snapshot::<A>(&stream_id).await {
            Some((state, v)) => (state, Some(v)),
            None => (A::default(), None),
        };
        let mut from = version.map_or(0, |v| v + 1);
        loop {
            let slice = self
                .store
                .read_stream(ReadStream {
                    stream_id: stream_id.clone(),
                    from_version: Some(from),
                    limit: MAX_READ_LIMIT,
                    direction: Direction::Forward,
                })
                .await?;
            if slice.current_version.is_none() {
                // Missing or deleted: whatever a snapshot said is void.
                return Ok(Loaded {
                    stream_id,
                    state: A::default(),
                    version: None,
                });
            }
            let page_len = slice.events.len();
            for envelope in &slice.events {
                state.apply(&A::Event::from_envelope(envelope)?);
                from = envelope.stream_version + 1;
            }
            if page_len < MAX_READ_LIMIT {
                return Ok(Loaded {
                    stream_id,
                    state,
                    version: slice.current_version,
                });
            }
        }
    }

    async fn load_snapshot<A: Aggregate>(&self, stream_id: &StreamId) -> Option<(A, u64)> {
        self.snapshot_every?;
        match self.store.load_snapshot(stream_id).await {
            Ok(Some(s)) => match s.state.decode::<A>() {
                Ok(state) => Some((state, s.version)),
                Err(e) => {
                    tracing::warn!(%stream_id, error = %e, "ignoring an undecodable snapshot");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%stream_id, error = %e, "cannot load snapshot; replaying");
                None
            }
        }
    }

    /// Loads, decides and appends one aggregate's command, retrying on conflict.
    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        command: &A::Command,
        metadata: &EventMetadata,
    ) -> Result<(A, StreamWriteResult)> {
        retry_on_conflict(self.retry, || async {
            let loaded = self.load::<A>(id).await?;
            let (state, write) = loaded.decide(command, metadata)?;
            let result = self.store.append_atomic(vec![write]).await?;
            let result = result
                .streams
                .into_iter()
                .next()
                .ok_or_else(|| Error::internal("append returned no stream result"))?;
            self.maybe_snapshot(&state, loaded.version, &result).await;
            Ok((state, result))
        })
        .await
    }

    /// Saves a snapshot of `state` if the write just crossed the snapshot interval.
    pub async fn maybe_snapshot<A: Aggregate>(
        &self,
        state: &A,
        version_before: Option<u64>,
        result: &StreamWriteResult,
    ) {
        let (Some(every), Some(after)) = (self.snapshot_every, result.current_version) else {
            return;
        };
        let crossed = version_before.map_or(0, |v| (v + 1) / every) < (after + 1) / every;
        if !crossed {
            return;
        }
        let snapshot = match RawJson::to_raw(state) {
            Ok(state) => Snapshot {
                stream_id: result.stream_id.clone(),
                version: after,
                state,
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise a snapshot");
                return;
            }
        };
        if let Err(e) = self.store.save_snapshot(snapshot).await {
            tracing::warn!(stream_id = %result.stream_id, error = %e, "cannot save a snapshot");
        }
    }
}
