//! `flexcore-bench plugins`: what a plugin call costs, in process and out of process.
//!
//! One hook — the `query_handler` `email_domain` of the `user-stats` example (an address's
//! domain and whether it is a free mail provider) — served three ways in one run:
//! * **in-process**: the same logic implementing [`flexcore_app::plugin::Plugin`] directly,
//!   as a plugin compiled into the binary;
//! * **rust**: the SDK's `user_stats` example as a child process, through the
//!   [`Supervisor`] (frames over pipes, the protocol of `docs/plugin-protocol.md`);
//! * **python**: the same handler written with the Python SDK (`sdk/python`), also supervised.
//!
//! Each case runs with 1 caller (the round trip) and with `--callers` concurrent callers
//! (throughput), interleaved, `--repeat` times; the median run is reported with calls/s and
//! p50/p99 in microseconds. Target (issue 15): an out-of-process round trip under 100 µs at p50.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use flexcore_app::plugin::{Hook, Plugin, PluginCall, PluginCallContext};
use flexcore_plugin::{Supervisor, SupervisorOptions};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{PluginsArgs, median, percentile};

/// The free providers every case uses.
const FREE_PROVIDERS: [&str; 4] = ["gmail.com", "outlook.com", "yahoo.com", "proton.me"];

/// The in-process version of the `user-stats` example's handler.
struct InProcessEmailDomain;

#[async_trait]
impl Plugin for InProcessEmailDomain {
    fn name(&self) -> &str {
        "user-stats"
    }

    fn version(&self) -> String {
        "0.1.0".into()
    }

    async fn initialize(&self, _config: Value) -> flexcore_app::Result<()> {
        Ok(())
    }

    async fn process(&self, call: PluginCall) -> flexcore_app::Result<Value> {
        let email = call.data["params"]["email"]
            .as_str()
            .unwrap_or_default()
            .trim();
        let Some((_, domain)) = email.rsplit_once('@') else {
            return Err(flexcore_app::Error::validation("email is not an address"));
        };
        let domain = domain.to_lowercase();
        let free_provider = FREE_PROVIDERS.contains(&domain.as_str());
        Ok(json!({"result": {"domain": domain, "free_provider": free_provider}}))
    }

    async fn shutdown(&self) -> flexcore_app::Result<()> {
        Ok(())
    }
}

/// The Python SDK version of the handler.
const PYTHON_PLUGIN: &str = r#"from flexcore_plugin import Plugin, ValidationError

FREE_PROVIDERS = {"gmail.com", "outlook.com", "yahoo.com", "proton.me"}
plugin = Plugin("user-stats", "0.1.0")


@plugin.query_handler("email_domain")
def email_domain(ctx, data):
    email = str(data["params"].get("email", "")).strip()
    if "@" not in email:
        raise ValidationError("email is not an address")
    domain = email.rsplit("@", 1)[1].lower()
    return {"result": {"domain": domain, "free_provider": domain in FREE_PROVIDERS}}


plugin.run()
"#;

/// A plugin folder for `command` with `args`, serving `email_domain`.
fn plugin_folder(root: &Path, name: &str, command: &str, args: &[&str]) -> anyhow::Result<PathBuf> {
    let folder = root.join(name);
    std::fs::create_dir_all(&folder)?;
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    std::fs::write(
        folder.join("plugin.toml"),
        format!(
            "name = \"user-stats\"\nversion = \"0.1.0\"\n\n[entry]\ncommand = {command:?}\n\
             args = [{}]\n\n[hooks]\nquery_handler = [\"email_domain\"]\n\n[config]\n\
             free_providers = {FREE_PROVIDERS:?}\n\n[limits]\nmemory_mb = 1024\n\
             call_timeout_ms = 5000\n",
            args.join(", ")
        ),
    )?;
    Ok(folder)
}

/// The `user_stats` example binary: `--rust-plugin`, else beside this benchmark's binary
/// (`target/<profile>/examples/user_stats`).
fn rust_plugin_binary(args: &PluginsArgs) -> anyhow::Result<PathBuf> {
    let path = match &args.rust_plugin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark binary has no folder")?
            .join("examples/user_stats"),
    };
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: build it with `cargo build --release -p flexcore-plugin-sdk --example \
         user_stats` (or name it with --rust-plugin)",
        path.display()
    );
    // The plugin starts in its own folder: a relative path would not resolve there.
    Ok(std::fs::canonicalize(&path)?)
}

