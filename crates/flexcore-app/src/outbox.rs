//! The transactional outbox: committed events published to a message broker, at least once, in
//! order per stream.
//!
//! The event log *is* the outbox (see `docs/adr/0005-outbox.md`): an event is recorded for
//! publication by the very transaction that appends it, so nothing extra is written on the
//! append path and no committed event can be missed. An [`OutboxRelay`] follows the global log
//! with a [`Subscription`] and keeps, in a [`CheckpointStore`], the position after the last
//! event the broker confirmed. Its loop:
//!
//! 1. read the next batch from the checkpoint (optionally through an [`EventFilter`]);
//! 2. hand it to the [`EventPublisher`], which returns only once the broker confirmed every
//!    event of the batch;
//! 3. save the checkpoint.
//!
//! On any failure (broker down, confirm refused, checkpoint store unreachable) the relay backs
//! off, doubling the delay up to a cap, and starts again from the saved checkpoint (a failed
//! read of the log is retried where it was, which is the saved checkpoint too). An event is
//! therefore never skipped, and may be published more than once — always whole and unchanged,
//! with its `event_id` as the broker's de-duplication id. Batches go out in global order and a
//! publisher keeps the order within a batch, so each stream's events arrive in version order
//! (with re-sends of a batch possibly repeating events already delivered).
//!
//! Metrics (through the `metrics` facade): the gauge `flexcore_outbox_lag{relay}` (events
//! committed, as far as this process knows, but not yet confirmed) and the counter
//! `flexcore_outbox_published_total{relay}` (events confirmed, re-sends included).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flexcore_domain::EventEnvelope;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::durable::CheckpointStore;
use crate::follow::{Backoff, LogFollower, SessionFailed, Shutdown, restart_until_stopped};
use crate::store::{EventFilter, EventReader};
use crate::subscription::{BACKGROUND_LINGER, Subscription, SubscriptionOptions};
use crate::{Error, Result};

/// Publishes committed events to a broker. Implemented by each broker adapter.
#[async_trait]
pub trait EventPublisher: Send + Sync {
    /// Publishes `events` in the given order and returns only after the broker confirmed all
    /// of them. An error means some may have been published and some not: the relay sends the
    /// whole batch again, so the publisher must mark every message with the event's `event_id`
    /// for the consumer (or the broker) to drop re-sends.
    async fn publish(&self, events: &[EventEnvelope]) -> Result<()>;

    /// A short name for logs, e.g. `rabbitmq`.
    fn name(&self) -> &str;
}

#[async_trait]
impl<P: EventPublisher + ?Sized> EventPublisher for Arc<P> {
    async fn publish(&self, events: &[EventEnvelope]) -> Result<()> {
        (**self).publish(events).await
    }

    fn name(&self) -> &str {
        (**self).name()
    }
}

/// How a relay reads, waits and backs off.
#[derive(Debug, Clone)]
pub struct OutboxOptions {
    /// At most this many events per publish call.
    pub batch_size: usize,
    /// Which events to publish; the others are skipped (and the checkpoint moves past them).
    pub filter: EventFilter,
    /// Where a relay with no saved checkpoint starts (`0`: the whole log).
    pub start_position: u64,
    /// How long to wait for a wake-up before reading the log again (writes by other processes
    /// are only seen by polling).
    pub poll_interval: Duration,
    /// The first delay after a failure; doubled after each further failure.
    pub initial_backoff: Duration,
    /// The longest delay between attempts.
    pub max_backoff: Duration,
    /// How long one publish call may take before it counts as failed.
    pub publish_timeout: Duration,
    /// Once caught up, read the log at most this often (see [`SubscriptionOptions::linger`]).
    pub linger: Duration,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            filter: EventFilter::default(),
            start_position: 0,
            poll_interval: Duration::from_millis(250),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(30),
            linger: BACKGROUND_LINGER,
        }
    }
}

