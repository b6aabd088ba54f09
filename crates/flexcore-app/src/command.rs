//! The command bus: routes each command to exactly one handler, through middleware decorators.
//!
//! ```text
//! CommandRouter ──with_retry()──▶ RetryOnConflict ──with_schemas()──▶ SchemaChecked
//!               ──with_tracing()──▶ Traced ──▶ callers
//! ```
//! Every decorator implements [`CommandBus`] itself, so the chain is built by value and each
//! piece can be tested alone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flexcore_domain::{EventMetadata, StreamId};
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;
use uuid::Uuid;

use crate::repository::{RetryPolicy, retry_on_conflict};
use crate::security::Principal;
use crate::store::{AppendedEvent, StreamWriteResult};
use crate::{Error, Result};

/// A command as it arrives from a gateway: a type and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Selects the handler, e.g. `create_user`.
    pub command_type: String,
    /// The command's fields.
    pub payload: Value,
}

/// Who sends a command, and the trace it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandContext {
    /// This command's id; the causation id of the events it produces.
    pub command_id: Uuid,
    /// Groups everything caused by one original request.
    pub correlation_id: Option<String>,
    /// The authenticated principal (`None` when authentication is off).
    pub principal: Option<Arc<Principal>>,
    /// The tenant, if any.
    pub tenant: Option<String>,
    /// The caller's W3C `traceparent`.
    pub traceparent: Option<String>,
    /// The caller's W3C `tracestate`.
    pub tracestate: Option<String>,
    /// The client's idempotency key (see [`crate::idempotency`]).
    pub idempotency_key: Option<String>,
}

impl Default for CommandContext {
    fn default() -> Self {
        Self {
            command_id: Uuid::now_v7(),
            correlation_id: None,
            principal: None,
            tenant: None,
            traceparent: None,
            tracestate: None,
            idempotency_key: None,
        }
    }
}

/// The metadata keys the engine writes on every event a command causes
/// ([`CommandContext::event_metadata`]); metadata a handler adds to its events may not set them.
pub const ENGINE_METADATA_KEYS: [&str; 6] = [
    "correlation_id",
    "causation_id",
    "actor",
    "tenant",
    "traceparent",
    "tracestate",
];

impl CommandContext {
    /// The metadata every event caused by this command carries.
    pub fn event_metadata(&self) -> EventMetadata {
        EventMetadata {
            correlation_id: Some(
                self.correlation_id
                    .clone()
                    .unwrap_or_else(|| self.command_id.to_string()),
            ),
            causation_id: Some(self.command_id.to_string()),
            actor: self.principal.as_deref().map(Principal::actor),
            tenant: self.tenant.clone(),
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
            extra: Default::default(),
        }
    }
}

/// What a successful command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandOutcome {
    /// The command's id.
    pub command_id: Uuid,
    /// The aggregate stream it changed (or would have).
    pub stream_id: StreamId,
    /// That stream's version afterwards.
    pub version: Option<u64>,
    /// The events written to that stream (empty when nothing changed).
    pub events: Vec<AppendedEvent>,
}

/// Handles one command type.
#[async_trait]
pub trait CommandHandler: Send + Sync {
    /// Validates the payload, decides, appends; reports the aggregate stream's write.
    async fn handle(&self, ctx: &CommandContext, payload: &Value) -> Result<StreamWriteResult>;
}

/// Sends commands. Implemented by the router and by every middleware decorator.
#[async_trait]
pub trait CommandBus: Send + Sync {
    /// Executes a command and reports what it did.
    async fn send(&self, ctx: &CommandContext, command: &Command) -> Result<CommandOutcome>;
}

/// The innermost bus: a table from command type to handler.
#[derive(Default, Clone)]
pub struct CommandRouter {
    handlers: HashMap<String, Arc<dyn CommandHandler>>,
}

impl CommandRouter {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the handler of a command type; a second handler for one type is a bug.
    pub fn register(
        &mut self,
        command_type: impl Into<String>,
        handler: Arc<dyn CommandHandler>,
    ) -> Result<()> {
        let command_type = command_type.into();
        if self.handlers.contains_key(&command_type) {
            return Err(Error::internal(format!(
                "command type '{command_type}' already has a handler"
            )));
        }
        self.handlers.insert(command_type, handler);
        Ok(())
    }

