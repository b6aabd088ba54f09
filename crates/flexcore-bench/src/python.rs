//! `flexcore-bench python`: `create_user` through the Python users domain
//! (`examples/python-users/users.py`) against the built-in Rust one, in one run.
//!
//! Both go through the command bus exactly as `flexcore serve` wires it (retry, idempotency,
//! metrics and tracing middleware) over a fresh SQLite file per run; the Python side also runs
//! what `serve` runs beside it (the event bus feeding the module's `user.created` handler, and
//! the file watcher). With N concurrent clients each sending back to back, runs of the two
//! are interleaved and the median of `--repeat` is reported with the Python/Rust ratio, checked
//! against issue #5's target (≥ 25%).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flexcore_app::command::CommandRouter;
use flexcore_app::event_bus::EventBus;
use flexcore_python::{PythonConfig, PythonModule};
use flexcore_sample_users::commands::command_handlers;
use serde::Serialize;

use crate::fixture::TempStores;
use crate::load::{BusClient, Run, distinct_connections, measure};
use crate::{PythonArgs, median};
use flexcore::cli::ServeArgs;
use flexcore::config::Settings;
use flexcore::server::{self, open_store};

/// The example's module, built into the binary so the bench runs from anywhere.
const USERS_PY: &str = include_str!("../../../examples/python-users/users.py");

/// The Python path's share of the Rust path's throughput that issue #5 asks for.
pub const TARGET_RATIO: f64 = 0.25;

/// One domain at one connection count.
#[derive(Debug, Clone, Serialize)]
pub struct PythonFigure {
    /// `rust` or `python`.
    pub domain: &'static str,
    /// Concurrent clients.
    pub connections: usize,
    /// Median commands/s.
    pub commands_per_s: f64,
    /// Every run's commands/s.
    pub runs: Vec<f64>,
    /// Median latency of the median run, ms.
    pub p50_ms: f64,
    /// 99th percentile latency of the median run, ms.
    pub p99_ms: f64,
}

/// Python against Rust at one connection count.
#[derive(Debug, Clone, Serialize)]
pub struct PythonRatio {
    /// Concurrent clients.
    pub connections: usize,
    /// Python commands/s over Rust commands/s.
    pub ratio: f64,
    /// Whether the ratio reaches [`TARGET_RATIO`].
    pub target_met: bool,
}

/// The report of `flexcore-bench python` (printed as is with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct PythonReport {
    /// Always `python`.
    pub mode: &'static str,
    /// Seconds per run.
    pub duration_s: f64,
    /// Runs per case.
    pub repeat: usize,
    /// Every case.
    pub cases: Vec<PythonFigure>,
    /// The ratios per connection count.
    pub ratios: Vec<PythonRatio>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Domain {
    Rust,
    Python,
}

impl Domain {
    fn name(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Python => "python",
        }
    }
}

