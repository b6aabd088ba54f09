//! The [`Plugin`] builder and the loop that serves the protocol on a pair of streams.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::frame::{self, FrameError, Message};
use crate::handler_error::HandlerError;

/// The protocol version this crate speaks (the `protocol` of `hello` and `ready`).
pub const PROTOCOL_VERSION: u64 = 1;

/// How many calls a plugin serves at once unless [`Plugin::workers`] says otherwise.
const DEFAULT_WORKERS: usize = 4;

/// The four hooks of section 3 of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// Enrich, validate or reject a command before it is handled.
    BeforeCommand,
    /// Own a command type: decide its events.
    CommandHandler,
    /// React to events, durably.
    EventHandler,
    /// Answer a query type.
    QueryHandler,
}

impl Hook {
    /// Every hook, in the order `ready` lists them.
    pub const ALL: [Hook; 4] = [
        Hook::BeforeCommand,
        Hook::CommandHandler,
        Hook::EventHandler,
        Hook::QueryHandler,
    ];

    /// The hook's name on the wire and in `plugin.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::BeforeCommand => "before_command",
            Hook::CommandHandler => "command_handler",
            Hook::EventHandler => "event_handler",
            Hook::QueryHandler => "query_handler",
        }
    }

    /// The hook a wire name stands for.
    pub fn from_wire(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|hook| hook.as_str() == name)
    }
}

/// The severity of a `log` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something looks wrong.
    Warn,
    /// Normal operation.
    Info,
    /// Detail for debugging.
    Debug,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// Who sent the command or query a call is about (`context.principal`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Principal {
    /// The subject: a user or service name.
    pub sub: String,
    /// The roles the engine granted.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The tenant, when there is one.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// The frames a plugin writes, one whole frame at a time whichever thread writes.
#[derive(Clone)]
struct Outbox(Arc<Mutex<Box<dyn Write + Send>>>);

impl Outbox {
    fn send(&self, message: &Value) -> Result<(), FrameError> {
        // A thread that panicked while holding the lock did so outside write_frame's writes
        // (handlers never hold it), so the stream is still whole.
        let mut writer = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        frame::write_frame(&mut *writer, message)
    }
}

/// What a call is about, for its handler: the call's `hook`, `target` and `context`.
pub struct Context {
    /// The call's id (unique among the calls in flight).
    pub call_id: u64,
    /// The hook called.
    pub hook: Hook,
    /// The command, event or query type the call is about.
    pub target: String,
    /// The correlation id of the request, when the engine sent one.
    pub correlation_id: Option<String>,
    /// The id of the message that caused this one, when there is one.
    pub causation_id: Option<String>,
    /// Who sent the command or query; `None` when authentication is off.
    pub principal: Option<Principal>,
    /// How long the engine waits for the answer, in milliseconds.
    pub deadline_ms: Option<u64>,
    outbox: Outbox,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Context")
            .field("call_id", &self.call_id)
            .field("hook", &self.hook)
            .field("target", &self.target)
            .field("correlation_id", &self.correlation_id)
            .field("causation_id", &self.causation_id)
            .field("principal", &self.principal)
            .field("deadline_ms", &self.deadline_ms)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Sends a `log` message; the engine writes it to its log under the plugin's name. A
    /// message that cannot be written (the engine is gone) goes to stderr instead.
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        let message = message.into();
        let frame = json!({"type": "log", "level": level.as_str(), "message": message});
        if self.outbox.send(&frame).is_err() {
            eprintln!("{}: {message}", level.as_str());
        }
    }

    fn from_call(
        call: &Message,
        call_id: u64,
        hook: Hook,
        target: String,
        outbox: Outbox,
    ) -> Context {
        let context = call.get("context").and_then(Value::as_object);
        let text = |field: &str| {
            context
                .and_then(|context| context.get(field))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Context {
            call_id,
            hook,
            target,
            correlation_id: text("correlation_id"),
            causation_id: text("causation_id"),
            principal: context
                .and_then(|context| context.get("principal"))
                .and_then(|principal| Principal::deserialize(principal).ok()),
            deadline_ms: context
                .and_then(|context| context.get("deadline_ms"))
                .and_then(Value::as_u64),
            outbox,
        }
    }
}

