//! `flexcore-bench --gateway`: `create_user` end to end over HTTP and gRPC, beside the same
//! store taking the same writes directly and the command bus without a gateway, in one run.
//!
//! Four cases per connection count N, each run on a fresh store (SQLite file or PostgreSQL
//! schema) opened from a store URL exactly as `flexcore serve` opens it ([`open_store`]):
//!
//! | case | N concurrent tasks, each sending `create_user` back to back |
//! |---|---|
//! | `store` | the atomic two-stream append one `create_user` makes (`user-{id}` and its email reservation, both `no_stream`), straight into the store: the raw group-commit figure |
//! | `bus` | `create_user` through the command bus `flexcore serve` wires ([`server::command_bus`]: retry, idempotency, metrics, tracing, over the sample's handlers; the handler claims the address, then appends) |
//! | `http` | `POST /v1/commands/create_user`, one keep-alive HTTP/1.1 connection per task |
//! | `grpc` | `CommandService.Send`, one tonic channel (one HTTP/2 connection) per task |
//!
//! So the report separates store → bus → gateway costs. Every command uses a new address
//! (`u{task}-{n}@bench.example`); only successful answers are counted, and any failure stops
//! the benchmark with its cause. Runs are interleaved (repeat r runs every case before repeat
//! r+1), so a change of machine load hits every case alike; medians over the runs are reported.
//!
//! **Two phases.** Back to back (each client sends as soon as it has its answer) measures
//! throughput; with a fixed number of clients, latency there is clients / throughput, so a
//! slower layer's p99 mostly restates its throughput. Then every layer is offered the same
//! load (`--load-share` of the HTTP gateway's throughput, or `--rate`), open loop, for latency.
//! The store appends the commands make are timed inside the process ([`TimedAppends`]), so a
//! layer's p99 is also set against the p99 of its own appends in the same run: disk stalls,
//! which move a p99 by milliseconds between runs on a shared machine, are then on both sides.
//!
//! **In-process server.** The gateways run in this process, through [`server::run_with`] on
//! `127.0.0.1` ports, the function `flexcore serve` runs. A spawned `flexcore serve` would not
//! give the server more CPU: the clients run on the same machine either way, and they would
//! compete for the same cores through the OS scheduler instead of the tokio scheduler, plus
//! cross-process wake-ups. In-process keeps one build, one store configuration and real errors
//! for every case. What it shares with the clients is reported per case as `cpu_cores` (process
//! CPU time / wall time): when it reaches the machine's core count, the figure is CPU-bound and
//! includes the clients' own encoding and socket work. Like `flexcore serve` with its default
//! `log = info`, a `tracing` subscriber at `info` is installed, so spans cost what they cost
//! there (only errors are printed), and the process-wide Prometheus recorder is installed before
//! the first case so every case pays for its metrics alike.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flexcore_app::Result as AppResult;
use flexcore_app::command::{Command, CommandBus, CommandContext, CommandRouter};
use flexcore_app::repository::Loaded;
use flexcore_app::store::{
    AllSlice, AppendResult, EventAppender, EventReader, EventStore, ReadAll, ReadStream, Snapshot,
    SnapshotStore, StreamAdmin, StreamSlice, StreamWrite,
};
use flexcore_domain::{ExpectedVersion, StreamId};
use flexcore_grpc::pb::SendCommandRequest;
use flexcore_grpc::pb::command_service_client::CommandServiceClient;
use flexcore_sample_users::commands::command_handlers;
use flexcore_sample_users::domain::{
    Email, EmailReservation, ReservationCommand, User, UserCommand,
};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::{BenchArgs, median, percentile, tempfile_dir};
use flexcore::cli::ServeArgs;
use flexcore::config::Settings;
use flexcore::server::{self, open_store};

/// The targets of issue #3, checked at this many connections.
const TARGET_CONNECTIONS: usize = 32;
/// A gateway's throughput must be at least this share of the raw store's.
const TARGET_THROUGHPUT_RATIO: f64 = 0.5;
/// A gateway may add less than this to the raw store's p99 latency, in ms.
const TARGET_P99_ADDED_MS: f64 = 1.0;

/// The layer a case drives `create_user` through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The store alone: `create_user`'s atomic two-stream append.
    Store,
    /// The command bus of `flexcore serve`, no gateway.
    Bus,
    /// The HTTP gateway.
    Http,
    /// The gRPC gateway.
    Grpc,
}

impl Layer {
    const ALL: [Self; 4] = [Self::Store, Self::Bus, Self::Http, Self::Grpc];

