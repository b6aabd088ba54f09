//! The supervisor of one out-of-process plugin: it starts it, restarts it with backoff when
//! it dies, opens its circuit when it fails often, swaps in a new version without losing a
//! call, and implements [`Plugin`] so the engine calls it like a compiled-in plugin.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use flexcore_app::plugin::{Plugin, PluginCall};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::connection::{Answer, CallError, Connection};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::process::LogGate;
use crate::protocol::{WireContext, WirePrincipal};

/// Latencies kept for [`PluginStatus::p99`].
const LATENCY_WINDOW: usize = 1024;

/// How a supervisor runs its plugin, beyond the manifest's `[limits]`.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// The engine's name and version, sent in `hello`.
    pub engine: String,
    /// How long a stopping plugin has to finish its calls, and then to exit.
    pub shutdown_deadline: Duration,
    /// The first restart delay; it doubles after each failed start or crash.
    pub initial_backoff: Duration,
    /// The longest restart delay.
    pub max_backoff: Duration,
    /// How often the plugin's folder is checked for changes (a change reloads it); `None`
    /// turns watching off.
    pub watch_interval: Option<Duration>,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        Self {
            engine: format!("flexcore {}", env!("CARGO_PKG_VERSION")),
            shutdown_deadline: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            watch_interval: Some(Duration::from_secs(1)),
        }
    }
}

/// Where a plugin is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginState {
    /// Not initialised yet, or its process is handshaking.
    Starting,
    /// Serving calls.
    Ready,
    /// Its process died or failed to start; it is restarted after a delay.
    Backoff,
    /// It refused to start, or the engine refused its handshake; it stays down until reloaded.
    Refused,
    /// Its circuit is open: calls fail at once until a trial call succeeds.
    Broken,
    /// Shut down.
    Stopped,
}

/// What operators see of a plugin.
#[derive(Debug, Clone)]
pub struct PluginStatus {
    /// The plugin's name.
    pub name: String,
    /// The version serving (or last tried).
    pub version: String,
    /// Where it is in its life.
    pub state: PluginState,
    /// How many times its process was restarted after dying.
    pub restarts: u64,
    /// The last failure: a crash, a refusal, a failed reload.
    pub last_error: Option<String>,
    /// Calls made to it.
    pub calls: u64,
    /// The 99th percentile of its last calls' durations.
    pub p99: Option<Duration>,
    /// The serving process's id.
    pub pid: Option<u32>,
    /// Log lines dropped because it logged too fast.
    pub dropped_log_lines: u64,
}

struct Health {
    state: PluginState,
    version: String,
    restarts: u64,
    last_error: Option<String>,
}

