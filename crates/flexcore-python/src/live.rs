//! Python handlers that follow their module files: hot reload without dropping commands.
//!
//! The buses hold stable forwarding handlers; each call looks up the *current* version of the
//! modules (an `Arc` swapped under a short lock) and keeps that version alive until it
//! finishes. A reload imports the modules again on a new Python thread, and only once that
//! succeeded does it swap the version in: commands already running finish on the old version,
//! later ones run on the new one. A module that fails to import changes nothing but the
//! reported [`PythonStatus`].
//!
//! Event handlers of a new version first see the whole log (from position 0, while the old
//! version still serves), so in-memory read models rebuild themselves; delivery is at least
//! once, as everywhere on the event bus.
//!
//! The command and query *types* routed are those of the first load: a reload may change what
//! handlers do, and answers "unknown command" for a type it removed, but a type it adds is
//! routed only after a restart (it is logged). Event types are matched per event, so new ones
//! work at once.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use flexcore_app::command::{CommandContext, CommandHandler, CommandRouter};
use flexcore_app::event_bus::{EventBus, EventHandler};
use flexcore_app::query::{QueryContext, QueryHandler, QueryRouter};
use flexcore_app::store::{EventStore, MAX_READ_LIMIT, ReadAll, StreamWriteResult};
use flexcore_app::{Error, Result};
use flexcore_domain::EventEnvelope;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{PythonConfig, PythonHandlers};

/// How the loaded Python modules are doing; what `/health` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonStatus {
    /// How many loads succeeded: 1 after start, +1 per successful reload.
    pub generation: u64,
    /// Why the last reload failed (the exception line; the log has the traceback). `None`
    /// when the running version is the latest the files allow.
    pub error: Option<String>,
}

impl PythonStatus {
    /// Whether the files on disk are what runs.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// `{"ok": …, "generation": …, "error": …}`.
    pub fn to_json(&self) -> Value {
        json!({ "ok": self.ok(), "generation": self.generation, "error": self.error })
    }
}

