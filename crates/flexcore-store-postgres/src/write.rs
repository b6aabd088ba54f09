//! The write path: group commit over parallel committer tasks.
//!
//! `append_atomic` puts a request on a queue and waits for its answer. `committers` tasks share
//! the queue; each takes everything queued (up to `max_batch_events`) and runs it as one
//! transaction in two round trips (1 and 3):
//!
//! 1. pipelined: `BEGIN`; create the missing stream rows of the batch and lock all of them, in
//!    one sorted order, in one statement; look up the batch's event ids among stored events;
//! 2. the shared planner decides each request (write, idempotent replay, reject, defer);
//! 3. pipelined: one statement that reserves the positions (`flexcore_reserve`), inserts every
//!    planned row from arrays and updates every stream's version; then `COMMIT`.
//!
//! Only then is each request answered with its own outcome. A batch that fails for any reason
//! but a lost connection is re-run request by request, so one bad request cannot fail its
//! neighbours. Several committers run at once: they wait for each other only on the row locks of
//! streams they share, never on each other's commits (see `flexcore_reserve` in the migrations).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use deadpool_postgres::{ClientWrapper, Object, Pool};
use flexcore_app::store::plan::{self, GroupCommitCounters, KnownEvent, Outcome, StreamState};
use flexcore_app::store::{AppendResult, StreamWrite};
use flexcore_domain::{EventId, StreamId};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::PostgresError;

/// Opens a batch transaction, with `enable_seqscan = off` for it: every statement of it is an index lookup. The prepared
/// statements live as long as the pooled connection, and while a table is small PostgreSQL
/// prefers sequential scans (and keeps re-planning them); pricing those out keeps the lookups on
/// the indexes whatever the table's size or statistics, and doubled group-commit throughput.
const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL enable_seqscan = off; \
                     SET LOCAL plan_cache_mode = force_generic_plan";

/// Creates the batch's missing stream rows and locks the existing ones, returning their state.
/// Rows are taken in array order, which is the planner's sorted order for every committer: no
/// deadlocks. The no-op `DO UPDATE` locks the row like `FOR UPDATE` would, but also waits for
/// (and then sees) a row that a concurrent transaction is inserting.
const LOCK_STREAMS: &str = "INSERT INTO streams AS s (stream_id) SELECT unnest($1::text[]) \
     ON CONFLICT (stream_id) DO UPDATE SET last_version = s.last_version \
     RETURNING s.stream_id, s.last_version, s.deleted";

/// Finds already stored events among the batch's ids (idempotent re-sends).
const KNOWN_EVENTS: &str = "SELECT event_id, stream_id, stream_version, position, event_type \
     FROM events WHERE event_id = ANY($1::uuid[])";

/// Reserves `$1` positions, inserts every row and updates every stream, in one statement.
/// `MATERIALIZED` makes the reservation run exactly once.
const WRITE_EVENTS: &str = "\
WITH r AS MATERIALIZED (SELECT flexcore_reserve($1::int4) AS first),
ins AS (
    INSERT INTO events (position, event_id, stream_id, stream_version, category, event_type,
                        schema_version, data, metadata)
    SELECT r.first + t.ord - 1, t.event_id, t.stream_id, t.stream_version, t.category,
           t.event_type, t.schema_version, t.data::jsonb, t.metadata::jsonb
      FROM r, unnest($2::uuid[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::int4[],
                     $8::text[], $9::text[])
              WITH ORDINALITY AS t(event_id, stream_id, stream_version, category, event_type,
                                   schema_version, data, metadata, ord)
),
upd AS (
    UPDATE streams s SET last_version = u.last_version, deleted = u.deleted
      FROM unnest($10::text[], $11::int8[], $12::bool[]) AS u(stream_id, last_version, deleted)
     WHERE s.stream_id = u.stream_id
)
SELECT first FROM r";

type Reply = oneshot::Sender<flexcore_app::Result<AppendResult>>;

/// One `append_atomic` call waiting for a committer.
pub(crate) struct Request {
    writes: Vec<StreamWrite>,
    /// Its weight in a batch: its events, at least 1.
    events: usize,
    reply: Reply,
}

impl Request {
    /// A request and the receiver of its answer.
    pub(crate) fn new(
        writes: Vec<StreamWrite>,
    ) -> (Self, oneshot::Receiver<flexcore_app::Result<AppendResult>>) {
        let (reply, answer) = oneshot::channel();
        (Self::with_reply(writes, reply), answer)
    }

    fn with_reply(writes: Vec<StreamWrite>, reply: Reply) -> Self {
        let events = writes.iter().map(|w| w.events.len()).sum::<usize>().max(1);
        Self {
            writes,
            events,
            reply,
        }
    }
}

/// What the committers share with the store.
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    /// The highest position this process has committed (a wake-up hint for readers).
    pub(crate) head: watch::Sender<u64>,
    pub(crate) max_batch_events: usize,
    /// Where committed batches are counted.
    pub(crate) group_commits: GroupCommitCounters,
}

