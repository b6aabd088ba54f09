//! The single writer thread and its group commit.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use flexcore_app::store::plan::{
    self, GroupCommitCounters, KnownEvent, KnownEvents, Outcome, StreamState, StreamStates,
};
use flexcore_app::store::{AppendResult, Snapshot, StreamWrite};
use flexcore_app::{Error, ErrorKind};
use flexcore_domain::{DomainError, ExpectedVersion, StreamId};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

use crate::SqliteError;
use crate::checkpointer::Checkpointer;
use crate::syncer::{Ack, Flush, Syncer};

type Reply<T> = oneshot::Sender<flexcore_app::Result<T>>;

/// Work for the writer thread.
pub(crate) enum Job {
    /// An atomic append.
    Append {
        writes: Vec<StreamWrite>,
        reply: Reply<AppendResult>,
    },
    /// Save a snapshot if newer.
    SaveSnapshot {
        snapshot: Snapshot,
        reply: Reply<()>,
    },
    /// Soft-delete a stream.
    Delete {
        stream_id: StreamId,
        expected: ExpectedVersion,
        reply: Reply<()>,
    },
    /// Hide a stream's events before a version.
    Truncate {
        stream_id: StreamId,
        version: u64,
        reply: Reply<()>,
    },
}

struct PendingAppend {
    writes: Vec<StreamWrite>,
    reply: Reply<AppendResult>,
}

pub(crate) struct Writer {
    /// Stopped first when the writer ends, so the write connection closes last.
    _checkpointer: Checkpointer,
    conn: Connection,
    _lock: File,
    queue: mpsc::UnboundedReceiver<Job>,
    /// The last position written (committed, maybe not yet flushed).
    written: u64,
    /// Where committed batches wait for their flush.
    flushes: std::sync::mpsc::Sender<Flush>,
    /// Set by the syncer when a flush failed: no write is accepted any more.
    poisoned: Arc<AtomicBool>,
    max_batch_events: usize,
    group_commits: Arc<GroupCommitCounters>,
}

/// What the writer thread needs besides its connection.
pub(crate) struct WriterSetup {
    /// Checkpoints the WAL on its own thread, as long as the writer lives.
    pub(crate) checkpointer: Checkpointer,
    /// The exclusive process lock, held as long as the writer lives.
    pub(crate) lock: File,
    /// The job queue.
    pub(crate) queue: mpsc::UnboundedReceiver<Job>,
    /// The last position on disk when the store opened.
    pub(crate) head: u64,
    /// The durable head readers go by.
    pub(crate) durable: Arc<AtomicU64>,
    /// The wake-up signal for subscriptions.
    pub(crate) head_tx: watch::Sender<u64>,
    /// The WAL file to flush before answering (`None`: `synchronous=NORMAL`).
    pub(crate) wal: Option<std::path::PathBuf>,
    /// The most events per group commit.
    pub(crate) max_batch_events: usize,
    /// Where committed batches are counted (shared with the store).
    pub(crate) group_commits: Arc<GroupCommitCounters>,
}