    fn name(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Bus => "bus",
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

/// One measured case.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayFigure {
    /// What was driven.
    pub layer: Layer,
    /// Concurrent connections (tasks).
    pub connections: usize,
    /// The load offered, commands/s (open loop); `None`: back to back.
    pub offered_rate: Option<f64>,
    /// Median commands/s over the runs.
    pub commands_per_s: f64,
    /// Every run's commands/s, in run order.
    pub runs: Vec<f64>,
    /// Median commands completed per run.
    pub commands: usize,
    /// Command latency p50, ms (median over the runs; open loop: from the scheduled time).
    pub p50_ms: f64,
    /// Command latency p99, ms (median over the runs; open loop: from the scheduled time).
    pub p99_ms: f64,
    /// p99 of the store appends these commands made, timed inside the process in the same
    /// runs, ms (median over the runs).
    pub appends_p99_ms: f64,
    /// p99 of the commands timed from their sending minus `appends_p99_ms`, per run, ms
    /// (median over the runs): what this layer adds to the store's own p99 under the very
    /// load and disk it runs with. 0 for the store itself.
    pub p99_over_appends_ms: f64,
    /// Process CPU time / wall time, median over the runs (Linux; `None` elsewhere).
    pub cpu_cores: Option<f64>,
}

/// The overheads at one connection count, relative to the raw store's case and to the bus's.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayRatios {
    /// Concurrent connections.
    pub connections: usize,
    /// Bus throughput / store throughput.
    pub bus_over_store: f64,
    /// HTTP throughput / store throughput.
    pub http_over_store: f64,
    /// gRPC throughput / store throughput.
    pub grpc_over_store: f64,
    /// Bus p99 − store p99, ms.
    pub bus_p99_added_ms: f64,
    /// HTTP p99 − store p99, ms.
    pub http_p99_added_ms: f64,
    /// gRPC p99 − store p99, ms.
    pub grpc_p99_added_ms: f64,
    /// HTTP p99 − bus p99, ms: the HTTP gateway alone.
    pub http_p99_over_bus_ms: f64,
    /// gRPC p99 − bus p99, ms: the gRPC gateway alone.
    pub grpc_p99_over_bus_ms: f64,
}

/// The cases of one way of loading the layers.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayPhase {
    /// Every case, by connection count, then layer.
    pub cases: Vec<GatewayFigure>,
    /// The overheads per connection count.
    pub ratios: Vec<GatewayRatios>,
}

impl GatewayPhase {
    fn find(&self, layer: Layer, connections: usize) -> Option<&GatewayFigure> {
        self.cases
            .iter()
            .find(|f| f.layer == layer && f.connections == connections)
    }
}

/// One gateway checked against issue #3's targets.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// `http` or `grpc`.
    pub gateway: Layer,
    /// Concurrent connections.
    pub connections: usize,
    /// Gateway throughput / raw store throughput, back to back (`None` without that phase).
    pub throughput_ratio: Option<f64>,
    /// The least acceptable ratio.
    pub throughput_ratio_min: f64,
    /// Whether the ratio is met.
    pub throughput_met: Option<bool>,
    /// The load of the latency check, commands/s (`None` without the equal-load phase).
    pub offered_rate: Option<f64>,
    /// At that load: the gateway's p99 over the p99 of its own store appends, same runs, ms.
    pub p99_added_ms: Option<f64>,
    /// The most acceptable addition, ms (exclusive).
    pub p99_added_max_ms: f64,
    /// Whether the latency target is met.
    pub p99_met: Option<bool>,
    /// At that load: the gateway's p99 − the store case's p99 (separate runs), ms.
    pub p99_added_across_cases_ms: Option<f64>,
    /// Back to back: the gateway's p99 − the store case's p99, ms. With a fixed number of
    /// clients, latency is clients / throughput, so this mostly restates the throughput ratio.
    pub p99_added_at_saturation_ms: Option<f64>,
}

/// One run of one case.
struct Run {
    rate: f64,
    /// From each command's scheduled time (open loop) or its sending (back to back), sorted.
    latencies: Vec<Duration>,
    /// From each command's sending, sorted.
    service: Vec<Duration>,
    /// The store appends the commands made, timed around the store, sorted.
    appends: Vec<Duration>,
    cpu_cores: Option<f64>,
}

/// The whole report of `flexcore-bench --gateway` (printed as is with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct GatewayReport {
    /// Always `gateway`.
    pub mode: &'static str,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// Seconds per run.
    pub duration_s: f64,
    /// Runs per case.
    pub repeat: usize,
    /// Every client sending back to back: throughput (absent with `--rate`).
    pub saturation: Option<GatewayPhase>,
    /// Every layer offered the same load (`--rate`, or `--load-share` of the HTTP gateway's
    /// throughput back to back): latency.
    pub equal_load: Option<GatewayPhase>,
    /// Issue #3's targets (empty unless 32 connections were measured).
    pub targets: Vec<TargetCheck>,
}

/// Runs the gateway benchmark and prints the report.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let stores = Stores::new(&args.store)?;
    let report = measure_all(&stores, args).await;
    stores.cleanup().await;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