/// A hook's handler: the call's context and `data` in, the `ok` value or a refusal out.
type Handler = Arc<dyn Fn(&Context, Value) -> Result<Value, HandlerError> + Send + Sync>;

/// What runs on `hello`: the manifest's `[config]` in, a refusal message out.
type Initializer = Box<dyn FnOnce(&Value) -> Result<(), String> + Send>;

/// Why a plugin stopped serving other than the three normal [`Ending`]s.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A frame broke section 1 of the protocol, or a stream failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A message broke section 2 (an unexpected type, a call without an id, …).
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// How a plugin's serving ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The engine sent `shutdown`; every call in flight was answered.
    Shutdown,
    /// The engine closed stdin without `shutdown`: nobody reads the answers any more, so calls
    /// still in flight were abandoned.
    EndOfInput,
    /// The plugin answered `hello` with `refuse`.
    Refused,
}

/// A plugin: its name and version (as in its `plugin.toml`), its initializer and a handler per
/// hook and type. Build it, then [`run`](Plugin::run) it from `main`.
pub struct Plugin {
    name: String,
    version: String,
    initializer: Option<Initializer>,
    handlers: Vec<(Hook, String, Handler)>,
    workers: usize,
}

impl Plugin {
    /// A plugin with no handlers yet; `name` and `version` must match its manifest.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Plugin {
        Plugin {
            name: name.into(),
            version: version.into(),
            initializer: None,
            handlers: Vec::new(),
            workers: DEFAULT_WORKERS,
        }
    }

    /// Runs `initializer` with the manifest's `[config]` when `hello` arrives, before `ready`;
    /// an `Err` answers `refuse` with its message instead (a bad config, say).
    pub fn initialize(
        mut self,
        initializer: impl FnOnce(&Value) -> Result<(), String> + Send + 'static,
    ) -> Plugin {
        self.initializer = Some(Box::new(initializer));
        self
    }

    /// How many calls are served at once (at least one; four unless set).
    pub fn workers(mut self, workers: usize) -> Plugin {
        self.workers = workers.max(1);
        self
    }

    /// Registers `handler` for `hook` and `target` (an event-type pattern may end in `*`).
    ///
    /// # Panics
    /// When a handler is already registered for the same hook and target: the engine could
    /// only ever call one of them.
    pub fn handler(
        mut self,
        hook: Hook,
        target: impl Into<String>,
        handler: impl Fn(&Context, Value) -> Result<Value, HandlerError> + Send + Sync + 'static,
    ) -> Plugin {
        let target = target.into();
        assert!(
            !self
                .handlers
                .iter()
                .any(|(h, t, _)| *h == hook && *t == target),
            "{} {target} is registered twice",
            hook.as_str()
        );
        self.handlers.push((hook, target, Arc::new(handler)));
        self
    }

    /// A `before_command` handler: `data` is `{"payload": …}`, `ok` the payload to use.
    pub fn before_command(
        self,
        command_type: impl Into<String>,
        handler: impl Fn(&Context, Value) -> Result<Value, HandlerError> + Send + Sync + 'static,
    ) -> Plugin {
        self.handler(Hook::BeforeCommand, command_type, handler)
    }

    /// A `command_handler`: `data` has the payload and the stream's events, `ok` is
    /// `{"events": […], "result": …}`.
    pub fn command_handler(
        self,
        command_type: impl Into<String>,
        handler: impl Fn(&Context, Value) -> Result<Value, HandlerError> + Send + Sync + 'static,
    ) -> Plugin {
        self.handler(Hook::CommandHandler, command_type, handler)
    }

    /// An `event_handler` for an event type or a pattern ending in `*`: `data` is the event
    /// envelope, `ok` is `{}`. Deliveries repeat (at least once), so it must be idempotent.
    pub fn event_handler(
        self,
        event_type: impl Into<String>,
        handler: impl Fn(&Context, Value) -> Result<Value, HandlerError> + Send + Sync + 'static,
    ) -> Plugin {
        self.handler(Hook::EventHandler, event_type, handler)
    }

    /// A `query_handler`: `data` is `{"params": …}`, `ok` is `{"result": …}`.
    pub fn query_handler(
        self,
        query_type: impl Into<String>,
        handler: impl Fn(&Context, Value) -> Result<Value, HandlerError> + Send + Sync + 'static,
    ) -> Plugin {
        self.handler(Hook::QueryHandler, query_type, handler)
    }

    /// Serves the protocol on stdin/stdout until `shutdown` or end of input. Exit status 0
    /// then, 1 after `refuse`, 2 on a protocol violation (the reason goes to stderr).
    pub fn run(self) -> ExitCode {
        let name = self.name.clone();
        match self.serve(io::stdin().lock(), io::stdout()) {
            Ok(Ending::Shutdown | Ending::EndOfInput) => ExitCode::SUCCESS,
            Ok(Ending::Refused) => ExitCode::FAILURE,
            Err(error) => {
                eprintln!("plugin {name}: {error}");
                ExitCode::from(2)
            }
        }
    }

    /// Serves the protocol on `input` and `output` (what [`run`](Plugin::run) does on
    /// stdin/stdout; tests pass pipes).
    pub fn serve(
        self,
        mut input: impl Read,
        output: impl Write + Send + 'static,
    ) -> Result<Ending, PluginError> {
        let outbox = Outbox(Arc::new(Mutex::new(Box::new(output))));
        let Some(hello) = frame::read_frame(&mut input)? else {
            return Ok(Ending::EndOfInput);
        };
        if message_type(&hello) != "hello" {
            return Err(PluginError::Protocol(format!(
                "expected `hello` first, got `{}`",
                message_type(&hello)
            )));
        }
        let routes = Routes::new(&self.handlers);
        let ready = json!({
            "type": "ready", "protocol": PROTOCOL_VERSION, "name": self.name,
            "version": self.version, "hooks": routes.hooks_declared(),
        });
        let worker_count = self.workers;
        if let Err(reason) = self.accept_hello(&hello) {
            outbox.send(&json!({"type": "refuse", "message": reason}))?;
            return Ok(Ending::Refused);
        }
        outbox.send(&ready)?;

        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let workers: Vec<JoinHandle<()>> = (0..worker_count)
            .map(|_| {
                let queue = Arc::clone(&queue);
                thread::spawn(move || serve_jobs(&queue))
            })
            .collect();
        loop {
            let Some(message) = frame::read_frame(&mut input)? else {
                // The engine is gone: the workers are left to finish or die with the process.
                return Ok(Ending::EndOfInput);
            };
            match message_type(&message) {
                "call" => {
                    let job = routes.job_for(&message, outbox.clone())?;
                    jobs.send(job)
                        .expect("the workers live as long as this loop");
                }
                "ping" => {
                    let id = message.get("id").cloned().unwrap_or(Value::Null);
                    outbox.send(&json!({"type": "pong", "id": id}))?;
                }
                "shutdown" => {
                    drop(jobs);
                    for worker in workers {
                        let _ = worker.join();
                    }
                    return Ok(Ending::Shutdown);
                }
                other => {
                    return Err(PluginError::Protocol(format!(
                        "unexpected `{other}` message"
                    )));
                }
            }
        }
    }

    /// Checks the offered protocol and runs the initializer: `Err` is the `refuse` message.
    fn accept_hello(self, hello: &Message) -> Result<(), String> {
        let offered = hello.get("protocol").cloned().unwrap_or(Value::Null);
        if offered.as_u64() != Some(PROTOCOL_VERSION) {
            return Err(format!(
                "plugin {} speaks protocol {PROTOCOL_VERSION}, the engine offered {offered}",
                self.name
            ));
        }
        let config = hello.get("config").cloned().unwrap_or_else(|| json!({}));
        match self.initializer {
            None => Ok(()),
            Some(initializer) => {
                match panic::catch_unwind(AssertUnwindSafe(|| initializer(&config))) {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!("plugin {} panicked while initialising", self.name)),
                }
            }
        }
    }
}

