//! Business logic in Python: an embedded CPython (through PyO3) whose handler modules plug into
//! FlexCore's command, query and event buses.
//!
//! # The `flexcore` Python module
//!
//! Handler modules import `flexcore`, which this crate provides (its source is
//! `src/flexcore.py`, registered in `sys.modules` before any handler module loads):
//!
//! ```python
//! from flexcore import FlexCore, ValidationError, Event
//!
//! # The aggregate's state: a class built with no arguments, then one `apply` per event type.
//! # Commands handled with `aggregate=User` target the stream `user-{cmd.user_id}`.
//! @FlexCore.aggregate("user", id_field="user_id")
//! class User:
//!     def __init__(self):
//!         self.email = None
//!
//!     @FlexCore.apply("user.created")
//!     def created(self, event):
//!         self.email = event.data.email
//!
//! @FlexCore.command_handler("create_user", aggregate=User)
//! def create_user(cmd, state):            # or `def create_user(cmd)` when the state is not needed
//!     if state.email is not None:
//!         raise ValidationError("user already exists")
//!     return Event("user.created", {"email": cmd.email, "name": cmd.profile.name})
//!     # also accepted: {"type": "user.created", "data": {...}}, a list of events, or None
//!
//! @FlexCore.query_handler("get_user")
//! def get_user(params):
//!     return {"user_id": params.user_id}  # anything JSON-serialisable
//!
//! @FlexCore.event_handler("user.created")
//! def on_user_created(event):             # at-least-once: make it idempotent
//!     print(event.data.email, event.event_type, event.stream_id,
//!           event.stream_version, event.global_position)
//!
//! # Plain event handlers see the whole log again at every start and reload (in-memory read
//! # models); a durable one is a checkpointed consumer `python:welcome` (retries, dead letters
//! # that keep per-stream order), for side effects that must not repeat.
//! @FlexCore.event_handler("user.created", durable="welcome")
//! def send_welcome(event):
//!     ...
//! ```
//!
//! Commands and query parameters arrive as read-only objects with attribute access (nested
//! objects too: `cmd.profile.name`); reading a command or query field that is missing raises
//! `flexcore.MissingField("<field> is required")`, a `ValidationError` that is also an
//! `AttributeError` (so `hasattr` and `getattr(cmd, name, default)` work). `get(name, default)`,
//! `in` and `to_dict()` work as on a dict. Stored events arrive as `flexcore.Event` with
//! `event_type`, `data` (such an object), `stream_id`, `stream_version`, `global_position`,
//! `event_id` and `metadata`.
//!
//! # The stream a command writes to
//!
//! Every command handler names an aggregate class; the command's `id_field` (a non-empty string
//! or a number) gives the stream `{category}-{id}`. The handler sees the state replayed from that
//! stream, and what it returns is appended with the stream's loaded version as expectation
//! (optimistic concurrency, exactly as for Rust aggregates); on a conflict the stream is reloaded
//! and the handler runs again ([`flexcore_app::repository::retry_on_conflict`]).
//!
//! A handler registered with `creates=True` makes a new aggregate: the engine assigns the id
//! (a UUIDv7, readable as `cmd.<id_field>`; a command carrying that field is refused), the
//! handler sees a fresh state without a read, and the append expects `no_stream`.
//!
//! # Hot reload
//!
//! [`LivePython`] wraps [`PythonHandlers`] for a server: the buses hold stable handlers that
//! forward to the current version of the modules, [`LivePython::watch`] polls the files and
//! reloads on change; a module that fails to import leaves the running version in place and
//! is reported by [`LivePython::status`].
//!
//! # What Rust checks
//!
//! Each returned event must have a non-empty string type (a valid event type) and data that
//! serialises to a JSON object. Anything else is an internal error naming the handler and the
//! problem (logged; clients see a generic message).
//!
//! # Errors
//!
//! * `ValidationError(message)` → [`flexcore_app::Error`] of kind validation (HTTP 422
//!   `validation_failed` with the message).
//! * Any other exception → internal error; the full Python traceback is logged with `tracing`
//!   (target `flexcore_python`), the client gets a generic message.
//! * A handler running longer than [`PythonConfig::timeout`] → [`flexcore_app::Error::Unavailable`];
//!   the caller gets its answer at the deadline, and a `HandlerTimeout` exception is raised inside
//!   the handler at its next Python instruction (a handler blocked inside one C call, e.g. a long
//!   `time.sleep`, is interrupted only when that call returns; meanwhile later Python calls wait).
//!
//! # Threads
//!
//! Python never runs on the async runtime's threads: each [`PythonHandlers`] owns one dedicated
//! OS thread that holds the interpreter while it runs a handler, fed through a channel, replying
//! through a oneshot. Rust handlers keep running while Python is busy; Python handlers of one
//! [`PythonHandlers`] run one at a time (the GIL would serialise them anyway).
//!
//! # Linking
//!
//! `build.rs` adds an rpath to the libpython of the `python3` found at build time (or of
//! `PYO3_PYTHON`), so that the right shared library loads without `LD_LIBRARY_PATH`. The rpath
//! only reaches this crate's own tests: every crate whose binaries or tests link this one needs
//! the same two lines (`pyo3-build-config` as build-dependency, and
//! `pyo3_build_config::add_libpython_rpath_link_args()` in its `build.rs`).
//!
//! # Wiring
//!
//! ```ignore
//! let python = PythonHandlers::load(PythonConfig::new(["handlers/users.py"])).await?;
//! python.register_commands(&mut command_router, store.clone())?;
//! python.register_queries(&mut query_router)?;
//! python.subscribe_events(&mut event_bus);
//! ```

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::command::{CommandContext, CommandHandler, CommandRouter};
use flexcore_app::event_bus::{EventBus, EventHandler};
use flexcore_app::query::{QueryContext, QueryHandler, QueryRouter};
use flexcore_app::repository::{RetryPolicy, retry_on_conflict};
use flexcore_app::store::{EventStore, MAX_READ_LIMIT, ReadStream, StreamWriteResult};
use flexcore_app::{Error, Result};
use flexcore_domain::{EventEnvelope, ExpectedVersion, NewEvent, RawJson, StreamId};
use pyo3::prelude::*;
use pyo3::types::PyList;
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