/// Whether python3 can import the Python SDK.
fn python_sdk_installed() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import flexcore_plugin"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct PluginRun {
    /// `in-process`, `rust` or `python`.
    pub case: String,
    /// Concurrent callers.
    pub callers: usize,
    /// Calls answered per second.
    pub calls_per_s: f64,
    /// Median round trip, µs.
    pub p50_us: f64,
    /// 99th percentile round trip, µs.
    pub p99_us: f64,
}

fn call(n: usize) -> PluginCall {
    PluginCall {
        hook: Hook::QueryHandler,
        target: "email_domain".into(),
        context: PluginCallContext::default(),
        data: json!({"params": {"email": format!("user{n}@Example.com")}}),
    }
}

/// `callers` tasks calling `plugin` back to back for `duration`.
async fn measure(
    case: &str,
    plugin: Arc<dyn Plugin>,
    callers: usize,
    duration: Duration,
) -> anyhow::Result<PluginRun> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let plugin = Arc::clone(&plugin);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = caller;
            while Instant::now() < deadline {
                let sent = Instant::now();
                plugin.process(call(n)).await?;
                latencies.push(sent.elapsed());
                n += callers;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(PluginRun {
        case: case.to_owned(),
        callers,
        calls_per_s: latencies.len() as f64 / elapsed,
        p50_us: percentile(&latencies, 0.50) * 1000.0,
        p99_us: percentile(&latencies, 0.99) * 1000.0,
    })
}

/// Runs the benchmark and prints its report.
pub async fn run(args: &PluginsArgs) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut cases: Vec<(&str, Arc<dyn Plugin>)> =
        vec![("in-process", Arc::new(InProcessEmailDomain))];
    let rust = rust_plugin_binary(args)?;
    let folder = plugin_folder(root.path(), "rust", &rust.display().to_string(), &[])?;
    let supervisor = Supervisor::load(&folder, SupervisorOptions::default())?;
    supervisor.initialize(Value::Null).await?;
    cases.push(("rust", Arc::new(supervisor)));
    if python_sdk_installed() {
        let folder = plugin_folder(root.path(), "python", "python3", &["plugin.py"])?;
        std::fs::write(folder.join("plugin.py"), PYTHON_PLUGIN)?;
        let supervisor = Supervisor::load(&folder, SupervisorOptions::default())?;
        supervisor.initialize(Value::Null).await?;
        cases.push(("python", Arc::new(supervisor)));
    } else {
        eprintln!("python: skipped (install the SDK: python3 -m pip install ./sdk/python)");
    }
    let duration = Duration::from_secs_f64(args.duration);
    let mut runs: Vec<PluginRun> = Vec::new();
    for repeat in 0..args.run.repeat {
        for callers in [1, args.callers] {
            for (case, plugin) in &cases {
                // Warm-up: the first calls of a process pay for its page faults.
                for n in 0..100 {
                    plugin.process(call(n)).await?;
                }
                let measured = measure(case, Arc::clone(plugin), callers, duration).await?;
                eprintln!(
                    "  run {}/{} {:<10} callers={:<3} {:>9.0} calls/s  p50={:.0}µs p99={:.0}µs",
                    repeat + 1,
                    args.run.repeat,
                    case,
                    callers,
                    measured.calls_per_s,
                    measured.p50_us,
                    measured.p99_us
                );
                runs.push(measured);
            }
        }
    }
    let mut report = Vec::new();
    for callers in [1, args.callers] {
        for (case, _) in &cases {
            let mut of_case: Vec<&PluginRun> = runs
                .iter()
                .filter(|r| r.case == *case && r.callers == callers)
                .collect();
            let mut throughputs: Vec<f64> = of_case.iter().map(|r| r.calls_per_s).collect();
            let middle = median(&mut throughputs);
            of_case.sort_by(|a, b| a.calls_per_s.total_cmp(&b.calls_per_s));
            let chosen = of_case
                .into_iter()
                .find(|r| r.calls_per_s >= middle)
                .context("a run per case")?;
            report.push(chosen.clone());
        }
    }
    for (_, plugin) in &cases {
        plugin.shutdown().await?;
    }
    if args.run.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "plugin calls (query_handler email_domain), median of {} runs:",
        args.run.repeat
    );
    for run in &report {
        println!(
            "{:<10} callers={:<3} {:>9.0} calls/s  p50={:>6.0}µs  p99={:>6.0}µs",
            run.case, run.callers, run.calls_per_s, run.p50_us, run.p99_us
        );
    }
    if let Some(rust) = report.iter().find(|r| r.case == "rust" && r.callers == 1) {
        println!(
            "target (issue 15): out-of-process round trip p50 {:.0}µs (< 100µs: {})",
            rust.p50_us,
            if rust.p50_us < 100.0 { "MET" } else { "MISSED" }
        );
    }
    Ok(())
}