fn message_type(message: &Message) -> &str {
    message.get("type").and_then(Value::as_str).unwrap_or("")
}

/// One call to run on a worker: the handler (if any), its context and data.
struct Job {
    handler: Option<Handler>,
    context: Context,
    data: Value,
}

impl Job {
    fn run(self) {
        let Job {
            handler,
            context,
            data,
        } = self;
        let outcome = match handler {
            None => Err(HandlerError::Internal(format!(
                "no {} handler for `{}`",
                context.hook.as_str(),
                context.target
            ))),
            Some(handler) => panic::catch_unwind(AssertUnwindSafe(|| handler(&context, data)))
                .unwrap_or_else(|_| {
                    Err(HandlerError::Internal(format!(
                        "the {} handler for `{}` panicked",
                        context.hook.as_str(),
                        context.target
                    )))
                }),
        };
        let result = match outcome {
            Ok(ok) => json!({"type": "result", "id": context.call_id, "ok": ok}),
            Err(error) => {
                if let HandlerError::Internal(message) = &error {
                    eprintln!("call {} failed: {message}", context.call_id);
                }
                json!({"type": "result", "id": context.call_id, "error": error.to_protocol()})
            }
        };
        if let Err(error) = context.outbox.send(&result) {
            eprintln!(
                "the result of call {} was not delivered: {error}",
                context.call_id
            );
        }
    }
}

