//! Domain modules: the one way a domain plugs into the engine.
//!
//! A domain — the Rust sample, a set of Python modules, later an out-of-process plugin — is a
//! [`DomainModule`]. The engine asks every loaded module the same two questions, in two phases,
//! and never asks which kind of module it is:
//!
//! 1. [`DomainModule::declare`], before anything runs: the read side it needs — its
//!    [`Projection`]s and the [`CachePolicy`] of its cacheable queries. The engine creates the
//!    read models and starts the projections.
//! 2. [`DomainModule::register`], with the running engine in hand ([`ModuleContext`]: the store,
//!    a repository, the projections, the read-model store): its command and query handlers,
//!    durable consumers, log followers and background tasks, into a [`ModuleRegistry`].
//!
//! [`Modules`] runs both phases over every loaded module and checks what they claim: two
//! modules claiming the same command type, query type, projection or consumer is a start-up
//! error naming both. What comes out ([`Registrations`]) is plain engine material — routers,
//! consumer definitions, tasks — which the composition root wires once for all modules.
//!
//! Read-your-writes is the engine's: a query's `min_position` (parameter or
//! [`QueryContext::min_position`]) is taken out of the parameters by the query router, and
//! [`crate::projection::ReadModel::query`] waits for it; a module's query handler only passes
//! its context on.
//!
//! [`QueryContext::min_position`]: crate::query::QueryContext::min_position

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::command::{CommandHandler, CommandRouter};
use crate::durable::{ConsumerStateStore, DurableOptions};
use crate::event_bus::EventHandler;
use crate::gdpr::{PersonalData, PersonalDataPolicy};
use crate::intercept::{CommandInterceptor, Interceptors};
use crate::projection::{Projection, ProjectionsHandle};
use crate::query::{QueryHandler, QueryRouter};
use crate::query_cache::CachePolicy;
use crate::repository::Repository;
use crate::store::EventStore;
use crate::{Error, Result};

/// A domain plugged into the engine: it declares its read side, then registers its handlers.
///
/// Implementations hold no engine wiring of their own: everything they need at registration
/// comes in the [`ModuleContext`], and everything they provide goes into the registry, so the
/// engine can run any number of modules side by side.
#[async_trait]
pub trait DomainModule: Send + Sync {
    /// The module's name, in logs and in start-up errors (e.g. `users`, `python`).
    fn name(&self) -> &str;

    /// Phase 1, before the read side starts: the projections this module's queries read and
    /// its query-cache policy. The default declares nothing.
    fn declare(&self, _read_side: &mut ReadSideDeclaration) -> Result<()> {
        Ok(())
    }

    /// The personal data in the module's events (which field names the data subject and which
    /// fields are personal), sealed with per-subject keys when the server runs with GDPR
    /// crypto-shredding on (see [`crate::gdpr`]). Asked once, before any event is written;
    /// the configuration overrules it per event type. The default declares none.
    fn personal_data(&self) -> Vec<PersonalData> {
        Vec::new()
    }

    /// Phase 2, with the engine running: the module's command and query handlers, durable
    /// consumers, log followers and background tasks.
    async fn register(&self, engine: &ModuleContext, registry: &mut ModuleRegistry) -> Result<()>;

    /// Fields this module adds to the `/health` and `/ready` answers (e.g. `python: {ok, …}`).
    /// Details inform; they do not change the status code. The default adds none.
    fn health(&self) -> Map<String, Value> {
        Map::new()
    }
}

/// What a module declares in phase 1.
#[derive(Default)]
pub struct ReadSideDeclaration {
    projections: Vec<Arc<dyn Projection>>,
    cache_policy: Option<CachePolicy>,
}

impl ReadSideDeclaration {
    /// Declares a projection: the engine creates its read model and keeps it up to date.
    pub fn projection(&mut self, projection: Arc<dyn Projection>) -> &mut Self {
        self.projections.push(projection);
        self
    }

    /// Declares which of the module's queries may be answered from the query cache, and which
    /// events invalidate their answers (see [`crate::query_cache`]).
    pub fn cache_policy(&mut self, policy: CachePolicy) -> &mut Self {
        self.cache_policy = Some(match self.cache_policy.take() {
            Some(declared) => declared.merge(policy),
            None => policy,
        });
        self
    }
}