    /// The registered command types, sorted.
    pub fn command_types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        types.sort_unstable();
        types
    }
}

#[async_trait]
impl CommandBus for CommandRouter {
    async fn send(&self, ctx: &CommandContext, command: &Command) -> Result<CommandOutcome> {
        let handler = self
            .handlers
            .get(&command.command_type)
            .ok_or_else(|| Error::UnknownCommand(command.command_type.clone()))?;
        let result = handler.handle(ctx, &command.payload).await?;
        Ok(CommandOutcome {
            command_id: ctx.command_id,
            stream_id: result.stream_id,
            version: result.current_version,
            events: result.events,
        })
    }
}

#[async_trait]
impl<B: CommandBus + ?Sized> CommandBus for Arc<B> {
    async fn send(&self, ctx: &CommandContext, command: &Command) -> Result<CommandOutcome> {
        (**self).send(ctx, command).await
    }
}

/// Re-runs a command that lost an optimistic-concurrency race (its handler reloads fresh state).
pub struct RetryOnConflict<B> {
    inner: B,
    policy: RetryPolicy,
}

#[async_trait]
impl<B: CommandBus> CommandBus for RetryOnConflict<B> {
    async fn send(&self, ctx: &CommandContext, command: &Command) -> Result<CommandOutcome> {
        retry_on_conflict(self.policy, || self.inner.send(ctx, command)).await
    }
}

/// Runs each command in a `command` span and logs its outcome.
pub struct Traced<B> {
    inner: B,
}

#[async_trait]
impl<B: CommandBus> CommandBus for Traced<B> {
    async fn send(&self, ctx: &CommandContext, command: &Command) -> Result<CommandOutcome> {
        let span = tracing::info_span!(
            "command",
            command_type = %command.command_type,
            command_id = %ctx.command_id,
            stream_id = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let result = self.inner.send(ctx, command).instrument(span.clone()).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        match &result {
            Ok(outcome) => {
                span.record("stream_id", tracing::field::display(&outcome.stream_id));
                span.record("outcome", "ok");
                tracing::debug!(parent: &span, elapsed_ms, events = outcome.events.len(), "command handled");
            }
            Err(e) if e.is_transient() => {
                span.record("outcome", "error");
                tracing::error!(parent: &span, elapsed_ms, error = %e.chain(), "command failed");
            }
            Err(e) => {
                span.record("outcome", "rejected");
                tracing::info!(parent: &span, elapsed_ms, error = %e, "command rejected");
            }
        }
        result
    }
}

/// Counts commands by type and outcome (`flexcore_commands_total{type,outcome}`) and times them
/// (`flexcore_command_duration_seconds{type}`), through the `metrics` facade: whichever
/// recorder the composition root installs receives them.
pub struct Metered<B> {
    inner: B,
}

#[async_trait]
impl<B: CommandBus> CommandBus for Metered<B> {
    async fn send(&self, ctx: &CommandContext, command: &Command) -> Result<CommandOutcome> {
        let started = std::time::Instant::now();
        let result = self.inner.send(ctx, command).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.is_transient() => "error",
            Err(_) => "rejected",
        };
        let command_type = command.command_type.clone();
        metrics::counter!("flexcore_commands_total", "type" => command_type.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("flexcore_command_duration_seconds", "type" => command_type)
            .record(started.elapsed().as_secs_f64());
        result
    }
}

/// Attaches middleware to any command bus.
pub trait CommandBusExt: CommandBus + Sized {
    /// Retries commands that fail with a wrong expected version.
    fn with_retry(self, policy: RetryPolicy) -> RetryOnConflict<Self> {
        RetryOnConflict {
            inner: self,
            policy,
        }
    }

    /// Traces and logs every command.
    fn with_tracing(self) -> Traced<Self> {
        Traced { inner: self }
    }

    /// Counts and times every command.
    fn with_metrics(self) -> Metered<Self> {
        Metered { inner: self }
    }

