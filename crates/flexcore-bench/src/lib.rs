//! `flexcore-bench`: what the event store sustains, beside its own baselines, in one run.
//!
//! * **appends**: W concurrent writers, each appending E events per append to its own streams
//!   with an exact expected version, for a fixed time; reported as events/s and append latency.
//!   Each case runs twice: with group commit (the default) and with one transaction per append
//!   (the baseline group commit has to beat).
//! * **read_all**: pages of 1000 through a prefilled log, beside a raw keyset-paged `SELECT` of
//!   the same rows and columns with the driver alone (the ceiling).
//!
//! Every case gets a fresh database (SQLite file or PostgreSQL schema). The machine is shared
//! and fsync latency moves ~10× under load: compare ratios from one run, and read `uptime`.
//!
//! `flexcore-bench --gateway` measures `create_user` end to end over HTTP and gRPC instead,
//! beside the same store and the command bus without a gateway (see [`gateway`]).

pub mod gateway;
pub mod outbox;
pub mod python;
pub mod subscriptions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use flexcore_app::store::{EventFilter, EventStore, ReadAll};
use flexcore_domain::{EventMetadata, ExpectedVersion, NewEvent, RawJson, StreamId};
use flexcore_store_postgres::{PostgresConfig, PostgresStore};
use flexcore_store_sqlite::{SqliteConfig, SqliteStore};
use serde::Serialize;
use serde_json::json;

/// Options of `flexcore-bench`.
#[derive(Debug, Clone, Parser)]
#[command(name = "flexcore-bench", version, about, long_about = None)]
pub struct BenchArgs {
    /// The backend: `sqlite` (fresh files in a temp dir) or a `postgres://` URL (fresh schemas).
    #[arg(long, default_value = "sqlite")]
    pub store: String,
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
    /// Runs per case; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// PostgreSQL only: parallel group-commit transactions (default: the store's default).
    #[arg(long)]
    pub committers: Option<usize>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Measure `create_user` end to end instead: over HTTP and gRPC (an in-process server),
    /// beside the command bus without a gateway and the raw store taking the same appends.
    #[arg(
        long,
        group = "client_modes",
        conflicts_with_all = ["writers", "events_per_append", "read_events", "committers"]
    )]
    pub gateway: bool,
    /// Measure `create_user` through the Python users domain (examples/python-users) against
    /// the Rust one instead, on the same store, in one run.
    #[arg(
        long,
        group = "client_modes",
        conflicts_with_all = ["gateway", "writers", "events_per_append", "read_events", "committers"]
    )]
    pub python: bool,
    /// Measure subscription delivery instead: the history's append rate, a catch-up
    /// subscription and a durable consumer replaying it, and live delivery while 16 writers
    /// append (`--read-events` sets the history, `--duration` the live phase).
    #[arg(long, conflicts_with_all = ["gateway", "python", "writers", "events_per_append"])]
    pub subscriptions: bool,
    /// Measure the outbox relay instead: append `--read-events` events, then relay the whole
    /// log to RabbitMQ, Redis Streams and NATS JetStream (each that is up), events/s.
    #[arg(long, conflicts_with_all = ["gateway", "python", "subscriptions", "writers", "events_per_append"])]
    pub outbox: bool,
    /// With --gateway: offer this many commands/s in total, spread over the connections, on a
    /// fixed schedule (open loop; latency counts from each command's scheduled time), instead
    /// of sending back to back. Compares the layers' latency at the same load.
    #[arg(long, requires = "gateway")]
    pub rate: Option<f64>,
    /// With --gateway and no --rate: after the back-to-back runs, offer every layer this share
    /// of the HTTP gateway's back-to-back throughput (open loop) to compare latency at equal
    /// load; 0 skips that phase.
    #[arg(
        long,
        requires = "gateway",
        conflicts_with = "rate",
        default_value_t = 0.5
    )]
    pub load_share: f64,
    /// With --gateway or --python: concurrent connections (client tasks), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 32], requires = "client_modes")]
    pub connections: Vec<usize>,
}

/// How the store under test is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitMode {
    /// Concurrent appends coalesced into one transaction (the default).
    GroupCommit,
    /// One transaction per append (the baseline).
    OneTxPerAppend,
}