async fn measure_all(stores: &Stores, args: &BenchArgs) -> anyhow::Result<GatewayReport> {
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let repeat = args.repeat.max(1);
    let mut connections: Vec<usize> = Vec::new();
    for n in args.connections.iter().map(|&c| c.max(1)) {
        if !connections.contains(&n) {
            connections.push(n);
        }
    }
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.load_share),
        "--load-share must be between 0 and 1 (a share of the HTTP gateway's throughput), not {}",
        args.load_share
    );
    install_serve_observability()?;
    let mut phases = Phases {
        stores,
        duration,
        repeat,
        json: args.json,
        case: 0,
    };

    let saturation = match args.rate {
        Some(_) => None,
        None => {
            let back_to_back: Vec<(usize, Option<f64>)> =
                connections.iter().map(|&n| (n, None)).collect();
            Some(phases.measure(&back_to_back).await?)
        }
    };
    let loads: Vec<(usize, Option<f64>)> = match (args.rate, &saturation) {
        (Some(rate), _) => connections.iter().map(|&n| (n, Some(rate))).collect(),
        (None, Some(saturation)) if args.load_share > 0.0 => connections
            .iter()
            .filter_map(|&n| {
                let http = saturation.find(Layer::Http, n)?;
                Some((n, Some((args.load_share * http.commands_per_s).max(1.0))))
            })
            .collect(),
        _ => Vec::new(),
    };
    let equal_load = if loads.is_empty() {
        None
    } else {
        Some(phases.measure(&loads).await?)
    };

    let targets = [Layer::Http, Layer::Grpc]
        .into_iter()
        .filter(|_| connections.contains(&TARGET_CONNECTIONS))
        .map(|gateway| {
            let n = TARGET_CONNECTIONS;
            let at_saturation = saturation
                .as_ref()
                .and_then(|p| Some((p.find(gateway, n)?, p.find(Layer::Store, n)?)));
            let at_equal_load = equal_load
                .as_ref()
                .and_then(|p| Some((p.find(gateway, n)?, p.find(Layer::Store, n)?)));
            let throughput_ratio =
                at_saturation.map(|(g, store)| g.commands_per_s / store.commands_per_s);
            let p99_added = at_equal_load.map(|(g, _)| g.p99_over_appends_ms);
            TargetCheck {
                gateway,
                connections: n,
                throughput_ratio,
                throughput_ratio_min: TARGET_THROUGHPUT_RATIO,
                throughput_met: throughput_ratio.map(|r| r >= TARGET_THROUGHPUT_RATIO),
                offered_rate: at_equal_load.and_then(|(g, _)| g.offered_rate),
                p99_added_ms: p99_added,
                p99_added_max_ms: TARGET_P99_ADDED_MS,
                p99_met: p99_added.map(|added| added < TARGET_P99_ADDED_MS),
                p99_added_across_cases_ms: at_equal_load.map(|(g, store)| g.p99_ms - store.p99_ms),
                p99_added_at_saturation_ms: at_saturation.map(|(g, store)| g.p99_ms - store.p99_ms),
            }
        })
        .collect();
    Ok(GatewayReport {
        mode: "gateway",
        store: stores.name(),
        duration_s: duration.as_secs_f64(),
        repeat,
        saturation,
        equal_load,
        targets,
    })
}

/// Runs every case of a phase, interleaved, and reduces them.
struct Phases<'a> {
    stores: &'a Stores,
    duration: Duration,
    repeat: usize,
    json: bool,
    /// Cases run so far: each gets a fresh store.
    case: usize,
}

impl Phases<'_> {
    /// Measures every layer at each (connections, offered load); repeat r runs every case
    /// before repeat r+1, so a change of machine load hits every case alike.
    async fn measure(&mut self, loads: &[(usize, Option<f64>)]) -> anyhow::Result<GatewayPhase> {
        let repeat = self.repeat;
        let mut runs: Vec<((Layer, usize), Vec<Run>)> = Vec::new();
        for r in 1..=repeat {
            for &(n, rate) in loads {
                for layer in Layer::ALL {
                    self.case += 1;
                    let url = self.stores.fresh_url(self.case);
                    let run = run_once(layer, n, self.duration, rate, &url, self.stores)
                        .await
                        .with_context(|| {
                            format!("{} case, {n} connections, run {r}", layer.name())
                        })?;
                    if !self.json {
                        eprintln!(
                            "  run {r}/{repeat} {:<5} connections={n:<3}{} {:>8.0} commands/s  p50={:.2}ms p99={:.2}ms  appends p99={:.2}ms  cpu={}",
                            layer.name(),
                            rate.map_or_else(String::new, |r| format!(" offered={r:.0}/s")),
                            run.rate,
                            percentile(&run.latencies, 0.50),
                            percentile(&run.latencies, 0.99),
                            percentile(&run.appends, 0.99),
                            cores_text(run.cpu_cores),
                        );
                    }
                    match runs.iter_mut().find(|(key, _)| *key == (layer, n)) {
                        Some((_, list)) => list.push(run),
                        None => runs.push(((layer, n), vec![run])),
                    }
                }
            }
        }
        let cases: Vec<GatewayFigure> = runs
            .into_iter()
            .map(|((layer, n), runs)| {
                let rate = loads.iter().find(|(c, _)| *c == n).and_then(|(_, r)| *r);
                figure(layer, n, rate, &runs)
            })
            .collect();
        let mut phase = GatewayPhase {
            cases,
            ratios: Vec::new(),
        };
        phase.ratios = loads
            .iter()
            .filter_map(|&(n, _)| {
                let (store, bus) = (phase.find(Layer::Store, n)?, phase.find(Layer::Bus, n)?);
                let (http, grpc) = (phase.find(Layer::Http, n)?, phase.find(Layer::Grpc, n)?);
                Some(GatewayRatios {
                    connections: n,
                    bus_over_store: bus.commands_per_s / store.commands_per_s,
                    http_over_store: http.commands_per_s / store.commands_per_s,
                    grpc_over_store: grpc.commands_per_s / store.commands_per_s,
                    bus_p99_added_ms: bus.p99_ms - store.p99_ms,
                    http_p99_added_ms: http.p99_ms - store.p99_ms,
                    grpc_p99_added_ms: grpc.p99_ms - store.p99_ms,
                    http_p99_over_bus_ms: http.p99_ms - bus.p99_ms,
                    grpc_p99_over_bus_ms: grpc.p99_ms - bus.p99_ms,
                })
            })
            .collect();
        Ok(phase)
    }
}

