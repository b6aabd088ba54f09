//! Between the wire messages and the application's types: every input is checked here, with
//! the HTTP gateway's rules and messages, before anything is written.

use flexcore_app::command::{CommandContext, CommandOutcome};
use flexcore_app::store::{Direction, EventFilter};
use flexcore_domain::{
    EventEnvelope, EventId, EventMetadata, ExpectedVersion, NewEvent, RawJson, StreamId,
};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use tonic::Status;
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use crate::error::{from_app, invalid_argument};
use crate::pb;

/// The page size of stream and global reads when the request says 0.
const DEFAULT_PAGE: usize = 100;

/// The longest trace or correlation value copied from request metadata.
const MAX_HEADER_LEN: usize = 512;

/// Reads the trace and correlation metadata into a command context, as the HTTP gateway reads
/// its headers: `traceparent`, `tracestate`, `x-correlation-id`; empty or over-long values
/// are ignored.
pub(crate) fn command_context(metadata: &MetadataMap) -> CommandContext {
    let header = |name: &str| {
        metadata
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= MAX_HEADER_LEN)
            .map(str::to_owned)
    };
    CommandContext {
        correlation_id: header("x-correlation-id"),
        traceparent: header("traceparent"),
        tracestate: header("tracestate"),
        ..CommandContext::default()
    }
}

/// Refuses JSON text nested deeper than `max_depth`, counted before parsing so that a hostile
/// document cannot exhaust the parser first.
fn check_depth(field: &str, text: &str, max_depth: usize) -> Result<(), Status> {
    if flexcore_domain::json_nesting_depth(text.as_bytes()) > max_depth {
        return Err(invalid_argument(format!(
            "{field} is nested deeper than {max_depth} levels"
        )));
    }
    Ok(())
}

/// Parses a JSON text field into a tree.
fn parse_json(field: &str, text: &str, max_depth: usize) -> Result<Value, Status> {
    check_depth(field, text, max_depth)?;
    serde_json::from_str(text)
        .map_err(|e| invalid_argument(format!("{field} is not valid JSON: {e}")))
}

/// A command body: JSON text holding an object.
pub(crate) fn command_payload(text: &str, max_depth: usize) -> Result<Value, Status> {
    let payload = parse_json("payload_json", text, max_depth)?;
    if !payload.is_object() {
        return Err(invalid_argument("a command body must be a JSON object"));
    }
    Ok(payload)
}

/// Query parameters: any JSON text; empty means `{}`.
pub(crate) fn query_params(text: &str, max_depth: usize) -> Result<Value, Status> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    parse_json("params_json", text, max_depth)
}

/// A stream id, checked by the domain's rules.
pub(crate) fn stream_id(raw: String) -> Result<StreamId, Status> {
    StreamId::new(raw).map_err(|e| from_app(e.into()))
}

/// The oneof of `AppendRequest`; unset means `any`, as in the HTTP gateway.
pub(crate) fn expected_version(
    expected: Option<pb::append_request::ExpectedVersion>,
) -> ExpectedVersion {
    use pb::append_request::ExpectedVersion as Wire;
    match expected {
        None | Some(Wire::Any(())) => ExpectedVersion::Any,
        Some(Wire::NoStream(())) => ExpectedVersion::NoStream,
        Some(Wire::Exists(())) => ExpectedVersion::StreamExists,
        Some(Wire::Exact(version)) => ExpectedVersion::Exact(version),
    }
}

/// The events of an append: at least one, each checked; the first bad one is reported with its
/// index (`events[2]: …`).
pub(crate) fn new_events(
    events: Vec<pb::NewEvent>,
    max_depth: usize,
) -> Result<Vec<NewEvent>, Status> {
    if events.is_empty() {
        return Err(invalid_argument("'events' must contain at least one event"));
    }
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            new_event(e, max_depth)
                .map_err(|message| invalid_argument(format!("events[{i}]: {message}")))
        })
        .collect()
}

fn new_event(event: pb::NewEvent, max_depth: usize) -> Result<NewEvent, String> {
    let depth = |field: &str, text: &str| {
        if flexcore_domain::json_nesting_depth(text.as_bytes()) > max_depth {
            return Err(format!("{field} is nested deeper than {max_depth} levels"));
        }
        Ok(())
    };
    let domain_message = |e: flexcore_domain::DomainError| {
        e.to_string()
            .trim_start_matches("validation failed: ")
            .to_owned()
    };
    depth("data_json", &event.data_json)?;
    let data = RawJson::from_string(event.data_json).map_err(domain_message)?;
    let mut new = NewEvent::new(event.event_type, data).map_err(domain_message)?;
    if let Some(raw) = event.event_id {
        let id = Uuid::parse_str(&raw).map_err(|_| format!("event_id '{raw}' is not a UUID"))?;
        new = new.with_id(EventId(id));
    }
    if let Some(version) = event.schema_version {
        new.schema_version = version;
    }
    let metadata = match event.metadata_json.as_deref().map(str::trim) {
        None | Some("") => EventMetadata::default(),
        Some(text) => {
            depth("metadata_json", text)?;
            serde_json::from_str::<Option<EventMetadata>>(text)
                .map_err(|e| format!("invalid metadata_json: {e}"))?
                .unwrap_or_default()
        }
    };
    Ok(new.with_metadata(metadata))
}

