//! `flexcore-bench gdpr`: what crypto-shredding costs on the append and read paths.
//!
//! In one run, on fresh stores, the same history of `user.created`-like events (about 400
//! bytes, two personal fields, 1,000 subjects) is:
//! * appended by 16 writers in appends of 100 events, **plain** and **sealed** (through the
//!   shredding decorator: one AES-256-GCM seal per personal field; the first event of each
//!   subject also creates and stores its key);
//! * read back with `read_all` pages of 1,000: plain, **opened** (one open per sealed field),
//!   and plain events through the decorator with their type **undeclared** (the cost every
//!   other event pays: one map lookup). Each store is read once before it is measured (warm
//!   pages, PostgreSQL hint bits set, keys cached).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use flexcore_app::gdpr::{KeyTable, PersonalData, PersonalDataPolicy, ShreddingStore};
use flexcore_app::store::{EventStore, ReadAll};
use flexcore_domain::{ExpectedVersion, NewEvent, RawJson, StreamId};
use flexcore_gdpr::{KeyVault, MasterKey, VaultOptions};
use flexcore_store_postgres::{PostgresConfig, PostgresKeyTable};
use flexcore_store_sqlite::SqliteKeyTable;
use serde::Serialize;
use serde_json::json;

use crate::fixture::{CommitMode, FreshStore, TempStores};
use crate::{GdprArgs, median};

/// The subjects the history's events belong to.
const SUBJECTS: u64 = 1_000;

/// The event type of the history.
const EVENT_TYPE: &str = "customer.registered";

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct GdprFigures {
    /// Events in the history.
    pub events: u64,
    /// Appends without the decorator, events/s.
    pub append_plain_per_s: f64,
    /// Appends through the decorator (two sealed fields per event), events/s.
    pub append_sealed_per_s: f64,
    /// `read_all` of plain events, events/s.
    pub read_plain_per_s: f64,
    /// `read_all` through the decorator, every event opened, events/s.
    pub read_opened_per_s: f64,
    /// `read_all` through the decorator of events whose type is not declared, events/s.
    pub read_undeclared_per_s: f64,
}

fn event(n: u64) -> NewEvent {
    let data = json!({
        "customer_id": format!("cus-{:08}", n % SUBJECTS),
        "email": format!("customer.{n}@example.com"),
        "profile": {"name": "Ann Example", "street": "1 Long Road", "city": "Springfield",
                    "phone": "+1 555 0100", "newsletter": true},
        "plan": "pro", "seats": 12, "currency": "EUR", "source": "bench padding text",
        "referrer": "ord-7f3a9c2e-41b8-4d7e-9a10-3c5e8b2d6f01"
    });
    NewEvent::new(EVENT_TYPE, RawJson::from_value(&data)).expect("a valid event")
}

fn policy(event_type: &str) -> PersonalDataPolicy {
    let mut policy = PersonalDataPolicy::new();
    policy
        .declare(
            PersonalData::new(event_type, "/customer_id", ["/email", "/profile"])
                .expect("a valid declaration"),
            "bench",
        )
        .expect("one declaration");
    policy
}

async fn key_table(store: &FreshStore) -> anyhow::Result<Arc<dyn KeyTable>> {
    Ok(match store {
        FreshStore::Sqlite { path } => Arc::new(SqliteKeyTable::open(path).await?),
        FreshStore::Postgres { url, schema } => Arc::new(
            PostgresKeyTable::connect(PostgresConfig::new(url.clone()).with_schema(schema.clone()))
                .await?,
        ),
    })
}

async fn shredding(
    store: Arc<dyn EventStore>,
    fresh: &FreshStore,
    policy: PersonalDataPolicy,
) -> anyhow::Result<Arc<dyn EventStore>> {
    let vault = KeyVault::open(
        key_table(fresh).await?,
        MasterKey::from_bytes([0x5a; 32]),
        VaultOptions::default(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
    Ok(Arc::new(ShreddingStore::new(
        store,
        Arc::new(vault),
        policy,
    )))
}

/// 16 writers, appends of 100 events to their own stream; events/s.
async fn append(store: &Arc<dyn EventStore>, total: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let per_writer = total.div_ceil(16);
    let mut writers = Vec::new();
    for w in 0..16u64 {
        let store = Arc::clone(store);
        writers.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("customers-{w}")).expect("valid");
            let mut written = 0;
            while written < per_writer {
                let n = (per_writer - written).min(100);
                let events = (0..n)
                    .map(|i| event(w * per_writer + written + i))
                    .collect();
                store
                    .append(stream.clone(), ExpectedVersion::Any, events)
                    .await?;
                written += n;
            }
            anyhow::Ok(written)
        }));
    }
    let mut written = 0;
    for writer in writers {
        written += writer.await.context("a writer panicked")??;
    }
    Ok(written as f64 / started.elapsed().as_secs_f64())
}