fn print_text(report: &GatewayReport) {
    let store = report.store;
    let phases = [
        ("back to back", &report.saturation),
        ("equal load", &report.equal_load),
    ];
    for (title, phase) in phases {
        let Some(phase) = phase else { continue };
        eprintln!("{store:<6} {title}:");
        for f in &phase.cases {
            eprintln!(
                "{store:<6} {:<5} connections={:<3}{} {:>8.0} commands/s  p50={:.2}ms p99={:.2}ms  (own appends p99={:.2}ms, added {:+.2}ms)  cpu={}  runs={:?}",
                f.layer.name(),
                f.connections,
                f.offered_rate
                    .map_or_else(String::new, |r| format!(" offered={r:.0}/s")),
                f.commands_per_s,
                f.p50_ms,
                f.p99_ms,
                f.appends_p99_ms,
                f.p99_over_appends_ms,
                cores_text(f.cpu_cores),
                f.runs.iter().map(|r| r.round() as u64).collect::<Vec<_>>(),
            );
        }
        for r in &phase.ratios {
            eprintln!(
                "{store:<6} connections={}: throughput / store: bus {:.2}, http {:.2}, grpc {:.2}; \
                 p99 added to the store case's: bus {:+.2}ms, http {:+.2}ms, grpc {:+.2}ms \
                 (to the bus's: http {:+.2}ms, grpc {:+.2}ms)",
                r.connections,
                r.bus_over_store,
                r.http_over_store,
                r.grpc_over_store,
                r.bus_p99_added_ms,
                r.http_p99_added_ms,
                r.grpc_p99_added_ms,
                r.http_p99_over_bus_ms,
                r.grpc_p99_over_bus_ms,
            );
        }
    }
    for t in &report.targets {
        let mut parts = Vec::new();
        if let (Some(ratio), Some(ok)) = (t.throughput_ratio, t.throughput_met) {
            parts.push(format!(
                "throughput back to back {ratio:.2} of the store's (≥ {:.2}: {})",
                t.throughput_ratio_min,
                met(ok)
            ));
        }
        if let (Some(rate), Some(added), Some(ok)) = (t.offered_rate, t.p99_added_ms, t.p99_met) {
            parts.push(format!(
                "at {rate:.0} commands/s p99 {added:+.2}ms over its own appends' (< {:.1}ms: {}; \
                 {:+.2}ms over the store case's)",
                t.p99_added_max_ms,
                met(ok),
                t.p99_added_across_cases_ms.unwrap_or(f64::NAN),
            ));
        }
        if let Some(saturated) = t.p99_added_at_saturation_ms {
            parts.push(format!(
                "p99 back to back {saturated:+.2}ms over the store case's"
            ));
        }
        eprintln!(
            "{store:<6} target (issue #3) {} at {} connections: {}",
            t.gateway.name(),
            t.connections,
            parts.join("; ")
        );
    }
    if report.targets.is_empty() {
        eprintln!(
            "{store:<6} issue #3's targets are checked at {TARGET_CONNECTIONS} connections; \
             add {TARGET_CONNECTIONS} to --connections to check them"
        );
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn cores_text(cores: Option<f64>) -> String {
    cores.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2} cores"))
}

/// Reduces a case's runs: medians over the runs of each run's throughput and percentiles.
fn figure(
    layer: Layer,
    connections: usize,
    offered_rate: Option<f64>,
    runs: &[Run],
) -> GatewayFigure {
    let over_runs =
        |value: &dyn Fn(&Run) -> f64| median(&mut runs.iter().map(value).collect::<Vec<_>>());
    let rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
    let cpu: Vec<f64> = runs.iter().filter_map(|r| r.cpu_cores).collect();
    GatewayFigure {
        layer,
        connections,
        offered_rate,
        commands_per_s: median(&mut rates.clone()),
        runs: rates,
        commands: over_runs(&|r| r.latencies.len() as f64) as usize,
        p50_ms: over_runs(&|r| percentile(&r.latencies, 0.50)),
        p99_ms: over_runs(&|r| percentile(&r.latencies, 0.99)),
        appends_p99_ms: over_runs(&|r| percentile(&r.appends, 0.99)),
        p99_over_appends_ms: over_runs(&|r| {
            percentile(&r.service, 0.99) - percentile(&r.appends, 0.99)
        }),
        cpu_cores: (!cpu.is_empty()).then(|| median(&mut cpu.clone())),
    }
}

/// Installs what `flexcore serve` has in place before its first request: a `tracing`
/// subscriber at its default level (printing only errors here), and, through
/// [`server::metrics_renderer`], the process-wide Prometheus recorder.
fn install_serve_observability() -> anyhow::Result<()> {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::registry()
        .with(flexcore::logging::log_filter("info")?) // `log`'s default in `flexcore serve`
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr.with_max_level(tracing::Level::ERROR)),
        )
        .try_init();
    server::metrics_renderer()?;
    Ok(())
}