/// The running engine, as a module sees it in phase 2.
#[derive(Clone)]
pub struct ModuleContext {
    /// The event store.
    pub store: Arc<dyn EventStore>,
    /// Loads and saves aggregates (snapshots and retry as the engine configures them).
    pub repository: Repository,
    /// The running projections: [`ProjectionsHandle::read_model`] gives a declared read model.
    pub projections: ProjectionsHandle,
    /// Where read models, checkpoints and dead letters live.
    pub read_models: Arc<dyn ConsumerStateStore>,
    /// Turns true when the engine shuts down; a module's background tasks stop then.
    pub shutdown: watch::Receiver<bool>,
}

/// A durable consumer a module asks the engine to run (see [`crate::durable`]): the engine
/// keeps its checkpoint and dead letters in the read-model store, awaits it at shutdown and
/// shows it to operators.
pub struct DurableConsumerSpec {
    /// The consumer's name: its checkpoint and dead letters are stored under it.
    pub name: String,
    /// Handles its events.
    pub handler: Arc<dyn EventHandler>,
    /// Which events, retries, checkpoint cadence.
    pub options: DurableOptions,
}

/// What a module registers in phase 2.
pub struct ModuleRegistry {
    module: String,
    commands: Vec<(String, Arc<dyn CommandHandler>)>,
    interceptors: Interceptors,
    queries: Vec<(String, Arc<dyn QueryHandler>)>,
    consumers: Vec<DurableConsumerSpec>,
    followers: Vec<(String, Arc<dyn EventHandler>)>,
    background: Vec<JoinHandle<()>>,
}

impl ModuleRegistry {
    fn new(module: &str) -> Self {
        Self {
            module: module.to_owned(),
            commands: Vec::new(),
            interceptors: Interceptors::new(),
            queries: Vec::new(),
            consumers: Vec::new(),
            followers: Vec::new(),
            background: Vec::new(),
        }
    }

    /// The module registering.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// Claims a command type: its commands go to `handler`.
    pub fn command(
        &mut self,
        command_type: impl Into<String>,
        handler: Arc<dyn CommandHandler>,
    ) -> &mut Self {
        self.commands.push((command_type.into(), handler));
        self
    }

    /// Runs `interceptor` before the handler of every `command_type` command, whichever module
    /// owns that type (several modules may intercept one type; they run in module order).
    pub fn intercept(
        &mut self,
        command_type: impl Into<String>,
        interceptor: Arc<dyn CommandInterceptor>,
    ) -> &mut Self {
        self.interceptors.add(command_type, interceptor);
        self
    }

    /// Claims a query type: its queries go to `handler`.
    pub fn query(
        &mut self,
        query_type: impl Into<String>,
        handler: Arc<dyn QueryHandler>,
    ) -> &mut Self {
        self.queries.push((query_type.into(), handler));
        self
    }

    /// Asks the engine to run a durable consumer.
    pub fn durable_consumer(&mut self, consumer: DurableConsumerSpec) -> &mut Self {
        self.consumers.push(consumer);
        self
    }

    /// Hands every committed event of `event_type` (`*`: all) to `handler`, replaying the log
    /// from position 0 at every start, with no stored checkpoint (right for in-memory read
    /// models; side effects belong in a durable consumer).
    pub fn follow_from_start(
        &mut self,
        event_type: impl Into<String>,
        handler: Arc<dyn EventHandler>,
    ) -> &mut Self {
        self.followers.push((event_type.into(), handler));
        self
    }

    /// A task of the module's own (e.g. a file watcher), stopped by
    /// [`ModuleContext::shutdown`]; the engine awaits it at shutdown.
    pub fn background(&mut self, task: JoinHandle<()>) -> &mut Self {
        self.background.push(task);
        self
    }
}

/// The read side every module declared, merged.
#[derive(Default)]
pub struct ReadSideDeclarations {
    /// Every declared projection, each with the module that declared it.
    pub projections: Vec<(String, Arc<dyn Projection>)>,
    /// The merged cache policy (`None`: no module has a cacheable query, so no cache runs).
    pub cache_policy: Option<CachePolicy>,
}

