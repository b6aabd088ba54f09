//! Durable consumers: checkpoints, at-least-once, dead letters in per-stream order, consumer
//! groups.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::Result;
use flexcore_app::durable::{
    CheckpointStore, ConsumerGroup, DeadLetter, DeadLetterStore, DurableConsumer, DurableOptions,
    InMemoryCheckpoints, ParkReason, SubscriptionControl,
};
use flexcore_app::event_bus::EventHandler;
use flexcore_app::store::{EventAppender, InMemoryStore};
use flexcore_domain::{EventEnvelope, ExpectedVersion, NewEvent, RawJson, StreamId};
use tokio::sync::watch;

/// Records what it handled; fails on events whose `data.fail` is true while `broken` is set.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, u64)>>,
    broken: AtomicBool,
}

impl Recorder {
    fn seen(&self) -> Vec<(String, u64)> {
        self.seen.lock().unwrap().clone()
    }

    fn of_stream(&self, stream: &str) -> Vec<u64> {
        self.seen()
            .into_iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, v)| v)
            .collect()
    }
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, event: &EventEnvelope) -> Result<()> {
        let data: serde_json::Value = event.data.decode().unwrap();
        if data["fail"] == true && self.broken.load(Ordering::SeqCst) {
            return Err(flexcore_app::Error::unavailable("downstream is down"));
        }
        self.seen
            .lock()
            .unwrap()
            .push((event.stream_id.to_string(), event.stream_version));
        Ok(())
    }
}

async fn append(store: &InMemoryStore, stream: &str, fail: bool) -> u64 {
    let event = NewEvent::new(
        "thing.happened",
        RawJson::from_string(format!("{{\"fail\":{fail}}}")).unwrap(),
    )
    .unwrap();
    store
        .append(
            StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            vec![event],
        )
        .await
        .unwrap()
        .last_position()
        .unwrap()
}