async fn run_once(
    layer: Layer,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    url: &str,
    stores: &Stores,
) -> anyhow::Result<Run> {
    let appends = TimedAppends::default();
    let measured = match layer {
        Layer::Store => {
            let store = open_store(url).await?;
            let clients = (0..connections)
                .map(|_| StoreWriter(Arc::clone(&store)))
                .collect();
            let mut measured = measure(clients, duration, rate).await?;
            // The commands are the appends, timed from their sending.
            measured.appends = measured.service.clone();
            return Ok(measured);
        }
        Layer::Bus => {
            let store = appends.wrap(open_store(url).await?);
            let mut router = CommandRouter::new();
            for (command_type, handler) in command_handlers(server::repository(store)) {
                router.register(command_type, handler)?;
            }
            let commands = server::command_bus(router);
            let clients = (0..connections)
                .map(|_| BusClient(Arc::clone(&commands)))
                .collect();
            measure(clients, duration, rate).await
        }
        Layer::Http | Layer::Grpc => {
            let server = Server::start(url, stores, &appends).await?;
            let measured = if layer == Layer::Http {
                let mut clients = Vec::with_capacity(connections);
                for _ in 0..connections {
                    clients.push(HttpClient::connect(server.http).await?);
                }
                measure(clients, duration, rate).await
            } else {
                let mut clients = Vec::with_capacity(connections);
                for _ in 0..connections {
                    clients.push(GrpcClient::connect(server.grpc).await?);
                }
                measure(clients, duration, rate).await
            };
            let stopped = server.stop().await;
            let run = measured?;
            stopped?;
            Ok(run)
        }
    };
    let mut run = measured?;
    run.appends = appends.take();
    Ok(run)
}

/// Times the appends `create_user` makes (those holding a `user.created` event) around the
/// store of a case, so a gateway's latency can be set against the store's own in the same run.
#[derive(Clone, Default)]
struct TimedAppends(Arc<std::sync::Mutex<Vec<Duration>>>);

impl TimedAppends {
    /// A store that records into this.
    fn wrap(&self, store: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        Arc::new(TimedStore {
            inner: store,
            appends: self.clone(),
        })
    }

    /// The recorded latencies, sorted.
    fn take(&self) -> Vec<Duration> {
        let mut taken = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        taken.sort_unstable();
        taken
    }
}

/// The store decorator of [`TimedAppends`]; everything else passes through.
struct TimedStore {
    inner: Arc<dyn EventStore>,
    appends: TimedAppends,
}

#[async_trait::async_trait]
impl EventAppender for TimedStore {
    async fn append_atomic(&self, writes: Vec<StreamWrite>) -> AppResult<AppendResult> {
        let creates_user = writes
            .iter()
            .any(|w| w.events.iter().any(|e| e.event_type == "user.created"));
        let started = Instant::now();
        let result = self.inner.append_atomic(writes).await;
        if creates_user && result.is_ok() {
            let elapsed = started.elapsed();
            self.appends
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(elapsed);
        }
        result
    }
}

#[async_trait::async_trait]
impl EventReader for TimedStore {
    async fn read_stream(&self, request: ReadStream) -> AppResult<StreamSlice> {
        self.inner.read_stream(request).await
    }
    async fn read_all(&self, request: ReadAll) -> AppResult<AllSlice> {
        self.inner.read_all(request).await
    }
    fn head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.head()
    }
    async fn ping(&self) -> AppResult<()> {
        self.inner.ping().await
    }
}

#[async_trait::async_trait]
impl SnapshotStore for TimedStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> AppResult<()> {
        self.inner.save_snapshot(snapshot).await
    }
    async fn load_snapshot(&self, stream_id: &StreamId) -> AppResult<Option<Snapshot>> {
        self.inner.load_snapshot(stream_id).await
    }
}

