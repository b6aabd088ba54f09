//! One running plugin process: the handshake, then a writer task, a reader task dispatching
//! `result`s to the waiting calls by id, a pinger, and the task that owns the child.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flexcore_app::plugin::Hook;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::error::{Error, Result, Violation};
use crate::manifest::Manifest;
use crate::process::{self, LogGate};
use crate::protocol::{
    self, HookTable, Message, PROTOCOL_VERSION, PluginIdentity, WireContext, WireFailure,
};

/// Timeouts in a row after which a plugin is restarted.
const TIMEOUTS_BEFORE_RESTART: u32 = 3;
/// How long a plugin that closed its stdout has to exit before that is the failure reported.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How many timed-out call ids are remembered, so their late `result`s are ignored rather
/// than taken for answers to ids never sent.
const REMEMBERED_LATE_IDS: usize = 4096;

/// A plugin's answer to one call.
pub(crate) enum Answer {
    /// The hook's answer.
    Ok(Value),
    /// The plugin's refusal.
    Failed(WireFailure),
}

/// Why a call got no answer from this connection.
pub(crate) enum CallError {
    /// The connection is being replaced: ask the current one.
    Draining,
    /// The process is gone or broke the protocol.
    Closed(String),
    /// No answer within the timeout.
    TimedOut,
}

enum Waiter {
    Call(oneshot::Sender<Answer>),
    Ping(oneshot::Sender<()>),
}

struct Calls {
    accepting: bool,
    next_id: u64,
    waiting: HashMap<u64, Waiter>,
    late: BTreeSet<u64>,
}

enum Outgoing {
    Frame(Message),
    Close,
}

/// A started, handshaken plugin process.
pub(crate) struct Connection {
    plugin: String,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    calls: Mutex<Calls>,
    idle: Notify,
    closed: watch::Sender<Option<String>>,
    exited: watch::Sender<bool>,
    kill: Notify,
    timeouts_in_a_row: AtomicU32,
    answered: AtomicBool,
    pid: Option<u32>,
    call_timeout: Duration,
}

impl Connection {
    /// Starts `manifest`'s process, sends `hello` with `config` and waits for a `ready` that
    /// matches the manifest. A `refuse`, or a `ready` that does not match, is
    /// [`Error::Refused`].
    pub(crate) async fn start(
        manifest: &Manifest,
        config: Value,
        engine: &str,
        log_gate: Arc<LogGate>,
    ) -> Result<Arc<Self>> {
        let mut child = process::spawn(manifest).await?;
        let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            process::kill_group(&child);
            return Err(start_error(manifest, "the process has no pipes".to_owned()));
        };
        tokio::spawn(process::forward_stderr(stderr, log_gate.clone()));
        let handshake = tokio::time::timeout(
            manifest.limits.handshake_timeout(),
            handshake(manifest, config, engine, &mut stdin, &mut stdout),
        )
        .await
        .unwrap_or_else(|_| {
            Err(start_error(
                manifest,
                format!(
                    "no answer to hello within {} ms",
                    manifest.limits.handshake_timeout_ms
                ),
            ))
        });
        if let Err(error) = handshake {
            process::kill_group(&child);
            let _ = child.wait().await;
            return Err(error);
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let connection = Arc::new(Self {
            plugin: manifest.name.clone(),
            outgoing: sender,
            calls: Mutex::new(Calls {
                accepting: true,
                next_id: 1,
                waiting: HashMap::new(),
                late: BTreeSet::new(),
            }),
            idle: Notify::new(),
            closed: watch::channel(None).0,
            exited: watch::channel(false).0,
            kill: Notify::new(),
            timeouts_in_a_row: AtomicU32::new(0),
            answered: AtomicBool::new(false),
            pid: child.id(),
            call_timeout: manifest.limits.call_timeout(),
        });
        tokio::spawn(write_frames(connection.clone(), stdin, receiver));
        // Buffered: a frame's length and body, and frames that arrive together, cost one read.
        let stdout = tokio::io::BufReader::with_capacity(64 * 1024, stdout);
        tokio::spawn(read_frames(connection.clone(), stdout, log_gate));
        tokio::spawn(own_child(connection.clone(), child));
        tokio::spawn(ping(connection.clone(), manifest.limits.health_interval()));
        Ok(connection)
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid.filter(|_| !*self.exited.borrow())
    }