/// Runs the benchmark and prints the report.
pub async fn run(args: &PythonArgs) -> anyhow::Result<()> {
    let report = measure_all(args).await?;
    if args.run.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

/// Runs every case and computes the ratios.
pub async fn measure_all(args: &PythonArgs) -> anyhow::Result<PythonReport> {
    {
        // Errors only (a failed command stops the run anyway).
        use tracing_subscriber::fmt::writer::MakeWriterExt;
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr.with_max_level(tracing::Level::ERROR))
            .try_init();
    }
    let stores = TempStores::new("sqlite")?;
    let module = stores.dir().join("users.py");
    std::fs::write(&module, USERS_PY).context("cannot write the Python module")?;

    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let repeat = args.run.repeat.max(1);
    let connections = distinct_connections(&args.connections);
    let mut cases = Vec::new();
    let mut ratios = Vec::new();
    for &n in &connections {
        let mut runs = [Vec::new(), Vec::new()];
        for _ in 0..repeat {
            for (i, domain) in [Domain::Rust, Domain::Python].into_iter().enumerate() {
                let settings = Settings::resolve(ServeArgs {
                    python_modules: Some(match domain {
                        Domain::Rust => String::new(),
                        Domain::Python => module.display().to_string(),
                    }),
                    ..stores.serve_args(&stores.fresh())
                })?;
                runs[i].push(run_once(&settings, n, duration).await?);
            }
        }
        let [rust, python] = runs.map(|r| figure_of(r, n));
        let (rust, python) = (
            PythonFigure {
                domain: Domain::Rust.name(),
                ..rust
            },
            PythonFigure {
                domain: Domain::Python.name(),
                ..python
            },
        );
        let ratio = python.commands_per_s / rust.commands_per_s.max(f64::MIN_POSITIVE);
        ratios.push(PythonRatio {
            connections: n,
            ratio,
            target_met: ratio >= TARGET_RATIO,
        });
        cases.push(rust);
        cases.push(python);
    }
    Ok(PythonReport {
        mode: "python",
        duration_s: duration.as_secs_f64(),
        repeat,
        cases,
        ratios,
    })
}

/// One run: a fresh store, the serve wiring with or without Python, N clients.
async fn run_once(
    settings: &Settings,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Run> {
    let validation = flexcore::validation::InputValidation::compile(&settings.validation)?;
    let store = validation.guard(open_store(&settings.store_url).await?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut router = CommandRouter::new();
    if settings.python.modules.is_empty() {
        for (command_type, handler) in command_handlers(server::repository(Arc::clone(&store))) {
            router.register(command_type, handler)?;
        }
    } else {
        let config = PythonConfig::new(settings.python.modules.iter().cloned())
            .with_timeout(Duration::from_millis(settings.python.timeout_ms));
        let python = PythonModule::load(config, Arc::clone(&store)).await?;
        python.live().register_commands(&mut router)?;
        // The log follower as `serve` runs it; the example's durable consumer (welcome
        // messages written to ./data) is left out: a bench must not write into the working
        // directory, and it runs after the command anyway.
        let mut bus = EventBus::new();
        bus.subscribe("*", python.live().event_handler());
        bus.spawn(Arc::clone(&store) as Arc<_>, 0, stopped);
    }
    let commands =
        server::command_bus(router, Default::default(), validation.command_schemas, None);
    let clients = (0..connections)
        .map(|_| BusClient(Arc::clone(&commands)))
        .collect();
    let measured = measure(clients, duration, None).await;
    let _ = stop.send(true);
    measured
}

fn figure_of(mut runs: Vec<Run>, connections: usize) -> PythonFigure {
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let mut rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
    let middle = &runs[runs.len() / 2];
    let ms = |p: f64| {
        let l = &middle.latencies;
        if l.is_empty() {
            return 0.0;
        }
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1000.0
    };
    PythonFigure {
        domain: "",
        connections,
        commands_per_s: median(&mut rates),
        runs: rates,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
    }
}

fn print_text(report: &PythonReport) {
    println!(
        "create_user through the command bus, SQLite, {:.1} s per run, median of {}",
        report.duration_s, report.repeat
    );
    println!(
        "{:<8} {:>5} {:>12} {:>9} {:>9}   runs",
        "domain", "conn", "commands/s", "p50 ms", "p99 ms"
    );
    for c in &report.cases {
        let runs: Vec<String> = c.runs.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "{:<8} {:>5} {:>12.0} {:>9.2} {:>9.2}   {}",
            c.domain,
            c.connections,
            c.commands_per_s,
            c.p50_ms,
            c.p99_ms,
            runs.join(" ")
        );
    }
    for r in &report.ratios {
        println!(
            "python/rust at {} connections: {:.0}% (target >= {:.0}%: {})",
            r.connections,
            r.ratio * 100.0,
            TARGET_RATIO * 100.0,
            if r.target_met { "met" } else { "NOT met" }
        );
    }
}
