//! The `plugins` domain module: every plugin of a plugins folder, out-of-process or compiled
//! in, registered through the same [`DomainModule`] contract as any other domain.
//!
//! What each hook becomes in the engine:
//!
//! * `before_command`: a command interceptor per command type; the answer's `payload`
//!   replaces the command's.
//! * `command_handler`: a command handler per type. It acts on the stream
//!   `<category>-<payload[id_field]>` (`[commands.<type>]`), hands the plugin the stream's
//!   events and appends what it decides with the version it read. A lost race is a wrong
//!   expected version, which the engine's command bus re-runs under its retry policy (the
//!   handler reads the stream again and asks the plugin again). The answer's optional
//!   `result` is not returned to the caller: a command's answer is the engine's
//!   [`flexcore_app::command::CommandOutcome`] (stream, version, events) and has no field
//!   for it.
//! * `query_handler`: a query handler per type, `{params}` → `result`.
//! * `event_handler`: one durable consumer `plugin:<name>` over the plugin's event types,
//!   with the manifest's `max_attempts`, per-stream order and dead letters.
//!
//! The hooks a plugin serves are read from its manifest at start; a reload swaps the code and
//! configuration behind them, not the routes (a new hook needs a restart).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flexcore_app::command::Command;
use flexcore_app::command::{CommandContext, CommandHandler, ENGINE_METADATA_KEYS};
use flexcore_app::durable::DurableOptions;
use flexcore_app::event_bus::EventHandler;
use flexcore_app::intercept::CommandInterceptor;
use flexcore_app::module::{DomainModule, DurableConsumerSpec, ModuleContext, ModuleRegistry};
use flexcore_app::plugin::{
    Hook, Plugin, PluginCall, PluginCallContext, PluginOperations, PluginReport,
};
use flexcore_app::query::{QueryContext, QueryHandler};
use flexcore_app::store::{EventFilter, EventStore, StreamWriteResult, read_whole_stream};
use flexcore_domain::{DomainError, EventEnvelope, ExpectedVersion, NewEvent, RawJson, StreamId};
use serde_json::{Map, Value, json};

use crate::discovery::discover;
use crate::manifest::{CommandRoute, Entry, Manifest};
use crate::supervisor::{PluginState, Supervisor, SupervisorOptions};

/// The module's name, and the `/health` field it adds.
pub const MODULE_NAME: &str = "plugins";

/// Finds a compiled-in plugin by the id a manifest's `[entry] compiled_in` names.
pub type CompiledInCatalogue = dyn Fn(&str) -> Option<Arc<dyn Plugin>> + Send + Sync;

/// How a plugin runs.
enum Host {
    /// A child process, supervised.
    Process(Arc<Supervisor>),
    /// Code in the binary.
    CompiledIn(CompiledIn),
}

/// A compiled-in plugin and what operators see of it (a supervisor keeps its own).
struct CompiledIn {
    plugin: Arc<dyn Plugin>,
    ready: AtomicBool,
    last_error: Mutex<Option<String>>,
    calls: AtomicU64,
}

impl CompiledIn {
    /// Not serving until [`HostedPlugin::start`] initialised it.
    fn new(plugin: Arc<dyn Plugin>) -> Self {
        Self {
            plugin,
            ready: AtomicBool::new(false),
            last_error: Mutex::new(None),
            calls: AtomicU64::new(0),
        }
    }
}

/// One plugin with its manifest.
struct HostedPlugin {
    manifest: Manifest,
    host: Host,
}

impl HostedPlugin {
    /// Initialises the plugin with its manifest's `[config]`; a failure is recorded (the
    /// plugin is listed, refused or backing off) and logged, never fatal.
    async fn start(&self) {
        let started = match &self.host {
            Host::Process(supervisor) => supervisor.initialize(Value::Null).await,
            Host::CompiledIn(compiled) => {
                let started = compiled
                    .plugin
                    .initialize(self.manifest.config.clone())
                    .await;
                compiled.ready.store(started.is_ok(), Ordering::Release);
                *compiled.last_error.lock().expect("last error lock") =
                    started.as_ref().err().map(ToString::to_string);
                started
            }
        };
        match started {
            Ok(()) => {
                tracing::info!(plugin = %self.manifest.name, version = %self.manifest.version, "plugin ready")
            }
            Err(error) => {
                tracing::error!(plugin = %self.manifest.name, "the plugin did not start: {error}")
            }
        }
    }

