//! The read path: stream pages, global-log pages under the watermark, and row decoding.
//!
//! Payloads are selected as `jsonb::text` and wrapped as [`RawJson`] without building a JSON
//! tree.

use deadpool_postgres::ClientWrapper;
use flexcore_app::store::{AllSlice, Direction, ReadAll, ReadStream, StreamSlice, clamp_limit};
use flexcore_domain::{EventEnvelope, EventId, RawJson, StreamId};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::PostgresError;
use crate::write::{to_i64, to_u64};

/// The event columns every read selects, in the order [`envelope`] decodes them.
macro_rules! event_columns {
    ($p:literal) => {
        concat!(
            $p,
            "position, ",
            $p,
            "event_id, ",
            $p,
            "stream_id, ",
            $p,
            "stream_version, ",
            $p,
            "event_type, ",
            $p,
            "schema_version, ",
            $p,
            "data::text, ",
            $p,
            "metadata::text, ",
            $p,
            "recorded_at"
        )
    };
}

const WATERMARK: &str = "SELECT flexcore_watermark()";

/// `read_all` without filter, by category, by type prefix, by both. `starts_with` matches the
/// prefix literally (no `LIKE` wildcards).
const READ_ALL: [&str; 4] = [
    concat!(
        "SELECT ",
        event_columns!(""),
        " FROM events WHERE position >= $1 AND position <= $2 ORDER BY position LIMIT $3"
    ),
    concat!(
        "SELECT ",
        event_columns!(""),
        " FROM events WHERE position >= $1 AND position <= $2 AND category = $4",
        " ORDER BY position LIMIT $3"
    ),
    concat!(
        "SELECT ",
        event_columns!(""),
        " FROM events WHERE position >= $1 AND position <= $2 AND starts_with(event_type, $4)",
        " ORDER BY position LIMIT $3"
    ),
    concat!(
        "SELECT ",
        event_columns!(""),
        " FROM events WHERE position >= $1 AND position <= $2 AND category = $4",
        " AND starts_with(event_type, $5) ORDER BY position LIMIT $3"
    ),
];

/// One stream page and the stream's state, in one statement and so one snapshot. The stream
/// row comes back even when no event matches (with null event columns).
const READ_STREAM_FORWARD: &str = concat!(
    "SELECT s.last_version, s.deleted, ",
    event_columns!("e."),
    " FROM streams s LEFT JOIN LATERAL (",
    "SELECT * FROM events ev WHERE ev.stream_id = s.stream_id AND NOT s.deleted",
    " AND ev.stream_version >= greatest($2::int8, s.truncate_before)",
    " ORDER BY ev.stream_version LIMIT $3) e ON true",
    " WHERE s.stream_id = $1 ORDER BY e.stream_version"
);

const READ_STREAM_BACKWARD: &str = concat!(
    "SELECT s.last_version, s.deleted, ",
    event_columns!("e."),
    " FROM streams s LEFT JOIN LATERAL (",
    "SELECT * FROM events ev WHERE ev.stream_id = s.stream_id AND NOT s.deleted",
    " AND ev.stream_version <= $2::int8 AND ev.stream_version >= s.truncate_before",
    " ORDER BY ev.stream_version DESC LIMIT $3) e ON true",
    " WHERE s.stream_id = $1 ORDER BY e.stream_version DESC"
);