/// Relays the global log to one broker (see the module docs).
pub struct OutboxRelay {
    name: String,
    publisher: Arc<dyn EventPublisher>,
    reader: Arc<dyn EventReader>,
    checkpoints: Arc<dyn CheckpointStore>,
    options: OutboxOptions,
}

impl OutboxRelay {
    /// A relay called `name` (unique among relays sharing `checkpoints`), with default options.
    pub fn new(
        name: impl Into<String>,
        publisher: Arc<dyn EventPublisher>,
        reader: Arc<dyn EventReader>,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> Self {
        Self {
            name: name.into(),
            publisher,
            reader,
            checkpoints,
            options: OutboxOptions::default(),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: OutboxOptions) -> Self {
        self.options = options;
        self
    }

    /// Publishes only the events that pass `filter`.
    pub fn with_filter(mut self, filter: EventFilter) -> Self {
        self.options.filter = filter;
        self
    }

    /// Publishes at most `batch_size` events per call (at least one).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.options.batch_size = batch_size.max(1);
        self
    }

    /// The relay's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key of this relay's checkpoint in the [`CheckpointStore`]: `outbox:{name}`, apart
    /// from durable consumers that share the store.
    pub fn checkpoint_key(&self) -> String {
        checkpoint_key(&self.name)
    }

    /// Runs the relay on a task until `shutdown` turns `true` (or its sender is dropped).
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Runs the relay until `shutdown` turns `true` (or its sender is dropped). A batch in
    /// flight at shutdown is abandoned unconfirmed and sent again by the next run.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let key = self.checkpoint_key();
        let shutdown = Shutdown::new(shutdown);
        tracing::info!(relay = %self.name, broker = self.publisher.name(), "outbox relay started");
        let (this, key) = (&self, key.as_str());
        restart_until_stopped(
            shutdown.clone(),
            Backoff::new(self.options.initial_backoff, self.options.max_backoff),
            || {
                let mut stop = shutdown.clone();
                let relay = this.relay_from_checkpoint(key, shutdown.clone());
                async move { stop.unless_requested(relay).await.unwrap_or(Ok(())) }
            },
            |error, delay| {
                tracing::warn!(
                    relay = %self.name,
                    broker = self.publisher.name(),
                    error = %error.chain(),
                    retry_in_ms = delay.as_millis() as u64,
                    "outbox relay failed; publishing again from the checkpoint"
                );
            },
        )
        .await;
        tracing::info!(relay = %self.name, "outbox relay stopped");
    }

    /// Loads the checkpoint and publishes from there until something fails (or shutdown:
    /// `Ok`). A failed read of the log is retried in place, from the same position; a failed
    /// publish or checkpoint save ends the session, which starts again from the stored
    /// checkpoint. Each batch confirmed (or found empty) counts as progress.
    async fn relay_from_checkpoint(
        &self,
        key: &str,
        shutdown: Shutdown,
    ) -> Result<(), SessionFailed<Error>> {
        let mut saved = self
            .checkpoints
            .load_checkpoint(key)
            .await
            .map_err(SessionFailed::new)?
            .unwrap_or(self.options.start_position);
        let mut follower = LogFollower::new(
            key,
            Subscription::new(
                self.reader.clone(),
                saved,
                SubscriptionOptions {
                    page_size: self.options.batch_size.max(1),
                    poll_interval: self.options.poll_interval,
                    filter: self.options.filter.clone(),
                    name: None,
                    linger: self.options.linger,
                },
            ),
            Backoff::new(self.options.initial_backoff, self.options.max_backoff),
            shutdown,
        );
        let head = self.reader.head();
        let mut progressed = false;
        loop {
            self.record_lag(*head.borrow(), saved);
            let Some(events) = follower.next_batch().await else {
                return Ok(());
            };
            let next = follower.subscription().position();
            if let Err(error) = self.publish_and_save(key, &events, saved, next).await {
                return Err(SessionFailed {
                    error,
                    after_progress: progressed,
                });
            }
            saved = saved.max(next);
            progressed = true;
        }
    }