    async fn call(
        &self,
        hook: Hook,
        target: &str,
        context: PluginCallContext,
        data: Value,
    ) -> flexcore_app::Result<Value> {
        let call = PluginCall {
            hook,
            target: target.to_owned(),
            context,
            data,
        };
        match &self.host {
            Host::Process(supervisor) => Ok(supervisor.call(call).await?),
            Host::CompiledIn(compiled) => {
                compiled.calls.fetch_add(1, Ordering::Relaxed);
                if !compiled.ready.load(Ordering::Acquire) {
                    return Err(flexcore_app::Error::unavailable(format!(
                        "plugin '{}' is not serving: it failed to initialise",
                        self.manifest.name
                    )));
                }
                compiled.plugin.process(call).await
            }
        }
    }

    fn report(&self) -> PluginReport {
        match &self.host {
            Host::Process(supervisor) => {
                let status = supervisor.status();
                PluginReport {
                    name: status.name,
                    version: Some(status.version),
                    state: state_name(status.state).to_owned(),
                    restarts: status.restarts,
                    last_error: status.last_error,
                    calls: status.calls,
                    p99_ms: status.p99.map(|p99| p99.as_secs_f64() * 1000.0),
                }
            }
            Host::CompiledIn(compiled) => PluginReport {
                name: self.manifest.name.clone(),
                version: Some(compiled.plugin.version()),
                state: if compiled.ready.load(Ordering::Acquire) {
                    "ready"
                } else {
                    "refused"
                }
                .to_owned(),
                restarts: 0,
                last_error: compiled.last_error.lock().expect("last error lock").clone(),
                calls: compiled.calls.load(Ordering::Relaxed),
                p99_ms: None,
            },
        }
    }

    /// A process plugin is swapped by its supervisor; a compiled-in one is initialised again
    /// with the `[config]` its manifest has now.
    async fn reload(&self) -> flexcore_app::Result<()> {
        match &self.host {
            Host::Process(supervisor) => Ok(supervisor.reload().await?),
            Host::CompiledIn(compiled) => {
                let manifest = Manifest::load(&self.manifest.folder)?;
                let reloaded = compiled.plugin.initialize(manifest.config).await;
                if let Err(error) = &reloaded {
                    *compiled.last_error.lock().expect("last error lock") = Some(error.to_string());
                } else {
                    compiled.ready.store(true, Ordering::Release);
                }
                reloaded
            }
        }
    }

    async fn shutdown(&self) {
        let stopped = match &self.host {
            Host::Process(supervisor) => supervisor.shutdown().await,
            Host::CompiledIn(compiled) => compiled.plugin.shutdown().await,
        };
        if let Err(error) = stopped {
            tracing::warn!(plugin = %self.manifest.name, "the plugin did not shut down cleanly: {error}");
        }
    }
}

fn state_name(state: PluginState) -> &'static str {
    match state {
        PluginState::Starting => "starting",
        PluginState::Ready => "ready",
        PluginState::Backoff => "backoff",
        PluginState::Refused => "refused",
        PluginState::Broken => "broken",
        PluginState::Stopped => "stopped",
    }
}

/// The plugins a server hosts: started ones in start order, and the ones left out.
struct PluginSet {
    hosted: Vec<Arc<HostedPlugin>>,
    rejected: Vec<PluginReport>,
}

#[async_trait]
impl PluginOperations for PluginSet {
    fn reports(&self) -> Vec<PluginReport> {
        self.hosted
            .iter()
            .map(|plugin| plugin.report())
            .chain(self.rejected.iter().cloned())
            .collect()
    }

    async fn reload(&self, name: &str) -> flexcore_app::Result<PluginReport> {
        let plugin = self
            .hosted
            .iter()
            .find(|plugin| plugin.manifest.name == name)
            .ok_or_else(|| DomainError::NotFound(format!("there is no plugin called '{name}'")))?;
        plugin.reload().await?;
        Ok(plugin.report())
    }
}

