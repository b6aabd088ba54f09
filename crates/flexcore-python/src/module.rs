//! Python handler modules as one FlexCore domain module (`python`).

use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::Result;
use flexcore_app::durable::DurableOptions;
use flexcore_app::module::{DomainModule, DurableConsumerSpec, ModuleContext, ModuleRegistry};
use flexcore_app::store::{EventFilter, EventStore};
use serde_json::{Map, Value};
use std::sync::Arc;

use crate::{LivePython, PythonConfig};

/// How often the module files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// The configured Python files as a domain module: their command and query handlers; their
/// plain event handlers, which follow the log from position 0 at every start (in-memory read
/// models rebuild themselves); each `@FlexCore.event_handler(type, durable="name")` as a
/// durable consumer `python:<name>`; a watcher that hot-reloads the files within
/// [`RELOAD_POLL`] of a change; and `python: {ok, generation, error}` in `/health`.
#[derive(Debug, Clone)]
pub struct PythonModule {
    live: LivePython,
}

impl PythonModule {
    /// The module's name in the configuration (`modules = ["python"]`).
    pub const NAME: &'static str = "python";

    /// Imports the files (an import error is an error, with its traceback); command handlers
    /// append to `store`.
    pub async fn load(config: PythonConfig, store: Arc<dyn EventStore>) -> Result<Self> {
        Ok(Self {
            live: LivePython::load(config, store).await?,
        })
    }

    /// The hot-reloading handlers behind the module.
    pub fn live(&self) -> &LivePython {
        &self.live
    }
}

#[async_trait]
impl DomainModule for PythonModule {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn register(&self, engine: &ModuleContext, registry: &mut ModuleRegistry) -> Result<()> {
        for (command_type, handler) in self.live.command_handlers() {
            registry.command(command_type, handler);
        }
        for (query_type, handler) in self.live.query_handlers() {
            registry.query(query_type, handler);
        }
        registry.follow_from_start("*", self.live.event_handler());
        for (name, event_type, handler) in self.live.durable_consumers() {
            registry.durable_consumer(DurableConsumerSpec {
                name: format!("python:{name}"),
                handler,
                options: DurableOptions {
                    filter: EventFilter {
                        type_prefix: Some(event_type),
                        ..EventFilter::default()
                    },
                    ..DurableOptions::default()
                },
            });
        }
        registry.background(self.live.watch(RELOAD_POLL, engine.shutdown.clone()));
        Ok(())
    }

    fn health(&self) -> Map<String, Value> {
        let mut details = Map::new();
        details.insert("python".into(), self.live.status().to_json());
        details
    }
}