/// Python handler modules that reload when their files change (see the module docs).
///
/// Cheap to clone: clones share the current version.
#[derive(Clone)]
pub struct LivePython {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LivePython {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivePython")
            .field("modules", &self.inner.config.modules)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: PythonConfig,
    store: Arc<dyn EventStore>,
    current: RwLock<Arc<Version>>,
    status: Mutex<PythonStatus>,
    /// Reloads never overlap.
    reloading: tokio::sync::Mutex<()>,
    /// The files' modification stamps when they were last imported.
    stamps: Mutex<Vec<Stamp>>,
}

/// One load of the modules with its handlers, ready to dispatch.
struct Version {
    handlers: PythonHandlers,
    commands: HashMap<String, Arc<dyn CommandHandler>>,
    queries: HashMap<String, Arc<dyn QueryHandler>>,
    events: HashMap<String, Arc<dyn EventHandler>>,
    durable: HashMap<String, Arc<dyn EventHandler>>,
}

impl Version {
    fn new(handlers: PythonHandlers, store: &Arc<dyn EventStore>) -> Self {
        Self {
            commands: handlers
                .command_handlers(Arc::clone(store))
                .into_iter()
                .collect(),
            queries: handlers.query_handlers().into_iter().collect(),
            events: handlers.event_handlers().into_iter().collect(),
            durable: handlers
                .durable_handlers()
                .into_iter()
                .map(|(name, _, handler)| (name, handler))
                .collect(),
            handlers,
        }
    }
}

/// A file's modification time and length (`None`: unreadable).
type Stamp = Option<(SystemTime, u64)>;

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// The last non-empty line of a load error: the exception, without the traceback.
fn summary(error: &Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("the Python modules failed to load")
        .trim()
        .to_owned()
}

impl LivePython {
    /// Imports the modules (an import error is an error, with its traceback); command handlers
    /// append to `store`, and reloads replay its log to the new event handlers.
    pub async fn load(config: PythonConfig, store: Arc<dyn EventStore>) -> Result<Self> {
        let stamped = stamps(&config.modules);
        let handlers = PythonHandlers::load(config.clone()).await?;
        let version = Arc::new(Version::new(handlers, &store));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                current: RwLock::new(version),
                status: Mutex::new(PythonStatus {
                    generation: 1,
                    error: None,
                }),
                reloading: tokio::sync::Mutex::new(()),
                stamps: Mutex::new(stamped),
            }),
        })
    }

    /// The module files followed.
    pub fn modules(&self) -> &[PathBuf] {
        &self.inner.config.modules
    }

    /// The current status.
    pub fn status(&self) -> PythonStatus {
        self.inner
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn current(&self) -> Arc<Version> {
        current(&self.inner)
    }

    /// The handlers of the running version.
    pub fn handlers(&self) -> HandlerNames {
        let version = self.current();
        HandlerNames {
            commands: version
                .handlers
                .command_routes()
                .iter()
                .map(|(n, _)| n.clone())
                .collect(),
            queries: version.handlers.query_types().iter().cloned().collect(),
            events: version.handlers.event_types().iter().cloned().collect(),
        }
    }

    /// One forwarding handler per command type of the running version.
    pub fn command_handlers(&self) -> Vec<(String, Arc<dyn CommandHandler>)> {
        self.handlers()
            .commands
            .into_iter()
            .map(|name| {
                let handler: Arc<dyn CommandHandler> = Arc::new(LiveCommand {
                    inner: Arc::clone(&self.inner),
                    command_type: name.clone(),
                });
                (name, handler)
            })
            .collect()
    }

    /// One forwarding handler per query type of the running version.
    pub fn query_handlers(&self) -> Vec<(String, Arc<dyn QueryHandler>)> {
        self.handlers()
            .queries
            .into_iter()
            .map(|name| {
                let handler: Arc<dyn QueryHandler> = Arc::new(LiveQuery {
                    inner: Arc::clone(&self.inner),
                    query_type: name.clone(),
                });
                (name, handler)
            })
            .collect()
    }

    /// Registers [`LivePython::command_handlers`] on a router.
    pub fn register_commands(&self, router: &mut CommandRouter) -> Result<()> {
        for (name, handler) in self.command_handlers() {
            router.register(name, handler)?;
        }
        Ok(())
    }

    /// Registers [`LivePython::query_handlers`] on a router.
    pub fn register_queries(&self, router: &mut QueryRouter) -> Result<()> {
        for (name, handler) in self.query_handlers() {
            router.register(name, handler)?;
        }
        Ok(())
    }

    /// A handler that hands each event to the running version's handler of its type, if any
    /// (to subscribe to every event).
    pub fn event_handler(&self) -> Arc<dyn EventHandler> {
        Arc::new(LiveEvents {
            inner: Arc::clone(&self.inner),
        })
    }

    /// Subscribes to every event on `bus`; each event goes to the running version's handlers
    /// of its type, if any.
    pub fn subscribe_events(&self, bus: &mut EventBus) {
        bus.subscribe("*", self.event_handler());
    }

    /// The durable consumers of the running version (`@FlexCore.event_handler(type,
    /// durable="name")`): name, event type, and a handler that always runs the current
    /// version's function of that name (to run under a
    /// [`flexcore_app::durable::DurableConsumer`]). Unlike the other event handlers they are
    /// never replayed from the start: their consumer's checkpoint says where they are.
    pub fn durable_consumers(&self) -> Vec<(String, String, Arc<dyn EventHandler>)> {
        self.current()
            .handlers
            .durable_handlers()
            .into_iter()
            .map(|(name, event_type, _)| {
                let handler: Arc<dyn EventHandler> = Arc::new(LiveDurable {
                    inner: Arc::clone(&self.inner),
                    name: name.clone(),
                    subscribed: event_type.clone(),
                });
                (name, event_type, handler)
            })
            .collect()
    }

    /// Imports the modules again and, if that works, makes the new version current (after
    /// replaying the log to its event handlers). On failure the running version stays, the
    /// error is logged with its traceback and kept in [`LivePython::status`], and returned.
    pub async fn reload(&self) -> Result<()> {
        let _one_at_a_time = self.inner.reloading.lock().await;
        let stamped = stamps(&self.inner.config.modules);
        *self.inner.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamped;
        let loaded = match PythonHandlers::load(self.inner.config.clone()).await {
            Ok(handlers) => handlers,
            Err(e) => {
                tracing::error!(target: "flexcore_python", modules = ?self.inner.config.modules, "python modules failed to reload; the previous version keeps running: {e}");
                self.set_status(|s| s.error = Some(summary(&e)));
                return Err(e);
            }
        };
        let version = Arc::new(Version::new(loaded, &self.inner.store));
        let old = self.handlers();
        let new_commands: BTreeSet<_> = version
            .commands
            .keys()
            .filter(|n| !old.commands.contains(*n))
            .collect();
        let new_queries: BTreeSet<_> = version
            .queries
            .keys()
            .filter(|n| !old.queries.contains(*n))
            .collect();
        if !new_commands.is_empty() || !new_queries.is_empty() {
            tracing::warn!(target: "flexcore_python", commands = ?new_commands, queries = ?new_queries, "new command or query types are routed only after a restart");
        }
        // Catch the new version up, swap it in, then replay what the old one may have seen
        // meanwhile (everything it saw was committed before the swap, so it is below the head
        // read after it).
        let caught_up = self.replay(&version, 0).await;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::clone(&version);
        self.replay(&version, caught_up).await;
        self.set_status(|s| {
            s.generation += 1;
            s.error = None;
        });
        tracing::info!(target: "flexcore_python", modules = ?self.inner.config.modules, "python modules reloaded");
        Ok(())
    }

    fn set_status(&self, change: impl FnOnce(&mut PythonStatus)) {
        change(&mut self.inner.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Hands every event from `from` to the version's event handlers; returns where it stopped.
    async fn replay(&self, version: &Version, from: u64) -> u64 {
        let mut position = from;
        if version.events.is_empty() {
            return position;
        }
        loop {
            let request = ReadAll {
                from_position: position,
                limit: MAX_READ_LIMIT,
                filter: Default::default(),
            };
            let slice = match self.inner.store.read_all(request).await {
                Ok(slice) => slice,
                Err(e) => {
                    tracing::error!(target: "flexcore_python", error = %e, "cannot replay the log to reloaded event handlers");
                    return position;
                }
            };
            for event in &slice.events {
                if let Some(handler) = version.events.get(&event.event_type)
                    && let Err(e) = handler.handle(event).await
                {
                    tracing::warn!(target: "flexcore_python", event_id = %event.event_id, error = %e, "replaying an event to a reloaded handler failed");
                }
            }
            if slice.events.is_empty() || slice.next_position <= position {
                return position.max(slice.next_position);
            }
            position = slice.next_position;
        }
    }

    /// Whether a module file changed since it was last imported.
    pub fn changed(&self) -> bool {
        let now = stamps(&self.inner.config.modules);
        *self.inner.stamps.lock().unwrap_or_else(|p| p.into_inner()) != now
    }

    /// Polls the module files every `every` and reloads when one changes, until `shutdown`
    /// turns true. (Modules they import are not followed.)
    pub fn watch(&self, every: Duration, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let live = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    _ = tick.tick() => {}
                }
                if live.changed() {
                    tracing::info!(target: "flexcore_python", "a python module changed; reloading");
                    // Failures are logged and reported by `reload` itself.
                    let _ = live.reload().await;
                }
            }
        })
    }
}