/// Every plugin of a plugins folder as one domain module.
pub struct PluginModule {
    plugins: Arc<PluginSet>,
}

impl PluginModule {
    /// Discovers the plugins of `plugins_dir` and starts each, dependencies first: a process
    /// plugin under a [`Supervisor`] with `options`, a compiled-in one found in `catalogue`.
    /// A plugin left out at discovery is logged as an error and listed as `rejected`; one that
    /// fails to start is listed with its state; neither stops the engine. Only an unreadable
    /// `plugins_dir` is an error.
    pub async fn start(
        plugins_dir: &Path,
        catalogue: &CompiledInCatalogue,
        options: SupervisorOptions,
    ) -> crate::Result<Self> {
        let discovery = discover(plugins_dir)?;
        let mut rejected = Vec::new();
        for (name, error) in discovery.rejected {
            tracing::error!(plugin = %name, "plugin left out: {error}");
            rejected.push(PluginReport {
                name,
                version: None,
                state: "rejected".to_owned(),
                restarts: 0,
                last_error: Some(error.to_string()),
                calls: 0,
                p99_ms: None,
            });
        }
        let mut hosted = Vec::new();
        for manifest in discovery.plugins {
            let host = match &manifest.entry {
                Entry::Command { .. } => {
                    Host::Process(Arc::new(Supervisor::new(manifest.clone(), options.clone())))
                }
                Entry::CompiledIn(id) => match catalogue(id) {
                    Some(plugin) => Host::CompiledIn(CompiledIn::new(plugin)),
                    None => {
                        let message =
                            format!("this binary has no compiled-in plugin called '{id}'");
                        tracing::error!(plugin = %manifest.name, "plugin left out: {message}");
                        rejected.push(PluginReport {
                            name: manifest.name.clone(),
                            version: Some(manifest.version.to_string()),
                            state: "rejected".to_owned(),
                            restarts: 0,
                            last_error: Some(message),
                            calls: 0,
                            p99_ms: None,
                        });
                        continue;
                    }
                },
            };
            let plugin = Arc::new(HostedPlugin { manifest, host });
            plugin.start().await;
            hosted.push(plugin);
        }
        Ok(Self {
            plugins: Arc::new(PluginSet { hosted, rejected }),
        })
    }

    /// The plugins, as the operator routes list and reload them.
    pub fn operations(&self) -> Arc<dyn PluginOperations> {
        Arc::clone(&self.plugins) as Arc<dyn PluginOperations>
    }
}

#[async_trait]
impl DomainModule for PluginModule {
    fn name(&self) -> &str {
        MODULE_NAME
    }

    async fn register(
        &self,
        engine: &ModuleContext,
        registry: &mut ModuleRegistry,
    ) -> flexcore_app::Result<()> {
        for plugin in &self.plugins.hosted {
            let manifest = &plugin.manifest;
            for command_type in &manifest.hooks.before_command {
                registry.intercept(
                    command_type.clone(),
                    Arc::new(PluginInterceptor {
                        plugin: Arc::clone(plugin),
                    }),
                );
            }
            for command_type in &manifest.hooks.command_handler {
                let route = manifest.commands.get(command_type).cloned().ok_or_else(|| {
                    flexcore_app::Error::Configuration(format!(
                        "plugin '{}' handles '{command_type}' but has no [commands.{command_type}]",
                        manifest.name
                    ))
                })?;
                registry.command(
                    command_type.clone(),
                    Arc::new(PluginCommandHandler {
                        plugin: Arc::clone(plugin),
                        store: Arc::clone(&engine.store),
                        command_type: command_type.clone(),
                        route,
                    }),
                );
            }
            for query_type in &manifest.hooks.query_handler {
                registry.query(
                    query_type.clone(),
                    Arc::new(PluginQueryHandler {
                        plugin: Arc::clone(plugin),
                        query_type: query_type.clone(),
                    }),
                );
            }
            if !manifest.hooks.event_handler.is_empty() {
                registry.durable_consumer(DurableConsumerSpec {
                    name: format!("plugin:{}", manifest.name),
                    handler: Arc::new(PluginEventHandler {
                        plugin: Arc::clone(plugin),
                    }),
                    options: DurableOptions {
                        max_attempts: manifest.limits.max_attempts.max(1),
                        filter: event_filter(&manifest.hooks.event_handler),
                        ..DurableOptions::default()
                    },
                });
            }
        }
        // Plugins stop after the engine's other work saw the shutdown signal; the engine awaits
        // this task within its grace period, and each plugin's shutdown has its own deadline.
        let plugins = Arc::clone(&self.plugins);
        let mut shutdown = engine.shutdown.clone();
        registry.background(tokio::spawn(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
            for plugin in plugins.hosted.iter().rev() {
                plugin.shutdown().await;
            }
        }));
        Ok(())
    }

    fn health(&self) -> Map<String, Value> {
        let reports = self.plugins.reports();
        let mut details = Map::new();
        details.insert(
            MODULE_NAME.to_owned(),
            json!(
                reports
                    .iter()
                    .map(|report| (report.name.clone(), json!(report.state)))
                    .collect::<Map<_, _>>()
            ),
        );
        details
    }
}