/// Consecutive failures open the circuit; after the open period one trial call decides.
struct Breaker {
    failures_in_a_row: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Admission {
    Normal,
    Trial,
}

struct Shared {
    name: String,
    folder: PathBuf,
    options: SupervisorOptions,
    manifest: RwLock<Manifest>,
    serving: RwLock<Option<Arc<Connection>>>,
    health: Mutex<Health>,
    breaker: Mutex<Breaker>,
    latencies: Mutex<VecDeque<Duration>>,
    calls: AtomicU64,
    dropped_log_lines: Arc<AtomicU64>,
    config_override: Mutex<Option<Value>>,
}

enum Command {
    Initialize(Value, oneshot::Sender<Result<()>>),
    Reload(oneshot::Sender<Result<()>>),
    Shutdown(oneshot::Sender<()>),
}

/// Runs one out-of-process plugin; dropping it kills the plugin's process group.
pub struct Supervisor {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Supervisor {
    /// A supervisor for the plugin `manifest` describes; it starts the process on
    /// [`Plugin::initialize`]. Must be called inside a tokio runtime.
    pub fn new(manifest: Manifest, options: SupervisorOptions) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            name: manifest.name.clone(),
            folder: manifest.folder.clone(),
            options,
            health: Mutex::new(Health {
                state: PluginState::Starting,
                version: manifest.version.to_string(),
                restarts: 0,
                last_error: None,
            }),
            manifest: RwLock::new(manifest),
            serving: RwLock::new(None),
            breaker: Mutex::new(Breaker {
                failures_in_a_row: 0,
                open_until: None,
                trial_in_flight: false,
            }),
            latencies: Mutex::new(VecDeque::with_capacity(LATENCY_WINDOW)),
            calls: AtomicU64::new(0),
            dropped_log_lines: Arc::new(AtomicU64::new(0)),
            config_override: Mutex::new(None),
        });
        tokio::spawn(manage(shared.clone(), receiver));
        Self { shared, commands }
    }

    /// Loads `<folder>/plugin.toml` and supervises that plugin.
    pub fn load(folder: &Path, options: SupervisorOptions) -> Result<Self> {
        Ok(Self::new(Manifest::load(folder)?, options))
    }

    /// Starts the plugin's current files beside the running process; once the new process
    /// has handshaken, new calls go to it and the old one finishes its calls and stops. If the
    /// new one fails, the old one keeps serving and the error is returned and recorded.
    pub async fn reload(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Reload(reply))?;
        answer.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// The plugin's state, for operators.
    pub fn status(&self) -> PluginStatus {
        let shared = &self.shared;
        let health = shared.health.lock().expect("health lock");
        let open = shared
            .breaker
            .lock()
            .expect("breaker lock")
            .open_until
            .is_some();
        let state = match health.state {
            PluginState::Ready if open => PluginState::Broken,
            state => state,
        };
        PluginStatus {
            name: shared.name.clone(),
            version: health.version.clone(),
            state,
            restarts: health.restarts,
            last_error: health.last_error.clone(),
            calls: shared.calls.load(Ordering::Relaxed),
            p99: p99(&shared.latencies.lock().expect("latencies lock")),
            pid: shared.serving().and_then(|connection| connection.pid()),
            dropped_log_lines: shared.dropped_log_lines.load(Ordering::Relaxed),
        }
    }

    /// Makes one call, with the plugin's error type (see [`Plugin::process`] for the
    /// engine's).
    pub async fn call(&self, call: PluginCall) -> Result<Value> {
        let shared = &self.shared;
        let started = Instant::now();
        let (hook, target) = (call.hook, call.target.clone());
        let outcome = shared.call(call).await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(Error::Failed { .. }) => "error",
            Err(Error::Timeout { .. }) => "timeout",
            Err(_) => "unavailable",
        };
        let elapsed = started.elapsed();
        shared.calls.fetch_add(1, Ordering::Relaxed);
        {
            let mut latencies = shared.latencies.lock().expect("latencies lock");
            if latencies.len() == LATENCY_WINDOW {
                latencies.pop_front();
            }
            latencies.push_back(elapsed);
        }
        metrics::counter!("flexcore_plugin_calls_total",
            "plugin" => shared.name.clone(), "hook" => hook.as_str(), "outcome" => label)
        .increment(1);
        metrics::histogram!("flexcore_plugin_call_duration_seconds",
            "plugin" => shared.name.clone(), "hook" => hook.as_str())
        .record(elapsed.as_secs_f64());
        if let Err(error) = &outcome {
            tracing::debug!(target: "flexcore::plugin", plugin = %shared.name, %hook, %target, "call failed: {error}");
        }
        outcome
    }

    fn send(&self, command: Command) -> Result<()> {
        self.commands.send(command).map_err(|_| self.stopped())
    }

    fn stopped(&self) -> Error {
        Error::Unavailable {
            plugin: self.shared.name.clone(),
            message: "the plugin is stopped".to_owned(),
        }
    }
}

#[async_trait]
impl Plugin for Supervisor {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn version(&self) -> String {
        self.shared
            .health
            .lock()
            .expect("health lock")
            .version
            .clone()
    }

    /// Starts the process and handshakes with `config` in `hello` (`null`: the manifest's
    /// `[config]`). A failed start is retried in the background with backoff; a refusal is
    /// not.
    async fn initialize(&self, config: Value) -> flexcore_app::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Initialize(config, reply))?;
        Ok(answer.await.unwrap_or_else(|_| Err(self.stopped()))?)
    }

    async fn process(&self, call: PluginCall) -> flexcore_app::Result<Value> {
        Ok(self.call(call).await?)
    }

    async fn shutdown(&self) -> flexcore_app::Result<()> {
        let (reply, answer) = oneshot::channel();
        if self.send(Command::Shutdown(reply)).is_ok() {
            let _ = answer.await;
        }
        Ok(())
    }
}