#[async_trait::async_trait]
impl StreamAdmin for TimedStore {
    async fn delete_stream(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
    ) -> AppResult<()> {
        self.inner.delete_stream(stream_id, expected).await
    }
    async fn truncate_before(&self, stream_id: &StreamId, version: u64) -> AppResult<()> {
        self.inner.truncate_before(stream_id, version).await
    }
}

/// Something that runs `create_user` for one connection.
trait CreateUser: Send + 'static {
    /// Creates the user with this address; an error unless the answer is a success.
    fn create_user(&mut self, email: String) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Every client drives `create_user` until `duration` has passed, back to back or (with
/// `rate`) on a fixed schedule; the rate is commands completed over the wall time until the
/// last one finished. The appends are left for the caller to fill in.
async fn measure<C: CreateUser>(
    clients: Vec<C>,
    duration: Duration,
    rate: Option<f64>,
) -> anyhow::Result<Run> {
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let deadline = started + duration;
    let connections = clients.len().max(1) as f64;
    // Open loop: each connection sends on its own fixed schedule, staggered.
    let period = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(connections / r));
    let mut tasks = JoinSet::new();
    for (task, mut client) in clients.into_iter().enumerate() {
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut service = Vec::with_capacity(4096);
            let mut n = 0u64;
            let mut scheduled = period.map(|p| started + p.mul_f64(task as f64 / connections));
            while scheduled.unwrap_or_else(Instant::now) < deadline {
                let email = format!("u{task}-{n}@bench.example");
                // Latency counts from the scheduled time, so a slow answer that delays the
                // next command is not hidden (no coordinated omission).
                let due = match (scheduled, period) {
                    (Some(at), Some(p)) => {
                        tokio::time::sleep_until(at.into()).await;
                        scheduled = Some(at + p);
                        Some(at)
                    }
                    _ => None,
                };
                let sent = Instant::now();
                client
                    .create_user(email)
                    .await
                    .with_context(|| format!("connection {task}, command {n}"))?;
                let done = Instant::now();
                latencies.push(done - due.unwrap_or(sent));
                service.push(done - sent);
                n += 1;
            }
            anyhow::Ok((latencies, service))
        });
    }
    let (mut latencies, mut service) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        // Dropping the set on an error aborts the other clients.
        let (from_due, from_sent) = joined.context("a client task panicked")??;
        latencies.extend(from_due);
        service.extend(from_sent);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_cores = cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| (after - before) / elapsed);
    latencies.sort_unstable();
    service.sort_unstable();
    Ok(Run {
        rate: latencies.len() as f64 / elapsed,
        latencies,
        service,
        appends: Vec::new(),
        cpu_cores,
    })
}

/// This process's user + system CPU time, from `/proc/self/stat` (Linux, 100 ticks/s).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (`state`);
    // `utime` and `stime` are fields 14 and 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The writes one `create_user` appends in one atomic append, built the way its handler builds
/// them (same events, metadata and expectations) for a user and address never seen before.
fn create_user_writes(email: &str) -> anyhow::Result<Vec<StreamWrite>> {
    let email = Email::parse(email)?;
    let user_id = uuid::Uuid::now_v7();
    let metadata = CommandContext::default().event_metadata();
    let user = Loaded::<User>::new_instance(&user_id.to_string())?;
    let reservation = Loaded::<EmailReservation>::new_instance(email.as_str())?;
    let (_, reserve) = reservation.decide(
        &ReservationCommand::Reserve {
            email: email.clone(),
            user_id,
        },
        &metadata,
    )?;
    let (_, create) = user.decide(
        &UserCommand::Create {
            user_id,
            email,
            profile: Default::default(),
        },
        &metadata,
    )?;
    Ok(vec![create, reserve])
}

/// The body of a `create_user` command (addresses here need no JSON escaping).
fn create_user_body(email: &str) -> String {
    format!(r#"{{"email":"{email}"}}"#)
}

/// The raw store: one atomic two-stream append per command.
struct StoreWriter(Arc<dyn EventStore>);

impl CreateUser for StoreWriter {
    async fn create_user(&mut self, email: String) -> anyhow::Result<()> {
        let writes = create_user_writes(&email)?;
        self.0.append_atomic(writes).await?;
        Ok(())
    }
}

/// The command bus `flexcore serve` wires, without a gateway.
struct BusClient(Arc<dyn CommandBus>);

impl CreateUser for BusClient {
    async fn create_user(&mut self, email: String) -> anyhow::Result<()> {
        let command = Command {
            command_type: "create_user".into(),
            payload: json!({ "email": email }),
        };
        self.0.send(&CommandContext::default(), &command).await?;
        Ok(())
    }
}

/// One keep-alive HTTP/1.1 connection, driven by hyper's connection API: a lean load
/// generator (as `wrk` is), so the figures measure the server rather than a client library.
struct HttpClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    uri: hyper::Uri,
    host: String,
}

