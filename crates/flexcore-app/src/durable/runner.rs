//! The task that drives one durable consumer, and the handle operators use to steer it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flexcore_domain::{EventEnvelope, StreamId};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{ConsumerStateStore, DeadLetter, ParkReason, stream_hash};
use crate::event_bus::EventHandler;
use crate::follow::{Backoff, LogFollower, READ_RETRY, Shutdown};
use crate::store::{EventFilter, EventReader, ReadAll};
use crate::subscription::{BACKGROUND_LINGER, Subscription, SubscriptionOptions, lag};
use crate::{Error, Result};

/// How a durable consumer retries, checkpoints and pages.
#[derive(Debug, Clone)]
pub struct DurableOptions {
    /// Handler runs per event before it is parked (at least 1).
    pub max_attempts: u32,
    /// The first backoff delay; it doubles after every failed attempt.
    pub base_delay: Duration,
    /// The longest backoff delay.
    pub max_delay: Duration,
    /// Where a consumer with no checkpoint starts (`0`: the whole history).
    pub start_position: u64,
    /// Which events the consumer sees.
    pub filter: EventFilter,
    /// Events per read of the log.
    pub page_size: usize,
    /// The checkpoint is saved after this many events, and whenever the consumer is idle.
    pub checkpoint_every: u64,
    /// Once caught up, read the log at most this often (see [`SubscriptionOptions::linger`]).
    pub linger: Duration,
}

impl Default for DurableOptions {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            start_position: 0,
            filter: EventFilter::default(),
            page_size: 1000,
            checkpoint_every: 500,
            linger: BACKGROUND_LINGER,
        }
    }
}

/// One member of a consumer group: it handles the streams whose hash modulo `size` is
/// `member`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerGroup {
    /// This member's index, `0..size`.
    pub member: u32,
    /// How many members share the subscription.
    pub size: u32,
}

impl ConsumerGroup {
    /// Member `member` of a group of `size`; fails unless `member < size`.
    pub fn new(member: u32, size: u32) -> Result<Self> {
        if size == 0 || member >= size {
            return Err(Error::validation(format!(
                "consumer group member {member} is not in 0..{size}"
            )));
        }
        Ok(Self { member, size })
    }

    /// Whether this member handles `stream_id`.
    pub fn owns(&self, stream_id: &StreamId) -> bool {
        stream_hash(stream_id) % u64::from(self.size) == u64::from(self.member)
    }
}

/// What a consumer reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionStatus {
    /// The consumer's id (its name, plus `#member/size` in a group).
    pub consumer: String,
    /// The first position not yet handled.
    pub position: u64,
    /// Events committed but not yet handled (as far as this process knows the head).
    pub lag: u64,
    /// Parked events, failed and waiting.
    pub parked: usize,
    /// Streams held back behind a failed event.
    pub blocked_streams: usize,
}

enum Control {
    Status(oneshot::Sender<SubscriptionStatus>),
    Retry(u64, oneshot::Sender<Result<()>>),
    Skip(u64, oneshot::Sender<Result<()>>),
}

/// Steers a running consumer: status, and the operator's retry and skip of parked events.
#[derive(Clone)]
pub struct SubscriptionControl {
    consumer: String,
    store: Arc<dyn ConsumerStateStore>,
    sender: mpsc::Sender<Control>,
}

impl SubscriptionControl {
    /// The consumer's id.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The consumer's position, lag and parked events.
    pub async fn status(&self) -> Result<SubscriptionStatus> {
        let (reply, answer) = oneshot::channel();
        self.ask(Control::Status(reply)).await?;
        answer.await.map_err(|_| self.stopped())
    }

    /// The consumer's parked events, in position order.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.store.dead_letters(&self.consumer).await
    }

    /// Runs the handler again on a failed parked event; on success the event is removed and
    /// the events waiting behind it are handled in order.
    pub async fn retry(&self, global_position: u64) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.ask(Control::Retry(global_position, reply)).await?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// Gives up on a parked event without handling it; the events waiting behind it are then
    /// handled in order.
    pub async fn skip(&self, global_position: u64) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.ask(Control::Skip(global_position, reply)).await?;
        answer.await.map_err(|_| self.stopped())?
    }

    async fn ask(&self, control: Control) -> Result<()> {
        self.sender.send(control).await.map_err(|_| self.stopped())
    }

    fn stopped(&self) -> Error {
        Error::unavailable(format!("consumer '{}' is not running", self.consumer))
    }
}