impl Shared {
    fn serving(&self) -> Option<Arc<Connection>> {
        self.serving.read().expect("serving lock").clone()
    }

    fn unavailable(&self, message: impl Into<String>) -> Error {
        Error::Unavailable {
            plugin: self.name.clone(),
            message: message.into(),
        }
    }

    fn set_health(&self, update: impl FnOnce(&mut Health)) {
        update(&mut self.health.lock().expect("health lock"));
    }

    async fn call(&self, call: PluginCall) -> Result<Value> {
        let (timeout, serves) = {
            let manifest = self.manifest.read().expect("manifest lock");
            (
                manifest.limits.call_timeout(),
                manifest.hooks.serves(call.hook, &call.target),
            )
        };
        if !serves {
            return Err(
                self.unavailable(format!("it does not serve {} '{}'", call.hook, call.target))
            );
        }
        let timeout = call.context.deadline.map_or(timeout, |d| d.min(timeout));
        let admission = self.admit()?;
        let mut ticket = BreakerTicket {
            shared: self,
            admission,
            recorded: false,
        };
        let context = WireContext {
            correlation_id: call.context.correlation_id,
            causation_id: call.context.causation_id,
            principal: call.context.principal.map(|principal| WirePrincipal {
                sub: principal.subject.clone(),
                roles: principal.roles.clone(),
                tenant: principal.tenant.clone(),
            }),
            deadline_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let answer = loop {
            let Some(connection) = self.serving() else {
                let state = self.health.lock().expect("health lock").state;
                ticket.record(false);
                return Err(self.unavailable(format!("it is not serving ({state:?})")));
            };
            match connection
                .call(
                    call.hook,
                    &call.target,
                    context.clone(),
                    call.data.clone(),
                    timeout,
                )
                .await
            {
                Err(CallError::Draining) => tokio::task::yield_now().await,
                other => break other,
            }
        };
        ticket.record(answer.is_ok());
        match answer {
            Ok(Answer::Ok(value)) => Ok(value),
            Ok(Answer::Failed(failure)) => Err(Error::Failed {
                plugin: self.name.clone(),
                failure: failure.into(),
            }),
            Err(CallError::TimedOut) => Err(Error::Timeout {
                plugin: self.name.clone(),
                hook: call.hook,
                target: call.target,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }),
            Err(CallError::Closed(reason)) => Err(self.unavailable(reason)),
            Err(CallError::Draining) => unreachable!("draining calls are retried"),
        }
    }

    fn admit(&self) -> Result<Admission> {
        let mut breaker = self.breaker.lock().expect("breaker lock");
        match breaker.open_until {
            None => Ok(Admission::Normal),
            Some(until) if Instant::now() < until => Err(self.unavailable(format!(
                "its circuit is open for {} ms more",
                (until - Instant::now()).as_millis()
            ))),
            Some(_) if breaker.trial_in_flight => {
                Err(self.unavailable("its circuit is open; a trial call is in flight"))
            }
            Some(_) => {
                breaker.trial_in_flight = true;
                Ok(Admission::Trial)
            }
        }
    }
}

/// Records a call's outcome in the breaker, once; a call dropped before it finished ends its
/// trial without a verdict.
struct BreakerTicket<'a> {
    shared: &'a Shared,
    admission: Admission,
    recorded: bool,
}

impl BreakerTicket<'_> {
    fn record(&mut self, answered: bool) {
        self.recorded = true;
        let (threshold, open_for) = {
            let manifest = self.shared.manifest.read().expect("manifest lock");
            (
                manifest.limits.breaker_failures,
                manifest.limits.breaker_open(),
            )
        };
        let mut breaker = self.shared.breaker.lock().expect("breaker lock");
        if self.admission == Admission::Trial {
            breaker.trial_in_flight = false;
        }
        if answered {
            breaker.failures_in_a_row = 0;
            breaker.open_until = None;
            return;
        }
        breaker.failures_in_a_row += 1;
        let reopen = self.admission == Admission::Trial
            || (breaker.open_until.is_none() && breaker.failures_in_a_row >= threshold);
        if reopen {
            breaker.open_until = Some(Instant::now() + open_for);
            tracing::warn!(target: "flexcore::plugin", plugin = %self.shared.name,
                "circuit opened after {} failed calls in a row", breaker.failures_in_a_row);
        }
    }
}