fn serve_jobs(queue: &Mutex<Receiver<Job>>) {
    loop {
        let next = queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .recv();
        match next {
            Ok(job) => job.run(),
            Err(_) => return,
        }
    }
}

/// The registered handlers, looked up by hook and target.
struct Routes {
    declared: Vec<(Hook, String)>,
    exact: HashMap<(Hook, String), Handler>,
    /// Event-type patterns ending in `*`, longest prefix first.
    event_prefixes: Vec<(String, Handler)>,
}

impl Routes {
    fn new(handlers: &[(Hook, String, Handler)]) -> Routes {
        let mut event_prefixes: Vec<(String, Handler)> = handlers
            .iter()
            .filter(|(hook, target, _)| *hook == Hook::EventHandler && target.ends_with('*'))
            .map(|(_, target, handler)| {
                (target.trim_end_matches('*').to_owned(), Arc::clone(handler))
            })
            .collect();
        event_prefixes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Routes {
            declared: handlers
                .iter()
                .map(|(hook, target, _)| (*hook, target.clone()))
                .collect(),
            exact: handlers
                .iter()
                .map(|(hook, target, handler)| ((*hook, target.clone()), Arc::clone(handler)))
                .collect(),
            event_prefixes,
        }
    }

    /// `ready`'s `hooks`: every hook kind, with the types registered for it in order.
    fn hooks_declared(&self) -> Value {
        let hooks: Map<String, Value> = Hook::ALL
            .into_iter()
            .map(|kind| {
                let targets: Vec<&str> = self
                    .declared
                    .iter()
                    .filter(|(hook, _)| *hook == kind)
                    .map(|(_, target)| target.as_str())
                    .collect();
                (kind.as_str().to_owned(), json!(targets))
            })
            .collect();
        Value::Object(hooks)
    }

    fn find(&self, hook: Hook, target: &str) -> Option<Handler> {
        if let Some(handler) = self.exact.get(&(hook, target.to_owned())) {
            return Some(Arc::clone(handler));
        }
        if hook != Hook::EventHandler {
            return None;
        }
        self.event_prefixes
            .iter()
            .find(|(prefix, _)| target.starts_with(prefix.as_str()))
            .map(|(_, handler)| Arc::clone(handler))
    }

    fn job_for(&self, call: &Message, outbox: Outbox) -> Result<Job, PluginError> {
        let call_id = call
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| PluginError::Protocol("a `call` without an integer `id`".into()))?;
        let hook_name = call.get("hook").and_then(Value::as_str).unwrap_or("");
        let target = call
            .get("target")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let data = call.get("data").cloned().unwrap_or(Value::Null);
        let Some(hook) = Hook::from_wire(hook_name) else {
            return Err(PluginError::Protocol(format!(
                "call {call_id} names no known hook: `{hook_name}`"
            )));
        };
        Ok(Job {
            handler: self.find(hook, &target),
            context: Context::from_call(call, call_id, hook, target, outbox),
            data,
        })
    }
}
