//! `flexcore-bench`: FlexCore's benchmarks, each beside its own baseline, in one run.
//!
//! One subcommand per benchmark ([`Bench`]), each with only the options it reads:
//!
//! * [`appends`]: durable appends/s with group commit against one transaction per append, and
//!   `read_all` against a raw keyset-paged `SELECT`;
//! * [`gateway`]: `create_user` end to end over HTTP and gRPC, beside the command bus and the
//!   raw store taking the same appends;
//! * [`python`]: `create_user` through the Python users domain against the Rust one;
//! * [`subscriptions`]: catch-up, durable and live delivery of committed events;
//! * [`outbox`]: the outbox relay's rate to each broker that is up;
//! * [`gdpr`]: appends and reads with crypto-shredding on against off.
//!
//! Every case gets a fresh database (SQLite file or PostgreSQL schema). The machine is shared
//! and fsync latency moves ~10× under load: compare ratios from one run, and read `uptime`.

pub mod appends;
pub mod fixture;
pub mod gateway;
pub mod gdpr;
mod load;
pub mod outbox;
pub mod plugins;
pub mod python;
pub mod subscriptions;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use flexcore_app::store::EventStore;
use flexcore_domain::{EventMetadata, ExpectedVersion, NewEvent, RawJson, StreamId};
use serde_json::json;

/// The command line of `flexcore-bench`: one subcommand per benchmark.
#[derive(Debug, Clone, Parser)]
#[command(name = "flexcore-bench", version, about, long_about = None)]
pub struct Cli {
    /// The benchmark to run.
    #[command(subcommand)]
    pub bench: Bench,
}

/// The benchmarks, each with only the options it reads.
#[derive(Debug, Clone, Subcommand)]
pub enum Bench {
    /// Durable appends/s with group commit against one transaction per append, and read_all
    /// events/s against a raw keyset-paged SELECT.
    Appends(AppendsArgs),
    /// `create_user` end to end over HTTP and gRPC (an in-process server), beside the command
    /// bus without a gateway and the raw store taking the same appends.
    Gateway(GatewayArgs),
    /// `create_user` through the Python users domain (examples/python-users) against the Rust
    /// one, through the command bus, on SQLite.
    Python(PythonArgs),
    /// Subscription delivery: the history's append rate, a catch-up subscription and a durable
    /// consumer replaying it, and live delivery while 16 writers append.
    Subscriptions(SubscriptionsArgs),
    /// The outbox relay: append the history, then relay the whole log to RabbitMQ, Redis
    /// Streams and NATS JetStream (each that is up), events/s.
    Outbox(OutboxArgs),
    /// GDPR crypto-shredding: appends and reads of events with personal fields, plain and
    /// sealed, and the read cost for undeclared events.
    Gdpr(GdprArgs),
    /// Plugin calls: one query hook served in process, by a Rust child process and by a
    /// Python child process (the plugin protocol), calls/s and p50/p99.
    Plugins(PluginsArgs),
}

/// Where the fresh stores of a bench live.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The backend: `sqlite` (fresh files in a temp dir) or a `postgres://` URL (fresh schemas,
    /// dropped at the end).
    #[arg(long, default_value = "sqlite")]
    pub store: String,
}

/// PostgreSQL tuning of the stores a bench opens itself (not through a store URL).
#[derive(Debug, Clone, Args)]
pub struct CommitterArgs {
    /// PostgreSQL only: parallel group-commit transactions (default: the store's default).
    #[arg(long)]
    pub committers: Option<usize>,
}