/// Everything every module registered, checked for clashes, ready to wire.
pub struct Registrations {
    /// Routes every registered command type.
    pub commands: CommandRouter,
    /// What runs before the handlers of some command types (attach with
    /// [`crate::command::CommandBusExt::with_interceptors`]).
    pub interceptors: Interceptors,
    /// Routes every registered query type.
    pub queries: QueryRouter,
    /// The durable consumers to run.
    pub consumers: Vec<DurableConsumerSpec>,
    /// Handlers that follow the log from position 0 (event type or `*`, handler).
    pub followers: Vec<(String, Arc<dyn EventHandler>)>,
    /// The modules' own tasks.
    pub background: Vec<JoinHandle<()>>,
}

/// The loaded modules.
#[derive(Clone, Default)]
pub struct Modules {
    modules: Vec<Arc<dyn DomainModule>>,
}

impl Modules {
    /// The given modules, in the order they were configured.
    pub fn new(modules: Vec<Arc<dyn DomainModule>>) -> Self {
        Self { modules }
    }

    /// The modules' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.modules.iter().map(|m| m.name()).collect()
    }

    /// Phase 1 for every module: their projections (a projection name declared by two modules
    /// is an error naming both) and their cache policies, merged.
    pub fn declare(&self) -> Result<ReadSideDeclarations> {
        let mut merged = ReadSideDeclarations::default();
        let mut owners = Claims::new("projection");
        for module in &self.modules {
            let mut declared = ReadSideDeclaration::default();
            module.declare(&mut declared)?;
            for projection in declared.projections {
                owners.claim(projection.name(), module.name())?;
                merged
                    .projections
                    .push((module.name().to_owned(), projection));
            }
            if let Some(policy) = declared.cache_policy {
                merged.cache_policy = Some(match merged.cache_policy.take() {
                    Some(earlier) => earlier.merge(policy),
                    None => policy,
                });
            }
        }
        Ok(merged)
    }

    /// The personal data every module declares, merged; one event type declared differently
    /// by two modules is an error naming the second.
    pub fn personal_data(&self) -> Result<PersonalDataPolicy> {
        let mut policy = PersonalDataPolicy::new();
        for module in &self.modules {
            for declared in module.personal_data() {
                policy.declare(declared, &format!("module '{}'", module.name()))?;
            }
        }
        Ok(policy)
    }

    /// Phase 2 for every module. A command type, query type or durable consumer claimed by two
    /// modules is an error naming both.
    pub async fn register(&self, engine: &ModuleContext) -> Result<Registrations> {
        let mut registrations = Registrations {
            commands: CommandRouter::new(),
            interceptors: Interceptors::new(),
            queries: QueryRouter::new(),
            consumers: Vec::new(),
            followers: Vec::new(),
            background: Vec::new(),
        };
        let mut commands = Claims::new("command type");
        let mut queries = Claims::new("query type");
        let mut consumers = Claims::new("durable consumer");
        for module in &self.modules {
            let mut registry = ModuleRegistry::new(module.name());
            module.register(engine, &mut registry).await?;
            for (command_type, handler) in registry.commands {
                commands.claim(&command_type, module.name())?;
                registrations.commands.register(command_type, handler)?;
            }
            for (query_type, handler) in registry.queries {
                queries.claim(&query_type, module.name())?;
                registrations.queries.register(query_type, handler)?;
            }
            for consumer in &registry.consumers {
                consumers.claim(&consumer.name, module.name())?;
            }
            registrations.interceptors.extend(registry.interceptors);
            registrations.consumers.extend(registry.consumers);
            registrations.followers.extend(registry.followers);
            registrations.background.extend(registry.background);
        }
        Ok(registrations)
    }

    /// The `/health` fields of every module, merged.
    pub fn health(&self) -> Map<String, Value> {
        let mut details = Map::new();
        for module in &self.modules {
            details.extend(module.health());
        }
        details
    }
}

/// Who claimed which name, to refuse a second claim with both owners named.
struct Claims {
    what: &'static str,
    owners: BTreeMap<String, String>,
}

impl Claims {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            owners: BTreeMap::new(),
        }
    }

    fn claim(&mut self, name: &str, module: &str) -> Result<()> {
        match self.owners.get(name) {
            Some(owner) if owner == module => Err(Error::Configuration(format!(
                "{} '{name}' is registered twice by module '{module}'",
                self.what
            ))),
            Some(owner) => Err(Error::Configuration(format!(
                "{} '{name}' is claimed by two modules: '{owner}' and '{module}'",
                self.what
            ))),
            None => {
                self.owners.insert(name.to_owned(), module.to_owned());
                Ok(())
            }
        }
    }
}
