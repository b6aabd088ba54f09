//! `flexcore-bench gateway`: `create_user` end to end over HTTP and gRPC, beside the same
//! store taking the same writes directly and the command bus without a gateway, in one run.
//!
//! Four cases per connection count N, each run on a fresh store (SQLite file or PostgreSQL
//! schema) opened from a store URL exactly as `flexcore serve` opens it ([`open_store`]):
//!
//! | case | N concurrent tasks, each sending `create_user` back to back |
//! |---|---|
//! | `store` | the atomic two-stream append one `create_user` makes (`user-{id}` and its email reservation, both `no_stream`), made by the sample's own write function ([`flexcore_sample_users::commands::create`]) straight on the store: the raw group-commit figure |
//! | `bus` | `create_user` through the command bus `flexcore serve` wires ([`flexcore::server::command_bus`]: retry, schemas, idempotency, metrics, tracing, over the sample's handlers; the handler claims the address, then appends) |
//! | `http` | `POST /v1/commands/create_user`, one keep-alive HTTP/1.1 connection per task |
//! | `grpc` | `CommandService.Send`, one tonic channel (one HTTP/2 connection) per task |
//!
//! With `--auth`, `http+auth` and `grpc+auth` run the gateways again with JWT authentication
//! and RBAC on (an HS256 token per client, a `writer` role allowed `create_user`), and the
//! report gives their throughput over the unsecured gateways'.
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
//! The store appends the commands make are timed inside the process (`TimedAppends`), so a
//! layer's p99 is also set against the p99 of its own appends in the same run: disk stalls,
//! which move a p99 by milliseconds between runs on a shared machine, are then on both sides.
//!
//! **In-process server.** The gateways run in this process, through [`flexcore::server::run_with`] on
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

mod clients;
mod plugin;
mod report;
mod server;
mod timed_store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flexcore::server::open_store;
use flexcore_app::command::CommandRouter;
use flexcore_sample_users::commands::command_handlers;

use self::clients::{GrpcClient, HttpClient, StoreWriter};
pub use self::report::{
    GatewayFigure, GatewayPhase, GatewayRatios, GatewayReport, Layer, TargetCheck,
};
use self::report::{check_targets, cores_text, figure, print_text};
use self::server::Server;
use self::timed_store::TimedAppends;
use crate::fixture::{FreshStore, TempStores};
use crate::load::{BusClient, Run, distinct_connections, measure};
use crate::{GatewayArgs, percentile};

/// Runs the gateway benchmark and prints the report.
pub async fn run(args: &GatewayArgs) -> anyhow::Result<()> {
    let report = measure_all(args).await?;
    if args.run.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

/// Runs every case on fresh stores (removed afterwards) and reduces them to the report.
pub async fn measure_all(args: &GatewayArgs) -> anyhow::Result<GatewayReport> {
    let stores = TempStores::new(&args.store.store)?;
    let report = measure_on(&stores, args).await;
    stores.close().await;
    report
}

async fn measure_on(stores: &TempStores, args: &GatewayArgs) -> anyhow::Result<GatewayReport> {
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let repeat = args.run.repeat.max(1);
    let connections = distinct_connections(&args.connections);
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.load_share),
        "--load-share must be between 0 and 1 (a share of the HTTP gateway's throughput), not {}",
        args.load_share
    );
    install_serve_observability()?;
    let mut layers = Layer::ALL.to_vec();
    if args.auth {
        layers.extend(Layer::SECURED);
    }
    if args.plugin {
        layers.push(Layer::HttpPlugin);
    }
    let mut phases = Phases {
        stores,
        duration,
        repeat,
        json: args.run.json,
        layers,
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

    let targets = check_targets(&connections, saturation.as_ref(), equal_load.as_ref());
    Ok(GatewayReport {
        mode: "gateway",
        store: stores.backend_name(),
        duration_s: duration.as_secs_f64(),
        repeat,
        saturation,
        equal_load,
        targets,
    })
}

