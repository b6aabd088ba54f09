//! The rules of an append, decided once for every backend.
//!
//! A backend collects a batch of append requests (group commit), loads the state of every
//! stream they touch and every event id they carry, and calls [`plan_batch`]. The plan says,
//! request by request and in arrival order, whether it writes (and which rows), replays an
//! earlier identical append (idempotent re-send), is rejected, or must wait for the next batch.
//! Each request keeps its own expectation check and its own result: one failing request never
//! fails its neighbours. The backend then writes [`BatchPlan::rows`] in one transaction, with
//! contiguous global positions, and turns the plan into per-request outcomes.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use flexcore_domain::{DomainError, EventId, ExpectedVersion, NewEvent, StreamId};

use super::{AppendResult, AppendedEvent, StreamWrite, StreamWriteResult};
use crate::{Error, Result};

/// The state of a batch's streams, by id (missing streams may be absent).
pub type StreamStates = HashMap<StreamId, StreamState>;

/// The already stored events among a batch's event ids.
pub type KnownEvents = HashMap<EventId, KnownEvent>;

/// What a backend knows of a stream before a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamState {
    /// The version of the stream's last event ever written, deleted or not.
    pub last_version: Option<u64>,
    /// Whether the stream is soft-deleted.
    pub deleted: bool,
}

impl StreamState {
    /// The version expectations are checked against: `None` for missing or deleted streams.
    pub fn current_version(&self) -> Option<u64> {
        if self.deleted {
            None
        } else {
            self.last_version
        }
    }

    /// The version the next event of this stream gets (numbers continue after a delete).
    pub fn next_version(&self) -> u64 {
        self.last_version.map_or(0, |v| v + 1)
    }
}

/// Where an already stored event is, for idempotent re-sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownEvent {
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its global position.
    pub global_position: u64,
    /// Its type.
    pub event_type: String,
}

/// One event to insert.
#[derive(Debug, Clone)]
pub struct PlannedRow {
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version in the stream.
    pub stream_version: u64,
    /// The event itself.
    pub event: NewEvent,
}

/// The rows of one accepted write.
#[derive(Debug, Clone)]
struct WriteSpan {
    stream_id: StreamId,
    current_version: Option<u64>,
    rows: Range<usize>,
}

#[derive(Debug)]
enum Decision {
    Write(Vec<WriteSpan>),
    Replay(AppendResult),
    Reject(Error),
    Defer(Vec<StreamWrite>),
}

/// What happens to one request of the batch.
#[derive(Debug)]
pub enum Outcome {
    /// The request is decided: written, replayed or rejected.
    Done(Result<AppendResult>),
    /// The request re-sends events that are part of this very batch; run it in the next batch,
    /// when they are stored and it can be answered as a replay.
    Defer(Vec<StreamWrite>),
}

/// A backend's count of its committed group commits. Unlike the process-wide metrics it
/// belongs to one store, and it counts append requests rather than events: it shows whether
/// concurrent appends really share transactions.
#[derive(Debug, Default)]
pub struct GroupCommitCounters {
    batches: AtomicU64,
    appends: AtomicU64,
    largest_batch: AtomicU64,
}

impl GroupCommitCounters {
    /// Counts one committed transaction that wrote `appends` append requests.
    fn record(&self, appends: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.appends.fetch_add(appends, Ordering::Relaxed);
        self.largest_batch.fetch_max(appends, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.batches.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
            largest_batch: self.largest_batch.load(Ordering::Relaxed),
        }
    }
}

/// A reading of a backend's [`GroupCommitCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Committed transactions that wrote appends.
    pub batches: u64,
    /// The append requests they wrote.
    pub appends: u64,
    /// The most append requests one transaction wrote.
    pub largest_batch: u64,
}

/// The decisions for a batch and the rows to insert.
#[derive(Debug)]
pub struct BatchPlan {
    decisions: Vec<Decision>,
    /// Rows to insert, in position order: row `i` gets position `first_position + i`.
    pub rows: Vec<PlannedRow>,
    streams: HashMap<StreamId, StreamState>,
    touched: Vec<StreamId>,
}

impl BatchPlan {
    /// The new state of every stream that accepted writes change, for the backend to store.
    pub fn changed_streams(&self) -> impl Iterator<Item = (&StreamId, &StreamState)> {
        self.touched.iter().map(|id| (id, &self.streams[id]))
    }

