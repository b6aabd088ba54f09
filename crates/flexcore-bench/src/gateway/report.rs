//! The gateway bench's report: the figures of each case, the overheads between layers, issue
//! #3's targets, and the text table.

use serde::Serialize;

use crate::load::Run;
use crate::{median, percentile};

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
    /// The HTTP gateway with authentication (JWT) and RBAC on.
    HttpAuth,
    /// The gRPC gateway with authentication (JWT) and RBAC on.
    GrpcAuth,
    /// The HTTP gateway, the command handled by an out-of-process plugin (Python SDK).
    HttpPlugin,
}

impl Layer {
    /// Every layer, in the order the cases run and are reported.
    pub(super) const ALL: [Self; 4] = [Self::Store, Self::Bus, Self::Http, Self::Grpc];
    /// The layers `--auth` adds: each gateway again with authentication and RBAC on.
    pub(super) const SECURED: [Self; 2] = [Self::HttpAuth, Self::GrpcAuth];

    /// The layer's name in the text report.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Bus => "bus",
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::HttpAuth => "http+auth",
            Self::GrpcAuth => "grpc+auth",
            Self::HttpPlugin => "http+plugin",
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
    /// With `--auth`: HTTP throughput with authentication and RBAC / without (the cost of
    /// security is 1 − this).
    pub http_auth_over_http: Option<f64>,
    /// With `--auth`: gRPC throughput with authentication and RBAC / without.
    pub grpc_auth_over_grpc: Option<f64>,
    /// With `--plugin`: HTTP throughput with the command handled by an out-of-process plugin /
    /// by the Rust sample.
    pub http_plugin_over_http: Option<f64>,
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
    /// The phase of these cases, with the overheads at each connection count where every layer
    /// was measured.
    pub(super) fn new(cases: Vec<GatewayFigure>, connections: &[usize]) -> Self {
        let mut phase = Self {
            cases,
            ratios: Vec::new(),
        };
        phase.ratios = connections
            .iter()
            .filter_map(|&n| {
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
                    http_auth_over_http: phase
                        .find(Layer::HttpAuth, n)
                        .map(|secured| secured.commands_per_s / http.commands_per_s),
                    grpc_auth_over_grpc: phase
                        .find(Layer::GrpcAuth, n)
                        .map(|secured| secured.commands_per_s / grpc.commands_per_s),
                    http_plugin_over_http: phase
                        .find(Layer::HttpPlugin, n)
                        .map(|plugin| plugin.commands_per_s / http.commands_per_s),
                })
            })
            .collect();
        phase
    }

    /// The case of this layer at this connection count.
    pub fn find(&self, layer: Layer, connections: usize) -> Option<&GatewayFigure> {
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

/// The whole report of `flexcore-bench gateway` (printed as is with `--json`).
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

/// Prints the report as text, to stderr (beside the per-run lines).
pub(super) fn print_text(report: &GatewayReport) {
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
            if let Some(plugin) = r.http_plugin_over_http {
                eprintln!(
                    "{store:<6} connections={}: command by an out-of-process plugin / by the Rust \
                     sample, over HTTP: {plugin:.3} (issue 15's target at 32 connections: ≥ 0.30)",
                    r.connections,
                );
            }
            if let (Some(http), Some(grpc)) = (r.http_auth_over_http, r.grpc_auth_over_grpc) {
                eprintln!(
                    "{store:<6} connections={}: with authentication + RBAC / without: http {:.3} \
                     ({:+.1}%), grpc {:.3} ({:+.1}%)",
                    r.connections,
                    http,
                    (http - 1.0) * 100.0,
                    grpc,
                    (grpc - 1.0) * 100.0,
                );
            }
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

/// Process CPU use as printed.
pub(super) fn cores_text(cores: Option<f64>) -> String {
    cores.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2} cores"))
}

/// Reduces a case's runs: medians over the runs of each run's throughput and percentiles.
pub(super) fn figure(
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

/// Checks the HTTP and gRPC gateways against issue #3's targets at [`TARGET_CONNECTIONS`]
/// connections (none unless that count was measured): throughput back to back, and the p99
/// added at equal load.
pub(super) fn check_targets(
    connections: &[usize],
    saturation: Option<&GatewayPhase>,
    equal_load: Option<&GatewayPhase>,
) -> Vec<TargetCheck> {
    [Layer::Http, Layer::Grpc]
        .into_iter()
        .filter(|_| connections.contains(&TARGET_CONNECTIONS))
        .map(|gateway| {
            let n = TARGET_CONNECTIONS;
            let at_saturation =
                saturation.and_then(|p| Some((p.find(gateway, n)?, p.find(Layer::Store, n)?)));
            let at_equal_load =
                equal_load.and_then(|p| Some((p.find(gateway, n)?, p.find(Layer::Store, n)?)));
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
        .collect()
}