/// A named, checkpointed consumer of the global log.
pub struct DurableConsumer {
    name: String,
    handler: Arc<dyn EventHandler>,
    reader: Arc<dyn EventReader>,
    store: Arc<dyn ConsumerStateStore>,
    options: DurableOptions,
    group: Option<ConsumerGroup>,
}

impl DurableConsumer {
    /// A consumer called `name` that hands events to `handler`, with default options.
    pub fn new(
        name: impl Into<String>,
        handler: Arc<dyn EventHandler>,
        reader: Arc<dyn EventReader>,
        store: Arc<dyn ConsumerStateStore>,
    ) -> Self {
        Self {
            name: name.into(),
            handler,
            reader,
            store,
            options: DurableOptions::default(),
            group: None,
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: DurableOptions) -> Self {
        self.options = options;
        self.options.max_attempts = self.options.max_attempts.max(1);
        self.options.checkpoint_every = self.options.checkpoint_every.max(1);
        self
    }

    /// Makes this consumer one member of a group.
    pub fn with_group(mut self, group: ConsumerGroup) -> Self {
        self.group = Some(group);
        self
    }

    /// The id its checkpoint and dead letters are stored under.
    pub fn consumer_id(&self) -> String {
        match self.group {
            Some(g) => format!("{}#{}/{}", self.name, g.member, g.size),
            None => self.name.clone(),
        }
    }

    /// Loads the checkpoint and the parked events, then runs until `shutdown` turns true,
    /// saving the checkpoint on the way out.
    pub async fn spawn(
        self,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(SubscriptionControl, JoinHandle<()>)> {
        let consumer = self.consumer_id();
        let position = self
            .store
            .load_checkpoint(&consumer)
            .await?
            .unwrap_or(self.options.start_position);
        let parked = self.store.dead_letters(&consumer).await?;
        let (sender, receiver) = mpsc::channel(16);
        let control = SubscriptionControl {
            consumer: consumer.clone(),
            store: Arc::clone(&self.store),
            sender,
        };
        let shutdown = Shutdown::new(shutdown);
        let follower = LogFollower::new(
            consumer.clone(),
            Subscription::new(
                Arc::clone(&self.reader),
                position,
                SubscriptionOptions {
                    page_size: self.options.page_size,
                    filter: self.options.filter.clone(),
                    linger: self.options.linger,
                    ..SubscriptionOptions::default()
                },
            ),
            Backoff::fixed(READ_RETRY),
            shutdown.clone(),
        );
        let mut runner = Runner {
            blocked: parked.iter().fold(HashMap::new(), |mut blocked, l| {
                block(&mut blocked, &l.stream_id, l.global_position);
                blocked
            }),
            parked: parked.len(),
            head: self.reader.head(),
            saved: position,
            position,
            consumer,
            consumer_state: self.store,
            handler: self.handler,
            reader: self.reader,
            options: self.options,
            group: self.group,
        };
        let task = tokio::spawn(async move { runner.run(follower, receiver, shutdown).await });
        Ok((control, task))
    }
}

struct Runner {
    consumer: String,
    handler: Arc<dyn EventHandler>,
    reader: Arc<dyn EventReader>,
    consumer_state: Arc<dyn ConsumerStateStore>,
    options: DurableOptions,
    group: Option<ConsumerGroup>,
    head: watch::Receiver<u64>,
    /// The first position not yet handled or parked.
    position: u64,
    /// The last checkpoint saved.
    saved: u64,
    /// Streams with parked events, with the first and last parked position: their later
    /// events wait; re-delivered ones (after a restart from an older checkpoint) in that range
    /// are parked already, and earlier ones were handled before and are handled again.
    blocked: HashMap<StreamId, (u64, u64)>,
    parked: usize,
}

/// How often an idle consumer saves a moved checkpoint.
const IDLE_SAVE: Duration = Duration::from_millis(200);

impl Runner {
    /// Handles events until shutdown, answering the operator's requests between events, then
    /// saves the checkpoint. While a failed read waits for its retry, requests are still
    /// answered and shutdown still stops the consumer at once.
    async fn run(
        &mut self,
        mut follower: LogFollower,
        mut control: mpsc::Receiver<Control>,
        mut shutdown: Shutdown,
    ) {
        let mut interrupt = shutdown.clone();
        let mut idle = tokio::time::interval(IDLE_SAVE);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.requested() => break,
                Some(message) = control.recv() => self.steer(message).await,
                _ = idle.tick() => {
                    // No event is in hand here: move past the ones the filter skipped, so an
                    // idle consumer's checkpoint and lag follow the log, not its last match.
                    self.position = self.position.max(follower.subscription().passed());
                    self.save_checkpoint().await;
                }
                next = follower.next() => {
                    let Some(event) = next else { break };
                    if !self.deliver(&event, &mut interrupt).await {
                        break;
                    }
                    self.position = event.global_position + 1;
                    if self.position - self.saved >= self.options.checkpoint_every {
                        self.save_checkpoint().await;
                    }
                }
            }
        }
        self.save_checkpoint().await;
    }

