//! What the broker tests share: a TCP proxy that can cut a broker off, the sample domain's bus
//! with test command types, and checks on what arrived.

#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::command::{
    Command, CommandBus, CommandBusExt, CommandContext, CommandHandler, CommandOutcome,
    CommandRouter,
};
use flexcore_app::durable::InMemoryCheckpoints;
use flexcore_app::outbox::{EventPublisher, OutboxOptions, OutboxRelay};
use flexcore_app::repository::{Repository, RetryPolicy};
use flexcore_app::store::{
    EventAppender, EventFilter, EventReader, EventStore, InMemoryStore, ReadAll, StreamWriteResult,
};
use flexcore_app::{Error, Result};
use flexcore_domain::{EventEnvelope, ExpectedVersion, NewEvent, RawJson, StreamId};
use serde_json::Value;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// A TCP proxy in front of a real broker. `down()` closes every open connection and refuses new
/// ones (accepted and closed at once) until `up()`.
pub struct TcpProxy {
    port: u16,
    up: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, state) = watch::channel(true);
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !*state.borrow() {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let mut state = state.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { port, up, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn down(&self) {
        self.up.send_replace(false);
    }

    pub fn up(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Appends `per_stream` events to each of `streams`, interleaved one append per stream at a time.
pub async fn append_interleaved(
    store: &InMemoryStore,
    streams: &[String],
    per_stream: usize,
) -> Vec<EventEnvelope> {
    for round in 0..per_stream {
        for stream in streams {
            let event = NewEvent::new(
                "order.line_added",
                RawJson::to_raw(&serde_json::json!({ "round": round })).unwrap(),
            )
            .unwrap();
            store
                .append(
                    StreamId::new(stream).unwrap(),
                    ExpectedVersion::Any,
                    vec![event],
                )
                .await
                .unwrap();
        }
    }
    all_events(store).await
}

pub async fn all_events(store: &dyn EventReader) -> Vec<EventEnvelope> {
    store
        .read_all(ReadAll {
            from_position: 0,
            limit: 10_000,
            filter: EventFilter::default(),
        })
        .await
        .unwrap()
        .events
}

/// Checks what a broker delivered against what was appended: every event is there; the first
/// copy of each arrives in per-stream version order; a duplicate is an exact re-send.
/// Returns how many duplicates there were.
pub fn check_delivery(appended: &[EventEnvelope], delivered: &[EventEnvelope]) -> usize {
    let mut first: HashMap<_, &EventEnvelope> = HashMap::new();
    let mut next_version: HashMap<&str, u64> = HashMap::new();
    let mut duplicates = 0;
    for event in delivered {
        if let Some(earlier) = first.get(&event.event_id) {
            assert_eq!(*earlier, event, "a duplicate is an exact re-send");
            duplicates += 1;
            continue;
        }
        first.insert(event.event_id, event);
        let next = next_version.entry(event.stream_id.as_str()).or_default();
        assert_eq!(
            event.stream_version, *next,
            "{} arrived out of order",
            event.stream_id
        );
        *next += 1;
    }
    for event in appended {
        assert_eq!(
            first.get(&event.event_id),
            Some(&event),
            "event {} at {} arrived intact",
            event.event_id,
            event.global_position
        );
    }
    assert_eq!(first.len(), appended.len(), "nothing else arrived");
    duplicates
}

pub fn stream_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("order-{}-{i}", uuid::Uuid::new_v4().simple()))
        .collect()
}

/// A relay tuned for tests: small batches, quick retries.
pub fn relay(
    name: &str,
    publisher: Arc<dyn EventPublisher>,
    store: Arc<InMemoryStore>,
) -> (OutboxRelay, Arc<InMemoryCheckpoints>) {
    let checkpoints = Arc::new(InMemoryCheckpoints::new());
    let relay =
        OutboxRelay::new(name, publisher, store, checkpoints.clone()).with_options(OutboxOptions {
            batch_size: 7,
            poll_interval: Duration::from_millis(50),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            publish_timeout: Duration::from_secs(3),
            ..OutboxOptions::default()
        });
    (relay, checkpoints)
}

/// Polls `f` until it returns `true` or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A command that fails transiently every time, counting its attempts.
pub struct Poison(pub Arc<AtomicU32>);

#[async_trait]
impl CommandHandler for Poison {
    async fn handle(&self, _: &CommandContext, _: &Value) -> Result<StreamWriteResult> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(Error::unavailable("the poison command always fails"))
    }
}

/// The sample domain's commands plus `poison`, wired like the server (retry, idempotency).
pub fn test_bus(store: Arc<dyn EventStore>) -> (Arc<dyn CommandBus>, Arc<AtomicU32>) {
    let mut router = CommandRouter::new();
    for (command_type, handler) in
        flexcore_sample_users::commands::command_handlers(Repository::new(store))
    {
        router.register(command_type, handler).unwrap();
    }
    let poison_calls = Arc::new(AtomicU32::new(0));
    router
        .register("poison", Arc::new(Poison(poison_calls.clone())))
        .unwrap();
    let bus = router
        .with_retry(RetryPolicy::default())
        .with_idempotency(Duration::from_secs(3600), 10_000);
    (Arc::new(bus), poison_calls)
}

/// Runs the first command through `inner`, then hangs forever as if the process died between
/// the commit and the acknowledgement; `committed` is notified once the command returned.
pub struct HangAfterFirstCommit {
    pub inner: Arc<dyn CommandBus>,
    pub committed: Arc<Notify>,
    pub calls: AtomicU32,
}

#[async_trait]
impl CommandBus for HangAfterFirstCommit {
    async fn send(&self, ctx: &CommandContext, command: &Command) -> Result<CommandOutcome> {
        let outcome = self.inner.send(ctx, command).await;
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.committed.notify_one();
            std::future::pending::<()>().await;
        }
        outcome
    }
}

/// How many `user.created` events the store holds.
pub async fn users_created(store: &dyn EventReader) -> usize {
    all_events(store)
        .await
        .iter()
        .filter(|e| e.event_type == "user.created")
        .count()
}

pub fn unique_email() -> String {
    format!("{}@example.com", uuid::Uuid::new_v4().simple())
}