/// Reads a page of the global log, never past an event an in-flight transaction could still
/// commit before.
pub(crate) async fn read_all(
    client: &ClientWrapper,
    request: ReadAll,
) -> Result<AllSlice, PostgresError> {
    let limit = clamp_limit(request.limit);
    let variant = match (&request.filter.category, &request.filter.type_prefix) {
        (None, None) => 0,
        (Some(_), None) => 1,
        (None, Some(_)) => 2,
        (Some(_), Some(_)) => 3,
    };
    let (watermark, query) = tokio::try_join!(
        client.prepare_cached(WATERMARK),
        client.prepare_cached(READ_ALL[variant]),
    )?;
    // Statement 1: the watermark. Everything at or below it is final.
    let safe: i64 = client.query_one(&watermark, &[]).await?.try_get(0)?;
    let safe = u64::try_from(safe).unwrap_or(0);
    let from = request.from_position.max(1);
    if from > safe {
        return Ok(AllSlice {
            events: Vec::new(),
            next_position: request.from_position.max(safe + 1),
        });
    }
    // Statement 2, with a snapshot taken after the watermark: it sees every commit below it.
    let (from_db, safe_db, limit_db) = (to_i64(from)?, to_i64(safe)?, limit as i64);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&from_db, &safe_db, &limit_db];
    if let Some(category) = &request.filter.category {
        params.push(category);
    }
    if let Some(prefix) = &request.filter.type_prefix {
        params.push(prefix);
    }
    let rows = client.query(&query, &params).await?;
    let events = rows
        .iter()
        .map(|row| envelope(row, 0, None))
        .collect::<Result<Vec<_>, _>>()?;
    let next_position = match events.last() {
        Some(last) if events.len() == limit => last.global_position + 1,
        _ => safe + 1,
    }
    .max(request.from_position);
    Ok(AllSlice {
        events,
        next_position,
    })
}

/// Reads a page of one stream. No watermark is needed: a stream's versions are written under
/// its row lock, so one snapshot never shows a later version without the earlier ones.
pub(crate) async fn read_stream(
    client: &ClientWrapper,
    request: ReadStream,
) -> Result<StreamSlice, PostgresError> {
    let limit = clamp_limit(request.limit) as i64;
    let (sql, from) = match request.direction {
        Direction::Forward => (READ_STREAM_FORWARD, request.from_version.unwrap_or(0)),
        Direction::Backward => (
            READ_STREAM_BACKWARD,
            request.from_version.unwrap_or(i64::MAX as u64),
        ),
    };
    let from = i64::try_from(from).unwrap_or(i64::MAX);
    let statement = client.prepare_cached(sql).await?;
    let rows = client
        .query(&statement, &[&request.stream_id.as_str(), &from, &limit])
        .await?;
    let Some(first) = rows.first() else {
        return Ok(StreamSlice {
            stream_id: request.stream_id,
            current_version: None,
            events: Vec::new(),
        });
    };
    let last_version: Option<i64> = first.try_get(0)?;
    let deleted: bool = first.try_get(1)?;
    let current_version = match last_version {
        Some(v) if !deleted => Some(to_u64(v)?),
        _ => None,
    };
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        // The left join yields one row with null event columns when no event matches.
        if row.try_get::<_, Option<i64>>(2)?.is_some() {
            events.push(envelope(row, 2, Some(&request.stream_id))?);
        }
    }
    Ok(StreamSlice {
        stream_id: request.stream_id,
        current_version,
        events,
    })
}

/// Decodes the event columns starting at column `at`.
fn envelope(
    row: &Row,
    at: usize,
    stream_id: Option<&StreamId>,
) -> Result<EventEnvelope, PostgresError> {
    let stream_id = match stream_id {
        Some(id) => id.clone(),
        None => StreamId::new(row.try_get::<_, String>(at + 2)?)
            .map_err(|e| PostgresError::Corrupt(e.to_string()))?,
    };
    // `jsonb::text` is valid JSON by construction: no second parse on the read path.
    let data = RawJson::from_stored(row.try_get(at + 6)?);
    let metadata = RawJson::from_stored(row.try_get(at + 7)?);
    Ok(EventEnvelope {
        global_position: to_u64(row.try_get(at)?)?,
        event_id: EventId(row.try_get(at + 1)?),
        stream_id,
        stream_version: to_u64(row.try_get(at + 3)?)?,
        event_type: row.try_get(at + 4)?,
        schema_version: row.try_get::<_, i32>(at + 5)?.cast_unsigned(),
        data,
        metadata,
        recorded_at: row.try_get(at + 8)?,
    })
}