impl HttpClient {
    /// Opens the connection now (and checks `GET /health`) so the measured requests find it
    /// ready.
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "bench HTTP connection closed");
            }
        });
        let mut client = Self {
            sender,
            uri: format!("http://{addr}/v1/commands/create_user").parse()?,
            host: addr.to_string(),
        };
        let health = hyper::Request::get(format!("http://{addr}/health"))
            .header(hyper::header::HOST, &client.host)
            .body(Full::new(Bytes::new()))?;
        let (status, _) = client.send(health).await?;
        anyhow::ensure!(status.is_success(), "GET /health answered {status}");
        Ok(client)
    }

    /// Sends one request and reads the whole answer (so the connection is free again).
    async fn send(
        &mut self,
        request: hyper::Request<Full<Bytes>>,
    ) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

impl CreateUser for HttpClient {
    async fn create_user(&mut self, email: String) -> anyhow::Result<()> {
        let request = hyper::Request::post(self.uri.clone())
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(create_user_body(&email))))?;
        let (status, body) = self.send(request).await?;
        anyhow::ensure!(
            status.is_success(),
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

/// One tonic channel: one HTTP/2 connection.
struct GrpcClient(CommandServiceClient<Channel>);

impl GrpcClient {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to the gRPC gateway at {addr}"))?;
        Ok(Self(CommandServiceClient::new(channel)))
    }
}

impl CreateUser for GrpcClient {
    async fn create_user(&mut self, email: String) -> anyhow::Result<()> {
        self.0
            .send(SendCommandRequest {
                command_type: "create_user".into(),
                payload_json: create_user_body(&email),
                idempotency_key: None,
            })
            .await?;
        Ok(())
    }
}