mod live;
mod module;

pub use live::{HandlerNames, LivePython, PythonStatus};
pub use module::{PythonModule, RELOAD_POLL};

/// The source of the `flexcore` Python module.
const FLEXCORE_PY: &str = include_str!("flexcore.py");

/// Loads never overlap: the `flexcore` module collects registrations in one global while
/// handler modules import. Taken before attaching to the interpreter (never while holding it).
static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// How to load and run Python handlers.
#[derive(Debug, Clone)]
pub struct PythonConfig {
    /// The handler modules' files, imported in this order.
    pub modules: Vec<PathBuf>,
    /// How long one handler call may take before its caller gets an error (default 5 s).
    pub timeout: Duration,
    /// How often a command handler is re-run after losing a concurrency race.
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

/// Where a Python command handler writes: stream `{category}-{payload[id_field]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRoute {
    /// The aggregate's stream category.
    pub category: String,
    /// The command field holding the aggregate id.
    pub id_field: String,
    /// The command creates the aggregate (`creates=True`): the engine assigns the id (a
    /// UUIDv7 put into `id_field`) and the append expects no stream.
    pub creates: bool,
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
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let modules = config.modules.clone();
        let current = Arc::new(AtomicU64::new(0));
        let interrupted = Arc::new(AtomicU64::new(0));
        let (cur, intr) = (current.clone(), interrupted.clone());
        std::thread::Builder::new()
            .name("flexcore-python".into())
            .spawn(move || worker_main(modules, job_rx, ready_tx, cur, intr))
            .map_err(|e| Error::internal(format!("cannot start the Python thread: {e}")))?;
        let started = ready_rx
            .await
            .map_err(|_| Error::internal("the Python thread stopped while loading"))?
            .map_err(Error::internal)?;
        let described: Value = serde_json::from_str(&started.described)
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
            worker: Arc::new(Worker {
                jobs: Mutex::new(jobs),
                timeout: config.timeout,
                next_id: AtomicU64::new(0),
                current,
                interrupted,
                module: Arc::new(started.module),
                thread_id: started.thread_id,
            }),
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

// ---- the worker thread ------------------------------------------------------------------------

/// What a job sees: the interpreter, the `flexcore` module and this runtime's registry.
struct Ctx<'py> {
    py: Python<'py>,
    module: Bound<'py, PyModule>,
    registry: Bound<'py, PyAny>,
    validation_error: Bound<'py, PyAny>,
}

