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
use serde_json::Value;
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
        let payload = payload.to_string();
        let command_type = self.command_type.clone();
        let principal = principal_json(ctx.principal.as_deref());
        let decided = self
            .worker
            .call(move |ctx| decide(ctx, &command_type, payload, history, principal))
            .await
            .map_err(|f| f.into_error(&self.command_type))?;
        if decided.is_empty() {
            return Ok(StreamWriteResult {
                stream_id: stream_id.clone(),
                current_version: version,
                events: Vec::new(),
            });
        }
        let metadata = ctx.event_metadata();
        let mut events = Vec::with_capacity(decided.len());
        for (event_type, data) in decided {
            let data = RawJson::from_string(data).map_err(|e| {
                Failure::Invalid(format!("event '{event_type}': {e}"))
                    .into_error(&self.command_type)
            })?;
            let event = NewEvent::new(event_type.clone(), data).map_err(|e| {
                Failure::Invalid(format!("event '{event_type}': {e}"))
                    .into_error(&self.command_type)
            })?;
            events.push(event.with_metadata(metadata.clone()));
        }
        self.store
            .append(
                stream_id.clone(),
                ExpectedVersion::from_current(version),
                events,
            )
            .await
    }
}

/// The principal as Python's `flexcore.principal()` receives it: `{sub, roles, tenant}` JSON.
fn principal_json(principal: Option<&Principal>) -> Option<String> {
    principal.map(|p| {
        serde_json::json!({"sub": p.subject, "roles": p.roles, "tenant": p.tenant}).to_string()
    })
}

/// Runs a command handler and checks what it returned: `(event type, data as JSON)` pairs.
fn decide(
    ctx: &Ctx<'_>,
    command_type: &str,
    payload: String,
    history: String,
    principal: Option<String>,
) -> Result<Vec<(String, String)>, Failure> {
    let returned = ctx.call(
        "_run_command",
        (&ctx.registry, command_type, payload, history, principal),
    )?;
    let items = returned
        .cast_into::<PyList>()
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    let mut decided = Vec::with_capacity(items.len());
    for item in items.iter() {
        let (event_type, data, well_shaped): (Bound<'_, PyAny>, Bound<'_, PyAny>, bool) = item
            .extract()
            .map_err(|e: PyErr| Failure::Invalid(e.to_string()))?;
        let describe = |o: &Bound<'_, PyAny>| {
            let type_name = o
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            let repr = o.repr().map(|r| r.to_string()).unwrap_or_default();
            format!("{type_name} {repr}")
        };
        if !well_shaped {
            return Err(Failure::Invalid(format!(
                "a command handler returns an Event, a dict {{\"type\": ..., \"data\": {{...}}}}, a list of them or None; got {}",
                describe(&event_type)
            )));
        }
        let event_type = match event_type.extract::<String>() {
            Ok(t) if !t.trim().is_empty() => t,
            _ => {
                return Err(Failure::Invalid(format!(
                    "the event type must be a non-empty string; got {}",
                    describe(&event_type)
                )));
            }
        };
        let json = ctx.to_json(&data).map_err(|e| {
            Failure::Invalid(format!(
                "the data of event '{event_type}' must serialise to a JSON object: {e}"
            ))
        })?;
        if !json.trim_start().starts_with('{') {
            return Err(Failure::Invalid(format!(
                "the data of event '{event_type}' must be a JSON object; got {}",
                describe(&data)
            )));
        }
        decided.push((event_type, json));
    }
    Ok(decided)
}

#[async_trait]
impl CommandHandler for PythonCommandHandler {
    async fn handle(&self, ctx: &CommandContext, payload: &Value) -> Result<StreamWriteResult> {
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
        let principal = principal_json(ctx.principal.as_deref());
        let json = self
            .worker
            .call(move |ctx| {
                let result =
                    ctx.call("_run_query", (&ctx.registry, query_type, params, principal))?;
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
