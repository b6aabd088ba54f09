//! The bus handlers that run Python: commands (load the stream, decide, append), queries,
//! event handlers and durable consumers.

use std::sync::Arc;

use async_trait::async_trait;
use flexcore_app::command::{CommandContext, CommandHandler, ENGINE_METADATA_KEYS};
use flexcore_app::event_bus::EventHandler;
use flexcore_app::query::{QueryContext, QueryHandler};
use flexcore_app::repository::RetryPolicy;
use flexcore_app::security::Principal;
use flexcore_app::store::{EventStore, StreamWrite, StreamWriteResult, read_whole_stream};
use flexcore_app::{Error, Result};
use flexcore_domain::{EventEnvelope, ExpectedVersion, NewEvent, RawJson, StreamId};
use pyo3::prelude::*;
use pyo3::types::PyList;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::CommandRoute;
use crate::failure::Failure;
use crate::reads::StreamReads;
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

    /// The payload the handler sees and its aggregate's stream (`None`: stateless). A command
    /// that creates its aggregate gets a fresh UUIDv7 in `id_field`, assigned once, so that a
    /// re-run after a conflict creates the same aggregate.
    fn target(&self, payload: &Value) -> Result<(Value, Option<StreamId>)> {
        if self.route.stateless {
            return Ok((payload.clone(), None));
        }
        let mut payload = payload.clone();
        if self.route.creates {
            let field = &self.route.id_field;
            let fields = payload
                .as_object_mut()
                .ok_or_else(|| Error::validation("the command must be a JSON object"))?;
            if fields.contains_key(field) {
                return Err(Error::validation(format!(
                    "{field} is assigned by the server; do not send it"
                )));
            }
            fields.insert(field.clone(), Value::String(Uuid::now_v7().to_string()));
        }
        let stream_id = self.stream_id(&payload)?;
        Ok((payload, Some(stream_id)))
    }

    /// One run: load the aggregate's stream (unless the command creates it), run the handler,
    /// commit what it returned in one atomic append. Also says whether the decision rested on
    /// reads (the aggregate's state or `FlexCore.read_stream`), which makes a conflict worth a
    /// re-run.
    async fn attempt(
        &self,
        ctx: &CommandContext,
        payload: &Value,
        own: Option<&StreamId>,
    ) -> (Result<StreamWriteResult>, bool) {
        let loads_state = own.is_some() && !self.route.creates;
        let reads = StreamReads::new(self.store.clone());
        let outcome = self.decide_and_append(ctx, payload, own, &reads).await;
        (outcome, loads_state || reads.read_any())
    }

    async fn decide_and_append(
        &self,
        ctx: &CommandContext,
        payload: &Value,
        own: Option<&StreamId>,
        reads: &Arc<StreamReads>,
    ) -> Result<StreamWriteResult> {
        let (history, version) = match own {
            Some(stream_id) if !self.route.creates => {
                let (history, version) = read_whole_stream(self.store.as_ref(), stream_id).await?;
                let history = serde_json::to_string(&history).map_err(|e| {
                    Error::internal(format!("cannot encode events for python: {e}"))
                })?;
                (history, version)
            }
            _ => ("[]".to_owned(), None),
        };
        let decided = self.decide(ctx, payload, history, reads).await?;
        let writes = self.writes(ctx, own.map(|stream_id| (stream_id, version)), decided)?;
        if writes.is_empty() {
            // Nothing happened: report the aggregate's stream as it is, or, stateless, the
            // command's own id.
            let stream_id = match own {
                Some(stream_id) => stream_id.clone(),
                None => StreamId::new(format!("command-{}", ctx.command_id))?,
            };
            return Ok(StreamWriteResult {
                stream_id,
                current_version: version,
                events: Vec::new(),
            });
        }
        let result = self.store.append_atomic(writes).await?;
        result
            .streams
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("append returned no stream result"))
    }

    /// The writes of one decision, the aggregate's stream first: its bare events expecting
    /// the version its state was built from; a stateless handler's bare events where
    /// [`stream_by_rule`] puts them, with no check; then each `Append` with its expectation
    /// (Python resolved a left-out one from the handler's reads). An `Append` with neither
    /// events nor a check writes nothing and is dropped; the aggregate's stream is written (or
    /// only checked) whenever anything else is.
    fn writes(
        &self,
        ctx: &CommandContext,
        own: Option<(&StreamId, Option<u64>)>,
        decided: Vec<DecidedAppend>,
    ) -> Result<Vec<StreamWrite>> {
        let mut bare = Vec::new();
        let mut named = Vec::new();
        for append in decided {
            match append.stream {
                None => bare.extend(append.events),
                Some(stream) => {
                    let expected = append.expected.unwrap_or(ExpectedVersion::Any);
                    if append.events.is_empty() && expected == ExpectedVersion::Any {
                        continue;
                    }
                    let stream_id = StreamId::new(stream).map_err(|e| {
                        self.invalid(format!("Append names an invalid stream: {e}"))
                    })?;
                    named.push(StreamWrite::new(
                        stream_id,
                        expected,
                        self.new_events(ctx, append.events)?,
                    ));
                }
            }
        }
        let mut writes = Vec::with_capacity(named.len() + 1);
        match own {
            Some((stream_id, version)) if !bare.is_empty() || !named.is_empty() => {
                writes.push(StreamWrite::new(
                    stream_id.clone(),
                    ExpectedVersion::from_current(version),
                    self.new_events(ctx, bare)?,
                ));
            }
            None if !bare.is_empty() => {
                let stream_id = stream_by_rule(&bare).map_err(|problem| self.invalid(problem))?;
                writes.push(StreamWrite::new(
                    stream_id,
                    ExpectedVersion::Any,
                    self.new_events(ctx, bare)?,
                ));
            }
            _ => {}
        }
        for write in named {
            if writes.iter().any(|w| w.stream_id == write.stream_id) {
                let problem = if own.is_some_and(|(stream_id, _)| *stream_id == write.stream_id) {
                    format!(
                        "an Append names the aggregate's own stream '{}'; return its events bare",
                        write.stream_id
                    )
                } else {
                    format!(
                        "stream '{}' is written twice in one command; return one Append per stream",
                        write.stream_id
                    )
                };
                return Err(self.invalid(problem));
            }
            writes.push(write);
        }
        Ok(writes)
    }

    /// Runs the Python handler; a store failure met by `FlexCore.read_stream` answers with
    /// its own kind (e.g. unavailable), whatever the handler made of it.
    async fn decide(
        &self,
        ctx: &CommandContext,
        payload: &Value,
        history: String,
        reads: &Arc<StreamReads>,
    ) -> Result<Vec<DecidedAppend>> {
        let payload = payload.to_string();
        let command_type = self.command_type.clone();
        let context = command_context_json(ctx);
        let job_reads = Arc::clone(reads);
        let decided = self
            .worker
            .call(move |ctx| decide(ctx, &command_type, payload, history, context, &job_reads))
            .await;
        if let Some(failure) = reads.take_failure() {
            return Err(failure);
        }
        decided.map_err(|f| f.into_error(&self.command_type))
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
                    if ENGINE_METADATA_KEYS.contains(&key.as_str()) {
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
    reads: &Arc<StreamReads>,
) -> Result<Vec<DecidedAppend>, Failure> {
    let reader = reads
        .reader(ctx.py)
        .map_err(|e| Failure::Invalid(format!("cannot make the stream reader: {e}")))?;
    let returned = ctx.call(
        "_run_command",
        (
            &ctx.registry,
            command_type,
            payload,
            history,
            context,
            reader,
        ),
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
    /// Runs the handler and commits its decision; on a conflict, runs it again (up to the
    /// retry policy's attempts) only when the decision rested on reads that may be stale: a
    /// handler that read nothing would decide the same, so its conflict is the answer.
    async fn handle(&self, ctx: &CommandContext, payload: &Value) -> Result<StreamWriteResult> {
        let (payload, own) = self.target(payload)?;
        let mut delay = self.retry.base_delay;
        let mut attempt = 1;
        loop {
            match self.attempt(ctx, &payload, own.as_ref()).await {
                (Err(e), true)
                    if e.is_wrong_expected_version() && attempt < self.retry.max_attempts =>
                {
                    tracing::debug!(target: "flexcore_python", handler = %self.command_type, attempt, error = %e, "re-running a python command after a conflict");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
                (outcome, _) => return outcome,
            }
        }
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