impl<'py> Ctx<'py> {
    /// Classifies an exception: `ValidationError` or anything else, with its traceback.
    fn failure(&self, err: PyErr) -> Failure {
        if err.is_instance(self.py, &self.validation_error) {
            let message = err
                .value(self.py)
                .str()
                .map(|s| s.to_string())
                .unwrap_or_default();
            return Failure::Validation(message);
        }
        let exception = err
            .get_type(self.py)
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "exception".into());
        let traceback = self
            .module
            .getattr("_format_exception")
            .and_then(|f| f.call1((err.value(self.py), err.traceback(self.py))))
            .and_then(|t| t.extract::<String>())
            .unwrap_or_else(|_| err.to_string());
        Failure::Exception {
            exception,
            traceback,
        }
    }

    fn call<A: pyo3::call::PyCallArgs<'py>>(
        &self,
        function: &str,
        args: A,
    ) -> Result<Bound<'py, PyAny>, Failure> {
        self.module
            .getattr(function)
            .and_then(|f| f.call1(args))
            .map_err(|e| self.failure(e))
    }

    fn to_json(&self, value: &Bound<'py, PyAny>) -> std::result::Result<String, String> {
        self.module
            .getattr("_to_json")
            .and_then(|f| f.call1((value,)))
            .and_then(|s| s.extract::<String>())
            .map_err(|e| {
                let value = e.value(self.py);
                value.str().map(|s| s.to_string()).unwrap_or_default()
            })
    }
}

/// Why a Python call did not produce a value.
#[derive(Debug)]
enum Failure {
    Validation(String),
    Exception {
        exception: String,
        traceback: String,
    },
    Invalid(String),
    Timeout(Duration),
    Stopped,
}

impl Failure {
    /// The error of a durable consumer: operators see it in the dead letters, so an exception
    /// keeps its message (the traceback's last line); the full traceback is logged.
    fn into_consumer_error(self, consumer: &str) -> Error {
        match self {
            Self::Exception {
                exception,
                traceback,
            } => {
                tracing::error!(target: "flexcore_python", consumer, exception, "python consumer raised an exception:\n{traceback}");
                let last = traceback.lines().rev().find(|l| !l.trim().is_empty());
                Error::internal(format!(
                    "python consumer '{consumer}' raised {}",
                    last.unwrap_or(&exception).trim()
                ))
            }
            other => other.into_error(consumer),
        }
    }

    /// The application error, logging what clients must not see.
    fn into_error(self, handler: &str) -> Error {
        match self {
            Self::Validation(message) => Error::validation(message),
            Self::Exception {
                exception,
                traceback,
            } => {
                tracing::error!(target: "flexcore_python", handler, exception, traceback = %traceback, "python handler raised an exception:\n{traceback}");
                Error::internal(format!("python handler '{handler}' raised {exception}"))
            }
            Self::Invalid(problem) => {
                tracing::error!(target: "flexcore_python", handler, problem, "python handler returned an invalid value");
                Error::internal(format!(
                    "python handler '{handler}' returned an invalid value: {problem}"
                ))
            }
            Self::Timeout(after) => {
                tracing::error!(target: "flexcore_python", handler, timeout_ms = after.as_millis() as u64, "python handler timed out");
                Error::unavailable(format!(
                    "python handler '{handler}' did not finish within {after:?}"
                ))
            }
            Self::Stopped => Error::unavailable("the Python thread has stopped"),
        }
    }
}

