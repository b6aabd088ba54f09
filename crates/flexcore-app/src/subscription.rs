//! Catch-up subscriptions over the global log.
//!
//! A subscription is just a reader that always continues from the last position it handed
//! out: it pages through history with `read_all`, and when it has caught up it waits for the
//! store's wake-up signal (or a poll interval, for writes by other processes) and reads again.
//! Because the switch from history to live is the same `read_all` call, there is no gap and no
//! duplicate at the switch; because `read_all` never reads past an in-flight transaction, no
//! late commit is skipped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use flexcore_domain::EventEnvelope;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Result;
use crate::store::{EventFilter, EventReader, ReadAll};

/// The default [`linger`](SubscriptionOptions::linger) of background consumers (projections,
/// durable consumers, outbox relays): under a steady stream of commits they read and commit
/// about 200 batches a second instead of one per commit, for at most 5 ms more lag.
pub const BACKGROUND_LINGER: Duration = Duration::from_millis(5);

/// How a subscription pages and waits.
#[derive(Debug, Clone)]
pub struct SubscriptionOptions {
    /// Events per `read_all` page.
    pub page_size: usize,
    /// How long to wait for a wake-up before reading again anyway.
    pub poll_interval: Duration,
    /// Which events to deliver.
    pub filter: EventFilter,
    /// A name for metrics: when set, the lag behind the head is published as the gauge
    /// `flexcore_subscription_lag{subscription}` (events committed but not yet delivered).
    pub name: Option<String>,
    /// Once caught up, read again at most this often: commits landing meanwhile are read
    /// (and handled) as one batch instead of one small batch per commit. An event after a
    /// quiet spell is still read at once; catching up on history never waits. Zero (the
    /// default) reads after every wake-up: the lowest latency, for client-facing streams.
    pub linger: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self {
            page_size: 1000,
            poll_interval: Duration::from_millis(250),
            filter: EventFilter::default(),
            name: None,
            linger: Duration::ZERO,
        }
    }
}

/// A live catch-up subscription to the global log.
pub struct Subscription {
    reader: Arc<dyn EventReader>,
    head: watch::Receiver<u64>,
    position: u64,
    buffer: VecDeque<EventEnvelope>,
    options: SubscriptionOptions,
    /// When the last read found the subscription caught up (a page not full).
    caught_up_at: Option<Instant>,
}

impl Subscription {
    /// Subscribes from `from_position` (inclusive; `0` replays everything).
    pub fn new(
        reader: Arc<dyn EventReader>,
        from_position: u64,
        options: SubscriptionOptions,
    ) -> Self {
        Self {
            head: reader.head(),
            reader,
            position: from_position,
            buffer: VecDeque::new(),
            options,
            caught_up_at: None,
        }
    }

    /// The position the next `read_all` starts from.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The first position not yet passed on: every event before it was returned, or skipped
    /// by the filter. Behind [`position`](Self::position) while a page is still buffered.
    pub fn passed(&self) -> u64 {
        self.buffer
            .front()
            .map_or(self.position, |event| event.global_position)
    }

    /// The next event of the page already read, if any: never reads nor waits.
    pub fn next_buffered(&mut self) -> Option<EventEnvelope> {
        self.buffer.pop_front()
    }

    /// The next event, waiting for one to be committed if the subscription has caught up.
    pub async fn next(&mut self) -> Result<EventEnvelope> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(event);
            }
            self.fill().await?;
        }
    }

    /// The events of the next page, all at once. An empty batch means the subscription had
    /// caught up with the log when it last read (after waiting once for a wake-up); the
    /// [`position`](Self::position) may still have moved past events the filter skipped.
    pub async fn next_batch(&mut self) -> Result<Vec<EventEnvelope>> {
        if self.buffer.is_empty() {
            self.fill().await?;
        }
        Ok(self.buffer.drain(..).collect())
    }

    /// The events of the next page without waiting: empty when the subscription has caught
    /// up with the log (the [`position`](Self::position) may still have moved past events the
    /// filter skipped). Follow it with [`wait_for_more`](Self::wait_for_more) when empty.
    pub async fn poll_batch(&mut self) -> Result<Vec<EventEnvelope>> {
        if self.buffer.is_empty() {
            self.head.borrow_and_update();
            self.read_page().await?;
        }
        Ok(self.buffer.drain(..).collect())
    }

    /// Waits until a commit wakes the subscription up, or the poll interval elapses.
    pub async fn wait_for_more(&mut self) {
        let _ = tokio::time::timeout(self.options.poll_interval, self.head.changed()).await;
    }

    /// Waits at most `timeout` for the next event.
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<Option<EventEnvelope>> {
        match tokio::time::timeout(timeout, self.next()).await {
            Ok(event) => event.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Reads the next page, or waits once for a wake-up if there is nothing new.
    async fn fill(&mut self) -> Result<()> {
        // Mark the current head as seen *before* reading, so a commit that lands after the read
        // wakes us up instead of being missed until the next poll.
        self.head.borrow_and_update();
        if self.read_page().await? == 0 {
            // Either a commit wakes us or the poll interval elapses; both lead to a re-read.
            self.wait_for_more().await;
        }
        Ok(())
    }

    /// Reads one page into the buffer; returns how many events it got.
    async fn read_page(&mut self) -> Result<usize> {
        if let Some(caught_up) = self.caught_up_at
            && !self.options.linger.is_zero()
        {
            tokio::time::sleep_until(caught_up + self.options.linger).await;
        }
        let read_at = Instant::now();
        let slice = self
            .reader
            .read_all(ReadAll {
                from_position: self.position,
                limit: self.options.page_size,
                filter: self.options.filter.clone(),
            })
            .await?;
        self.position = self.position.max(slice.next_position);
        if let Some(name) = &self.options.name {
            let head = *self.head.borrow();
            let behind = lag(head, self.position) as f64;
            metrics::gauge!("flexcore_subscription_lag", "subscription" => name.clone())
                .set(behind);
        }
        let read = slice.events.len();
        // A short page means the read reached the head (the `read_all` contract).
        let full = read >= crate::store::clamp_limit(self.options.page_size);
        self.caught_up_at = (!full).then_some(read_at);
        self.buffer.extend(slice.events);
        Ok(read)
    }
}

/// How many events a reader whose next position is `next` has still to see when the log's
/// last position is `head` (positions start at 1; `next` 0 or 1 means none seen yet).
pub fn lag(head: u64, next: u64) -> u64 {
    head.saturating_sub(next.saturating_sub(1))
}