/// The handler types a version of the modules defines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerNames {
    /// Command types.
    pub commands: BTreeSet<String>,
    /// Query types.
    pub queries: BTreeSet<String>,
    /// Event types.
    pub events: BTreeSet<String>,
}

fn current(inner: &Inner) -> Arc<Version> {
    Arc::clone(&inner.current.read().unwrap_or_else(|p| p.into_inner()))
}

struct LiveCommand {
    inner: Arc<Inner>,
    command_type: String,
}

#[async_trait]
impl CommandHandler for LiveCommand {
    async fn handle(&self, ctx: &CommandContext, payload: &Value) -> Result<StreamWriteResult> {
        // The version stays alive (and its thread running) until this command is done.
        let version = current(&self.inner);
        match version.commands.get(&self.command_type) {
            Some(handler) => handler.handle(ctx, payload).await,
            None => Err(Error::UnknownCommand(self.command_type.clone())),
        }
    }
}

struct LiveQuery {
    inner: Arc<Inner>,
    query_type: String,
}

#[async_trait]
impl QueryHandler for LiveQuery {
    async fn handle(&self, ctx: &QueryContext, params: &Value) -> Result<Value> {
        let version = current(&self.inner);
        match version.queries.get(&self.query_type) {
            Some(handler) => handler.handle(ctx, params).await,
            None => Err(Error::UnknownQuery(self.query_type.clone())),
        }
    }
}

struct LiveDurable {
    inner: Arc<Inner>,
    name: String,
    /// The event type the consumer subscribed to at start (its filter is a prefix of it).
    subscribed: String,
}

#[async_trait]
impl EventHandler for LiveDurable {
    async fn handle(&self, event: &EventEnvelope) -> Result<()> {
        if event.event_type != self.subscribed {
            return Ok(()); // another type sharing the prefix
        }
        // A version whose consumer now wants another type fails the event (in Python), so it
        // is parked rather than passed unhandled.
        let version = current(&self.inner);
        match version.durable.get(&self.name) {
            Some(handler) => handler.handle(event).await,
            // Removed by a reload: retried, then parked, never dropped unseen.
            None => Err(Error::unavailable(format!(
                "the loaded python modules have no durable consumer '{}'",
                self.name
            ))),
        }
    }
}

struct LiveEvents {
    inner: Arc<Inner>,
}

#[async_trait]
impl EventHandler for LiveEvents {
    async fn handle(&self, event: &EventEnvelope) -> Result<()> {
        let version = current(&self.inner);
        match version.events.get(&event.event_type) {
            Some(handler) => handler.handle(event).await,
            None => Ok(()),
        }
    }
}
