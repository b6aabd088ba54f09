//! Starting a plugin's process (isolated as far as safe Rust allows), forwarding its stderr,
//! and killing its process group while — and only while — it has not been reaped.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::manifest::{Entry, Manifest};
use crate::protocol::PROTOCOL_VERSION;

/// The longest stderr or `log` line forwarded; the rest of a longer line is cut.
pub const MAX_LOG_LINE_BYTES: usize = 4096;
/// Lines per second a plugin may log (stderr and `log` messages together); the rest are
/// dropped and counted.
pub const MAX_LOG_LINES_PER_SECOND: f64 = 200.0;

/// util-linux's `setpriv` and `prlimit`, if both are installed: they set the parent-death
/// signal and the resource limits, then `exec` the plugin (same pid, same process group).
fn isolation_tools() -> Option<&'static (PathBuf, PathBuf)> {
    static TOOLS: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let find = |name: &str| {
                std::env::split_paths(&std::env::var_os("PATH")?)
                    .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
                    .map(|dir| dir.join(name))
                    .find(|candidate| candidate.is_file())
            };
            let tools = find("setpriv").zip(find("prlimit"));
            if tools.is_none() {
                tracing::warn!(
                    target: "flexcore::plugin",
                    "setpriv or prlimit not found: plugins start without resource limits or \
                     a parent-death signal"
                );
            }
            tools
        })
        .as_ref()
}

/// Starts `manifest`'s entry in its folder with the protocol pipes, its own process group,
/// its limits, the parent-death signal and only the documented environment.
pub(crate) async fn spawn(manifest: &Manifest) -> Result<Child> {
    let Entry::Command { command, args, .. } = &manifest.entry else {
        return Err(Error::Start {
            plugin: manifest.name.clone(),
            message: "a compiled-in plugin runs inside the engine, not as a process".to_owned(),
        });
    };
    manifest.verify_executable()?;
    let mut process = match isolation_tools() {
        Some((setpriv, prlimit)) => {
            let mut process = Command::new(setpriv);
            process
                .args(["--pdeathsig", "KILL", "--"])
                .arg(prlimit)
                .arg(format!("--as={}", manifest.limits.memory_mb * 1024 * 1024))
                .arg(format!("--cpu={}", manifest.limits.cpu_seconds))
                .arg("--")
                .arg(command);
            process
        }
        None => Command::new(command),
    };
    process
        .args(args)
        .current_dir(&manifest.folder)
        .env_clear()
        .envs(
            ["PATH", "HOME", "LANG"]
                .into_iter()
                .filter_map(|name| std::env::var_os(name).map(|value| (name, value))),
        )
        .env("FLEXCORE_PLUGIN_PROTOCOL", PROTOCOL_VERSION.to_string())
        .env("FLEXCORE_PLUGIN_NAME", &manifest.name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    spawn_from_lasting_thread(process)
        .await
        .map_err(|e| Error::Start {
            plugin: manifest.name.clone(),
            message: format!(
                "cannot run '{command}' in {}: {e}",
                manifest.folder.display()
            ),
        })
}

type SpawnRequest = (
    Command,
    tokio::runtime::Handle,
    oneshot::Sender<std::io::Result<Child>>,
);

/// Forks from one thread that lives as long as the engine. The parent-death signal fires
/// when the *thread* that forked exits, and a runtime may retire the thread a task ran on
/// (`spawn_blocking` threads idle out; `block_in_place` hands a worker's role to a new
/// thread), which would kill a healthy plugin.
async fn spawn_from_lasting_thread(command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<std::sync::mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (sender, requests) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("flexcore-plugin-spawner".to_owned())
            .spawn(move || {
                for (mut command, runtime, reply) in requests {
                    // The child's pipes register with the caller's runtime.
                    let _entered = runtime.enter();
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("the plugin spawner thread starts");
        sender
    });
    let (reply, answer) = oneshot::channel();
    let gone = || std::io::Error::other("the plugin spawner thread is gone");
    spawner
        .send((command, tokio::runtime::Handle::current(), reply))
        .map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// Kills `child`'s process group, unless the child was already reaped (then its pid may
/// belong to another process: no stale-pid kill).
pub(crate) fn kill_group(child: &Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // The group may already be gone (ESRCH): nothing left to kill.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// A token bucket over a plugin's log lines, shared by its stderr and its `log` messages.
pub(crate) struct LogGate {
    plugin: String,
    bucket: Mutex<(f64, Instant)>,
    dropped: Arc<AtomicU64>,
}

impl LogGate {
    pub(crate) fn new(plugin: &str, dropped: Arc<AtomicU64>) -> Self {
        Self {
            plugin: plugin.to_owned(),
            bucket: Mutex::new((MAX_LOG_LINES_PER_SECOND, Instant::now())),
            dropped,
        }
    }

    /// Whether one more line may pass now; counts it as dropped when not.
    fn admit(&self) -> bool {
        let mut bucket = self.bucket.lock().expect("log gate lock");
        let now = Instant::now();
        let refill = now.duration_since(bucket.1).as_secs_f64() * MAX_LOG_LINES_PER_SECOND;
        *bucket = ((bucket.0 + refill).min(MAX_LOG_LINES_PER_SECOND), now);
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("flexcore_plugin_log_lines_dropped_total", "plugin" => self.plugin.clone())
                .increment(1);
            false
        }
    }

    /// Forwards one line at `level` (`error`, `warn`, `info`, `debug`) to target
    /// `flexcore::plugin`, cut to [`MAX_LOG_LINE_BYTES`].
    pub(crate) fn line(&self, level: &str, line: &str) {
        if !self.admit() {
            return;
        }
        let mut end = line.len().min(MAX_LOG_LINE_BYTES);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        let line = &line[..end];
        let plugin = self.plugin.as_str();
        match level {
            "error" => tracing::error!(target: "flexcore::plugin", plugin, "{line}"),
            "warn" => tracing::warn!(target: "flexcore::plugin", plugin, "{line}"),
            "debug" => tracing::debug!(target: "flexcore::plugin", plugin, "{line}"),
            _ => tracing::info!(target: "flexcore::plugin", plugin, "{line}"),
        }
    }
}

/// Forwards `stderr` line by line through `gate` until it closes, holding at most
/// [`MAX_LOG_LINE_BYTES`] of a line in memory however long it is.
pub(crate) async fn forward_stderr(stderr: impl AsyncRead + Unpin, gate: Arc<LogGate>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::with_capacity(256);
    loop {
        let (consumed, complete) = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => {
                let newline = chunk.iter().position(|&b| b == b'\n');
                let take = newline.unwrap_or(chunk.len());
                let room = MAX_LOG_LINE_BYTES.saturating_sub(line.len());
                line.extend_from_slice(&chunk[..take.min(room)]);
                (newline.map_or(take, |at| at + 1), newline.is_some())
            }
        };
        reader.consume(consumed);
        if complete {
            gate.line(
                "info",
                String::from_utf8_lossy(&line).trim_end_matches('\r'),
            );
            line.clear();
        }
    }
    if !line.is_empty() {
        gate.line("info", &String::from_utf8_lossy(&line));
    }
}