/// How often a bench measures and how it reports.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Runs per case; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `flexcore-bench appends`.
#[derive(Debug, Clone, Args)]
pub struct AppendsArgs {
    /// Where the fresh stores live.
    #[command(flatten)]
    pub store: StoreArgs,
    /// PostgreSQL tuning.
    #[command(flatten)]
    pub committers: CommitterArgs,
    /// Seconds per append case.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Concurrent writers, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 16])]
    pub writers: Vec<usize>,
    /// Events per append, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 10])]
    pub events_per_append: Vec<usize>,
    /// Events in the log for the read_all case (0 skips it).
    #[arg(long, default_value_t = 200_000)]
    pub read_events: usize,
    /// Runs and output.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options of `flexcore-bench gateway`.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Where the fresh stores live.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Concurrent connections (client tasks), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 32])]
    pub connections: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Offer this many commands/s in total, spread over the connections, on a fixed schedule
    /// (open loop; latency counts from each command's scheduled time), instead of sending back
    /// to back. Compares the layers' latency at the same load.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Without --rate: after the back-to-back runs, offer every layer this share of the HTTP
    /// gateway's back-to-back throughput (open loop) to compare latency at equal load; 0 skips
    /// that phase.
    #[arg(long, conflicts_with = "rate", default_value_t = 0.5)]
    pub load_share: f64,
    /// Also run the HTTP and gRPC cases with JWT authentication and RBAC on (`http+auth`,
    /// `grpc+auth`), interleaved with the others, and report their throughput over the
    /// unsecured gateways'.
    #[arg(long)]
    pub auth: bool,
    /// Also run the HTTP case with the command handled by an out-of-process plugin (a Python
    /// SDK plugin owning `register_member`; needs `python3 -m pip install ./sdk/python`)
    /// (`http+plugin`), interleaved, and report its throughput over the Rust sample's.
    #[arg(long)]
    pub plugin: bool,
    /// Runs and output.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options of `flexcore-bench python` (always on SQLite).
#[derive(Debug, Clone, Args)]
pub struct PythonArgs {
    /// Concurrent connections (client tasks), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 32])]
    pub connections: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Runs and output.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options of `flexcore-bench plugins`.
#[derive(Debug, Clone, Args)]
pub struct PluginsArgs {
    /// Concurrent callers of the throughput runs (the latency runs use one).
    #[arg(long, default_value_t = 32)]
    pub callers: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// The `user_stats` example binary (default: `examples/user_stats` beside this binary).
    #[arg(long)]
    pub rust_plugin: Option<PathBuf>,
    /// Runs and output.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options of `flexcore-bench subscriptions`.
#[derive(Debug, Clone, Args)]
pub struct SubscriptionsArgs {
    /// Where the fresh stores live.
    #[command(flatten)]
    pub store: StoreArgs,
    /// PostgreSQL tuning.
    #[command(flatten)]
    pub committers: CommitterArgs,
    /// Events in the history the subscriptions replay (at least 1000).
    #[arg(long, default_value_t = 200_000)]
    pub read_events: usize,
    /// Seconds of the live phase.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Runs and output.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options of `flexcore-bench outbox`.
#[derive(Debug, Clone, Args)]
pub struct OutboxArgs {
    /// Where the fresh stores live.
    #[command(flatten)]
    pub store: StoreArgs,
    /// PostgreSQL tuning.
    #[command(flatten)]
    pub committers: CommitterArgs,
    /// Events in the log the relay publishes (at least 1000).
    #[arg(long, default_value_t = 200_000)]
    pub read_events: usize,
    /// Runs and output.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options of `flexcore-bench gdpr`.
#[derive(Debug, Clone, Args)]
pub struct GdprArgs {
    /// Where the fresh stores live.
    #[command(flatten)]
    pub store: StoreArgs,
    /// PostgreSQL tuning.
    #[command(flatten)]
    pub committers: CommitterArgs,
    /// Events appended and read per case (at least 1000).
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Runs and output.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The event every bench appends: an order of a realistic size (about 400 bytes of JSON).
fn bench_event(n: u64) -> NewEvent {
    let data = json!({
        "seq": n,
        "orderId": "ord-7f3a9c2e-41b8-4d7e-9a10-3c5e8b2d6f01",
        "customerId": "cus-2b9d4e6f-8a1c-4f3e-b7d2-9e0a1c3b5d7f",
        "items": [{"sku": "SKU-000123", "qty": 2, "unitPrice": 1999}, {"sku": "SKU-004567", "qty": 1, "unitPrice": 4999}],
        "currency": "EUR", "total": 8997, "note": "bench event padding text"
    });
    let metadata = EventMetadata {
        correlation_id: Some("c0a8012e-7f00-4b1a-9c3d-2e4f6a8b0c1d".into()),
        causation_id: Some("c0a8012e-7f00-4b1a-9c3d-2e4f6a8b0c1e".into()),
        actor: Some(flexcore_domain::Actor {
            sub: "u-42".into(),
            roles: vec!["writer".into()],
        }),
        ..EventMetadata::default()
    };
    NewEvent::new("order.placed", RawJson::from_value(&data))
        .expect("a valid event")
        .with_metadata(metadata)
}

/// Fills a store with at least `total` events: 16 writers, appends of 100 events to their own
/// stream with exact expectations. Returns the events written and the rate (events/s).
async fn append_history(store: &Arc<dyn EventStore>, total: u64) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let per_writer = total.div_ceil(16);
    let mut writers = Vec::new();
    for w in 0..16u64 {
        let store = Arc::clone(store);
        writers.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("order-{w}")).expect("valid");
            let mut written = 0;
            let mut version: Option<u64> = None;
            while written < per_writer {
                let n = (per_writer - written).min(100);
                let events = (0..n).map(|i| bench_event(written + i)).collect();
                let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                let result = store.append(stream.clone(), expected, events).await?;
                version = result.current_version;
                written += n;
            }
            anyhow::Ok(written)
        }));
    }
    let mut written = 0;
    for writer in writers {
        written += writer.await.context("a writer panicked")??;
    }
    Ok((written, written as f64 / started.elapsed().as_secs_f64()))
}

/// Runs the benchmark the command line names and prints its report.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.bench {
        Bench::Appends(args) => appends::run(&args).await,
        Bench::Gateway(args) => gateway::run(&args).await,
        Bench::Python(args) => python::run(&args).await,
        Bench::Subscriptions(args) => subscriptions::run(&args).await,
        Bench::Outbox(args) => outbox::run(&args).await,
        Bench::Gdpr(args) => gdpr::run(&args).await,
        Bench::Plugins(args) => plugins::run(&args).await,
    }
}

/// The latency at quantile `p` of `sorted`, ms (0 when empty).
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// The median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