/// Reads the whole log in pages of 1,000; events/s.
async fn read(store: &Arc<dyn EventStore>, total: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (mut from, mut seen) = (0, 0u64);
    while seen < total {
        let page = store
            .read_all(ReadAll {
                from_position: from,
                limit: 1_000,
                ..ReadAll::default()
            })
            .await?;
        seen += page.events.len() as u64;
        from = page.next_position;
    }
    Ok(seen as f64 / started.elapsed().as_secs_f64())
}

async fn run_once(stores: &TempStores, events: u64) -> anyhow::Result<GdprFigures> {
    let plain_fresh = stores.fresh();
    let plain = stores
        .open(&plain_fresh, CommitMode::GroupCommit, 16)
        .await?;
    let append_plain_per_s = append(&plain, events).await?;
    // A first read of fresh rows is slower on PostgreSQL (it sets hint bits): warm both stores
    // once, so that every read case compares steady states.
    read(&plain, events).await?;
    let read_plain_per_s = read(&plain, events).await?;
    let undeclared = shredding(Arc::clone(&plain), &plain_fresh, policy("other.type")).await?;
    let read_undeclared_per_s = read(&undeclared, events).await?;

    let sealed_fresh = stores.fresh();
    let raw = stores
        .open(&sealed_fresh, CommitMode::GroupCommit, 16)
        .await?;
    let sealed = shredding(raw, &sealed_fresh, policy(EVENT_TYPE)).await?;
    let append_sealed_per_s = append(&sealed, events).await?;
    read(&sealed, events).await?;
    let read_opened_per_s = read(&sealed, events).await?;
    Ok(GdprFigures {
        events,
        append_plain_per_s,
        append_sealed_per_s,
        read_plain_per_s,
        read_opened_per_s,
        read_undeclared_per_s,
    })
}

/// Runs the cases `--repeat` times and prints the medians.
pub async fn run(args: &GdprArgs) -> anyhow::Result<()> {
    let stores = TempStores::new(&args.store.store)?.with_committers(args.committers.committers);
    let events = args.events.max(1_000) as u64;
    let mut runs = Vec::new();
    for _ in 0..args.run.repeat.max(1) {
        runs.push(run_once(&stores, events).await?);
    }
    let backend = stores.backend_name();
    stores.close().await;
    let pick = |f: fn(&GdprFigures) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    let summary = GdprFigures {
        events,
        append_plain_per_s: pick(|f| f.append_plain_per_s),
        append_sealed_per_s: pick(|f| f.append_sealed_per_s),
        read_plain_per_s: pick(|f| f.read_plain_per_s),
        read_opened_per_s: pick(|f| f.read_opened_per_s),
        read_undeclared_per_s: pick(|f| f.read_undeclared_per_s),
    };
    if args.run.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"store": backend, "median": summary, "runs": runs})
            )?
        );
        return Ok(());
    }
    let ratio = |sealed: f64, plain: f64| 100.0 * (sealed / plain - 1.0);
    println!(
        "gdpr crypto-shredding on {backend} ({events} events, {SUBJECTS} subjects, 2 personal \
         fields each, median of {})",
        runs.len()
    );
    println!(
        "  append plain  (16 writers x 100 events)  {:>10.0} events/s",
        summary.append_plain_per_s
    );
    println!(
        "  append sealed                            {:>10.0} events/s  ({:+.1} %)",
        summary.append_sealed_per_s,
        ratio(summary.append_sealed_per_s, summary.append_plain_per_s)
    );
    println!(
        "  read_all plain                           {:>10.0} events/s",
        summary.read_plain_per_s
    );
    println!(
        "  read_all opened (2 fields per event)     {:>10.0} events/s  ({:+.1} %)",
        summary.read_opened_per_s,
        ratio(summary.read_opened_per_s, summary.read_plain_per_s)
    );
    println!(
        "  read_all through the layer, undeclared   {:>10.0} events/s  ({:+.1} %)",
        summary.read_undeclared_per_s,
        ratio(summary.read_undeclared_per_s, summary.read_plain_per_s)
    );
    Ok(())
}