/// The store-side filter of an event handler's patterns: one pattern narrows the read to its
/// prefix; several read every event, and the handler skips those the plugin does not serve.
fn event_filter(patterns: &[String]) -> EventFilter {
    match patterns {
        [only] => EventFilter {
            type_prefix: Some(only.strip_suffix('*').unwrap_or(only).to_owned()),
            category: None,
        },
        _ => EventFilter::default(),
    }
}

fn command_context(ctx: &CommandContext) -> PluginCallContext {
    PluginCallContext {
        correlation_id: ctx.correlation_id.clone(),
        causation_id: Some(ctx.command_id.to_string()),
        principal: ctx.principal.clone(),
        deadline: None,
    }
}

/// A malformed answer: the plugin's fault, an internal error naming it.
fn bad_answer(
    plugin: &str,
    hook: Hook,
    target: &str,
    problem: impl std::fmt::Display,
) -> flexcore_app::Error {
    flexcore_app::Error::internal(format!(
        "plugin '{plugin}' answered {hook} '{target}' with {problem}"
    ))
}

/// `before_command`: the plugin's `payload` replaces the command's.
struct PluginInterceptor {
    plugin: Arc<HostedPlugin>,
}

#[async_trait]
impl CommandInterceptor for PluginInterceptor {
    async fn intercept(
        &self,
        ctx: &CommandContext,
        command: Command,
    ) -> flexcore_app::Result<Command> {
        let target = command.command_type.as_str();
        let mut answer = self
            .plugin
            .call(
                Hook::BeforeCommand,
                target,
                command_context(ctx),
                json!({ "payload": command.payload }),
            )
            .await?;
        let payload = answer.get_mut("payload").map(Value::take).ok_or_else(|| {
            bad_answer(
                &self.plugin.manifest.name,
                Hook::BeforeCommand,
                target,
                "no `payload`",
            )
        })?;
        Ok(Command {
            command_type: command.command_type,
            payload,
        })
    }
}

/// `command_handler`: reads the stream, asks the plugin, appends what it decided.
struct PluginCommandHandler {
    plugin: Arc<HostedPlugin>,
    store: Arc<dyn EventStore>,
    command_type: String,
    route: CommandRoute,
}

impl PluginCommandHandler {
    fn stream_id(&self, payload: &Value) -> flexcore_app::Result<StreamId> {
        let field = &self.route.id_field;
        let id = match payload.get(field) {
            Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            _ => {
                return Err(flexcore_app::Error::validation(format!(
                    "{field} is required"
                )));
            }
        };
        Ok(StreamId::for_aggregate(&self.route.category, id)?)
    }

    /// The events of the plugin's answer, with the command's metadata.
    fn new_events(
        &self,
        ctx: &CommandContext,
        answer: &Value,
    ) -> flexcore_app::Result<Vec<NewEvent>> {
        let invalid = |problem: String| {
            bad_answer(
                &self.plugin.manifest.name,
                Hook::CommandHandler,
                &self.command_type,
                problem,
            )
        };
        let decided = match answer.get("events") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(decided)) => decided,
            Some(_) => return Err(invalid("`events` that is not a list".to_owned())),
        };
        let metadata = ctx.event_metadata();
        let mut events = Vec::with_capacity(decided.len());
        for event in decided {
            let event_type = event
                .get("event_type")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("an event without `event_type`".to_owned()))?;
            let data = RawJson::from_value(event.get("data").unwrap_or(&Value::Null));
            let new_event = NewEvent::new(event_type, data)
                .map_err(|e| invalid(format!("event '{event_type}': {e}")))?;
            let mut metadata = metadata.clone();
            if let Some(Value::Object(added)) = event.get("metadata") {
                for (key, value) in added {
                    if !ENGINE_METADATA_KEYS.contains(&key.as_str()) {
                        metadata.extra.insert(key.clone(), value.clone());
                    }
                }
            }
            events.push(new_event.with_metadata(metadata));
        }
        Ok(events)
    }
}