    /// Publishes the batch's metrics once it is committed: `flexcore_events_appended_total` and
    /// the `flexcore_append_batch_size` histogram (events per transaction), and counts it in the
    /// backend's own `counters` (append requests per transaction).
    pub fn record_committed(&self, counters: &GroupCommitCounters) {
        metrics::counter!("flexcore_events_appended_total").increment(self.rows.len() as u64);
        metrics::histogram!("flexcore_append_batch_size").record(self.rows.len() as f64);
        let appends = self
            .decisions
            .iter()
            .filter(|d| matches!(d, Decision::Write(_)))
            .count() as u64;
        counters.record(appends);
    }

    /// Turns the plan into one outcome per request, once the rows are committed with
    /// positions starting at `first_position`.
    pub fn into_outcomes(self, first_position: u64) -> Vec<Outcome> {
        let rows = self.rows;
        self.decisions
            .into_iter()
            .map(|decision| match decision {
                Decision::Write(spans) => Outcome::Done(Ok(AppendResult {
                    streams: spans
                        .into_iter()
                        .map(|span| StreamWriteResult {
                            events: span
                                .rows
                                .map(|i| AppendedEvent {
                                    event_id: rows[i].event.event_id,
                                    event_type: rows[i].event.event_type.clone(),
                                    stream_version: rows[i].stream_version,
                                    global_position: first_position + i as u64,
                                })
                                .collect(),
                            stream_id: span.stream_id,
                            current_version: span.current_version,
                        })
                        .collect(),
                })),
                Decision::Replay(result) => Outcome::Done(Ok(result)),
                Decision::Reject(error) => Outcome::Done(Err(error)),
                Decision::Defer(writes) => Outcome::Defer(writes),
            })
            .collect()
    }

    /// Fails every request that would have written: the batch's transaction failed.
    pub fn fail_writes(self, error: impl Fn() -> Error) -> Vec<Outcome> {
        self.decisions
            .into_iter()
            .map(|decision| match decision {
                Decision::Write(_) => Outcome::Done(Err(error())),
                Decision::Replay(result) => Outcome::Done(Ok(result)),
                Decision::Reject(e) => Outcome::Done(Err(e)),
                Decision::Defer(writes) => Outcome::Defer(writes),
            })
            .collect()
    }
}

/// The rule of a soft delete: the stream must exist (and not be deleted already) and be where
/// the caller expects it. `current` is its current version.
pub fn check_delete(
    stream_id: &StreamId,
    expected: ExpectedVersion,
    current: Option<u64>,
) -> Result<()> {
    if current.is_none() {
        return Err(DomainError::NotFound(format!("stream '{stream_id}' does not exist")).into());
    }
    if !expected.is_satisfied_by(current) {
        return Err(DomainError::WrongExpectedVersion {
            stream_id: stream_id.to_string(),
            expected,
            current,
        }
        .into());
    }
    Ok(())
}

/// Every distinct stream id a batch touches, sorted (lock in this order to avoid deadlocks).
pub fn stream_ids<'a>(requests: impl IntoIterator<Item = &'a Vec<StreamWrite>>) -> Vec<StreamId> {
    let mut ids: Vec<StreamId> = requests
        .into_iter()
        .flatten()
        .map(|w| w.stream_id.clone())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Every event id a batch carries.
pub fn event_ids<'a>(requests: impl IntoIterator<Item = &'a Vec<StreamWrite>>) -> Vec<EventId> {
    requests
        .into_iter()
        .flatten()
        .flat_map(|w| w.events.iter().map(|e| e.event_id))
        .collect()
}

/// Decides a batch. `streams` holds the state of the batch's streams (missing ones may be
/// absent); `known` holds the already stored events among the batch's event ids.
pub fn plan_batch(
    requests: Vec<Vec<StreamWrite>>,
    mut streams: HashMap<StreamId, StreamState>,
    known: &HashMap<EventId, KnownEvent>,
) -> BatchPlan {
    let mut rows = Vec::new();
    let mut touched = Vec::new();
    let mut touched_set = HashSet::new();
    let mut pending: HashSet<EventId> = HashSet::new();
    let decisions = requests
        .into_iter()
        .map(|writes| {
            if let Err(e) = validate_request(&writes) {
                return Decision::Reject(e);
            }
            let ids = writes
                .iter()
                .flat_map(|w| w.events.iter().map(|e| e.event_id));
            let (mut stored, mut in_batch, mut total) = (0, 0, 0);
            for id in ids {
                total += 1;
                if known.contains_key(&id) {
                    stored += 1;
                } else if pending.contains(&id) {
                    in_batch += 1;
                }
            }
            if in_batch > 0 {
                return Decision::Defer(writes);
            }
            if stored > 0 {
                return if stored == total {
                    replay(&writes, known, &streams)
                } else {
                    Decision::Reject(partial_resend_error())
                };
            }
            if let Some(e) = first_failed_expectation(&writes, &streams) {
                return Decision::Reject(e);
            }
            let spans = writes
                .into_iter()
                .map(|write| {
                    let state = streams.entry(write.stream_id.clone()).or_default();
                    let start = rows.len();
                    for event in write.events {
                        let stream_version = state.next_version();
                        state.last_version = Some(stream_version);
                        state.deleted = false;
                        pending.insert(event.event_id);
                        rows.push(PlannedRow {
                            stream_id: write.stream_id.clone(),
                            stream_version,
                            event,
                        });
                    }
                    if rows.len() > start && touched_set.insert(write.stream_id.clone()) {
                        touched.push(write.stream_id.clone());
                    }
                    WriteSpan {
                        current_version: state.current_version(),
                        stream_id: write.stream_id,
                        rows: start..rows.len(),
                    }
                })
                .collect();
            Decision::Write(spans)
        })
        .collect();
    BatchPlan {
        decisions,
        rows,
        streams,
        touched,
    }
}

