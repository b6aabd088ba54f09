//! Business logic in Python: an embedded CPython (through PyO3) whose handler modules plug into
//! FlexCore's command, query and event buses. The guide below is `docs/python.md`.
//!
//! The crate's parts: [`PythonHandlers`] loads the modules and hands out bus handlers (this
//! file); `worker` runs the interpreter on its own thread; `handlers` adapts Python handlers
//! to the command, query and event buses; `failure` turns what Python raised into
//! application errors; `reads` lets a command handler read any stream (`FlexCore.read_stream`);
//! `live` reloads the modules when their files change.
#![doc = ""]
#![doc = include_str!("../../../docs/python.md")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flexcore_app::command::{CommandHandler, CommandRouter};
use flexcore_app::event_bus::{EventBus, EventHandler};
use flexcore_app::query::{QueryHandler, QueryRouter};
use flexcore_app::repository::RetryPolicy;
use flexcore_app::store::EventStore;
use flexcore_app::{Error, Result};
use pyo3::prelude::*;
use serde_json::Value;

mod failure;
mod handlers;
mod live;
mod module;
mod reads;
mod worker;

pub use live::{HandlerNames, LivePython, PythonStatus};
pub use module::{PythonModule, RELOAD_POLL};

use handlers::{
    PythonCommandHandler, PythonDurableHandler, PythonEventHandler, PythonQueryHandler,
};
use worker::Worker;

/// How to load and run Python handlers.
#[derive(Debug, Clone)]
pub struct PythonConfig {
    /// The handler modules' files, imported in this order.
    pub modules: Vec<PathBuf>,
    /// How long one handler call may take before its caller gets an error (default 5 s).
    pub timeout: Duration,
    /// How often a command handler is re-run after losing a concurrency race when its
    /// decision rested on reads (its aggregate's state or `FlexCore.read_stream`).
    pub retry: RetryPolicy,
}