/// Starts `count` committer tasks on one shared queue. They stop when every sender is gone and
/// the queue is drained.
pub(crate) fn spawn_committers(shared: &Arc<Shared>, count: usize, queue: mpsc::Receiver<Request>) {
    let queue = Arc::new(Mutex::new(queue));
    for _ in 0..count {
        tokio::spawn(run_committer(Arc::clone(shared), Arc::clone(&queue)));
    }
}

async fn run_committer(shared: Arc<Shared>, queue: Arc<Mutex<mpsc::Receiver<Request>>>) {
    // Requests deferred by the last batch (they re-send events it just wrote) and one that did
    // not fit: they go first into the next batch.
    let mut carry: VecDeque<Request> = VecDeque::new();
    while let Some(batch) = next_batch(&queue, &mut carry, shared.max_batch_events).await {
        let deferred = shared.commit_batch(batch).await;
        for request in deferred.into_iter().rev() {
            carry.push_front(request);
        }
    }
}

/// Collects the next batch: carried requests first, then whatever is queued, up to `max`
/// events (a single larger request goes alone). `None` when the queue is closed and empty.
async fn next_batch(
    queue: &Mutex<mpsc::Receiver<Request>>,
    carry: &mut VecDeque<Request>,
    max: usize,
) -> Option<Vec<Request>> {
    let mut batch = Vec::new();
    let mut events = 0;
    while let Some(request) = carry.pop_front() {
        if !batch.is_empty() && events + request.events > max {
            carry.push_front(request);
            return Some(batch);
        }
        events += request.events;
        batch.push(request);
    }
    let mut receiver = if batch.is_empty() {
        let mut receiver = queue.lock().await;
        let first = receiver.recv().await?;
        events += first.events;
        batch.push(first);
        // Let the tasks that are ready to run (writers just answered by the last commit) queue
        // their next appends before the batch closes; when nothing else is ready this costs
        // nothing.
        tokio::task::yield_now().await;
        receiver
    } else {
        // Another committer may be parked on an empty queue: do not wait behind it with
        // requests in hand.
        match queue.try_lock() {
            Ok(receiver) => receiver,
            Err(_) => return Some(batch),
        }
    };
    while events < max {
        let Ok(request) = receiver.try_recv() else {
            break;
        };
        if events + request.events > max {
            carry.push_back(request);
            break;
        }
        events += request.events;
        batch.push(request);
    }
    Some(batch)
}

impl Shared {
    /// Commits a batch and answers its requests; returns the deferred ones.
    async fn commit_batch(&self, batch: Vec<Request>) -> Vec<Request> {
        if batch.len() == 1 {
            let Request { writes, reply, .. } = batch.into_iter().next().expect("one request");
            return match self.execute(vec![writes], None).await {
                Ok(outcomes) => answer(vec![reply], outcomes),
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                    Vec::new()
                }
            };
        }
        // Kept for a one-by-one re-run should the batch fail.
        let retry: Vec<Vec<StreamWrite>> = batch.iter().map(|r| r.writes.clone()).collect();
        let (requests, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|r| (r.writes, r.reply)).unzip();
        match self.execute(requests, None).await {
            Ok(outcomes) => answer(replies, outcomes),
            Err(e) if e.is_unavailable() => {
                for reply in replies {
                    let _ = reply.send(Err(e.to_app_error()));
                }
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    requests = replies.len(),
                    "group commit failed; re-running its requests one by one"
                );
                let mut deferred = Vec::new();
                for (writes, reply) in retry.into_iter().zip(replies) {
                    match self.execute(vec![writes], None).await {
                        Ok(outcomes) => deferred.extend(answer(vec![reply], outcomes)),
                        Err(e) => {
                            let _ = reply.send(Err(e.into()));
                        }
                    }
                }
                deferred
            }
        }
    }

    /// Runs one batch transaction on a pooled connection and publishes the new head.
    async fn execute(
        &self,
        requests: Vec<Vec<StreamWrite>>,
        hold: Option<Hold>,
    ) -> Result<Vec<Outcome>, PostgresError> {
        let client = self.pool.get().await?;
        match write_batch(&client, requests, hold, &self.group_commits).await {
            Ok((outcomes, last)) => {
                if let Some(last) = last {
                    // Always notify, even when `last` is below the head: a reader held back by
                    // this very transaction may now move on.
                    self.head.send_modify(|head| *head = (*head).max(last));
                }
                Ok(outcomes)
            }
            Err(e) => {
                // The connection may be mid-transaction or, if `flexcore_reserve` failed halfway,
                // hold the session-level gate: close it rather than return it to the pool. The
                // server then rolls back and releases every lock of the session.
                drop(Object::take(client));
                Err(e)
            }
        }
    }
}