/// One measured append case.
#[derive(Debug, Clone, Serialize)]
pub struct AppendFigure {
    /// Commit mode.
    pub mode: CommitMode,
    /// Concurrent writers.
    pub writers: usize,
    /// Events per append.
    pub events_per_append: usize,
    /// Median events/s over the runs.
    pub events_per_s: f64,
    /// Every run's events/s.
    pub runs: Vec<f64>,
    /// Median append latency, ms (of the median run).
    pub p50_ms: f64,
    /// 99th percentile append latency, ms (of the median run).
    pub p99_ms: f64,
}

/// The read_all case.
#[derive(Debug, Clone, Serialize)]
pub struct ReadFigure {
    /// Events in the log.
    pub events: usize,
    /// Median events/s through `read_all`.
    pub read_all_per_s: f64,
    /// Median rows/s through the raw keyset SELECT.
    pub raw_select_per_s: f64,
}

/// A backend under test that can hand out fresh, empty stores.
enum Backend {
    Sqlite {
        dir: tempfile_dir::Dir,
    },
    Postgres {
        url: String,
        committers: Option<usize>,
        schemas: std::sync::Mutex<Vec<String>>,
    },
}

mod tempfile_dir {
    //! A temp directory removed on drop, without another dependency.
    use std::path::{Path, PathBuf};

    pub(super) struct Dir(PathBuf);