fn fast() -> DurableOptions {
    DurableOptions {
        max_attempts: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        checkpoint_every: 2,
        ..DurableOptions::default()
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

struct Running {
    control: SubscriptionControl,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(
    store: &Arc<InMemoryStore>,
    state: &Arc<InMemoryCheckpoints>,
    handler: &Arc<Recorder>,
    group: Option<ConsumerGroup>,
) -> Running {
    let (stop, shutdown) = watch::channel(false);
    let mut consumer =
        DurableConsumer::new("mailer", handler.clone(), store.clone(), state.clone())
            .with_options(fast());
    if let Some(group) = group {
        consumer = consumer.with_group(group);
    }
    let (control, task) = consumer.spawn(shutdown).await.unwrap();
    Running {
        control,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn a_consumer_resumes_from_its_checkpoint_and_loses_nothing() {
    let store = Arc::new(InMemoryStore::new());
    let state = Arc::new(InMemoryCheckpoints::new());
    let handler = Arc::new(Recorder::default());
    for i in 0..5 {
        append(&store, &format!("order-{i}"), false).await;
    }
    let running = start(&store, &state, &handler, None).await;
    eventually("5 events handled", async || handler.seen().len() == 5).await;
    running.stop().await;
    assert_eq!(state.load_checkpoint("mailer").await.unwrap(), Some(6));

    for i in 5..8 {
        append(&store, &format!("order-{i}"), false).await;
    }
    let running = start(&store, &state, &handler, None).await;
    eventually("8 events handled", async || handler.seen().len() == 8).await;
    let streams: HashSet<String> = handler.seen().into_iter().map(|(s, _)| s).collect();
    assert_eq!(streams.len(), 8, "each event once: {:?}", handler.seen());
    running.stop().await;
}

#[tokio::test]
async fn a_crash_redelivers_instead_of_skipping() {
    let store = Arc::new(InMemoryStore::new());
    let state = Arc::new(InMemoryCheckpoints::new());
    let handler = Arc::new(Recorder::default());
    for i in 0..10 {
        append(&store, &format!("order-{i}"), false).await;
    }
    // A checkpoint saved after only 3 events, then the process "dies" (the task is aborted,
    // nothing more is saved).
    state.save_checkpoint("mailer", 4).await.unwrap();
    let running = start(&store, &state, &handler, None).await;
    eventually("7 events handled", async || handler.seen().len() == 7).await;
    running.task.abort();
    let handled: HashSet<String> = handler.seen().into_iter().map(|(s, _)| s).collect();
    for i in 3..10 {
        assert!(
            handled.contains(&format!("order-{i}")),
            "order-{i} was skipped"
        );
    }
}

#[tokio::test]
async fn a_failing_event_is_parked_and_later_events_of_its_stream_wait_behind_it() {
    let store = Arc::new(InMemoryStore::new());
    let state = Arc::new(InMemoryCheckpoints::new());
    let handler = Arc::new(Recorder::default());
    handler.broken.store(true, Ordering::SeqCst);
    append(&store, "order-a", false).await; // a v0
    let failed = append(&store, "order-a", true).await; // a v1 fails
    append(&store, "order-b", false).await; // b v0
    let waiting = append(&store, "order-a", false).await; // a v2 waits behind a v1
    append(&store, "order-b", false).await; // b v1

    let running = start(&store, &state, &handler, None).await;
    eventually("stream b done", async || {
        handler.of_stream("order-b") == [0, 1]
    })
    .await;
    eventually("two letters parked", async || parked(&state).await == 2).await;
    assert_eq!(
        handler.of_stream("order-a"),
        [0],
        "a v2 must wait behind a v1"
    );
    let letters = running.control.dead_letters().await.unwrap();
    assert_eq!(letters[0].global_position, failed);
    assert!(matches!(
        letters[0].reason,
        ParkReason::Failed { attempts: 3, .. }
    ));
    assert_eq!(letters[1].global_position, waiting);
    assert_eq!(letters[1].reason, ParkReason::Waiting);

    // Live events of the blocked stream keep waiting; the status shows it.
    append(&store, "order-a", false).await; // a v3
    eventually("a v3 parked", async || parked(&state).await == 3).await;
    let status = running.control.status().await.unwrap();
    assert_eq!((status.parked, status.blocked_streams), (3, 1));

    // The waiting event cannot jump the queue.
    let refused = running.control.retry(waiting).await.unwrap_err();
    assert!(refused.to_string().contains("waits behind"), "{refused}");
    // Retrying while still broken fails and keeps everything parked.
    assert!(running.control.retry(failed).await.is_err());
    assert_eq!(handler.of_stream("order-a"), [0]);

    handler.broken.store(false, Ordering::SeqCst);
    running.control.retry(failed).await.unwrap();
    assert_eq!(handler.of_stream("order-a"), [0, 1, 2, 3]);
    assert!(running.control.dead_letters().await.unwrap().is_empty());

    // The stream is released: new events flow directly.
    append(&store, "order-a", false).await;
    eventually("a v4 handled", async || {
        handler.of_stream("order-a").len() == 5
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn parked_events_survive_a_restart_and_skip_releases_the_stream() {
    let store = Arc::new(InMemoryStore::new());
    let state = Arc::new(InMemoryCheckpoints::new());
    let handler = Arc::new(Recorder::default());
    handler.broken.store(true, Ordering::SeqCst);
    let failed = append(&store, "order-a", true).await;
    append(&store, "order-a", false).await;
    let running = start(&store, &state, &handler, None).await;
    eventually("two parked", async || parked(&state).await == 2).await;
    running.stop().await;

    // After a restart the stream is still blocked: a new event of it waits too.
    append(&store, "order-a", false).await;
    let running = start(&store, &state, &handler, None).await;
    eventually("three parked", async || parked(&state).await == 3).await;
    assert!(handler.of_stream("order-a").is_empty());

    // Skipping the failed event (still broken: it would fail again) hands the waiting ones on.
    running.control.skip(failed).await.unwrap();
    assert_eq!(handler.of_stream("order-a"), [1, 2]);
    assert!(running.control.dead_letters().await.unwrap().is_empty());
    let missing = running.control.skip(failed).await.unwrap_err();
    assert_eq!(missing.kind(), flexcore_app::ErrorKind::NotFound);
    running.stop().await;
}

#[tokio::test]
async fn a_consumer_group_splits_streams_between_members() {
    let store = Arc::new(InMemoryStore::new());
    let state = Arc::new(InMemoryCheckpoints::new());
    let members: Vec<Arc<Recorder>> = (0..3).map(|_| Arc::new(Recorder::default())).collect();
    for round in 0..4 {
        for i in 0..30 {
            let _ = round;
            append(&store, &format!("order-{i}"), false).await;
        }
    }
    let mut running = Vec::new();
    for (i, member) in members.iter().enumerate() {
        let group = ConsumerGroup::new(i as u32, 3).unwrap();
        running.push(start(&store, &state, member, Some(group)).await);
    }
    eventually("120 events handled", async || {
        members.iter().map(|m| m.seen().len()).sum::<usize>() == 120
    })
    .await;
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (i, member) in members.iter().enumerate() {
        assert!(!member.seen().is_empty(), "member {i} got no stream");
        for (stream, _) in member.seen() {
            let previous = owner.insert(stream.clone(), i);
            assert!(
                previous.is_none_or(|p| p == i),
                "{stream} went to two members"
            );
        }
        for stream in owner.iter().filter(|(_, m)| **m == i).map(|(s, _)| s) {
            assert_eq!(member.of_stream(stream), [0, 1, 2, 3], "{stream} in order");
        }
    }
    assert!(ConsumerGroup::new(3, 3).is_err());
    for r in running {
        r.stop().await;
    }
    assert_eq!(
        state.load_checkpoint("mailer#0/3").await.unwrap(),
        Some(121)
    );
}

#[tokio::test]
async fn a_restart_from_an_older_checkpoint_leaves_parked_events_as_they_are() {
    let store = Arc::new(InMemoryStore::new());
    let state = Arc::new(InMemoryCheckpoints::new());
    let handler = Arc::new(Recorder::default());
    handler.broken.store(true, Ordering::SeqCst);
    append(&store, "order-a", false).await;
    let failed = append(&store, "order-a", true).await;
    let waiting = append(&store, "order-a", false).await;
    append(&store, "order-b", false).await;
    let running = start(&store, &state, &handler, None).await;
    eventually("two parked", async || parked(&state).await == 2).await;
    eventually("order-b handled", async || {
        handler.of_stream("order-b") == [0]
    })
    .await;
    running.stop().await;

    // The process died before its checkpoint passed these events: everything is delivered
    // again from the start.
    state.reset_checkpoint("mailer").await.unwrap();
    let running = start(&store, &state, &handler, None).await;
    eventually("caught up again", async || {
        handler.of_stream("order-b") == [0, 0]
    })
    .await;
    let letters = running.control.dead_letters().await.unwrap();
    let at: Vec<u64> = letters.iter().map(|l| l.global_position).collect();
    assert_eq!(at, [failed, waiting], "nothing parked twice or anew");
    match &letters[0].reason {
        ParkReason::Failed { attempts, error } => {
            assert_eq!(*attempts, 3);
            assert!(error.contains("downstream is down"), "{error}");
        }
        other => panic!("the failure was overwritten: {other:?}"),
    }
    assert_eq!(letters[1].reason, ParkReason::Waiting);
    // The event before the failure was handled again (at least once); the status counts two.
    assert_eq!(handler.of_stream("order-a"), [0, 0]);
    assert_eq!(running.control.status().await.unwrap().parked, 2);
    running.stop().await;
}

async fn parked(state: &InMemoryCheckpoints) -> usize {
    state.dead_letters("mailer").await.unwrap().len()
}

#[tokio::test]
async fn an_idle_filtered_consumer_moves_past_the_events_it_does_not_take() {
    let store = Arc::new(InMemoryStore::new());
    let state = Arc::new(InMemoryCheckpoints::new());
    let handler = Arc::new(Recorder::default());
    append(&store, "order-1", false).await;
    let (stop, shutdown) = watch::channel(false);
    let (control, task) =
        DurableConsumer::new("mailer", handler.clone(), store.clone(), state.clone())
            .with_options(DurableOptions {
                filter: flexcore_app::store::EventFilter {
                    category: Some("order".into()),
                    ..Default::default()
                },
                ..fast()
            })
            .spawn(shutdown)
            .await
            .unwrap();
    eventually("the order handled", async || handler.seen().len() == 1).await;
    let mut head = 0;
    for i in 0..5 {
        head = append(&store, &format!("invoice-{i}"), false).await;
    }
    eventually("position past the invoices", async || {
        control.status().await.unwrap().position == head + 1
    })
    .await;
    let status = control.status().await.unwrap();
    stop.send(true).unwrap();
    task.await.unwrap();

    assert_eq!(handler.seen().len(), 1, "the invoices are not handled");
    assert_eq!(status.lag, 0, "{status:?}");
    assert_eq!(
        state.load_checkpoint("mailer").await.unwrap(),
        Some(head + 1),
        "a restart does not read them again"
    );
}

/// Checkpoints in memory; parking always fails, as with a dead-letter store that is down.
struct RefusesToPark {
    inner: InMemoryCheckpoints,
    attempts: AtomicU32,
}

#[async_trait]
impl CheckpointStore for RefusesToPark {
    async fn load_checkpoint(&self, consumer: &str) -> Result<Option<u64>> {
        self.inner.load_checkpoint(consumer).await
    }
    async fn save_checkpoint(&self, consumer: &str, position: u64) -> Result<()> {
        self.inner.save_checkpoint(consumer, position).await
    }
    async fn reset_checkpoint(&self, consumer: &str) -> Result<()> {
        self.inner.reset_checkpoint(consumer).await
    }
}

#[async_trait]
impl DeadLetterStore for RefusesToPark {
    async fn park(&self, _letters: &[DeadLetter]) -> Result<()> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        Err(flexcore_app::Error::unavailable(
            "the dead-letter store is down",
        ))
    }
    async fn dead_letters(&self, consumer: &str) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(consumer).await
    }
    async fn remove_dead_letter(&self, consumer: &str, global_position: u64) -> Result<bool> {
        self.inner
            .remove_dead_letter(consumer, global_position)
            .await
    }
}

#[tokio::test]
async fn shutdown_stops_a_consumer_whose_dead_letter_store_keeps_refusing() {
    let store = Arc::new(InMemoryStore::new());
    let state = Arc::new(RefusesToPark {
        inner: InMemoryCheckpoints::new(),
        attempts: AtomicU32::new(0),
    });
    let handler = Arc::new(Recorder::default());
    handler.broken.store(true, Ordering::SeqCst);
    let failing = append(&store, "order-1", true).await;
    let (stop, shutdown) = watch::channel(false);
    let (_control, task) =
        DurableConsumer::new("mailer", handler.clone(), store.clone(), state.clone())
            .with_options(fast())
            .spawn(shutdown)
            .await
            .unwrap();
    eventually("parking is being retried", async || {
        state.attempts.load(Ordering::SeqCst) >= 3
    })
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the consumer stops although parking keeps failing")
        .unwrap();

    let checkpoint = state.load_checkpoint("mailer").await.unwrap().unwrap_or(0);
    assert!(
        checkpoint <= failing,
        "the checkpoint ({checkpoint}) does not pass the event that was neither handled nor parked ({failing})"
    );
    assert!(handler.seen().is_empty());
}
