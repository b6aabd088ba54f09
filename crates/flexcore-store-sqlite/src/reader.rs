//! Read-only connections on blocking threads.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flexcore_app::store::{
    AllSlice, Direction, ReadAll, ReadStream, Snapshot, StreamSlice, clamp_limit,
};
use flexcore_domain::{EventEnvelope, EventId, RawJson, StreamId};
use rusqlite::types::ToSql;
use rusqlite::{Connection, OptionalExtension, Row};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::SqliteError;

const COLUMNS: &str = "position, event_id, stream_id, stream_version, event_type, schema_version, \
                       data, metadata, recorded_at";

/// A fixed set of read connections, lent out one per read.
pub(crate) struct ReaderPool {
    idle: Mutex<Vec<Reader>>,
    permits: Semaphore,
}

impl ReaderPool {
    pub(crate) fn open(
        path: &Path,
        size: usize,
        head: Arc<AtomicU64>,
    ) -> Result<Self, SqliteError> {
        let readers = (0..size)
            .map(|_| {
                Ok(Reader {
                    conn: crate::schema::open_reader(path)?,
                    head: Arc::clone(&head),
                })
            })
            .collect::<Result<Vec<_>, SqliteError>>()?;
        Ok(Self {
            idle: Mutex::new(readers),
            permits: Semaphore::new(size),
        })
    }

    /// Runs `read` on an idle connection on a blocking thread.
    pub(crate) async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&mut Reader) -> Result<T, SqliteError> + Send + 'static,
    ) -> Result<T, SqliteError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SqliteError::WriterGone)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut reader = pool
                .lock()
                .pop()
                .expect("a permit guarantees an idle reader");
            let result = read(&mut reader);
            pool.lock().push(reader);
            result
        })
        .await
        .map_err(|e| SqliteError::Corrupt(format!("a read panicked: {e}")))?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Reader>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One read connection.
pub(crate) struct Reader {
    conn: Connection,
    head: Arc<AtomicU64>,
}

impl Reader {
    pub(crate) fn ping(&mut self) -> Result<(), SqliteError> {
        self.conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    pub(crate) fn read_stream(&mut self, request: &ReadStream) -> Result<StreamSlice, SqliteError> {
        // Only flushed events are visible (see the syncer).
        let durable = self.head.load(Ordering::Acquire).min(i64::MAX as u64) as i64;
        let tx = self.conn.transaction()?;
        let stream: (Option<i64>, bool, i64) = tx
            .prepare_cached(crate::schema::STREAM_STATE_SQL)?
            .query_row(
                rusqlite::params![request.stream_id.as_str(), durable],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
        let (last_version @ Some(_), false, truncate_before) = stream else {
            return Ok(StreamSlice {
                stream_id: request.stream_id.clone(),
                current_version: None,
                events: Vec::new(),
            });
        };
        let limit = clamp_limit(request.limit) as i64;
        let id = request.stream_id.as_str();
        let events = match request.direction {
            Direction::Forward => {
                let from = request.from_version.unwrap_or(0).min(i64::MAX as u64) as i64;
                query_events(
                    &tx,
                    &format!(
                        "SELECT {COLUMNS} FROM events WHERE stream_id = ?1 AND stream_version >= ?2 ORDER BY stream_version LIMIT ?3"
                    ),
                    &[&id, &from.max(truncate_before), &limit],
                )?
            }
            Direction::Backward => {
                let from = request
                    .from_version
                    .unwrap_or(i64::MAX as u64)
                    .min(i64::MAX as u64) as i64;
                query_events(
                    &tx,
                    &format!(
                        "SELECT {COLUMNS} FROM events WHERE stream_id = ?1 AND stream_version <= ?2 AND stream_version >= ?3 ORDER BY stream_version DESC LIMIT ?4"
                    ),
                    &[&id, &from, &truncate_before, &limit],
                )?
            }
        };
        Ok(StreamSlice {
            stream_id: request.stream_id.clone(),
            current_version: last_version.map(|v| v as u64),
            events,
        })
    }

    pub(crate) fn read_all(&mut self, request: &ReadAll) -> Result<AllSlice, SqliteError> {
        // Everything up to the durable head read now is committed and flushed, so it is in the
        // snapshot the query below takes; nothing past it is returned (it may not be on disk
        // yet). A short page means the reader has seen everything up to the head.
        let head = self.head.load(Ordering::Acquire);
        let limit = clamp_limit(request.limit);
        let from = request.from_position.min(i64::MAX as u64) as i64;
        let durable = head.min(i64::MAX as u64) as i64;
        let mut sql =
            format!("SELECT {COLUMNS} FROM events WHERE position >= ?1 AND position <= ?2");
        let mut args: Vec<&dyn ToSql> = vec![&from, &durable];
        if let Some(category) = &request.filter.category {
            args.push(category);
            sql.push_str(&format!(" AND category = ?{}", args.len()));
        }
        if let Some(prefix) = &request.filter.type_prefix {
            args.push(prefix);
            let n = args.len();
            sql.push_str(&format!(" AND substr(event_type, 1, length(?{n})) = ?{n}"));
        }
        let limit_arg = limit as i64;
        args.push(&limit_arg);
        sql.push_str(&format!(" ORDER BY position LIMIT ?{}", args.len()));
        let events = query_events(&self.conn, &sql, &args)?;
        let next_position = match events.last() {
            Some(last) if events.len() == limit => last.global_position + 1,
            Some(last) => (head + 1).max(last.global_position + 1),
            None => (head + 1).max(request.from_position),
        };
        Ok(AllSlice {
            events,
            next_position,
        })
    }

    pub(crate) fn load_snapshot(
        &mut self,
        stream_id: &StreamId,
    ) -> Result<Option<Snapshot>, SqliteError> {
        let found: Option<(i64, String)> = self
            .conn
            .prepare_cached("SELECT version, state FROM snapshots WHERE stream_id = ?1")?
            .query_row([stream_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        found
            .map(|(version, state)| {
                Ok(Snapshot {
                    stream_id: stream_id.clone(),
                    version: version as u64,
                    state: RawJson::from_string(state)
                        .map_err(|e| SqliteError::Corrupt(e.to_string()))?,
                })
            })
            .transpose()
    }
}

fn query_events(
    conn: &Connection,
    sql: &str,
    args: &[&dyn ToSql],
) -> Result<Vec<EventEnvelope>, SqliteError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(args)?;
    let mut events = Vec::with_capacity(64);
    while let Some(row) = rows.next()? {
        events.push(envelope(row)?);
    }
    Ok(events)
}

fn envelope(row: &Row<'_>) -> Result<EventEnvelope, SqliteError> {
    let corrupt =
        |what: &str, e: &dyn std::fmt::Display| SqliteError::Corrupt(format!("{what}: {e}"));
    let id: [u8; 16] = row.get(1)?;
    // Both documents were validated on their way in: no second parse on the read path.
    let metadata = RawJson::from_stored(row.get(7)?);
    let micros: i64 = row.get(8)?;
    Ok(EventEnvelope {
        global_position: row.get::<_, i64>(0)? as u64,
        event_id: EventId(Uuid::from_bytes(id)),
        stream_id: StreamId::new(row.get::<_, String>(2)?).map_err(|e| corrupt("stream id", &e))?,
        stream_version: row.get::<_, i64>(3)? as u64,
        event_type: row.get(4)?,
        schema_version: row.get(5)?,
        data: RawJson::from_stored(row.get(6)?),
        metadata,
        recorded_at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
            .map_err(|e| corrupt("recorded_at", &e))?,
    })
}