/// Runs every case of a phase, interleaved, and reduces them.
struct Phases<'a> {
    stores: &'a TempStores,
    duration: Duration,
    repeat: usize,
    json: bool,
    /// The layers measured, in order.
    layers: Vec<Layer>,
}

impl Phases<'_> {
    /// Measures every layer at each (connections, offered load); repeat r runs every case
    /// before repeat r+1, so a change of machine load hits every case alike.
    async fn measure(&mut self, loads: &[(usize, Option<f64>)]) -> anyhow::Result<GatewayPhase> {
        let repeat = self.repeat;
        let mut runs: Vec<((Layer, usize), Vec<Run>)> = Vec::new();
        for r in 1..=repeat {
            for &(n, rate) in loads {
                for &layer in &self.layers {
                    let store = self.stores.fresh();
                    let run = run_once(layer, n, self.duration, rate, &store, self.stores)
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
        let connections: Vec<usize> = loads.iter().map(|&(n, _)| n).collect();
        Ok(GatewayPhase::new(cases, &connections))
    }
}

/// Installs what `flexcore serve` has in place before its first request: a `tracing`
/// subscriber at its default level (printing only errors here), and, through
/// [`flexcore::server::metrics_renderer`], the process-wide Prometheus recorder.
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
    flexcore::server::metrics_renderer()?;
    Ok(())
}

async fn run_once(
    layer: Layer,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    store: &FreshStore,
    stores: &TempStores,
) -> anyhow::Result<Run> {
    let url = store.url();
    let appends = TimedAppends::default();
    let measured = match layer {
        Layer::Store => {
            let store = open_store(&url).await?;
            let clients = (0..connections)
                .map(|_| StoreWriter::new(Arc::clone(&store)))
                .collect();
            let mut measured = measure(clients, duration, rate).await?;
            // The commands are the appends, timed from their sending.
            measured.appends = measured.service.clone();
            return Ok(measured);
        }
        Layer::Bus => {
            // Guarded by the default input validation, as `flexcore serve` guards its store.
            let validation = flexcore::validation::InputValidation::default();
            let store = appends.wrap(validation.guard(open_store(&url).await?));
            let mut router = CommandRouter::new();
            for (command_type, handler) in command_handlers(flexcore::server::repository(store)) {
                router.register(command_type, handler)?;
            }
            let commands = flexcore::server::command_bus(
                router,
                Default::default(),
                validation.command_schemas,
                None,
            );
            let clients = (0..connections)
                .map(|_| BusClient(Arc::clone(&commands)))
                .collect();
            measure(clients, duration, rate).await
        }
        Layer::HttpPlugin => {
            let serve = flexcore::cli::ServeArgs {
                plugins_dir: Some(plugin::folder(stores.dir())?),
                ..stores.serve_args(store)
            };
            let server = Server::start(serve, &appends).await?;
            let mut clients = Vec::with_capacity(connections);
            for _ in 0..connections {
                clients.push(
                    HttpClient::connect_command(server.http, None, plugin::COMMAND_TYPE).await?,
                );
            }
            let measured = measure(clients, duration, rate).await;
            let stopped = server.stop().await;
            let run = measured?;
            stopped?;
            Ok(run)
        }
        Layer::Http | Layer::Grpc | Layer::HttpAuth | Layer::GrpcAuth => {
            let secured = matches!(layer, Layer::HttpAuth | Layer::GrpcAuth);
            let (serve, token) = if secured {
                (
                    stores.secured_serve_args(store),
                    Some(crate::fixture::bench_token()?),
                )
            } else {
                (stores.serve_args(store), None)
            };
            let server = Server::start(serve, &appends).await?;
            let measured = if matches!(layer, Layer::Http | Layer::HttpAuth) {
                let mut clients = Vec::with_capacity(connections);
                for _ in 0..connections {
                    clients.push(HttpClient::connect(server.http, token.clone()).await?);
                }
                measure(clients, duration, rate).await
            } else {
                let mut clients = Vec::with_capacity(connections);
                for _ in 0..connections {
                    clients.push(GrpcClient::connect(server.grpc, token.clone()).await?);
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

#[cfg(test)]
mod tests {}