impl PythonConfig {
    /// These modules, a 5 s timeout and the default retry policy.
    pub fn new(modules: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        Self {
            modules: modules.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
    }

    /// Replaces the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Where a Python command handler writes: stream `{category}-{payload[id_field]}`, or, for a
/// stateless handler, the stream its events name (see `docs/python.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRoute {
    /// The aggregate's stream category.
    pub category: String,
    /// The command field holding the aggregate id.
    pub id_field: String,
    /// The command creates the aggregate (`creates=True`): the engine assigns the id (a
    /// UUIDv7 put into `id_field`) and the append expects no stream.
    pub creates: bool,
    /// The handler has no aggregate (`category` and `id_field` are empty): it sees no state,
    /// and the stream follows from what it returns.
    pub stateless: bool,
}

/// The Python handlers loaded from a set of modules, with the thread that runs them.
///
/// Dropping it (and every handler it gave out) stops the thread.
pub struct PythonHandlers {
    worker: Arc<Worker>,
    commands: Vec<(String, CommandRoute)>,
    queries: Vec<String>,
    events: Vec<String>,
    /// Durable consumers: name → event type.
    durable: Vec<(String, String)>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for PythonHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonHandlers")
            .field("commands", &self.commands)
            .field("queries", &self.queries)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl PythonHandlers {
    /// Starts the Python thread and imports the modules; a module that fails to import is an
    /// error carrying its traceback.
    pub async fn load(config: PythonConfig) -> Result<Self> {
        let (worker, described) = Worker::start(config.modules.clone(), config.timeout).await?;
        let described: Value = serde_json::from_str(&described)
            .map_err(|e| Error::internal(format!("bad handler description: {e}")))?;
        let mut commands = Vec::new();
        if let Some(map) = described["commands"].as_object() {
            for (name, route) in map {
                commands.push((
                    name.clone(),
                    CommandRoute {
                        category: route["category"].as_str().unwrap_or_default().to_owned(),
                        id_field: route["id_field"].as_str().unwrap_or_default().to_owned(),
                        creates: route["creates"].as_bool().unwrap_or(false),
                        stateless: route["stateless"].as_bool().unwrap_or(false),
                    },
                ));
            }
        }
        let names = |key: &str| -> Vec<String> {
            described[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (queries, events) = (names("queries"), names("events"));
        let durable = described["durable"]
            .as_object()
            .map(|map| {
                map.iter()
                    .map(|(name, event_type)| {
                        (
                            name.clone(),
                            event_type.as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            worker: Arc::new(worker),
            commands,
            queries,
            events,
            durable,
            retry: config.retry,
        })
    }

    /// The command types with a Python handler, and where each writes.
    pub fn command_routes(&self) -> &[(String, CommandRoute)] {
        &self.commands
    }

    /// The query types with a Python handler.
    pub fn query_types(&self) -> &[String] {
        &self.queries
    }

    /// The event types with at least one Python handler.
    pub fn event_types(&self) -> &[String] {
        &self.events
    }

    /// One [`CommandHandler`] per Python command handler, appending to `store`.
    pub fn command_handlers(
        &self,
        store: Arc<dyn EventStore>,
    ) -> Vec<(String, Arc<dyn CommandHandler>)> {
        self.commands
            .iter()
            .map(|(name, route)| {
                let handler: Arc<dyn CommandHandler> = Arc::new(PythonCommandHandler {
                    worker: self.worker.clone(),
                    store: store.clone(),
                    command_type: name.clone(),
                    route: route.clone(),
                    retry: self.retry,
                });
                (name.clone(), handler)
            })
            .collect()
    }

    /// One [`QueryHandler`] per Python query handler.
    pub fn query_handlers(&self) -> Vec<(String, Arc<dyn QueryHandler>)> {
        self.queries
            .iter()
            .map(|name| {
                let handler: Arc<dyn QueryHandler> = Arc::new(PythonQueryHandler {
                    worker: self.worker.clone(),
                    query_type: name.clone(),
                });
                (name.clone(), handler)
            })
            .collect()
    }

    /// One [`EventHandler`] per event type, running every Python handler of that type in
    /// registration order.
    pub fn event_handlers(&self) -> Vec<(String, Arc<dyn EventHandler>)> {
        self.events
            .iter()
            .map(|name| {
                let handler: Arc<dyn EventHandler> = Arc::new(PythonEventHandler {
                    worker: self.worker.clone(),
                    event_type: name.clone(),
                });
                (name.clone(), handler)
            })
            .collect()
    }

    /// The durable consumers (`@FlexCore.event_handler(type, durable="name")`): name, event
    /// type, and a handler to run under a [`flexcore_app::durable::DurableConsumer`]. A
    /// handler whose consumer this load lacks answers `Ok(false)` from Python, reported as
    /// an error so the event is retried or parked rather than silently dropped.
    pub fn durable_handlers(&self) -> Vec<(String, String, Arc<dyn EventHandler>)> {
        self.durable
            .iter()
            .map(|(name, event_type)| {
                let handler: Arc<dyn EventHandler> = Arc::new(PythonDurableHandler {
                    worker: self.worker.clone(),
                    name: name.clone(),
                });
                (name.clone(), event_type.clone(), handler)
            })
            .collect()
    }

    /// Registers every Python command handler with `router`.
    pub fn register_commands(
        &self,
        router: &mut CommandRouter,
        store: Arc<dyn EventStore>,
    ) -> Result<()> {
        for (name, handler) in self.command_handlers(store) {
            router.register(name, handler)?;
        }
        Ok(())
    }

    /// Registers every Python query handler with `router`.
    pub fn register_queries(&self, router: &mut QueryRouter) -> Result<()> {
        for (name, handler) in self.query_handlers() {
            router.register(name, handler)?;
        }
        Ok(())
    }

    /// Subscribes every Python event handler to `bus`.
    pub fn subscribe_events(&self, bus: &mut EventBus) {
        for (name, handler) in self.event_handlers() {
            bus.subscribe(name, handler);
        }
    }

    /// The embedded interpreter's `sys.version`.
    pub async fn python_version(&self) -> Result<String> {
        self.worker
            .call(|ctx| {
                let sys = ctx.py.import("sys").map_err(|e| ctx.failure(e))?;
                sys.getattr("version")
                    .and_then(|v| v.extract::<String>())
                    .map_err(|e| ctx.failure(e))
            })
            .await
            .map_err(|f| f.into_error("sys.version"))
    }
}