    /// Whether the plugin has answered at least one call.
    pub(crate) fn has_answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    /// Resolves with the reason once the connection is closed.
    pub(crate) async fn closed(&self) -> String {
        let mut closed = self.closed.subscribe();
        let reason = closed
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone().unwrap_or_default());
        reason.unwrap_or_else(|_| "connection dropped".to_owned())
    }

    /// Sends one call and waits for its answer (at most `timeout`).
    pub(crate) async fn call(
        &self,
        hook: Hook,
        target: &str,
        context: WireContext,
        data: Value,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        let (sender, receiver) = oneshot::channel();
        let id = {
            let mut calls = self.calls.lock().expect("calls lock");
            if let Some(reason) = self.closed.borrow().clone() {
                return Err(CallError::Closed(reason));
            }
            if !calls.accepting {
                return Err(CallError::Draining);
            }
            let id = calls.next_id;
            calls.next_id += 1;
            calls.waiting.insert(id, Waiter::Call(sender));
            id
        };
        let call = Message::Call {
            id,
            hook,
            target: target.to_owned(),
            context,
            data,
        };
        if self.outgoing.send(Outgoing::Frame(call)).is_err() {
            self.fail("the writer stopped".to_owned());
        }
        match tokio::time::timeout(timeout, receiver).await {
            Ok(Ok(answer)) => {
                self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                self.answered.store(true, Ordering::Relaxed);
                Ok(answer)
            }
            Ok(Err(_)) => Err(CallError::Closed(self.closed_reason())),
            Err(_) => {
                self.forget_late(id);
                let in_a_row = self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if in_a_row >= TIMEOUTS_BEFORE_RESTART {
                    self.fail(format!("{in_a_row} calls in a row timed out"));
                }
                Err(CallError::TimedOut)
            }
        }
    }

    fn forget_late(&self, id: u64) {
        let mut calls = self.calls.lock().expect("calls lock");
        if calls.waiting.remove(&id).is_some() {
            calls.late.insert(id);
            if calls.late.len() > REMEMBERED_LATE_IDS {
                calls.late.pop_first();
            }
        }
        if calls.waiting.is_empty() {
            self.idle.notify_waiters();
        }
    }

    fn closed_reason(&self) -> String {
        self.closed
            .borrow()
            .clone()
            .unwrap_or_else(|| "the plugin stopped answering".to_owned())
    }

    /// Closes the connection for `reason`: every waiting call fails, the process group is
    /// killed. Only the first reason is kept.
    pub(crate) fn fail(&self, reason: String) {
        let first = self.closed.send_if_modified(|closed| {
            if closed.is_none() {
                *closed = Some(reason.clone());
                true
            } else {
                false
            }
        });
        if first {
            tracing::warn!(target: "flexcore::plugin", plugin = %self.plugin, "plugin connection closed: {reason}");
        }
        let waiting: Vec<_> = {
            let mut calls = self.calls.lock().expect("calls lock");
            calls.accepting = false;
            calls.waiting.drain().collect()
        };
        // Dropping the senders fails the waiting calls with the reason recorded above.
        drop(waiting);
        self.idle.notify_waiters();
        self.kill.notify_one();
    }

    /// Stops the plugin gracefully: no new calls, in-flight ones finish (within `deadline`),
    /// then `shutdown`, stdin closed, and the process group killed if it has not exited
    /// within `deadline` more.
    pub(crate) async fn stop(&self, deadline: Duration) {
        let drained = async {
            loop {
                let idle = self.idle.notified();
                {
                    let mut calls = self.calls.lock().expect("calls lock");
                    calls.accepting = false;
                    if calls.waiting.is_empty() {
                        return;
                    }
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(deadline, drained).await;
        let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .outgoing
            .send(Outgoing::Frame(Message::Shutdown { deadline_ms }));
        let _ = self.outgoing.send(Outgoing::Close);
        let mut exited = self.exited.subscribe();
        if tokio::time::timeout(deadline, exited.wait_for(|exited| *exited))
            .await
            .is_err()
        {
            self.fail(format!(
                "did not exit within {} ms of shutdown",
                deadline_ms
            ));
        }
        self.fail("stopped".to_owned());
        let _ = exited.wait_for(|exited| *exited).await;
    }

    /// Kills the process group at once and waits until the child is reaped.
    pub(crate) async fn kill(&self, reason: &str) {
        self.fail(reason.to_owned());
        let _ = self.exited.subscribe().wait_for(|exited| *exited).await;
    }

    fn dispatch(&self, message: Message, log_gate: &LogGate) -> Result<(), Violation> {
        let (id, is_pong) = match &message {
            Message::Result { id, .. } => (*id, false),
            Message::Pong { id } => (*id, true),
            Message::Log { level, message } => {
                log_gate.line(level, message);
                return Ok(());
            }
            other => return Err(Violation::Unexpected(other.kind().to_owned())),
        };
        let mut calls = self.calls.lock().expect("calls lock");
        let waiter = calls.waiting.remove(&id);
        if calls.waiting.is_empty() {
            self.idle.notify_waiters();
        }
        match (waiter, message) {
            (Some(Waiter::Call(sender)), Message::Result { ok, error, .. }) => {
                let answer = match (ok, error) {
                    (Some(ok), _) => Answer::Ok(ok),
                    (None, Some(error)) => Answer::Failed(error),
                    (None, None) => unreachable!("decode checks one of ok and error"),
                };
                let _ = sender.send(answer);
                Ok(())
            }
            (Some(Waiter::Ping(sender)), Message::Pong { .. }) => {
                let _ = sender.send(());
                Ok(())
            }
            (None, _) if !is_pong && calls.late.remove(&id) => {
                tracing::debug!(target: "flexcore::plugin", plugin = %self.plugin, id, "late result ignored");
                Ok(())
            }
            (None, _) if is_pong && calls.late.remove(&id) => Ok(()),
            _ => Err(Violation::UnknownId(id)),
        }
    }
}

fn start_error(manifest: &Manifest, message: String) -> Error {
    Error::Start {
        plugin: manifest.name.clone(),
        message,
    }
}

async fn handshake(
    manifest: &Manifest,
    config: Value,
    engine: &str,
    stdin: &mut (impl AsyncWrite + Unpin),
    stdout: &mut (impl AsyncRead + Unpin),
) -> Result<()> {
    let hello = Message::Hello {
        protocol: PROTOCOL_VERSION,
        engine: engine.to_owned(),
        plugin: PluginIdentity {
            name: manifest.name.clone(),
            version: manifest.version.to_string(),
        },
        config,
    };
    let refused = |message: String| Error::Refused {
        plugin: manifest.name.clone(),
        message,
    };
    protocol::write_frame(stdin, &hello).await?;
    match protocol::read_frame(stdout).await? {
        None => Err(start_error(
            manifest,
            "exited before answering hello".to_owned(),
        )),
        Some(Message::Refuse { message }) => Err(refused(message)),
        Some(Message::Ready {
            protocol,
            name,
            version,
            hooks,
        }) => {
            if protocol != PROTOCOL_VERSION {
                return Err(refused(format!(
                    "the plugin speaks protocol {protocol}, the engine speaks {PROTOCOL_VERSION}"
                )));
            }
            if name != manifest.name || version != manifest.version.to_string() {
                return Err(refused(format!(
                    "the plugin says it is '{name}' {version}, the manifest says '{}' {}",
                    manifest.name, manifest.version
                )));
            }
            if !same_hooks(&hooks, &manifest.hooks) {
                return Err(refused(format!(
                    "the plugin serves hooks {}, the manifest declares {}",
                    serde_json::to_string(&hooks).unwrap_or_default(),
                    serde_json::to_string(&manifest.hooks).unwrap_or_default()
                )));
            }
            Ok(())
        }
        Some(other) => Err(Violation::Unexpected(other.kind().to_owned()).into()),
    }
}

/// Whether both tables list the same types per hook, in any order.
fn same_hooks(left: &HookTable, right: &HookTable) -> bool {
    Hook::ALL.into_iter().all(|hook| {
        let set = |table: &HookTable| table.targets(hook).iter().cloned().collect::<BTreeSet<_>>();
        set(left) == set(right)
    })
}

/// The most bytes of queued frames written at once.
const MAX_BATCH_BYTES: usize = 256 * 1024;

async fn write_frames(
    connection: Arc<Connection>,
    mut stdin: impl AsyncWrite + Unpin,
    mut frames: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut closed = connection.closed.subscribe();
    loop {
        let next = tokio::select! {
            next = frames.recv() => next,
            _ = closed.wait_for(Option::is_some) => None,
        };
        // Every frame already queued goes out with this one: one write, one flush.
        let mut batch = Vec::new();
        let mut close = false;
        let mut outgoing = next;
        loop {
            match outgoing {
                Some(Outgoing::Frame(message)) => match protocol::encode(&message) {
                    Ok(frame) => batch.extend_from_slice(&frame),
                    Err(error) => {
                        connection.fail(format!("cannot encode a frame: {error}"));
                        return;
                    }
                },
                // Dropping stdin closes it: the plugin sees end of file.
                Some(Outgoing::Close) | None => {
                    close = true;
                    break;
                }
            }
            if batch.len() >= MAX_BATCH_BYTES {
                break;
            }
            match frames.try_recv() {
                Ok(more) => outgoing = Some(more),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let written = async {
                stdin.write_all(&batch).await?;
                stdin.flush().await
            };
            if let Err(error) = written.await {
                connection.fail(format!("cannot write to the plugin: {error}"));
                return;
            }
        }
        if close {
            return;
        }
    }
}

async fn read_frames(
    connection: Arc<Connection>,
    mut stdout: impl AsyncRead + Unpin,
    log_gate: Arc<LogGate>,
) {
    let mut closed = connection.closed.subscribe();
    loop {
        let frame = tokio::select! {
            frame = protocol::read_frame(&mut stdout) => frame,
            _ = closed.wait_for(Option::is_some) => return,
        };
        let reason = match frame {
            Ok(Some(message)) => match connection.dispatch(message, &log_gate) {
                Ok(()) => continue,
                Err(violation) => format!("protocol violation: {violation}"),
            },
            Ok(None) => {
                // Usually the process is exiting: let its exit status be the reason.
                let mut exited = connection.exited.subscribe();
                let _ = tokio::time::timeout(EXIT_GRACE, exited.wait_for(|exited| *exited)).await;
                "the plugin closed its stdout".to_owned()
            }
            Err(error) => error.to_string(),
        };
        connection.fail(reason);
        return;
    }
}

async fn own_child(connection: Arc<Connection>, mut child: Child) {
    let status = tokio::select! {
        status = child.wait() => status,
        () = connection.kill.notified() => {
            // `wait` has not returned, so the child is not reaped: its pid is still ours.
            process::kill_group(&child);
            child.wait().await
        }
    };
    let described = match status {
        Ok(status) => format!("the plugin exited ({status})"),
        Err(error) => format!("cannot wait for the plugin: {error}"),
    };
    connection.fail(described);
    connection.exited.send_replace(true);
}

async fn ping(connection: Arc<Connection>, interval: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut closed = connection.closed.subscribe();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = closed.wait_for(Option::is_some) => return,
        }
        let (sender, receiver) = oneshot::channel();
        let id = {
            let mut calls = connection.calls.lock().expect("calls lock");
            let id = calls.next_id;
            calls.next_id += 1;
            calls.waiting.insert(id, Waiter::Ping(sender));
            id
        };
        let _ = connection
            .outgoing
            .send(Outgoing::Frame(Message::Ping { id }));
        match tokio::time::timeout(connection.call_timeout, receiver).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                connection.forget_late(id);
                connection.fail(format!(
                    "no pong within {} ms",
                    connection.call_timeout.as_millis()
                ));
                return;
            }
        }
    }
}