impl Drop for BreakerTicket<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.admission == Admission::Trial {
            self.shared
                .breaker
                .lock()
                .expect("breaker lock")
                .trial_in_flight = false;
        }
    }
}

fn p99(latencies: &VecDeque<Duration>) -> Option<Duration> {
    if latencies.is_empty() {
        return None;
    }
    let mut sorted: Vec<_> = latencies.iter().copied().collect();
    sorted.sort_unstable();
    let rank = (sorted.len() * 99).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

/// The newest modification time under `folder` (one level of subfolders deep is enough for
/// a plugin's files), and how many files there are. The plugin's own `data/` subfolder (what
/// it writes while it runs) and `__pycache__` are not looked at: writing there reloads nothing.
fn folder_stamp(folder: &Path) -> (Option<SystemTime>, usize) {
    fn visit(folder: &Path, depth: u8, stamp: &mut (Option<SystemTime>, usize)) {
        let Ok(entries) = std::fs::read_dir(folder) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                let name = entry.file_name();
                if depth > 0 && name != "__pycache__" && name != DATA_FOLDER {
                    visit(&entry.path(), depth - 1, stamp);
                }
                continue;
            }
            stamp.1 += 1;
            if let Ok(modified) = metadata.modified() {
                stamp.0 = stamp.0.max(Some(modified));
            }
        }
    }
    let mut stamp = (None, 0);
    visit(folder, 1, &mut stamp);
    stamp
}

/// The subfolder of a plugin's folder that is the plugin's own: not watched for changes.
pub const DATA_FOLDER: &str = "data";