/// `flexcore::server::run_with` on loopback ports, over one store URL, its appends timed.
struct Server {
    http: SocketAddr,
    grpc: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Starts the server and waits until `GET /health` answers.
    ///
    /// `run` binds the gRPC address itself, so a free port is picked first (bind to port 0,
    /// note it, let it go); should another process take it meanwhile, `run` fails at once and
    /// this tries another port.
    async fn start(url: &str, stores: &Stores, appends: &TimedAppends) -> anyhow::Result<Self> {
        let mut last_error = None;
        for _attempt in 0..3 {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let http = listener.local_addr()?;
            let grpc = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let settings = stores.settings(url, Some(http), Some(grpc))?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let appends = appends.clone();
            let layer: server::StoreLayer = Box::new(move |store| appends.wrap(store));
            let mut task = tokio::spawn(server::run_with(
                settings,
                listener,
                async {
                    let _ = stopped.await;
                },
                layer,
            ));
            match wait_ready(http, &mut task).await {
                Ok(()) => {
                    return Ok(Self {
                        http,
                        grpc,
                        stop,
                        task,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Signals shutdown and waits (bounded) for `run` to return.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .context("the server did not stop within 15 s")?
            .context("the server panicked")?
    }
}

async fn wait_ready(
    http: SocketAddr,
    task: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let probe = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if task.is_finished() {
            return match task.await {
                Ok(Ok(())) => Err(anyhow::anyhow!("the server stopped at start")),
                Ok(Err(e)) => Err(e.context("the server failed to start")),
                Err(e) => Err(anyhow::anyhow!("the server panicked at start: {e}")),
            };
        }
        let ready = probe.get(format!("http://{http}/health")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server did not answer /health within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fresh stores, named by URL so the server opens them exactly as `flexcore serve` would.
struct Stores {
    /// Holds the settings file and the SQLite files; removed on drop.
    dir: tempfile_dir::Dir,
    /// An empty settings file, so a `./flexcore.toml` in the working directory is not read.
    config: PathBuf,
    postgres: Option<PostgresSchemas>,
}

struct PostgresSchemas {
    url: String,
    created: std::sync::Mutex<Vec<String>>,
}

impl Stores {
    fn new(spec: &str) -> anyhow::Result<Self> {
        let postgres = match spec {
            "sqlite" => None,
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                anyhow::ensure!(
                    flexcore_app::service_url::ServiceUrl::parse(url)?
                        .take("schema")
                        .is_none(),
                    "the bench picks its own schemas: leave schema= out of the URL"
                );
                Some(PostgresSchemas {
                    url: url.to_owned(),
                    created: Default::default(),
                })
            }
            other => {
                anyhow::bail!("unknown bench store '{other}': use sqlite or a postgres:// URL")
            }
        };
        let dir = tempfile_dir::Dir::new().context("cannot create a temp dir")?;
        let config = dir.path().join("flexcore.toml");
        std::fs::write(&config, "").context("cannot write the bench's settings file")?;
        Ok(Self {
            dir,
            config,
            postgres,
        })
    }

    fn name(&self) -> &'static str {
        if self.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// The URL of a store no case used before.
    fn fresh_url(&self, case: usize) -> String {
        match &self.postgres {
            None => format!("sqlite://{}", db_path(self.dir.path(), case).display()),
            Some(pg) => {
                let schema = format!("fc_bench_gw_{}_{case}", std::process::id());
                pg.created
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(schema.clone());
                let separator = if pg.url.contains('?') { '&' } else { '?' };
                format!("{}{separator}schema={schema}", pg.url)
            }
        }
    }

    /// The settings `flexcore serve` would resolve with these flags and no config file.
    fn settings(
        &self,
        store_url: &str,
        http: Option<SocketAddr>,
        grpc: Option<SocketAddr>,
    ) -> anyhow::Result<Settings> {
        Ok(Settings::resolve(ServeArgs {
            config: Some(self.config.clone()),
            http_addr: http.map(|a| a.to_string()),
            grpc_addr: grpc.map(|a| a.to_string()),
            store_url: Some(store_url.to_owned()),
            ..ServeArgs::default()
        })?)
    }

    /// Drops the schemas the cases created.
    async fn cleanup(&self) {
        if let Some(pg) = &self.postgres {
            let created =
                std::mem::take(&mut *pg.created.lock().unwrap_or_else(|p| p.into_inner()));
            for schema in created {
                if let Err(e) = flexcore_store_postgres::drop_schema(&pg.url, &schema).await {
                    eprintln!("cannot drop bench schema {schema}: {e}");
                }
            }
        }
    }
}

fn db_path(dir: &Path, case: usize) -> PathBuf {
    dir.join(format!("gateway-{case}.db"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_raw_writes_are_what_create_user_appends() {
        let writes = create_user_writes("u1-2@bench.example").unwrap();
        assert_eq!(writes.len(), 2);
        assert!(writes[0].stream_id.as_str().starts_with("user-"));
        assert_eq!(writes[0].events[0].event_type, "user.created");
        assert_eq!(writes[1].stream_id.as_str(), "email-u1-2@bench.example");
        assert_eq!(writes[1].events[0].event_type, "email.reserved");
        assert!(
            writes
                .iter()
                .all(|w| w.expected == flexcore_domain::ExpectedVersion::NoStream)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_layer_is_measured_over_a_real_server() {
        let args = BenchArgs::parse_from([
            "flexcore-bench",
            "--gateway",
            "--connections",
            "2,2,3",
            "--duration",
            "0.3",
            "--repeat",
            "1",
            "--json",
        ]);
        let stores = Stores::new(&args.store).unwrap();
        let report = measure_all(&stores, &args).await.unwrap();
        let saturation = report.saturation.as_ref().expect("back to back by default");
        let equal_load = report.equal_load.as_ref().expect("then at equal load");
        for phase in [saturation, equal_load] {
            assert_eq!(
                phase.cases.len(),
                8,
                "4 layers × 2 distinct connection counts"
            );
            assert_eq!(phase.ratios.len(), 2);
            for case in &phase.cases {
                assert!(case.commands > 0, "{case:?}");
                assert!(case.p99_ms >= case.p50_ms, "{case:?}");
                assert!(case.appends_p99_ms > 0.0, "appends are timed: {case:?}");
            }
        }
        // Half the HTTP gateway's throughput back to back, offered to every layer.
        for case in &equal_load.cases {
            let http = saturation.find(Layer::Http, case.connections).unwrap();
            assert_eq!(case.offered_rate, Some(0.5 * http.commands_per_s));
        }
        let store = saturation.find(Layer::Store, 2).unwrap();
        assert_eq!(
            store.p99_over_appends_ms, 0.0,
            "the store's commands are its appends"
        );
        assert!(report.targets.is_empty(), "no 32-connection case");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["saturation"]["cases"][2]["layer"], "http");
        assert_eq!(json["equal_load"]["cases"][2]["layer"], "http");
    }

    #[test]
    fn connections_are_only_taken_where_there_are_clients() {
        let parse =
            |args: &[&str]| BenchArgs::try_parse_from(["flexcore-bench"].iter().chain(args));
        for with_clients in [["--gateway"], ["--python"]] {
            let args = [with_clients[0], "--connections", "4"];
            assert!(parse(&args).is_ok(), "{args:?}");
        }
        let error = parse(&["--subscriptions", "--connections", "4"]).unwrap_err();
        assert!(error.to_string().contains("--connections"), "{error}");
        assert!(
            parse(&["--connections", "4"]).is_err(),
            "the append bench has writers"
        );
        assert!(
            parse(&["--subscriptions"]).is_ok(),
            "the default is not an explicit value"
        );
    }

    #[test]
    fn the_load_share_is_a_share() {
        let parsed = BenchArgs::try_parse_from([
            "flexcore-bench",
            "--gateway",
            "--rate",
            "100",
            "--load-share",
            "0.3",
        ]);
        assert!(parsed.is_err(), "--rate and --load-share conflict");
        let args = BenchArgs::parse_from(["flexcore-bench", "--gateway", "--load-share", "2"]);
        let stores = Stores::new(&args.store).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let error = runtime.block_on(measure_all(&stores, &args)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("--load-share must be between 0 and 1"),
            "{error}"
        );
    }

    #[test]
    fn this_process_cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(cpu_seconds().is_some());
        }
    }
}