impl Writer {
    pub(crate) fn spawn(conn: Connection, setup: WriterSetup) -> Result<(), SqliteError> {
        let poisoned = Arc::new(AtomicBool::new(false));
        let flushes = Syncer::spawn(
            setup.wal,
            setup.durable,
            setup.head_tx,
            Arc::clone(&poisoned),
        )?;
        let writer = Self {
            _checkpointer: setup.checkpointer,
            conn,
            _lock: setup.lock,
            queue: setup.queue,
            written: setup.head,
            flushes,
            poisoned,
            max_batch_events: setup.max_batch_events,
            group_commits: setup.group_commits,
        };
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer.run())
            .map(drop)
            .map_err(|e| SqliteError::Io("writer thread".into(), e))
    }

    /// Takes whatever is queued, commits the appends as one batch, then runs the other jobs.
    /// Returns when every store handle is gone and the queue is empty.
    fn run(mut self) {
        let mut deferred: VecDeque<PendingAppend> = VecDeque::new();
        loop {
            let mut batch: Vec<PendingAppend> = deferred.drain(..).collect();
            let mut others = Vec::new();
            let mut events: usize = batch.iter().map(|p| count_events(&p.writes)).sum();
            if batch.is_empty() {
                match self.queue.blocking_recv() {
                    None => return,
                    Some(job) => take(job, &mut batch, &mut others, &mut events),
                }
            }
            while events < self.max_batch_events && others.is_empty() {
                match self.queue.try_recv() {
                    Ok(job) => take(job, &mut batch, &mut others, &mut events),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.commit_batch(batch, &mut deferred);
            }
            for job in others {
                self.run_other(job);
            }
        }
    }

    fn commit_batch(&mut self, batch: Vec<PendingAppend>, deferred: &mut VecDeque<PendingAppend>) {
        if self.poisoned.load(Ordering::Acquire) {
            for pending in batch {
                let _ = pending.reply.send(Err(poisoned_error()));
            }
            return;
        }
        let (requests, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.writes, p.reply)).unzip();
        let (outcomes, head) = self.write_batch(requests);
        let mut acks: Vec<Ack> = Vec::with_capacity(replies.len());
        for (outcome, reply) in outcomes.into_iter().zip(replies) {
            match outcome {
                Outcome::Done(result) => acks.push(Box::new(move |failure: Option<&str>| {
                    // The caller may have given up waiting; the write stands regardless.
                    let _ = reply.send(match failure {
                        None => result,
                        Some(message) => Err(Error::unavailable(message.to_owned())),
                    });
                })),
                Outcome::Defer(writes) => deferred.push_back(PendingAppend { writes, reply }),
            }
        }
        // Even a batch that wrote nothing (rejections, replays of events written by a batch
        // still being flushed) is answered in order, after every earlier flush.
        self.flush(Flush {
            head,
            wrote: head.is_some(),
            acks,
        });
    }

    fn flush(&self, flush: Flush) {
        if let Err(std::sync::mpsc::SendError(flush)) = self.flushes.send(flush) {
            for ack in flush.acks {
                ack(Some("the sqlite syncer has stopped"));
            }
        }
    }

    /// Plans and writes one batch in one transaction; returns the outcomes and the last
    /// position written, if any.
    fn write_batch(&mut self, requests: Vec<Vec<StreamWrite>>) -> (Vec<Outcome>, Option<u64>) {
        let failed = |requests: Vec<Vec<StreamWrite>>, e: SqliteError| {
            let error = shareable(e);
            let outcomes = requests
                .iter()
                .map(|_| Outcome::Done(Err(error())))
                .collect();
            (outcomes, None)
        };
        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => return failed(requests, e.into()),
        };
        let (states, known) = match load_state(&tx, &requests) {
            Ok(loaded) => loaded,
            Err(e) => return failed(requests, e),
        };
        let was_deleted: Vec<StreamId> = states
            .iter()
            .filter(|(_, state)| state.deleted)
            .map(|(id, _)| id.clone())
            .collect();
        let plan = plan::plan_batch(requests, states, &known);
        if plan.rows.is_empty() {
            // Nothing to write: every request was rejected, replayed or expectation-only.
            drop(tx);
            return (plan.into_outcomes(0), None);
        }
        let first_position = self.written + 1;
        let written = (|| -> Result<(), SqliteError> {
            let recorded_at = micros(OffsetDateTime::now_utc());
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO events (position, event_id, stream_id, stream_version, category, \
                     event_type, schema_version, data, metadata, recorded_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for (i, row) in plan.rows.iter().enumerate() {
                    let metadata = row.event.metadata.to_raw();
                    insert.execute(params![
                        (first_position + i as u64) as i64,
                        row.event.event_id.0.as_bytes(),
                        row.stream_id.as_str(),
                        row.stream_version as i64,
                        row.stream_id.category(),
                        row.event.event_type,
                        row.event.schema_version,
                        row.event.data.get(),
                        metadata.get(),
                        recorded_at,
                    ])?;
                }
                // A deleted stream that is written again is visible again.
                let mut undelete =
                    tx.prepare_cached("UPDATE stream_flags SET deleted = 0 WHERE stream_id = ?1")?;
                for (stream_id, _) in plan.changed_streams() {
                    if was_deleted.contains(stream_id) {
                        undelete.execute([stream_id.as_str()])?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })();
        match written {
            Ok(()) => {
                self.written = first_position + plan.rows.len() as u64 - 1;
                plan.record_committed(&self.group_commits);
                (plan.into_outcomes(first_position), Some(self.written))
            }
            Err(e) => {
                tracing::error!(error = %e, "sqlite group commit failed");
                (plan.fail_writes(shareable(e)), None)
            }
        }
    }

    fn run_other(&mut self, job: Job) {
        fn ack(reply: Reply<()>, result: flexcore_app::Result<()>) -> Ack {
            Box::new(move |failure: Option<&str>| {
                let _ = reply.send(match failure {
                    None => result,
                    Some(message) => Err(Error::unavailable(message.to_owned())),
                });
            })
        }
        let poisoned = self.poisoned.load(Ordering::Acquire);
        let (result, reply) = match job {
            Job::Append { .. } => unreachable!("appends are batched"),
            _ if poisoned => {
                let reply = match job {
                    Job::SaveSnapshot { reply, .. }
                    | Job::Delete { reply, .. }
                    | Job::Truncate { reply, .. } => reply,
                    Job::Append { .. } => unreachable!("appends are batched"),
                };
                (Err(poisoned_error()), reply)
            }
            Job::SaveSnapshot { snapshot, reply } => {
                (self.save_snapshot(&snapshot).map_err(Into::into), reply)
            }
            Job::Delete {
                stream_id,
                expected,
                reply,
            } => (self.delete(&stream_id, expected), reply),
            Job::Truncate {
                stream_id,
                version,
                reply,
            } => (self.truncate(&stream_id, version), reply),
        };
        self.flush(Flush {
            head: None,
            wrote: result.is_ok(),
            acks: vec![ack(reply, result)],
        });
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), SqliteError> {
        self.conn.prepare_cached(
            "INSERT INTO snapshots (stream_id, version, state, taken_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, \
             state = excluded.state, taken_at = excluded.taken_at \
             WHERE excluded.version > snapshots.version",
        )?
        .execute(params![
            snapshot.stream_id.as_str(),
            snapshot.version as i64,
            snapshot.state.get(),
            micros(OffsetDateTime::now_utc()),
        ])?;
        Ok(())
    }

    fn delete(
        &mut self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
    ) -> flexcore_app::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(SqliteError::from)?;
        let state = stream_state(&tx, stream_id)?.unwrap_or_default();
        let current = state.current_version();
        plan::check_delete(stream_id, expected, current)?;
        let visible_from = state.next_version() as i64;
        (|| -> Result<(), rusqlite::Error> {
            tx.execute(
                "INSERT INTO stream_flags (stream_id, deleted, truncate_before) VALUES (?1, 1, ?2) \
                 ON CONFLICT (stream_id) DO UPDATE SET deleted = 1, truncate_before = excluded.truncate_before",
                params![stream_id.as_str(), visible_from],
            )?;
            tx.execute("DELETE FROM snapshots WHERE stream_id = ?1", [stream_id.as_str()])?;
            tx.commit()
        })()
        .map_err(SqliteError::from)?;
        Ok(())
    }

    fn truncate(&mut self, stream_id: &StreamId, version: u64) -> flexcore_app::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(SqliteError::from)?;
        let exists = stream_state(&tx, stream_id)?.is_some_and(|s| s.current_version().is_some());
        if !exists {
            return Err(
                DomainError::NotFound(format!("stream '{stream_id}' does not exist")).into(),
            );
        }
        (|| -> Result<(), rusqlite::Error> {
            tx.execute(
                "INSERT INTO stream_flags (stream_id, truncate_before) VALUES (?1, ?2) \
                 ON CONFLICT (stream_id) DO UPDATE SET \
                 truncate_before = max(truncate_before, excluded.truncate_before)",
                params![stream_id.as_str(), version.min(i64::MAX as u64) as i64],
            )?;
            tx.commit()
        })()
        .map_err(SqliteError::from)?;
        Ok(())
    }
}