fn validate_request(writes: &[StreamWrite]) -> Result<()> {
    if writes.is_empty() {
        return Err(Error::validation("an append needs at least one stream"));
    }
    let mut streams = HashSet::new();
    let mut ids = HashSet::new();
    for write in writes {
        if !streams.insert(&write.stream_id) {
            return Err(Error::validation(format!(
                "stream '{}' appears twice in one append",
                write.stream_id
            )));
        }
        for event in &write.events {
            if !ids.insert(event.event_id) {
                return Err(Error::validation(format!(
                    "event id {} appears twice in one append",
                    event.event_id
                )));
            }
        }
    }
    Ok(())
}

fn first_failed_expectation(
    writes: &[StreamWrite],
    streams: &HashMap<StreamId, StreamState>,
) -> Option<Error> {
    writes.iter().find_map(|write| {
        let current = streams
            .get(&write.stream_id)
            .copied()
            .unwrap_or_default()
            .current_version();
        (!write.expected.is_satisfied_by(current)).then(|| {
            Error::Domain(DomainError::WrongExpectedVersion {
                stream_id: write.stream_id.to_string(),
                expected: write.expected,
                current,
            })
        })
    })
}

fn partial_resend_error() -> Error {
    Error::Domain(DomainError::AlreadyExists(
        "some events of this append are already stored: an idempotent retry must re-send \
         exactly the original events"
            .into(),
    ))
}

/// Answers a re-send of already stored events with the original result, after checking that
/// every event sits in the stream it is re-sent to, contiguously, where the expectation put it.
fn replay(
    writes: &[StreamWrite],
    known: &HashMap<EventId, KnownEvent>,
    streams: &HashMap<StreamId, StreamState>,
) -> Decision {
    let mut results = Vec::with_capacity(writes.len());
    for write in writes {
        let stored: Vec<&KnownEvent> = write.events.iter().map(|e| &known[&e.event_id]).collect();
        let Some(first) = stored.first() else {
            // An expectation-only write inside a re-send: report the stream as it is.
            let current = streams
                .get(&write.stream_id)
                .copied()
                .unwrap_or_default()
                .current_version();
            results.push(StreamWriteResult {
                stream_id: write.stream_id.clone(),
                current_version: current,
                events: Vec::new(),
            });
            continue;
        };
        let in_place = stored.iter().enumerate().all(|(i, k)| {
            k.stream_id == write.stream_id && k.stream_version == first.stream_version + i as u64
        });
        let expectation_fits = match write.expected {
            ExpectedVersion::Exact(v) => first.stream_version == v + 1,
            ExpectedVersion::StreamExists => first.stream_version > 0,
            _ => true,
        };
        if !in_place || !expectation_fits {
            return Decision::Reject(Error::Domain(DomainError::AlreadyExists(format!(
                "event {} is already stored elsewhere (stream '{}', version {}): event ids \
                 must be unique",
                write.events[0].event_id, first.stream_id, first.stream_version
            ))));
        }
        results.push(StreamWriteResult {
            stream_id: write.stream_id.clone(),
            current_version: stored.last().map(|k| k.stream_version),
            events: stored
                .iter()
                .zip(&write.events)
                .map(|(k, e)| AppendedEvent {
                    event_id: e.event_id,
                    event_type: k.event_type.clone(),
                    stream_version: k.stream_version,
                    global_position: k.global_position,
                })
                .collect(),
        });
    }
    Decision::Replay(AppendResult { streams: results })
}