    impl Dir {
        /// A new directory, its own even when several are open in one process.
        pub(super) fn new() -> std::io::Result<Self> {
            static OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("flexcore-bench-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&path)?;
            Ok(Self(path))
        }

        pub(super) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh store and how to read its table raw.
struct Fresh {
    store: Arc<dyn EventStore>,
    raw: RawTable,
}

enum RawTable {
    Sqlite(std::path::PathBuf),
    Postgres { url: String, schema: String },
}

impl Backend {
    fn new(spec: &str, committers: Option<usize>) -> anyhow::Result<Self> {
        match spec {
            "sqlite" => Ok(Self::Sqlite {
                dir: tempfile_dir::Dir::new().context("cannot create a temp dir")?,
            }),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres {
                    url: url.to_owned(),
                    committers,
                    schemas: Default::default(),
                })
            }
            other => {
                anyhow::bail!("unknown bench store '{other}': use sqlite or a postgres:// URL")
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }

    /// Drops the schemas the cases created.
    async fn cleanup(&self) {
        if let Self::Postgres { url, schemas, .. } = self {
            let schemas = std::mem::take(&mut *schemas.lock().unwrap_or_else(|p| p.into_inner()));
            for schema in schemas {
                if let Err(e) = flexcore_store_postgres::drop_schema(url, &schema).await {
                    eprintln!("cannot drop bench schema {schema}: {e}");
                }
            }
        }
    }

    async fn fresh(&self, mode: CommitMode, case: usize, writers: usize) -> anyhow::Result<Fresh> {
        match self {
            Self::Sqlite { dir } => {
                let path = dir.path().join(format!("case-{case}.db"));
                let mut config = SqliteConfig::new(&path);
                if mode == CommitMode::OneTxPerAppend {
                    config.group_commit = false;
                }
                Ok(Fresh {
                    store: Arc::new(SqliteStore::open(config).await?),
                    raw: RawTable::Sqlite(path),
                })
            }
            Self::Postgres {
                url,
                schemas,
                committers,
            } => {
                let schema = format!("fc_bench_{}_{case}", std::process::id());
                schemas
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(schema.clone());
                let mut config = PostgresConfig::new(url.clone()).with_schema(schema.clone());
                if let Some(committers) = committers {
                    config.committers = *committers;
                    config.pool_size = config.pool_size.max(committers + 4);
                }
                if mode == CommitMode::OneTxPerAppend {
                    // Every writer gets its own transaction, in parallel: the classic baseline.
                    config.max_batch_events = 1;
                    config.committers = writers.max(1);
                    config.pool_size = writers.max(1) + 4;
                }
                Ok(Fresh {
                    store: Arc::new(PostgresStore::connect(config).await?),
                    raw: RawTable::Postgres {
                        url: url.clone(),
                        schema,
                    },
                })
            }
        }
    }
}

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
        actor: Some("u-42".into()),
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

/// Runs one append case: `writers` tasks append `per_append` events for `duration`.
async fn append_case(
    store: Arc<dyn EventStore>,
    writers: usize,
    per_append: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut stream_no, mut version): (u64, Option<u64>) = (0, None);
            let mut n = 0u64;
            while Instant::now() < deadline {
                // Streams of 50 events, like the physical-limit scripts.
                if version.is_some_and(|v| v + per_append as u64 >= 50) {
                    stream_no += 1;
                    version = None;
                }
                let stream = StreamId::new(format!("order-w{writer}s{stream_no}"))?;
                let events = (0..per_append)
                    .map(|_| {
                        n += 1;
                        bench_event(n)
                    })
                    .collect();
                let t = Instant::now();
                let result = store
                    .append(stream, ExpectedVersion::from_current(version), events)
                    .await?;
                latencies.push(t.elapsed());
                version = result.current_version;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let events = (latencies.len() * per_append) as f64;
    Ok((events / elapsed, latencies))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn read_case(
    backend: &Backend,
    events: usize,
    repeat: usize,
    case: usize,
) -> anyhow::Result<ReadFigure> {
    let fresh = backend.fresh(CommitMode::GroupCommit, case, 1).await?;
    let mut written = 0usize;
    let mut stream_no = 0;
    while written < events {
        let batch = (events - written).min(500);
        let stream = StreamId::new(format!("order-r{stream_no}"))?;
        let batch_events = (0..batch)
            .map(|i| bench_event((written + i) as u64))
            .collect();
        fresh
            .store
            .append(stream, ExpectedVersion::NoStream, batch_events)
            .await?;
        written += batch;
        stream_no += 1;
    }
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let mut from = 0;
        let mut seen = 0usize;
        loop {
            let page = fresh
                .store
                .read_all(ReadAll {
                    from_position: from,
                    limit: 1000,
                    filter: EventFilter::default(),
                })
                .await?;
            if page.events.is_empty() {
                break;
            }
            seen += page.events.len();
            from = page.next_position;
        }
        anyhow::ensure!(
            seen == events,
            "read_all returned {seen} of {events} events"
        );
        ours.push(seen as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let rows = raw_scan(&fresh.raw).await?;
        anyhow::ensure!(
            rows == events,
            "the raw scan returned {rows} of {events} rows"
        );
        raw.push(rows as f64 / t.elapsed().as_secs_f64());
    }
    Ok(ReadFigure {
        events,
        read_all_per_s: median(&mut ours),
        raw_select_per_s: median(&mut raw),
    })
}

/// Reads every row of the events table in keyset pages of 1000 with the driver alone, copying
/// each column out (what any reader must do at least).
async fn raw_scan(table: &RawTable) -> anyhow::Result<usize> {
    match table {
        RawTable::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
                let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                let mut stmt = conn.prepare(
                    "SELECT position, event_id, stream_id, stream_version, event_type, schema_version, \
                     data, metadata, recorded_at FROM events WHERE position > ?1 ORDER BY position LIMIT 1000",
                )?;
                let (mut last, mut count) = (0i64, 0usize);
                loop {
                    let mut rows = stmt.query([last])?;
                    let mut page = 0;
                    while let Some(row) = rows.next()? {
                        last = row.get(0)?;
                        let _id: Vec<u8> = row.get(1)?;
                        let _stream: String = row.get(2)?;
                        let _version: i64 = row.get(3)?;
                        let _type: String = row.get(4)?;
                        let _schema: i64 = row.get(5)?;
                        let _data: String = row.get(6)?;
                        let _meta: String = row.get(7)?;
                        let _at: i64 = row.get(8)?;
                        page += 1;
                    }
                    if page == 0 {
                        return Ok(count);
                    }
                    count += page;
                }
            })
            .await?
        }
        RawTable::Postgres { url, schema } => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(connection);
            let statement = client
                .prepare(&format!(
                    "SELECT position, event_id, stream_id, stream_version, event_type, schema_version, \
                     data::text, metadata::text, recorded_at FROM \"{schema}\".events \
                     WHERE position > $1 ORDER BY position LIMIT 1000"
                ))
                .await?;
            let (mut last, mut count) = (0i64, 0usize);
            loop {
                let rows = client.query(&statement, &[&last]).await?;
                if rows.is_empty() {
                    break;
                }
                for row in &rows {
                    last = row.get(0);
                    let _id: uuid::Uuid = row.get(1);
                    let _stream: String = row.get(2);
                    let _version: i64 = row.get(3);
                    let _type: String = row.get(4);
                    let _schema: i32 = row.get(5);
                    let _data: String = row.get(6);
                    let _meta: String = row.get(7);
                    let _at: time::OffsetDateTime = row.get(8);
                }
                count += rows.len();
            }
            drop(client);
            let _ = driver.await;
            Ok(count)
        }
    }
}