/// The restart delay: doubles from the initial delay up to the maximum.
struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    fn delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// The manager task: the only place processes are started, swapped and stopped.
async fn manage(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let options = shared.options.clone();
    let mut backoff = Backoff {
        next: options.initial_backoff,
        initial: options.initial_backoff,
        max: options.max_backoff,
    };
    let mut restart_at: Option<tokio::time::Instant> = None;
    let mut initialized = false;
    let mut stamp = folder_stamp(&shared.folder);
    let mut retiring = Retiring::default();
    let mut watch = options
        .watch_interval
        .map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    loop {
        let serving = shared.serving();
        let died = async {
            match &serving {
                Some(connection) => connection.closed().await,
                None => std::future::pending().await,
            }
        };
        let restart = async {
            match restart_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let tick = async {
            match watch.as_mut() {
                Some(watch) => watch.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            command = commands.recv() => match command {
                None => {
                    // The supervisor was dropped: nothing may outlive it.
                    let reason = "the supervisor was dropped";
                    for connection in serving.into_iter().chain(retiring.connections.drain(..)) {
                        connection.kill(reason).await;
                    }
                    break;
                }
                Some(Command::Initialize(config, reply)) => {
                    *shared.config_override.lock().expect("config lock") =
                        (!config.is_null()).then_some(config);
                    initialized = true;
                    restart_at = None;
                    let started = start_beside(&shared, None, &mut retiring).await;
                    if let Err(error) = &started
                        && !error.is_refusal()
                    {
                        restart_at = Some(tokio::time::Instant::now() + backoff.delay());
                    }
                    let _ = reply.send(started);
                }
                Some(Command::Reload(reply)) => {
                    let reloaded = reload(&shared, &mut retiring, &mut restart_at).await;
                    if reloaded.is_ok() {
                        initialized = true;
                        backoff.reset();
                    }
                    stamp = folder_stamp(&shared.folder);
                    let _ = reply.send(reloaded);
                }
                Some(Command::Shutdown(reply)) => {
                    shared.serving.write().expect("serving lock").take();
                    if let Some(connection) = serving {
                        connection.stop(options.shutdown_deadline).await;
                    }
                    while retiring.stops.join_next().await.is_some() {}
                    shared.set_health(|health| health.state = PluginState::Stopped);
                    let _ = reply.send(());
                    break;
                }
            },
            reason = died => {
                let connection = shared.serving.write().expect("serving lock").take();
                if connection.is_some_and(|connection| connection.has_answered()) {
                    backoff.reset();
                }
                shared.set_health(|health| {
                    health.state = PluginState::Backoff;
                    health.restarts += 1;
                    health.last_error = Some(reason);
                });
                restart_at = Some(tokio::time::Instant::now() + backoff.delay());
            }
            () = restart => {
                restart_at = None;
                match start(&shared, None).await {
                    Err(error) if !error.is_refusal() => {
                        restart_at = Some(tokio::time::Instant::now() + backoff.delay());
                    }
                    _ => {}
                }
            }
            _ = tick => {
                let now = folder_stamp(&shared.folder);
                if now != stamp {
                    stamp = now;
                    if initialized {
                        tracing::info!(target: "flexcore::plugin", plugin = %shared.name, "files changed: reloading");
                        if reload(&shared, &mut retiring, &mut restart_at).await.is_ok() {
                            backoff.reset();
                        }
                    }
                }
            }
            Some(_) = retiring.stops.join_next(), if !retiring.stops.is_empty() => {
                retiring.connections.retain(|connection| connection.pid().is_some());
            }
        }
    }
    shared.serving.write().expect("serving lock").take();
}

/// Starts a process for `manifest` (the current one when `None`) and, once it has
/// handshaken, makes it the serving one.
async fn start(shared: &Shared, manifest: Option<Manifest>) -> Result<()> {
    let manifest =
        manifest.unwrap_or_else(|| shared.manifest.read().expect("manifest lock").clone());
    shared.set_health(|health| {
        if health.state != PluginState::Ready {
            health.state = PluginState::Starting;
        }
    });
    let config = shared
        .config_override
        .lock()
        .expect("config lock")
        .clone()
        .unwrap_or_else(|| manifest.config.clone());
    let gate = Arc::new(LogGate::new(&shared.name, shared.dropped_log_lines.clone()));
    match Connection::start(&manifest, config, &shared.options.engine, gate).await {
        Ok(connection) => {
            let version = manifest.version.to_string();
            *shared.manifest.write().expect("manifest lock") = manifest;
            *shared.serving.write().expect("serving lock") = Some(connection);
            shared.set_health(|health| {
                health.state = PluginState::Ready;
                health.version = version;
            });
            tracing::info!(target: "flexcore::plugin", plugin = %shared.name, "plugin ready");
            Ok(())
        }
        Err(error) => {
            let serving = shared.serving().is_some();
            shared.set_health(|health| {
                health.last_error = Some(error.to_string());
                if !serving {
                    health.state = if error.is_refusal() {
                        PluginState::Refused
                    } else {
                        PluginState::Backoff
                    };
                }
            });
            tracing::warn!(target: "flexcore::plugin", plugin = %shared.name, "plugin did not start: {error}");
            Err(error)
        }
    }
}

/// Connections replaced by a newer process, finishing their calls before they stop.
#[derive(Default)]
struct Retiring {
    /// Their stops, running.
    stops: JoinSet<()>,
    /// The connections, killed at once if the supervisor is dropped meanwhile.
    connections: Vec<Arc<Connection>>,
}

/// Starts a process (for `manifest`, or the current one) beside the serving one; once it has
/// handshaken it serves, and the one it replaced is retired.
async fn start_beside(
    shared: &Shared,
    manifest: Option<Manifest>,
    retiring: &mut Retiring,
) -> Result<()> {
    let previous = shared.serving();
    start(shared, manifest).await?;
    if let Some(previous) = previous {
        let deadline = shared.options.shutdown_deadline;
        retiring.connections.push(previous.clone());
        retiring
            .stops
            .spawn(async move { previous.stop(deadline).await });
    }
    Ok(())
}

async fn reload(
    shared: &Shared,
    retiring: &mut Retiring,
    restart_at: &mut Option<tokio::time::Instant>,
) -> Result<()> {
    let manifest = Manifest::load(&shared.folder)
        .and_then(|manifest| {
            if manifest.name == shared.name {
                Ok(manifest)
            } else {
                Err(Error::Manifest {
                    path: manifest.path(),
                    message: format!("name changed from '{}' to '{}'", shared.name, manifest.name),
                })
            }
        })
        .inspect_err(|error| {
            shared.set_health(|health| health.last_error = Some(error.to_string()))
        })?;
    start_beside(shared, Some(manifest), retiring).await?;
    *restart_at = None;
    Ok(())
}
