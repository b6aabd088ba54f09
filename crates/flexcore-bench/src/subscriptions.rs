//! `flexcore-bench subscriptions`: how fast committed events reach subscribers.
//!
//! In one run, on a fresh store per repetition:
//! * **append**: 16 writers append the history in appends of 100 events (the store's rate);
//! * **catch-up history**: a [`Subscription`] from position 0 reads the whole history;
//! * **durable history**: a [`DurableConsumer`] (no-op handler, checkpoint saved every 500
//!   events in the read-model store) handles the whole history;
//! * **live**: a subscription at the head while 16 writers append one event at a time for the
//!   case duration: events delivered per second and the delay from commit (`recorded_at`) to
//!   delivery, p50/p99.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use flexcore_app::durable::{ConsumerStateStore, DurableConsumer};
use flexcore_app::event_bus::EventHandler;
use flexcore_app::store::EventStore;
use flexcore_app::subscription::{Subscription, SubscriptionOptions};
use flexcore_domain::{EventEnvelope, ExpectedVersion, StreamId};
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::fixture::{CommitMode, TempStores};
use crate::{SubscriptionsArgs, bench_event, median};

/// The figures of one run of the subscription cases.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionFigures {
    /// Events in the history.
    pub history_events: u64,
    /// Appends of the history, events/s (16 writers × 100 events per append).
    pub append_per_s: f64,
    /// A catch-up subscription replaying the history, events/s.
    pub catch_up_per_s: f64,
    /// A durable consumer replaying the history, events/s.
    pub durable_per_s: f64,
    /// Live events delivered per second while 16 writers append.
    pub live_per_s: f64,
    /// Commit-to-delivery delay of live events, p50, ms.
    pub live_p50_ms: f64,
    /// Commit-to-delivery delay of live events, p99, ms.
    pub live_p99_ms: f64,
}

/// Runs the cases `--repeat` times and prints the medians.
pub async fn run(args: &SubscriptionsArgs) -> anyhow::Result<()> {
    let stores = TempStores::new(&args.store.store)?.with_committers(args.committers.committers);
    let history = args.read_events.max(1000) as u64;
    let mut runs = Vec::new();
    for _ in 0..args.run.repeat.max(1) {
        let fresh = stores.fresh();
        let store = stores.open(&fresh, CommitMode::GroupCommit, 16).await?;
        // The durable consumer keeps its checkpoint where the server keeps it.
        let state = fresh.open_read_models().await?;
        let figures = run_once(store, state, history, args.duration).await;
        runs.push(figures?);
    }
    let backend = stores.backend_name();
    stores.close().await;
    let pick =
        |f: fn(&SubscriptionFigures) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    let summary = SubscriptionFigures {
        history_events: history,
        append_per_s: pick(|f| f.append_per_s),
        catch_up_per_s: pick(|f| f.catch_up_per_s),
        durable_per_s: pick(|f| f.durable_per_s),
        live_per_s: pick(|f| f.live_per_s),
        live_p50_ms: pick(|f| f.live_p50_ms),
        live_p99_ms: pick(|f| f.live_p99_ms),
    };
    if args.run.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"store": backend, "median": summary, "runs": runs})
            )?
        );
        return Ok(());
    }
    println!(
        "subscriptions on {} ({} events of history, median of {})",
        backend,
        history,
        runs.len()
    );
    println!(
        "  append (16 writers x 100 events)   {:>12.0} events/s",
        summary.append_per_s
    );
    println!(
        "  catch-up subscription, history     {:>12.0} events/s",
        summary.catch_up_per_s
    );
    println!(
        "  durable consumer, history          {:>12.0} events/s",
        summary.durable_per_s
    );
    println!(
        "  live (16 writers x 1 event)        {:>12.0} events/s  commit->delivery p50 {:.2} ms, p99 {:.2} ms",
        summary.live_per_s, summary.live_p50_ms, summary.live_p99_ms
    );
    println!(
        "  target: catch-up replay >= 100,000 events/s: {}",
        if summary.catch_up_per_s >= 100_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

async fn run_once(
    store: Arc<dyn EventStore>,
    state: Arc<dyn ConsumerStateStore>,
    history: u64,
    live_secs: f64,
) -> anyhow::Result<SubscriptionFigures> {
    let (total, append_per_s) = super::append_history(&store, history).await?;

    // Catch-up from 0.
    let started = Instant::now();
    let mut subscription = Subscription::new(
        Arc::clone(&store) as Arc<_>,
        0,
        SubscriptionOptions::default(),
    );
    let mut seen = 0;
    while seen < total {
        seen += subscription.next_batch().await?.len() as u64;
    }
    let catch_up_per_s = total as f64 / started.elapsed().as_secs_f64();

    // A durable consumer from 0.
    let counter = Arc::new(Counter::default());
    let (stop, shutdown) = watch::channel(false);
    let started = Instant::now();
    let (_control, task) = DurableConsumer::new(
        "bench",
        counter.clone(),
        Arc::clone(&store) as Arc<_>,
        state,
    )
    .spawn(shutdown)
    .await?;
    while counter.count.load(Ordering::Acquire) < total {
        counter.changed.notified().await;
    }
    let durable_per_s = total as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let _ = task.await;

    // Live.
    let head = subscription.position();
    let deadline = Instant::now() + Duration::from_secs_f64(live_secs);
    let mut writers = Vec::new();
    for w in 0..16u64 {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("live-{w}")).expect("valid");
            let mut n = 0u64;
            while Instant::now() < deadline {
                store
                    .append(stream.clone(), ExpectedVersion::Any, vec![bench_event(n)])
                    .await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut live = Subscription::new(
        Arc::clone(&store) as Arc<_>,
        head,
        SubscriptionOptions::default(),
    );
    let mut delays = Vec::new();
    let started = Instant::now();
    let mut delivered = 0u64;
    let mut appended = None;
    loop {
        if let Ok(batch) = tokio::time::timeout(Duration::from_millis(100), live.next_batch()).await
        {
            let now = time::OffsetDateTime::now_utc();
            for event in batch? {
                delivered += 1;
                delays.push((now - event.recorded_at).as_seconds_f64().max(0.0) * 1000.0);
            }
        }
        if appended.is_none() && writers.iter().all(|w| w.is_finished()) {
            let mut sum = 0;
            for writer in writers.drain(..) {
                sum += writer.await.context("a writer panicked")??;
            }
            appended = Some(sum);
        }
        if appended.is_some_and(|sum| delivered >= sum) {
            break;
        }
    }
    let live_per_s = delivered as f64 / started.elapsed().as_secs_f64();
    delays.sort_by(f64::total_cmp);
    let at = |p: f64| {
        delays
            .get(((delays.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(SubscriptionFigures {
        history_events: total,
        append_per_s,
        catch_up_per_s,
        durable_per_s,
        live_per_s,
        live_p50_ms: at(0.5),
        live_p99_ms: at(0.99),
    })
}

#[derive(Default)]
struct Counter {
    count: AtomicU64,
    changed: Notify,
}

#[async_trait]
impl EventHandler for Counter {
    async fn handle(&self, _event: &EventEnvelope) -> flexcore_app::Result<()> {
        self.count.fetch_add(1, Ordering::Release);
        self.changed.notify_one();
        Ok(())
    }
}