#[async_trait]
impl CommandHandler for PluginCommandHandler {
    async fn handle(
        &self,
        ctx: &CommandContext,
        payload: &Value,
    ) -> flexcore_app::Result<StreamWriteResult> {
        let stream_id = self.stream_id(payload)?;
        let (history, version) = if self.route.creates {
            (Vec::new(), None)
        } else {
            read_whole_stream(self.store.as_ref(), &stream_id).await?
        };
        let data = json!({
            "payload": payload,
            "stream_id": stream_id.as_str(),
            "version": version,
            "events": history,
        });
        let answer = self
            .plugin
            .call(
                Hook::CommandHandler,
                &self.command_type,
                command_context(ctx),
                data,
            )
            .await?;
        let events = self.new_events(ctx, &answer)?;
        if events.is_empty() {
            return Ok(StreamWriteResult {
                stream_id,
                current_version: version,
                events: Vec::new(),
            });
        }
        if self.route.creates {
            // The stream must not exist: a second create is a conflict, not a race to retry.
            return self
                .store
                .append(stream_id.clone(), ExpectedVersion::NoStream, events)
                .await
                .map_err(|error| {
                    if error.is_wrong_expected_version() {
                        DomainError::AlreadyExists(format!("stream '{stream_id}' already exists"))
                            .into()
                    } else {
                        error
                    }
                });
        }
        // A wrong expected version goes back to the engine's command bus, which runs the
        // handler again under its retry policy.
        self.store
            .append(stream_id, ExpectedVersion::from_current(version), events)
            .await
    }
}

/// `query_handler`: `{params}` → the answer's `result`.
struct PluginQueryHandler {
    plugin: Arc<HostedPlugin>,
    query_type: String,
}

#[async_trait]
impl QueryHandler for PluginQueryHandler {
    async fn handle(&self, ctx: &QueryContext, params: &Value) -> flexcore_app::Result<Value> {
        let context = PluginCallContext {
            principal: ctx.principal.clone(),
            ..PluginCallContext::default()
        };
        let mut answer = self
            .plugin
            .call(
                Hook::QueryHandler,
                &self.query_type,
                context,
                json!({ "params": params }),
            )
            .await?;
        answer.get_mut("result").map(Value::take).ok_or_else(|| {
            bad_answer(
                &self.plugin.manifest.name,
                Hook::QueryHandler,
                &self.query_type,
                "no `result`",
            )
        })
    }
}

/// `event_handler`: the plugin's durable consumer hands it each event it serves.
struct PluginEventHandler {
    plugin: Arc<HostedPlugin>,
}