/// Runs every case and prints the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.gateway {
        return gateway::run(&args).await;
    }
    if args.python {
        return python::run(&args).await;
    }
    if args.subscriptions {
        return subscriptions::run(&args).await;
    }
    if args.outbox {
        return outbox::run(&args).await;
    }
    let backend = Backend::new(&args.store, args.committers)?;
    let result = run_cases(&backend, &args).await;
    backend.cleanup().await;
    result
}

async fn run_cases(backend: &Backend, args: &BenchArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let repeat = args.repeat.max(1);
    let mut figures = Vec::new();
    let mut case = 0;
    for &writers in &args.writers {
        for &per_append in &args.events_per_append {
            for mode in [CommitMode::GroupCommit, CommitMode::OneTxPerAppend] {
                let mut runs = Vec::new();
                let mut latencies_by_run = Vec::new();
                for _ in 0..repeat {
                    case += 1;
                    let fresh = backend.fresh(mode, case, writers).await?;
                    let (rate, mut latencies) =
                        append_case(fresh.store, writers, per_append, duration).await?;
                    latencies.sort_unstable();
                    runs.push(rate);
                    latencies_by_run.push((rate, latencies));
                }
                latencies_by_run.sort_by(|a, b| a.0.total_cmp(&b.0));
                let (_, median_latencies) = &latencies_by_run[latencies_by_run.len() / 2];
                let figure = AppendFigure {
                    mode,
                    writers,
                    events_per_append: per_append,
                    events_per_s: median(&mut runs.clone()),
                    p50_ms: percentile(median_latencies, 0.50),
                    p99_ms: percentile(median_latencies, 0.99),
                    runs,
                };
                if !args.json {
                    eprintln!(
                        "{:<6} {:<18} writers={:<3} events/append={:<3} {:>10.0} events/s  p50={:.2}ms p99={:.2}ms  runs={:?}",
                        backend.name(),
                        format!("{:?}", figure.mode),
                        writers,
                        per_append,
                        figure.events_per_s,
                        figure.p50_ms,
                        figure.p99_ms,
                        figure
                            .runs
                            .iter()
                            .map(|r| r.round() as u64)
                            .collect::<Vec<_>>(),
                    );
                }
                figures.push(figure);
            }
        }
    }
    let read = if args.read_events > 0 {
        case += 1;
        let figure = read_case(backend, args.read_events, repeat, case).await?;
        if !args.json {
            eprintln!(
                "{:<6} read_all {} events: {:.0} events/s; raw keyset SELECT {:.0} rows/s; ratio {:.2}",
                backend.name(),
                figure.events,
                figure.read_all_per_s,
                figure.raw_select_per_s,
                figure.read_all_per_s / figure.raw_select_per_s
            );
        }
        Some(figure)
    } else {
        None
    };
    let ratios: Vec<serde_json::Value> = figures
        .iter()
        .filter(|f| f.mode == CommitMode::GroupCommit)
        .filter_map(|g| {
            let base = figures.iter().find(|b| {
                b.mode == CommitMode::OneTxPerAppend
                    && b.writers == g.writers
                    && b.events_per_append == g.events_per_append
            })?;
            Some(json!({
                "writers": g.writers, "events_per_append": g.events_per_append,
                "group_commit_over_one_tx_per_append": g.events_per_s / base.events_per_s,
            }))
        })
        .collect();
    let report =
        json!({ "store": backend.name(), "appends": figures, "ratios": ratios, "read_all": read });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for r in &ratios {
            eprintln!(
                "{:<6} group commit / one tx per append, writers={} events/append={}: {:.2}x",
                backend.name(),
                r["writers"],
                r["events_per_append"],
                r["group_commit_over_one_tx_per_append"]
                    .as_f64()
                    .unwrap_or(0.0)
            );
        }
    }
    Ok(())
}
