//! `flexcore-bench appends`: what the event store sustains, beside its own baselines.
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

use std::time::{Duration, Instant};

use flexcore_app::store::{EventFilter, EventStore, ReadAll};
use flexcore_domain::{ExpectedVersion, StreamId};
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;

use crate::fixture::{CommitMode, FreshStore, TempStores};
use crate::{AppendsArgs, bench_event, median, percentile};

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

async fn read_case(
    stores: &TempStores,
    events: usize,
    repeat: usize,
) -> anyhow::Result<ReadFigure> {
    let fresh = stores.fresh();
    let store = stores.open(&fresh, CommitMode::GroupCommit, 1).await?;
    let mut written = 0usize;
    let mut stream_no = 0;
    while written < events {
        let batch = (events - written).min(500);
        let stream = StreamId::new(format!("order-r{stream_no}"))?;
        let batch_events = (0..batch)
            .map(|i| bench_event((written + i) as u64))
            .collect();
        store
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
            let page = store
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
        let rows = raw_scan(&fresh).await?;
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
async fn raw_scan(store: &FreshStore) -> anyhow::Result<usize> {
    match store {
        FreshStore::Sqlite { path } => {
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
        FreshStore::Postgres { url, schema } => {
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
pub async fn run(args: &AppendsArgs) -> anyhow::Result<()> {
    let stores = TempStores::new(&args.store.store)?.with_committers(args.committers.committers);
    let result = run_cases(&stores, args).await;
    stores.close().await;
    result
}

async fn run_cases(stores: &TempStores, args: &AppendsArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let repeat = args.run.repeat.max(1);
    let mut figures = Vec::new();
    for &writers in &args.writers {
        for &per_append in &args.events_per_append {
            for mode in [CommitMode::GroupCommit, CommitMode::OneTxPerAppend] {
                let mut runs = Vec::new();
                let mut latencies_by_run = Vec::new();
                for _ in 0..repeat {
                    let fresh = stores.fresh();
                    let store = stores.open(&fresh, mode, writers).await?;
                    let (rate, mut latencies) =
                        append_case(store, writers, per_append, duration).await?;
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
                if !args.run.json {
                    eprintln!(
                        "{:<6} {:<18} writers={:<3} events/append={:<3} {:>10.0} events/s  p50={:.2}ms p99={:.2}ms  runs={:?}",
                        stores.backend_name(),
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
        let figure = read_case(stores, args.read_events, repeat).await?;
        if !args.run.json {
            eprintln!(
                "{:<6} read_all {} events: {:.0} events/s; raw keyset SELECT {:.0} rows/s; ratio {:.2}",
                stores.backend_name(),
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
    let report = json!({ "store": stores.backend_name(), "appends": figures, "ratios": ratios, "read_all": read });
    if args.run.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for r in &ratios {
            eprintln!(
                "{:<6} group commit / one tx per append, writers={} events/append={}: {:.2}x",
                stores.backend_name(),
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