#[async_trait]
impl EventHandler for PluginEventHandler {
    async fn handle(&self, event: &EventEnvelope) -> flexcore_app::Result<()> {
        if !self
            .plugin
            .manifest
            .hooks
            .serves(Hook::EventHandler, &event.event_type)
        {
            return Ok(());
        }
        let data = serde_json::to_value(event).map_err(|e| {
            flexcore_app::Error::internal(format!("cannot encode an event for a plugin: {e}"))
        })?;
        let context = PluginCallContext {
            correlation_id: event
                .decode_metadata()
                .ok()
                .and_then(|metadata| metadata.correlation_id),
            causation_id: Some(event.event_id.to_string()),
            principal: None,
            deadline: None,
        };
        self.plugin
            .call(Hook::EventHandler, &event.event_type, context, data)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flexcore_app::ErrorKind;
    use flexcore_app::command::{CommandBus, CommandBusExt, CommandRouter};
    use flexcore_app::repository::RetryPolicy;
    use flexcore_app::store::InMemoryStore;
    use std::sync::atomic::AtomicU32;

    /// A command handler plugin for `bump` on `counter-<counter_id>`: it records the version
    /// it is shown and decides one event; on its first call another writer appends first.
    struct Bumper {
        store: Arc<dyn EventStore>,
        seen_versions: Mutex<Vec<Value>>,
        calls: AtomicU32,
    }

    #[async_trait]
    impl Plugin for Bumper {
        fn name(&self) -> &str {
            "bumper"
        }
        fn version(&self) -> String {
            "1.0.0".into()
        }
        async fn initialize(&self, _config: Value) -> flexcore_app::Result<()> {
            Ok(())
        }
        async fn process(&self, call: PluginCall) -> flexcore_app::Result<Value> {
            self.seen_versions
                .lock()
                .unwrap()
                .push(call.data["version"].clone());
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                let stream = StreamId::new(call.data["stream_id"].as_str().unwrap())?;
                self.store
                    .append(stream, ExpectedVersion::Any, vec![bumped()])
                    .await?;
            }
            Ok(json!({"events": [{"event_type": "counter.bumped", "data": {}}], "result": {}}))
        }
        async fn shutdown(&self) -> flexcore_app::Result<()> {
            Ok(())
        }
    }

    fn bumped() -> NewEvent {
        NewEvent::new("counter.bumped", RawJson::from_value(&json!({}))).unwrap()
    }

    fn handler(store: &Arc<dyn EventStore>, creates: bool) -> (Arc<Bumper>, PluginCommandHandler) {
        let manifest = Manifest::parse(
            &format!(
                "name = \"bumper\"\nversion = \"1.0.0\"\n[entry]\ncompiled_in = \"bumper\"\n\
                 [hooks]\ncommand_handler = [\"bump\"]\n\
                 [commands.bump]\ncategory = \"counter\"\nid_field = \"counter_id\"\ncreates = {creates}\n"
            ),
            Path::new("."),
        )
        .unwrap();
        let bumper = Arc::new(Bumper {
            store: Arc::clone(store),
            seen_versions: Mutex::new(Vec::new()),
            calls: AtomicU32::new(0),
        });
        let compiled = CompiledIn::new(Arc::clone(&bumper) as Arc<dyn Plugin>);
        compiled.ready.store(true, Ordering::Release);
        let route = manifest.commands["bump"].clone();
        let plugin = Arc::new(HostedPlugin {
            manifest,
            host: Host::CompiledIn(compiled),
        });
        let handler = PluginCommandHandler {
            plugin,
            store: Arc::clone(store),
            command_type: "bump".into(),
            route,
        };
        (bumper, handler)
    }

    fn bump() -> Command {
        Command {
            command_type: "bump".into(),
            payload: json!({"counter_id": "c1"}),
        }
    }

    #[tokio::test]
    async fn a_lost_race_reads_the_stream_again_and_asks_the_plugin_again() {
        let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
        store
            .append(
                StreamId::new("counter-c1").unwrap(),
                ExpectedVersion::NoStream,
                vec![bumped()],
            )
            .await
            .unwrap();
        let (bumper, handler) = handler(&store, false);
        let mut router = CommandRouter::new();
        router.register("bump", Arc::new(handler)).unwrap();
        let bus = router.with_retry(RetryPolicy::default());
        let outcome = bus.send(&CommandContext::default(), &bump()).await.unwrap();
        assert_eq!(outcome.stream_id.as_str(), "counter-c1");
        assert_eq!(outcome.version, Some(2), "seed, the other writer, ours");
        assert_eq!(*bumper.seen_versions.lock().unwrap(), [json!(0), json!(1)]);
    }

    #[tokio::test]
    async fn creating_an_existing_stream_is_a_conflict_asked_once() {
        let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
        let (bumper, handler) = handler(&store, true);
        let mut router = CommandRouter::new();
        router.register("bump", Arc::new(handler)).unwrap();
        let bus = router.with_retry(RetryPolicy::default());
        let error = bus
            .send(&CommandContext::default(), &bump())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Conflict);
        assert_eq!(*bumper.seen_versions.lock().unwrap(), [Value::Null]);
    }
}