/// A page size: 0 means the default; the store clamps large ones.
pub(crate) fn page_size(limit: u32) -> usize {
    match limit {
        0 => DEFAULT_PAGE,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

/// A reading direction; unknown numbers are refused.
pub(crate) fn direction(raw: i32) -> Result<Direction, Status> {
    match pb::Direction::try_from(raw) {
        Ok(pb::Direction::Unspecified | pb::Direction::Forward) => Ok(Direction::Forward),
        Ok(pb::Direction::Backward) => Ok(Direction::Backward),
        Err(_) => Err(invalid_argument(format!(
            "direction {raw} is not one of DIRECTION_FORWARD, DIRECTION_BACKWARD"
        ))),
    }
}

/// A `read_all` filter; empty texts mean no filter.
pub(crate) fn filter(type_prefix: Option<String>, category: Option<String>) -> EventFilter {
    EventFilter {
        type_prefix: type_prefix.filter(|p| !p.is_empty()),
        category: category.filter(|c| !c.is_empty()),
    }
}

/// What a command did, on the wire.
pub(crate) fn command_outcome(outcome: CommandOutcome) -> pb::CommandOutcome {
    pb::CommandOutcome {
        command_id: outcome.command_id.to_string(),
        stream_id: outcome.stream_id.into_string(),
        version: outcome.version,
        events: outcome
            .events
            .into_iter()
            .map(|e| pb::AppendedEvent {
                event_id: e.event_id.to_string(),
                event_type: e.event_type,
                stream_version: e.stream_version,
                global_position: e.global_position,
            })
            .collect(),
    }
}

/// A stored event, on the wire: its JSON texts are passed on as stored.
pub(crate) fn recorded_event(envelope: EventEnvelope) -> Result<pb::RecordedEvent, Status> {
    let recorded_at = envelope.recorded_at.format(&Rfc3339).map_err(|e| {
        from_app(flexcore_app::Error::internal(format!(
            "cannot format the recorded_at of event {}: {e}",
            envelope.event_id
        )))
    })?;
    Ok(pb::RecordedEvent {
        event_id: envelope.event_id.to_string(),
        stream_id: envelope.stream_id.into_string(),
        stream_version: envelope.stream_version,
        global_position: envelope.global_position,
        event_type: envelope.event_type,
        schema_version: envelope.schema_version,
        data_json: envelope.data.get().to_owned(),
        metadata_json: envelope.metadata.get().to_owned(),
        recorded_at,
    })
}

/// Converts a page of envelopes.
pub(crate) fn recorded_events(
    envelopes: Vec<EventEnvelope>,
) -> Result<Vec<pb::RecordedEvent>, Status> {
    envelopes.into_iter().map(recorded_event).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_metadata_lands_in_the_command_context() {
        let mut metadata = MetadataMap::new();
        metadata.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        metadata.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        metadata.insert("x-correlation-id", "corr-1".parse().unwrap());
        let ctx = command_context(&metadata);
        assert_eq!(ctx.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(ctx.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        assert!(ctx.traceparent.unwrap().starts_with("00-0af7"));
        metadata.insert("x-correlation-id", "x".repeat(513).parse().unwrap());
        assert_eq!(command_context(&metadata).correlation_id, None);
    }

    #[test]
    fn events_are_checked_like_the_http_gateway_does() {
        let event = |data: &str| pb::NewEvent {
            event_type: "t".into(),
            data_json: data.into(),
            ..Default::default()
        };
        assert!(new_events(vec![event("{}")], 64).is_ok());
        assert!(new_events(vec![], 64).is_err());
        let status = new_events(vec![event("{}"), event("[1]")], 64).unwrap_err();
        assert_eq!(
            status.message(),
            "events[1]: event data must be a JSON object"
        );
        let deep = format!("{{\"x\": {}1{}}}", "[".repeat(10), "]".repeat(10));
        assert!(new_events(vec![event(&deep)], 8).is_err());
        let with_null_metadata = pb::NewEvent {
            metadata_json: Some("null".into()),
            ..event("{}")
        };
        assert!(new_events(vec![with_null_metadata], 64).is_ok());
        let with_bad_metadata = pb::NewEvent {
            metadata_json: Some(r#"{"actor": 1}"#.into()),
            ..event("{}")
        };
        assert!(new_events(vec![with_bad_metadata], 64).is_err());
    }
}