/// Sends every decided outcome; returns the deferred requests.
fn answer(replies: Vec<Reply>, outcomes: Vec<Outcome>) -> Vec<Request> {
    let mut deferred = Vec::new();
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Done(result) => {
                let _ = reply.send(result);
            }
            Outcome::Defer(writes) => deferred.push(Request::with_reply(writes, reply)),
        }
    }
    deferred
}

/// Test hook: pause a transaction after it reserved its positions and before it commits.
struct Hold {
    reserved: oneshot::Sender<u64>,
    /// `true` commits, `false` (or a dropped sender) rolls back.
    release: oneshot::Receiver<bool>,
}

/// The batch transaction. Returns the outcomes and the last position written, if any.
async fn write_batch(
    client: &ClientWrapper,
    requests: Vec<Vec<StreamWrite>>,
    hold: Option<Hold>,
    group_commits: &GroupCommitCounters,
) -> Result<(Vec<Outcome>, Option<u64>), PostgresError> {
    let stream_ids = plan::stream_ids(&requests);
    let ids: Vec<&str> = stream_ids.iter().map(StreamId::as_str).collect();
    let event_ids: Vec<Uuid> = plan::event_ids(&requests)
        .into_iter()
        .map(|id| id.0)
        .collect();
    let (lock, known, write) = tokio::try_join!(
        client.prepare_cached(LOCK_STREAMS),
        client.prepare_cached(KNOWN_EVENTS),
        client.prepare_cached(WRITE_EVENTS),
    )?;

    // Round trip 1. `biased` polls in order, so the messages go out in this order; each
    // statement runs after the previous one finished, with a fresh snapshot (read committed),
    // so the lock and the lookup see every stream row and event committed before they started.
    let (ids_param, event_ids_param): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
        ([&ids], [&event_ids]);
    let ((), locked, stored) = tokio::try_join!(
        biased;
        client.batch_execute(BEGIN),
        client.query(&lock, &ids_param),
        client.query(&known, &event_ids_param),
    )?;
    let mut states = HashMap::with_capacity(locked.len());
    for row in &locked {
        let last_version: Option<i64> = row.try_get(1)?;
        states.insert(
            stream_id(row.try_get(0)?)?,
            StreamState {
                last_version: last_version.map(to_u64).transpose()?,
                deleted: row.try_get(2)?,
            },
        );
    }
    let mut known_events = HashMap::with_capacity(stored.len());
    for row in &stored {
        known_events.insert(
            EventId(row.try_get(0)?),
            KnownEvent {
                stream_id: stream_id(row.try_get(1)?)?,
                stream_version: to_u64(row.try_get(2)?)?,
                global_position: to_u64(row.try_get(3)?)?,
                event_type: row.try_get(4)?,
            },
        );
    }

    let plan = plan::plan_batch(requests, states, &known_events);
    if plan.rows.is_empty() {
        // Nothing to write (replays, rejections, expectation-only writes).
        client.batch_execute("ROLLBACK").await?;
        return Ok((plan.into_outcomes(0), None));
    }

    let n = plan.rows.len();
    let mut event_ids = Vec::with_capacity(n);
    let mut streams = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut categories = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut schema_versions = Vec::with_capacity(n);
    let mut data = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    for row in &plan.rows {
        event_ids.push(row.event.event_id.0);
        streams.push(row.stream_id.as_str());
        versions.push(to_i64(row.stream_version)?);
        categories.push(row.stream_id.category());
        types.push(row.event.event_type.as_str());
        // Stored as `integer`; the bit-cast round-trips every u32.
        schema_versions.push(row.event.schema_version.cast_signed());
        data.push(row.event.data.get());
        metadata.push(row.event.metadata.to_raw().get().to_owned());
    }
    let mut changed_ids = Vec::new();
    let mut changed_versions = Vec::new();
    let mut changed_deleted = Vec::new();
    for (id, state) in plan.changed_streams() {
        changed_ids.push(id.as_str());
        changed_versions.push(state.last_version.map(to_i64).transpose()?);
        changed_deleted.push(state.deleted);
    }
    let count = i32::try_from(n)
        .map_err(|_| PostgresError::Config(format!("a batch of {n} events is too large")))?;
    let params: [&(dyn ToSql + Sync); 12] = [
        &count,
        &event_ids,
        &streams,
        &versions,
        &categories,
        &types,
        &schema_versions,
        &data,
        &metadata,
        &changed_ids,
        &changed_versions,
        &changed_deleted,
    ];

    // Round trip 2: reserve + insert + update, then COMMIT, pipelined. Should the write fail,
    // the server turns the COMMIT into a rollback and the error surfaces here.
    let first = match hold {
        None => {
            let (row, ()) = tokio::try_join!(
                biased;
                client.query_one(&write, &params),
                client.batch_execute("COMMIT"),
            )?;
            to_u64(row.try_get(0)?)?
        }
        Some(hold) => {
            let first = to_u64(client.query_one(&write, &params).await?.try_get(0)?)?;
            let _ = hold.reserved.send(first);
            if !hold.release.await.unwrap_or(false) {
                client.batch_execute("ROLLBACK").await?;
                let outcomes = plan
                    .fail_writes(|| flexcore_app::Error::internal("rolled back by the test hook"));
                return Ok((outcomes, None));
            }
            client.batch_execute("COMMIT").await?;
            first
        }
    };
    let last = first + n as u64 - 1;
    plan.record_committed(group_commits);
    Ok((plan.into_outcomes(first), Some(last)))
}

