//! The bus handlers that run Python: commands (load the stream, decide, append), queries,
//! event handlers and durable consumers.

use std::sync::Arc;

use async_trait::async_trait;
use flexcore_app::command::{CommandContext, CommandHandler};
use flexcore_app::event_bus::EventHandler;
use flexcore_app::query::{QueryContext, QueryHandler};
use flexcore_app::repository::{RetryPolicy, retry_on_conflict};
use flexcore_app::security::Principal;
use flexcore_app::store::{EventStore, MAX_READ_LIMIT, ReadStream, StreamWriteResult};
use flexcore_app::{Error, Result};
use flexcore_domain::{EventEnvelope, ExpectedVersion, NewEvent, RawJson, StreamId};
use pyo3::prelude::*;
use pyo3::types::PyList;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::CommandRoute;
use crate::failure::Failure;
use crate::worker::{Ctx, Worker};

pub(crate) struct PythonCommandHandler {
    pub(crate) worker: Arc<Worker>,
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) command_type: String,
    pub(crate) route: CommandRoute,
    pub(crate) retry: RetryPolicy,
}

impl PythonCommandHandler {
    fn stream_id(&self, payload: &Value) -> Result<StreamId> {
        let field = &self.route.id_field;
        let id = match payload.get(field) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(Error::validation(format!("{field} is required"))),
        };
        Ok(StreamId::for_aggregate(&self.route.category, id)?)
    }

    async fn load_stream(&self, stream_id: &StreamId) -> Result<(Vec<EventEnvelope>, Option<u64>)> {
        let mut events = Vec::new();
        let mut request = ReadStream::forward(stream_id.clone());
        loop {
            let slice = self.store.read_stream(request.clone()).await?;
            let full_page = slice.events.len() >= MAX_READ_LIMIT;
            let next = slice.events.last().map(|e| e.stream_version + 1);
            events.extend(slice.events);
            if !full_page {
                return Ok((events, slice.current_version));
            }
            request.from_version = next;
        }
    }

    /// Loads the stream (unless the command creates it), runs the handler, appends.
    async fn attempt(
        &self,
        ctx: &CommandContext,
        payload: &Value,
        stream_id: &StreamId,
    ) -> Result<StreamWriteResult> {
        let (history, version) = if self.route.creates {
            ("[]".to_owned(), None)
        } else {
            let (history, version) = self.load_stream(stream_id).await?;
            let history = serde_json::to_string(&history)
                .map_err(|e| Error::internal(format!("cannot encode events for python: {e}")))?;
            (history, version)
        };
        let decided = self.decide(ctx, payload, history).await?;
        let Some(decided) = decided else {
            return Ok(StreamWriteResult {
                stream_id: stream_id.clone(),
                current_version: version,
                events: Vec::new(),
            });
        };
        if decided.stream.is_some() || decided.expected.is_some() {
            return Err(self.invalid(
                "a handler with an aggregate writes to the aggregate's stream; return events, not an Append".into(),
            ));
        }
        let events = self.new_events(ctx, decided.events)?;
        self.store
            .append(
                stream_id.clone(),
                ExpectedVersion::from_current(version),
                events,
            )
            .await
    }

    /// Runs a stateless handler (no aggregate) and appends what it returned where it says, or
    /// where [`stream_by_rule`] puts it, with no version check unless an `Append` asks for one.
    async fn attempt_stateless(
        &self,
        ctx: &CommandContext,
        payload: &Value,
    ) -> Result<StreamWriteResult> {
        let decided = self.decide(ctx, payload, "[]".to_owned()).await?;
        let Some(decided) = decided else {
            // Nothing happened, so no stream was touched: report the command's own id.
            let stream_id = StreamId::new(format!("command-{}", ctx.command_id))?;
            return Ok(StreamWriteResult {
                stream_id,
                current_version: None,
                events: Vec::new(),
            });
        };
        let stream_id = match &decided.stream {
            Some(named) => StreamId::new(named.clone())
                .map_err(|e| self.invalid(format!("Append names an invalid stream: {e}")))?,
            None => stream_by_rule(&decided.events).map_err(|problem| self.invalid(problem))?,
        };
        let expected = decided.expected.unwrap_or(ExpectedVersion::Any);
        let events = self.new_events(ctx, decided.events)?;
        self.store.append(stream_id, expected, events).await
    }

    /// Runs the Python handler: `None` when it returned nothing to append.
    async fn decide(
        &self,
        ctx: &CommandContext,
        payload: &Value,
        history: String,
    ) -> Result<Option<DecidedAppend>> {
        let payload = payload.to_string();
        let command_type = self.command_type.clone();
        let context = command_context_json(ctx);
        let mut decided = self
            .worker
            .call(move |ctx| decide(ctx, &command_type, payload, history, context))
            .await
            .map_err(|f| f.into_error(&self.command_type))?;
        decided.retain(|append| !append.events.is_empty());
        if decided.len() > 1 {
            return Err(self.invalid(format!(
                "a command appends to one stream; the handler returned {} appends",
                decided.len()
            )));
        }
        Ok(decided.pop())
    }

    /// The events to store, each with the command's metadata plus what the handler added.
    fn new_events(
        &self,
        ctx: &CommandContext,
        decided: Vec<DecidedEvent>,
    ) -> Result<Vec<NewEvent>> {
        let metadata = ctx.event_metadata();
        let mut events = Vec::with_capacity(decided.len());
        for DecidedEvent {
            event_type,
            data,
            metadata: added,
        } in decided
        {
            let data = RawJson::from_string(data)
                .map_err(|e| self.invalid(format!("event '{event_type}': {e}")))?;
            let event = NewEvent::new(event_type.clone(), data)
                .map_err(|e| self.invalid(format!("event '{event_type}': {e}")))?;
            let mut metadata = metadata.clone();
            if let Some(added) = added {
                let added: Map<String, Value> = serde_json::from_str(&added).map_err(|e| {
                    self.invalid(format!("the metadata of event '{event_type}': {e}"))
                })?;
                for (key, value) in added {
                    if ENGINE_METADATA.contains(&key.as_str()) {
                        tracing::warn!(target: "flexcore_python", handler = %self.command_type, key, "a python handler's event metadata cannot override the engine's; ignored");
                        continue;
                    }
                    metadata.extra.insert(key, value);
                }
            }
            events.push(event.with_metadata(metadata));
        }
        Ok(events)
    }

    fn invalid(&self, problem: String) -> Error {
        Failure::Invalid(problem).into_error(&self.command_type)
    }
}