    /// Publishes one batch, then saves the checkpoint `next` (past the batch) if it moved:
    /// an empty batch may still have moved past events the filter skipped.
    async fn publish_and_save(
        &self,
        key: &str,
        events: &[EventEnvelope],
        saved: u64,
        next: u64,
    ) -> Result<()> {
        if !events.is_empty() {
            tokio::time::timeout(self.options.publish_timeout, self.publisher.publish(events))
                .await
                .map_err(|_| {
                    Error::unavailable(format!(
                        "{} did not confirm {} events within {:?}",
                        self.publisher.name(),
                        events.len(),
                        self.options.publish_timeout
                    ))
                })??;
            metrics::counter!("flexcore_outbox_published_total", "relay" => self.name.clone())
                .increment(events.len() as u64);
            tracing::debug!(
                relay = %self.name,
                events = events.len(),
                next_position = next,
                "outbox batch confirmed"
            );
        }
        if next > saved {
            self.checkpoints.save_checkpoint(key, next).await?;
        }
        Ok(())
    }

    fn record_lag(&self, head: u64, checkpoint: u64) {
        // Positions start at 1 and the checkpoint is the next one to publish.
        let lag = crate::subscription::lag(head, checkpoint);
        metrics::gauge!("flexcore_outbox_lag", "relay" => self.name.clone()).set(lag as f64);
    }
}