type JobFn = Box<dyn for<'py> FnOnce(&Ctx<'py>) + Send>;

struct Job {
    id: u64,
    run: JobFn,
}

struct Started {
    module: Py<PyModule>,
    thread_id: u64,
    described: String,
}

/// The caller's side of the Python thread.
struct Worker {
    jobs: Mutex<mpsc::Sender<Job>>,
    timeout: Duration,
    next_id: AtomicU64,
    /// The id of the job the thread is running (0: none); written only while holding the GIL.
    current: Arc<AtomicU64>,
    /// The id of the job a timeout was injected into.
    interrupted: Arc<AtomicU64>,
    /// Shared so that a timeout thread can use it without taking the GIL to clone it here.
    module: Arc<Py<PyModule>>,
    thread_id: u64,
}

impl Worker {
    /// Runs `job` on the Python thread; gives up (and interrupts it) after the timeout.
    async fn call<T, F>(&self, job: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: for<'py> FnOnce(&Ctx<'py>) -> Result<T, Failure> + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (reply, answer) = oneshot::channel();
        let run: JobFn = Box::new(move |ctx| {
            if !reply.is_closed() {
                let _ = reply.send(job(ctx));
            }
        });
        self.jobs
            .lock()
            .map_err(|_| Failure::Stopped)?
            .send(Job { id, run })
            .map_err(|_| Failure::Stopped)?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Failure::Stopped),
            Err(_) => {
                self.interrupt(id);
                Err(Failure::Timeout(self.timeout))
            }
        }
    }

    /// Raises `HandlerTimeout` in job `id` if it is still running; from a short-lived thread,
    /// since taking the GIL may wait.
    fn interrupt(&self, id: u64) {
        let module = self.module.clone();
        let (current, interrupted, thread_id) = (
            self.current.clone(),
            self.interrupted.clone(),
            self.thread_id,
        );
        let spawned = std::thread::Builder::new()
            .name("flexcore-python-timeout".into())
            .spawn(move || {
                Python::attach(|py| {
                    // Holding the GIL, the worker cannot change jobs under us.
                    if current.load(Ordering::SeqCst) != id {
                        return;
                    }
                    let module = module.bind(py);
                    let injected = module.getattr("HandlerTimeout").and_then(|exc| {
                        module
                            .getattr("_set_async_exc")
                            .and_then(|f| f.call1((thread_id, exc)))
                    });
                    match injected {
                        Ok(_) => interrupted.store(id, Ordering::SeqCst),
                        Err(e) => {
                            tracing::warn!(target: "flexcore_python", error = %e, "cannot interrupt a python handler");
                        }
                    }
                });
            });
        if let Err(e) = spawned {
            tracing::warn!(target: "flexcore_python", error = %e, "cannot start the timeout thread");
        }
    }
}