/// The metadata keys the engine writes itself; a handler's event metadata cannot set them.
const ENGINE_METADATA: [&str; 6] = [
    "correlation_id",
    "causation_id",
    "actor",
    "tenant",
    "traceparent",
    "tracestate",
];

/// The stream a stateless handler's events go to when it does not name one: the first
/// segment of the event type is the category, the event's `<category>_id` field the id
/// (`user.created` with `user_id: "42"` → `user-42`), else a fresh UUIDv7. Every event of the
/// command must agree (same category, no other id).
fn stream_by_rule(events: &[DecidedEvent]) -> std::result::Result<StreamId, String> {
    let Some(first) = events.first() else {
        return Err("no events to append".into());
    };
    let category = category_of(&first.event_type);
    let id_field = format!("{category}_id");
    let mut id: Option<String> = None;
    for event in events {
        if category_of(&event.event_type) != category {
            return Err(format!(
                "the events of one command go to one stream, but '{}' and '{}' are of different categories; return an Append to name the stream",
                first.event_type, event.event_type
            ));
        }
        let data: Value = serde_json::from_str(&event.data)
            .map_err(|e| format!("event '{}': {e}", event.event_type))?;
        let found = match data.get(&id_field) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(format!(
                    "event '{}': {id_field} must be a non-empty string or a number; got {other}",
                    event.event_type
                ));
            }
        };
        match &id {
            Some(known) if *known != found => {
                return Err(format!(
                    "the events of one command go to one stream, but they name {id_field} '{known}' and '{found}'; return an Append to name the stream"
                ));
            }
            _ => id = Some(found),
        }
    }
    let id = id.unwrap_or_else(|| Uuid::now_v7().to_string());
    StreamId::for_aggregate(category, id).map_err(|e| e.to_string())
}