fn take(job: Job, batch: &mut Vec<PendingAppend>, others: &mut Vec<Job>, events: &mut usize) {
    match job {
        Job::Append { writes, reply } => {
            *events += count_events(&writes);
            batch.push(PendingAppend { writes, reply });
        }
        other => others.push(other),
    }
}

fn count_events(writes: &[StreamWrite]) -> usize {
    writes.iter().map(|w| w.events.len()).sum::<usize>().max(1)
}

fn poisoned_error() -> Error {
    Error::unavailable("the event store stopped accepting writes after a failed fsync; restart it")
}

/// Turns one error into a factory of equivalent application errors, one per request.
fn shareable(error: SqliteError) -> impl Fn() -> Error {
    let app: Error = error.into();
    let (kind, message) = (app.kind(), app.to_string());
    move || match kind {
        ErrorKind::Unavailable => Error::unavailable(message.clone()),
        _ => Error::internal(message.clone()),
    }
}

fn load_state(
    conn: &Connection,
    requests: &[Vec<StreamWrite>],
) -> Result<(StreamStates, KnownEvents), SqliteError> {
    let mut states = StreamStates::new();
    for stream_id in plan::stream_ids(requests) {
        if let Some(state) = stream_state(conn, &stream_id)? {
            states.insert(stream_id, state);
        }
    }
    let mut known = KnownEvents::new();
    let mut lookup = conn.prepare_cached(
        "SELECT stream_id, stream_version, position, event_type FROM events WHERE event_id = ?1",
    )?;
    for event_id in plan::event_ids(requests) {
        let found = lookup
            .query_row([event_id.0.as_bytes()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .optional()?;
        if let Some((stream_id, version, position, event_type)) = found {
            let stream_id =
                StreamId::new(stream_id).map_err(|e| SqliteError::Corrupt(e.to_string()))?;
            known.insert(
                event_id,
                KnownEvent {
                    stream_id,
                    stream_version: version as u64,
                    global_position: position as u64,
                    event_type,
                },
            );
        }
    }
    Ok((states, known))
}

fn stream_state(
    conn: &Connection,
    stream_id: &StreamId,
) -> Result<Option<StreamState>, SqliteError> {
    let (last_version, deleted): (Option<i64>, bool) = conn
        .prepare_cached(crate::schema::STREAM_STATE_SQL)?
        .query_row(params![stream_id.as_str(), i64::MAX], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok(last_version.map(|v| StreamState {
        last_version: Some(v as u64),
        deleted,
    }))
}

/// Microseconds since the Unix epoch, how `recorded_at` is stored.
pub(crate) fn micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1000) as i64
}