/// The checkpoint key of the relay called `name` (see [`OutboxRelay::checkpoint_key`]).
pub fn checkpoint_key(name: &str) -> String {
    format!("outbox:{name}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use flexcore_domain::{ExpectedVersion, NewEvent, RawJson, StreamId};

    use super::*;
    use crate::durable::InMemoryCheckpoints;
    use crate::store::{EventAppender, InMemoryStore};

    /// Records what it was asked to publish; refuses the first `failures` calls after
    /// "publishing" the first event of the batch (a partial send, like a broker dying mid-batch).
    struct FlakyPublisher {
        failures: Mutex<u32>,
        sent: Mutex<Vec<EventEnvelope>>,
    }

    impl FlakyPublisher {
        fn new(failures: u32) -> Self {
            Self {
                failures: Mutex::new(failures),
                sent: Mutex::new(Vec::new()),
            }
        }

        fn sent(&self) -> Vec<EventEnvelope> {
            self.sent.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl EventPublisher for FlakyPublisher {
        async fn publish(&self, events: &[EventEnvelope]) -> Result<()> {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                self.sent.lock().unwrap().push(events[0].clone());
                return Err(Error::unavailable("broker down"));
            }
            self.sent.lock().unwrap().extend_from_slice(events);
            Ok(())
        }

        fn name(&self) -> &str {
            "flaky"
        }
    }

    async fn append(store: &InMemoryStore, stream: &str, event_type: &str, n: usize) {
        let events = (0..n)
            .map(|i| {
                NewEvent::new(
                    event_type,
                    RawJson::to_raw(&serde_json::json!({ "i": i })).unwrap(),
                )
                .unwrap()
            })
            .collect();
        store
            .append(StreamId::new(stream).unwrap(), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }

    fn fast_options() -> OutboxOptions {
        OutboxOptions {
            batch_size: 3,
            poll_interval: Duration::from_millis(20),
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            ..OutboxOptions::default()
        }
    }

    async fn wait_for_checkpoint(checkpoints: &InMemoryCheckpoints, key: &str, position: u64) {
        for _ in 0..500 {
            if checkpoints.load_checkpoint(key).await.unwrap() >= Some(position) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the relay never reached position {position}");
    }

    /// Every event once in order after the re-sends are dropped; re-sends are whole events.
    fn assert_in_stream_order(sent: &[EventEnvelope], expected: usize) {
        let mut seen = HashMap::new();
        let mut next_version: HashMap<String, u64> = HashMap::new();
        for event in sent {
            if let Some(first) = seen.insert(event.event_id, event.clone()) {
                assert_eq!(&first, event, "a re-send is the same event");
                continue;
            }
            let next = next_version.entry(event.stream_id.to_string()).or_default();
            assert_eq!(
                event.stream_version, *next,
                "in order within {}",
                event.stream_id
            );
            *next += 1;
        }
        assert_eq!(seen.len(), expected);
    }

    #[tokio::test]
    async fn failures_delay_publication_and_lose_nothing() {
        let store = Arc::new(InMemoryStore::new());
        let checkpoints = Arc::new(InMemoryCheckpoints::new());
        let publisher = Arc::new(FlakyPublisher::new(4));
        append(&store, "a-1", "a.happened", 4).await;
        append(&store, "b-1", "b.happened", 3).await;

        let (stop, shutdown) = watch::channel(false);
        let relay = OutboxRelay::new(
            "test",
            publisher.clone(),
            store.clone(),
            checkpoints.clone(),
        )
        .with_options(fast_options());
        let task = relay.spawn(shutdown);
        append(&store, "a-1", "a.happened", 2).await;
        wait_for_checkpoint(&checkpoints, "outbox:test", 10).await;
        stop.send(true).unwrap();
        task.await.unwrap();

        let sent = publisher.sent();
        assert!(sent.len() > 9, "the failed attempts sent something too");
        assert_in_stream_order(&sent, 9);
    }

    #[tokio::test]
    async fn a_restarted_relay_continues_from_its_checkpoint() {
        let store = Arc::new(InMemoryStore::new());
        let checkpoints = Arc::new(InMemoryCheckpoints::new());
        append(&store, "a-1", "a.happened", 5).await;

        let first = Arc::new(FlakyPublisher::new(0));
        let (stop, shutdown) = watch::channel(false);
        let task = OutboxRelay::new("r", first.clone(), store.clone(), checkpoints.clone())
            .with_options(fast_options())
            .spawn(shutdown);
        wait_for_checkpoint(&checkpoints, "outbox:r", 6).await;
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(first.sent().len(), 5);

        append(&store, "a-1", "a.happened", 2).await;
        let second = Arc::new(FlakyPublisher::new(0));
        let (stop, shutdown) = watch::channel(false);
        let task = OutboxRelay::new("r", second.clone(), store.clone(), checkpoints.clone())
            .with_options(fast_options())
            .spawn(shutdown);
        wait_for_checkpoint(&checkpoints, "outbox:r", 8).await;
        stop.send(true).unwrap();
        task.await.unwrap();
        let versions: Vec<u64> = second.sent().iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, vec![5, 6]);
    }

    #[tokio::test]
    async fn the_filter_skips_events_and_the_checkpoint_moves_past_them() {
        let store = Arc::new(InMemoryStore::new());
        let checkpoints = Arc::new(InMemoryCheckpoints::new());
        append(&store, "a-1", "a.happened", 2).await;
        append(&store, "b-1", "b.happened", 2).await;

        let publisher = Arc::new(FlakyPublisher::new(0));
        let (stop, shutdown) = watch::channel(false);
        let task = OutboxRelay::new("f", publisher.clone(), store.clone(), checkpoints.clone())
            .with_options(fast_options())
            .with_filter(EventFilter {
                type_prefix: Some("a.".into()),
                category: None,
            })
            .spawn(shutdown);
        wait_for_checkpoint(&checkpoints, "outbox:f", 5).await;
        stop.send(true).unwrap();
        task.await.unwrap();
        let types: Vec<String> = publisher.sent().into_iter().map(|e| e.event_type).collect();
        assert_eq!(types, vec!["a.happened", "a.happened"]);
    }

    #[tokio::test]
    async fn a_dropped_shutdown_sender_stops_the_relay() {
        let store = Arc::new(InMemoryStore::new());
        let (stop, shutdown) = watch::channel(false);
        let task = OutboxRelay::new(
            "d",
            Arc::new(FlakyPublisher::new(0)),
            store,
            Arc::new(InMemoryCheckpoints::new()),
        )
        .spawn(shutdown);
        drop(stop);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops")
            .unwrap();
    }
}