fn worker_main(
    modules: Vec<PathBuf>,
    jobs: mpsc::Receiver<Job>,
    ready: oneshot::Sender<std::result::Result<Started, String>>,
    current: Arc<AtomicU64>,
    interrupted: Arc<AtomicU64>,
) {
    let loaded = {
        let _guard = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        Python::attach(|py| load(py, &modules))
    };
    let (module, registry) = match loaded {
        Ok((module, registry, started)) => {
            let _ = ready.send(Ok(started));
            (module, registry)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    while let Ok(job) = jobs.recv() {
        Python::attach(|py| {
            let module = module.bind(py).clone();
            let ctx = Ctx {
                py,
                validation_error: module
                    .getattr("ValidationError")
                    .unwrap_or_else(|_| py.None().into_bound(py)),
                registry: registry.bind(py).clone(),
                module,
            };
            current.store(job.id, Ordering::SeqCst);
            (job.run)(&ctx);
            current.store(0, Ordering::SeqCst);
            if interrupted.load(Ordering::SeqCst) == job.id {
                // The injected exception may still be pending: clear it (running any Python code
                // may raise it first, hence twice).
                for _ in 0..2 {
                    if let Ok(thread_id) = ctx.call("_thread_id", ()) {
                        let _ = ctx.call("_set_async_exc", (thread_id, py.None()));
                    }
                }
            }
        });
    }
}

/// Registers the `flexcore` module (once per process) and imports the handler modules.
fn load(
    py: Python<'_>,
    modules: &[PathBuf],
) -> std::result::Result<(Py<PyModule>, Py<PyAny>, Started), String> {
    let describe_err = |e: PyErr| {
        let traceback = e
            .traceback(py)
            .and_then(|t| t.format().ok())
            .unwrap_or_default();
        format!("{traceback}{e}")
    };
    let sys = py.import("sys").map_err(describe_err)?;
    let sys_modules = sys.getattr("modules").map_err(describe_err)?;
    let module = match sys_modules.get_item("flexcore") {
        Ok(existing) => existing
            .cast_into::<PyModule>()
            .map_err(|e| e.to_string())?,
        Err(_) => {
            let code = CString::new(FLEXCORE_PY).map_err(|e| e.to_string())?;
            let module = PyModule::from_code(py, &code, c"flexcore.py", c"flexcore")
                .map_err(describe_err)?;
            sys_modules
                .set_item("flexcore", &module)
                .map_err(describe_err)?;
            module
        }
    };
    let paths: Vec<String> = modules
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let paths = PyList::new(py, paths).map_err(describe_err)?;
    let registry = module
        .getattr("_load")
        .and_then(|f| f.call1((paths,)))
        .map_err(|e| {
            format!(
                "cannot load the Python handler modules: {}",
                describe_err(e)
            )
        })?;
    let described = registry
        .call_method0("describe")
        .and_then(|d| d.extract::<String>())
        .map_err(describe_err)?;
    let thread_id = module
        .getattr("_thread_id")
        .and_then(|f| f.call0())
        .and_then(|t| t.extract::<u64>())
        .map_err(describe_err)?;
    let started = Started {
        module: module.clone().unbind(),
        thread_id,
        described,
    };
    Ok((module.unbind(), registry.unbind(), started))
}

// ---- the handlers -----------------------------------------------------------------------------

struct PythonCommandHandler {
    worker: Arc<Worker>,
    store: Arc<dyn EventStore>,
    command_type: String,
    route: CommandRoute,
    retry: RetryPolicy,
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
        let decided = self
            .worker
            .call(move |ctx| decide(ctx, &command_type, payload, history))
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

/// Runs a command handler and checks what it returned: `(event type, data as JSON)` pairs.
fn decide(
    ctx: &Ctx<'_>,
    command_type: &str,
    payload: String,
    history: String,
) -> Result<Vec<(String, String)>, Failure> {
    let returned = ctx.call(
        "_run_command",
        (&ctx.registry, command_type, payload, history),
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

struct PythonQueryHandler {
    worker: Arc<Worker>,
    query_type: String,
}

#[async_trait]
impl QueryHandler for PythonQueryHandler {
    async fn handle(&self, _ctx: &QueryContext, params: &Value) -> Result<Value> {
        let params = params.to_string();
        let query_type = self.query_type.clone();
        let json = self
            .worker
            .call(move |ctx| {
                let result = ctx.call("_run_query", (&ctx.registry, query_type, params))?;
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

struct PythonDurableHandler {
    worker: Arc<Worker>,
    name: String,
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

struct PythonEventHandler {
    worker: Arc<Worker>,
    event_type: String,
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