    /// Sends only the commands the caller's roles allow under `policy`.
    fn with_authorization(
        self,
        policy: Arc<crate::security::Policy>,
    ) -> crate::security::AuthorizedCommands<Self> {
        crate::security::AuthorizedCommands::new(self, policy)
    }

    /// Refuses commands whose payload does not match the schema of their type in `schemas`,
    /// before this bus runs them.
    fn with_schemas(
        self,
        schemas: crate::validation::PayloadSchemas,
    ) -> crate::validation::SchemaChecked<Self> {
        crate::validation::SchemaChecked::new(self, schemas)
    }

    /// Runs `interceptors` before this bus gets a command of their type.
    fn with_interceptors(
        self,
        interceptors: crate::intercept::Interceptors,
    ) -> crate::intercept::Intercepted<Self> {
        crate::intercept::Intercepted::new(self, interceptors)
    }

    /// Honours idempotency keys for `ttl`, remembering at most `capacity` keys.
    fn with_idempotency(
        self,
        ttl: std::time::Duration,
        capacity: usize,
    ) -> crate::idempotency::Idempotent<Self> {
        crate::idempotency::Idempotent::new(self, ttl, capacity)
    }
}

impl<B: CommandBus + Sized> CommandBusExt for B {}

/// Where an asynchronously sent command stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CommandStatus {
    /// Still running.
    Pending,
    /// Done.
    Succeeded {
        /// What it did.
        outcome: CommandOutcome,
    },
    /// Rejected or failed.
    Failed {
        /// The stable code of the error's kind ([`crate::ErrorKind::code`]), as every gateway answers.
        code: &'static str,
        /// What a client may be told ([`Error::client_message`]): no internal details.
        message: String,
    },
}

/// Runs commands in the background (`send_async`) and remembers the statuses of the latest
/// ones: memory stays bounded by the capacity, the oldest statuses are forgotten first.
pub struct AsyncCommands {
    bus: Arc<dyn CommandBus>,
    statuses: Arc<Mutex<StatusTable>>,
}

#[derive(Default)]
struct StatusTable {
    by_id: HashMap<Uuid, CommandStatus>,
    order: VecDeque<Uuid>,
    capacity: usize,
}

impl StatusTable {
    fn set(&mut self, id: Uuid, status: CommandStatus) {
        if self.by_id.insert(id, status).is_none() {
            self.order.push_back(id);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.by_id.remove(&old);
                }
            }
        }
    }
}

impl AsyncCommands {
    /// How many statuses a server remembers unless told otherwise.
    pub const DEFAULT_CAPACITY: usize = 10_000;

    /// Keeps the statuses of the last `capacity` commands.
    pub fn new(bus: Arc<dyn CommandBus>, capacity: usize) -> Self {
        Self {
            bus,
            statuses: Arc::new(Mutex::new(StatusTable {
                capacity: capacity.max(1),
                ..StatusTable::default()
            })),
        }
    }

    /// Starts a command and returns its id at once; poll [`AsyncCommands::status`].
    pub fn send_async(&self, ctx: CommandContext, command: Command) -> Uuid {
        let id = ctx.command_id;
        let table = Arc::clone(&self.statuses);
        lock(&table).set(id, CommandStatus::Pending);
        let bus = Arc::clone(&self.bus);
        tokio::spawn(async move {
            // The bus's own middleware logs a failure with its details; the status keeps what
            // a client may see.
            let status = match bus.send(&ctx, &command).await {
                Ok(outcome) => CommandStatus::Succeeded { outcome },
                Err(e) => CommandStatus::Failed {
                    code: e.kind().code(),
                    message: e.client_message(),
                },
            };
            lock(&table).set(id, status);
        });
        id
    }

    /// The status of a command sent with `send_async`, if it is still remembered.
    pub fn status(&self, command_id: Uuid) -> Option<CommandStatus> {
        lock(&self.statuses).by_id.get(&command_id).cloned()
    }
}

fn lock(table: &Mutex<StatusTable>) -> std::sync::MutexGuard<'_, StatusTable> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}