/// The first `.`-separated segment of an event type.
fn category_of(event_type: &str) -> &str {
    event_type.split('.').next().unwrap_or(event_type)
}

/// One append a command handler decided.
struct DecidedAppend {
    /// The stream an `Append` named (`None`: the aggregate's, or by [`stream_by_rule`]).
    stream: Option<String>,
    /// The expectation an `Append` named.
    expected: Option<ExpectedVersion>,
    events: Vec<DecidedEvent>,
}

/// An event as `_run_command` hands it over: `(type, data JSON, extra metadata JSON)`.
type PyEvent = (String, String, Option<String>);

/// One event a command handler returned, marshalled by Python.
struct DecidedEvent {
    event_type: String,
    /// A JSON object.
    data: String,
    /// Extra metadata, a JSON object.
    metadata: Option<String>,
}

/// The principal as Python's `flexcore.principal()` receives it: `{sub, roles, tenant}`.
fn principal_value(principal: Option<&Principal>) -> Value {
    principal.map_or(
        Value::Null,
        |p| serde_json::json!({"sub": p.subject, "roles": p.roles, "tenant": p.tenant}),
    )
}

/// What `FlexCore.context()` shows a command handler.
fn command_context_json(ctx: &CommandContext) -> String {
    let metadata = ctx.event_metadata();
    serde_json::json!({
        "command_id": ctx.command_id.to_string(),
        "correlation_id": metadata.correlation_id,
        "causation_id": metadata.causation_id,
        "idempotency_key": ctx.idempotency_key,
        "tenant": ctx.tenant,
        "principal": principal_value(ctx.principal.as_deref()),
    })
    .to_string()
}

/// What `FlexCore.context()` shows a query handler.
fn query_context_json(ctx: &QueryContext) -> String {
    serde_json::json!({
        "tenant": ctx.tenant,
        "principal": principal_value(ctx.principal.as_deref()),
    })
    .to_string()
}

/// An `Append`'s `expected` as Python hands it over: a name or a version.
fn expected_version(value: &Bound<'_, PyAny>) -> std::result::Result<ExpectedVersion, Failure> {
    if let Ok(version) = value.extract::<u64>() {
        return Ok(ExpectedVersion::Exact(version));
    }
    match value.extract::<String>().as_deref() {
        Ok("any") => Ok(ExpectedVersion::Any),
        Ok("no_stream") => Ok(ExpectedVersion::NoStream),
        Ok("stream_exists") => Ok(ExpectedVersion::StreamExists),
        _ => Err(Failure::Invalid(format!(
            "Append's expected is not a known expectation: {value}"
        ))),
    }
}

