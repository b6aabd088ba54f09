//! Python handler modules in `flexcore serve` (`[python] modules = [...]`).
//!
//! When modules are configured they *are* the domain: their command and query handlers are
//! registered instead of the built-in Rust sample (so a Python `create_user` never competes
//! with the Rust one), their event handlers follow the log on an [`EventBus`] from position 0
//! (in-memory read models rebuild at every start; `durable="name"` handlers instead run as
//! durable consumers `python:<name>` with their checkpoint in the read-model store), and a
//! watcher polls the files every second and hot-reloads them ([`flexcore_python::LivePython`]). `/health` and `/ready` report
//! `python: {ok, generation, error}`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flexcore_app::command::CommandRouter;
use flexcore_app::durable::{
    ConsumerStateStore, DurableConsumer, DurableOptions, SubscriptionControl,
};
use flexcore_app::event_bus::EventBus;
use flexcore_app::query::QueryRouter;
use flexcore_app::store::{EventFilter, EventStore};
use flexcore_http::HealthDetails;
use flexcore_python::{LivePython, PythonConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::PythonSettings;

/// How often the module files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Loads the configured modules (`None` when there are none); an import error stops the start
/// with its traceback.
pub async fn load(
    settings: &PythonSettings,
    store: Arc<dyn EventStore>,
) -> anyhow::Result<Option<LivePython>> {
    if settings.modules.is_empty() {
        return Ok(None);
    }
    let config = PythonConfig::new(settings.modules.iter().cloned())
        .with_timeout(Duration::from_millis(settings.timeout_ms));
    let live = LivePython::load(config, store)
        .await
        .context("cannot load the Python handler modules")?;
    let names = live.handlers();
    tracing::info!(
        modules = ?settings.modules,
        commands = ?names.commands,
        queries = ?names.queries,
        events = ?names.events,
        "python handlers loaded; they replace the built-in sample domain"
    );
    Ok(Some(live))
}

/// Registers the Python command and query handlers.
pub fn register(
    python: &LivePython,
    commands: &mut CommandRouter,
    queries: &mut QueryRouter,
) -> anyhow::Result<()> {
    python.register_commands(commands)?;
    python.register_queries(queries)?;
    Ok(())
}

/// Starts the file watcher, the event bus feeding the Python event handlers, and one durable
/// consumer `python:<name>` per `@FlexCore.event_handler(type, durable="name")` (checkpoint
/// and dead letters in `consumer_state`); all stop when `shutdown` turns true. Returns the
/// durable consumers' handles for the operator routes, with their tasks (to await at shutdown).
pub async fn start(
    python: &LivePython,
    store: Arc<dyn EventStore>,
    consumer_state: Arc<dyn ConsumerStateStore>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Vec<(SubscriptionControl, JoinHandle<()>)>> {
    start_replayed(python, Arc::clone(&store), shutdown.clone());
    let mut consumers = Vec::new();
    for (name, event_type, handler) in python.durable_consumers() {
        let consumer = DurableConsumer::new(
            format!("python:{name}"),
            handler,
            Arc::clone(&store) as Arc<_>,
            Arc::clone(&consumer_state),
        )
        .with_options(DurableOptions {
            filter: EventFilter {
                type_prefix: Some(event_type),
                ..EventFilter::default()
            },
            ..DurableOptions::default()
        })
        .spawn(shutdown.clone())
        .await
        .with_context(|| format!("cannot start the durable Python consumer '{name}'"))?;
        consumers.push(consumer);
    }
    Ok(consumers)
}

/// Starts the file watcher and the event bus that replays the log from position 0 to the
/// plain (not durable) Python event handlers; both stop when `shutdown` turns true.
pub fn start_replayed(
    python: &LivePython,
    store: Arc<dyn EventStore>,
    shutdown: watch::Receiver<bool>,
) {
    python.watch(RELOAD_POLL, shutdown.clone());
    let mut bus = EventBus::new();
    python.subscribe_events(&mut bus);
    bus.spawn(store, 0, shutdown);
}

/// The `python` field of `/health` and `/ready`.
pub fn health_details(python: &LivePython) -> HealthDetails {
    let python = python.clone();
    Arc::new(move || {
        let mut details = serde_json::Map::new();
        details.insert("python".into(), python.status().to_json());
        details
    })
}