/// An append whose transaction has reserved its global positions and now waits, still open,
/// for [`HeldAppend::commit`] or [`HeldAppend::rollback`]. A test hook to force the commit-order
/// race; see [`crate::PostgresStore::append_held`].
#[doc(hidden)]
pub struct HeldAppend {
    first_position: u64,
    release: oneshot::Sender<bool>,
    task: JoinHandle<flexcore_app::Result<AppendResult>>,
}

impl HeldAppend {
    /// Runs an append on its own connection up to just before `COMMIT`.
    pub(crate) async fn start(
        shared: Arc<Shared>,
        writes: Vec<StreamWrite>,
    ) -> flexcore_app::Result<Self> {
        let (reserved_tx, reserved) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        let hold = Hold {
            reserved: reserved_tx,
            release: release_rx,
        };
        let task = tokio::spawn(async move {
            match shared.execute(vec![writes], Some(hold)).await?.pop() {
                Some(Outcome::Done(result)) => result,
                _ => Err(flexcore_app::Error::internal(
                    "a lone request cannot be deferred",
                )),
            }
        });
        match reserved.await {
            Ok(first_position) => Ok(Self {
                first_position,
                release,
                task,
            }),
            // Nothing was reserved: the append was rejected, replayed or failed.
            Err(_) => match task.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(flexcore_app::Error::internal(
                    "the held append wrote nothing",
                )),
                Err(e) => Err(flexcore_app::Error::internal(format!(
                    "held append task: {e}"
                ))),
            },
        }
    }

    /// The first global position reserved by the open transaction.
    pub fn first_position(&self) -> u64 {
        self.first_position
    }

    /// Commits the transaction and returns the append's result.
    pub async fn commit(self) -> flexcore_app::Result<AppendResult> {
        let _ = self.release.send(true);
        self.task
            .await
            .map_err(|e| flexcore_app::Error::internal(format!("held append task: {e}")))?
    }

    /// Rolls the transaction back.
    pub async fn rollback(self) {
        let _ = self.release.send(false);
        let _ = self.task.await;
    }
}

fn stream_id(id: String) -> Result<StreamId, PostgresError> {
    StreamId::new(id).map_err(|e| PostgresError::Corrupt(e.to_string()))
}

pub(crate) fn to_u64(value: i64) -> Result<u64, PostgresError> {
    u64::try_from(value).map_err(|_| PostgresError::Corrupt(format!("negative number {value}")))
}

pub(crate) fn to_i64(value: u64) -> Result<i64, PostgresError> {
    i64::try_from(value)
        .map_err(|_| PostgresError::Corrupt(format!("{value} does not fit a bigint column")))
}