/// Runs a command handler; Python has checked and marshalled what it returned.
fn decide(
    ctx: &Ctx<'_>,
    command_type: &str,
    payload: String,
    history: String,
    context: String,
) -> Result<Vec<DecidedAppend>, Failure> {
    let returned = ctx.call(
        "_run_command",
        (&ctx.registry, command_type, payload, history, context),
    )?;
    let appends = returned
        .cast_into::<PyList>()
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    let shape = |e: PyErr| Failure::Invalid(format!("unexpected shape from _run_command: {e}"));
    let mut decided = Vec::with_capacity(appends.len());
    for append in appends.iter() {
        let (stream, expected, events): (Option<String>, Bound<'_, PyAny>, Vec<PyEvent>) =
            append.extract().map_err(shape)?;
        let expected = if expected.is_none() {
            None
        } else {
            Some(expected_version(&expected)?)
        };
        decided.push(DecidedAppend {
            stream,
            expected,
            events: events
                .into_iter()
                .map(|(event_type, data, metadata)| DecidedEvent {
                    event_type,
                    data,
                    metadata,
                })
                .collect(),
        });
    }
    Ok(decided)
}

#[async_trait]
impl CommandHandler for PythonCommandHandler {
    async fn handle(&self, ctx: &CommandContext, payload: &Value) -> Result<StreamWriteResult> {
        if self.route.stateless {
            // No state was read, so a lost race cannot be fixed by running the handler again.
            return self.attempt_stateless(ctx, payload).await;
        }
        if self.route.creates {
            // A fresh UUIDv7 names a stream that cannot exist: nothing to load, nothing to
            // retry (the append still expects `no_stream`).
            let field = &self.route.id_field;
            let mut payload = payload.clone();
            let fields = payload
                .as_object_mut()
                .ok_or_else(|| Error::validation("the command must be a JSON object"))?;
            if fields.contains_key(field) {
                return Err(Error::validation(format!(
                    "{field} is assigned by the server; do not send it"
                )));
            }
            fields.insert(field.clone(), Value::String(Uuid::now_v7().to_string()));
            let stream_id = self.stream_id(&payload)?;
            return self.attempt(ctx, &payload, &stream_id).await;
        }
        let stream_id = self.stream_id(payload)?;
        retry_on_conflict(self.retry, || self.attempt(ctx, payload, &stream_id)).await
    }
}

pub(crate) struct PythonQueryHandler {
    pub(crate) worker: Arc<Worker>,
    pub(crate) query_type: String,
}

#[async_trait]
impl QueryHandler for PythonQueryHandler {
    async fn handle(&self, ctx: &QueryContext, params: &Value) -> Result<Value> {
        let params = params.to_string();
        let query_type = self.query_type.clone();
        let context = query_context_json(ctx);
        let json = self
            .worker
            .call(move |ctx| {
                let result =
                    ctx.call("_run_query", (&ctx.registry, query_type, params, context))?;
                ctx.to_json(&result).map_err(|e| {
                    Failure::Invalid(format!("the result must be JSON-serialisable: {e}"))
                })
            })
            .await
            .map_err(|f| f.into_error(&self.query_type))?;
        serde_json::from_str(&json)
            .map_err(|e| Error::internal(format!("python query result is not JSON: {e}")))
    }
}

pub(crate) struct PythonDurableHandler {
    pub(crate) worker: Arc<Worker>,
    pub(crate) name: String,
}

#[async_trait]
impl EventHandler for PythonDurableHandler {
    async fn handle(&self, event: &EventEnvelope) -> Result<()> {
        let json = serde_json::to_string(event)
            .map_err(|e| Error::internal(format!("cannot encode an event for python: {e}")))?;
        let name = self.name.clone();
        let found = self
            .worker
            .call(move |ctx| {
                let found = ctx.call("_run_durable", (&ctx.registry, name, json))?;
                Ok(found.is_truthy().unwrap_or(false))
            })
            .await
            .map_err(|f| f.into_consumer_error(&self.name))?;
        if found {
            Ok(())
        } else {
            Err(Error::unavailable(format!(
                "the loaded python modules have no durable consumer '{}'",
                self.name
            )))
        }
    }
}

pub(crate) struct PythonEventHandler {
    pub(crate) worker: Arc<Worker>,
    pub(crate) event_type: String,
}

#[async_trait]
impl EventHandler for PythonEventHandler {
    async fn handle(&self, event: &EventEnvelope) -> Result<()> {
        let json = serde_json::to_string(event)
            .map_err(|e| Error::internal(format!("cannot encode an event for python: {e}")))?;
        self.worker
            .call(move |ctx| {
                ctx.call("_run_event_handlers", (&ctx.registry, json))
                    .map(|_| ())
            })
            .await
            .map_err(|f| f.into_error(&self.event_type))
    }
}