    /// Handles or parks one event; `false` when shutdown interrupted it (it will be
    /// delivered again after a restart).
    async fn deliver(&mut self, event: &EventEnvelope, shutdown: &mut Shutdown) -> bool {
        if self.group.is_some_and(|g| !g.owns(&event.stream_id)) {
            return true;
        }
        if let Some(&(first, last)) = self.blocked.get(&event.stream_id) {
            if event.global_position > last {
                return self.park(event, ParkReason::Waiting, shutdown).await;
            }
            if event.global_position >= first {
                return true; // parked already: re-delivered after a restart
            }
        }
        match self.handle_with_retries(event, shutdown).await {
            Delivery::Handled => true,
            Delivery::Interrupted => false,
            Delivery::Failed { attempts, error } => {
                self.park(event, ParkReason::Failed { attempts, error }, shutdown)
                    .await
            }
        }
    }

    async fn handle_with_retries(
        &self,
        event: &EventEnvelope,
        shutdown: &mut Shutdown,
    ) -> Delivery {
        let mut backoff = Backoff::new(self.options.base_delay, self.options.max_delay);
        let mut attempt = 1;
        loop {
            match self.handler.handle(event).await {
                Ok(()) => return Delivery::Handled,
                Err(e) if attempt >= self.options.max_attempts => {
                    tracing::error!(consumer = %self.consumer, event_id = %event.event_id, position = event.global_position, attempts = attempt, error = %e.chain(), "event parked as a dead letter");
                    return Delivery::Failed {
                        attempts: attempt,
                        error: e.to_string(),
                    };
                }
                Err(e) => {
                    tracing::warn!(consumer = %self.consumer, event_id = %event.event_id, attempt, error = %e.chain(), "event handler failed; retrying");
                    metrics::counter!("flexcore_subscription_retries_total", "subscription" => self.consumer.clone()).increment(1);
                    if !shutdown.sleep(backoff.next_delay()).await {
                        return Delivery::Interrupted;
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Parks an event durably, retrying the store until it succeeds: the checkpoint must not
    /// pass an event that is neither handled nor parked. `false` when shutdown came first: the
    /// event is not parked, and is delivered again after a restart.
    async fn park(
        &mut self,
        event: &EventEnvelope,
        reason: ParkReason,
        shutdown: &mut Shutdown,
    ) -> bool {
        let letter = DeadLetter {
            consumer: self.consumer.clone(),
            global_position: event.global_position,
            stream_id: event.stream_id.clone(),
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            reason,
            parked_at: OffsetDateTime::now_utc(),
        };
        let mut backoff = Backoff::new(self.options.base_delay, self.options.max_delay);
        while let Err(e) = self
            .consumer_state
            .park(std::slice::from_ref(&letter))
            .await
        {
            tracing::warn!(consumer = %self.consumer, error = %e.chain(), "cannot park an event; retrying");
            if !shutdown.sleep(backoff.next_delay()).await {
                return false;
            }
        }
        block(&mut self.blocked, &event.stream_id, event.global_position);
        self.parked += 1;
        metrics::gauge!("flexcore_subscription_parked", "subscription" => self.consumer.clone())
            .set(self.parked as f64);
        true
    }

    async fn save_checkpoint(&mut self) {
        let head = *self.head.borrow();
        let behind = lag(head, self.position);
        metrics::gauge!("flexcore_subscription_lag", "subscription" => self.consumer.clone())
            .set(behind as f64);
        if self.position == self.saved {
            return;
        }
        match self
            .consumer_state
            .save_checkpoint(&self.consumer, self.position)
            .await
        {
            Ok(()) => self.saved = self.position,
            // Not fatal: a later save covers it; a crash meanwhile only re-delivers.
            Err(e) => {
                tracing::warn!(consumer = %self.consumer, error = %e.chain(), "cannot save the checkpoint")
            }
        }
    }

    async fn steer(&mut self, message: Control) {
        match message {
            Control::Status(reply) => {
                let head = *self.head.borrow();
                let _ = reply.send(SubscriptionStatus {
                    consumer: self.consumer.clone(),
                    position: self.position,
                    lag: lag(head, self.position),
                    parked: self.parked,
                    blocked_streams: self.blocked.len(),
                });
            }
            Control::Retry(position, reply) => {
                let _ = reply.send(self.release(position, true).await);
            }
            Control::Skip(position, reply) => {
                let _ = reply.send(self.release(position, false).await);
            }
        }
    }

    /// Retries (`run_handler`) or skips the first parked event of a stream, then handles the
    /// events waiting behind it in order until one fails again or the stream is free.
    async fn release(&mut self, position: u64, run_handler: bool) -> Result<()> {
        let letters = self.consumer_state.dead_letters(&self.consumer).await?;
        let letter = letters
            .iter()
            .find(|l| l.global_position == position)
            .ok_or_else(|| {
                Error::Domain(flexcore_domain::DomainError::NotFound(format!(
                    "consumer '{}' has no parked event at position {position}",
                    self.consumer
                )))
            })?;
        let stream: Vec<&DeadLetter> = letters
            .iter()
            .filter(|l| l.stream_id == letter.stream_id)
            .collect();
        if stream[0].global_position != position {
            return Err(Error::validation(format!(
                "the event at position {position} waits behind position {} of stream '{}'; retry or skip that one first",
                stream[0].global_position, letter.stream_id
            )));
        }
        let mut first = true;
        for letter in stream {
            if first && !run_handler {
                tracing::warn!(consumer = %self.consumer, position, "parked event skipped by an operator");
            } else {
                let event = self.read_event(letter.global_position).await?;
                let attempts = match &letter.reason {
                    ParkReason::Failed { attempts, .. } => *attempts,
                    ParkReason::Waiting => 0,
                };
                if let Err(e) = self.handler.handle(&event).await {
                    let mut failed = letter.clone();
                    failed.reason = ParkReason::Failed {
                        attempts: attempts + 1,
                        error: e.to_string(),
                    };
                    self.consumer_state.park(&[failed]).await?;
                    if let Some(range) = self.blocked.get_mut(&letter.stream_id) {
                        range.0 = letter.global_position; // the stream now waits behind this one
                    }
                    return if first { Err(e) } else { Ok(()) };
                }
            }
            first = false;
            self.consumer_state
                .remove_dead_letter(&self.consumer, letter.global_position)
                .await?;
            self.parked = self.parked.saturating_sub(1);
        }
        self.blocked.remove(&letter.stream_id);
        metrics::gauge!("flexcore_subscription_parked", "subscription" => self.consumer.clone())
            .set(self.parked as f64);
        Ok(())
    }

    async fn read_event(&self, position: u64) -> Result<EventEnvelope> {
        let slice = self
            .reader
            .read_all(ReadAll {
                from_position: position,
                limit: 1,
                filter: EventFilter::default(),
            })
            .await?;
        slice
            .events
            .into_iter()
            .find(|e| e.global_position == position)
            .ok_or_else(|| Error::internal(format!("the log has no event at position {position}")))
    }
}

enum Delivery {
    Handled,
    Failed { attempts: u32, error: String },
    Interrupted,
}

/// Records a parked position of a stream (positions arrive in order, or in any order at start).
fn block(blocked: &mut HashMap<StreamId, (u64, u64)>, stream: &StreamId, position: u64) {
    blocked
        .entry(stream.clone())
        .and_modify(|(first, last)| {
            *first = (*first).min(position);
            *last = (*last).max(position);
        })
        .or_insert((position, position));
}
