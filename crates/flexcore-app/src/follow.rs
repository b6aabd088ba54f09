//! Following the global log in the background: the loop shared by the event bus, the
//! query-cache invalidation, the durable consumers and the outbox relays, and the restart loop
//! shared by the outbox relays and the broker consumers.
//!
//! Each of these reads the log from a position it keeps (a checkpoint, or the head at
//! start-up), works on what it read, keeps going through failures and stops promptly when the
//! process shuts down. The parts:
//!
//! * [`Shutdown`]: the shutdown signal (a `watch` channel turning `true`, or its sender
//!   dropped), with waits that end early when it comes;
//! * [`Backoff`]: a capped exponential backoff;
//! * [`LogFollower`]: a [`Subscription`] whose failed reads are logged and retried after a
//!   backoff, and which ends at shutdown;
//! * [`restart_until_stopped`]: runs a session (a broker connection, a relay from its
//!   checkpoint) again after a backoff each time it fails.

use std::future::Future;
use std::time::Duration;

use flexcore_domain::EventEnvelope;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::subscription::Subscription;

/// The process-wide shutdown signal, as a background task sees it: requested once the
/// `watch` value turns `true`, or once its sender is dropped (an owner that went away cannot
/// ask any more, so nothing should keep running for it).
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

impl Shutdown {
    /// Watches `receiver` for the shutdown request.
    pub fn new(receiver: watch::Receiver<bool>) -> Self {
        Self { receiver }
    }

    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        *self.receiver.borrow() || self.receiver.has_changed().is_err()
    }

    /// Resolves once shutdown is requested (at once if it already was). Cancel-safe.
    pub async fn requested(&mut self) {
        // An error means the sender is gone, which counts as a request.
        let _ = self.receiver.wait_for(|stop| *stop).await;
    }

    /// Waits `delay`; `false` if shutdown was requested first (or before).
    pub async fn sleep(&mut self, delay: Duration) -> bool {
        self.unless_requested(tokio::time::sleep(delay))
            .await
            .is_some()
    }

    /// Runs `work` to its end, or drops it when shutdown is requested first (`None`).
    /// Shutdown wins when both are ready.
    pub async fn unless_requested<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = self.requested() => None,
            output = work => Some(output),
        }
    }
}

impl From<watch::Receiver<bool>> for Shutdown {
    fn from(receiver: watch::Receiver<bool>) -> Self {
        Self::new(receiver)
    }
}

/// A capped exponential backoff: `first`, then twice the previous delay, never more than
/// `max` (the first delay itself is not capped).
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first` and doubles up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The same delay every time.
    pub fn fixed(delay: Duration) -> Self {
        Self::new(delay, delay)
    }

    /// The delay to wait now; the one after it is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Starts over from the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// The wait after a failed read of the log by the event bus, the query-cache invalidation and
/// the durable consumers: a store that fails is not hammered, and one that is back is read
/// again within a second.
pub const READ_RETRY: Duration = Duration::from_secs(1);

/// A [`Subscription`] for a background task: a read that fails is logged and retried after a
/// [`Backoff`] (reset by the next successful read) instead of reaching the caller, and the
/// reads end with `None` once [`Shutdown`] is requested.
///
/// [`next`](Self::next) and [`next_batch`](Self::next_batch) are cancel-safe, so they can race
/// other work in a `select!`: no event is lost, and a pending retry keeps its deadline instead
/// of starting its wait over.
pub struct LogFollower {
    name: String,
    subscription: Subscription,
    shutdown: Shutdown,
    read_backoff: Backoff,
    /// After a failed read, when to read again.
    retry_at: Option<Instant>,
}

impl LogFollower {
    /// Follows `subscription` until `shutdown`; `name` tells the follower apart in the logs.
    pub fn new(
        name: impl Into<String>,
        subscription: Subscription,
        read_backoff: Backoff,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            name: name.into(),
            subscription,
            shutdown,
            read_backoff,
            retry_at: None,
        }
    }

    /// The subscription followed (for its [`position`](Subscription::position) and
    /// [`passed`](Subscription::passed)).
    pub fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    /// The next event, waiting for one to be committed; `None` at shutdown.
    pub async fn next(&mut self) -> Option<EventEnvelope> {
        // The delivery path: an event of the page in hand needs no read and no wait, only
        // the shutdown check, done without setting up a `select!` per event.
        if self.shutdown.is_requested() {
            return None;
        }
        if let Some(event) = self.subscription.next_buffered() {
            return Some(event);
        }
        loop {
            self.wait_for_retry().await?;
            let read = tokio::select! {
                biased;
                () = self.shutdown.requested() => return None,
                read = self.subscription.next() => read,
            };
            match read {
                Ok(event) => {
                    self.read_backoff.reset();
                    return Some(event);
                }
                Err(error) => self.read_failed(&error),
            }
        }
    }

    /// The events of the next page, as [`Subscription::next_batch`] (empty once caught up,
    /// after one wait for a commit); `None` at shutdown.
    pub async fn next_batch(&mut self) -> Option<Vec<EventEnvelope>> {
        loop {
            self.wait_for_retry().await?;
            let read = tokio::select! {
                biased;
                () = self.shutdown.requested() => return None,
                read = self.subscription.next_batch() => read,
            };
            match read {
                Ok(events) => {
                    self.read_backoff.reset();
                    return Some(events);
                }
                Err(error) => self.read_failed(&error),
            }
        }
    }

    /// Waits out a pending retry; `None` if shutdown came first.
    async fn wait_for_retry(&mut self) -> Option<()> {
        if let Some(at) = self.retry_at {
            self.shutdown
                .unless_requested(tokio::time::sleep_until(at))
                .await?;
            self.retry_at = None;
        }
        Some(())
    }

    fn read_failed(&mut self, error: &crate::Error) {
        let delay = self.read_backoff.next_delay();
        tracing::warn!(
            follower = %self.name,
            error = %error.chain(),
            retry_in_ms = delay.as_millis() as u64,
            "cannot read the log; retrying"
        );
        self.retry_at = Some(Instant::now() + delay);
    }
}

/// How a session run by [`restart_until_stopped`] failed.
#[derive(Debug)]
pub struct SessionFailed<E> {
    /// What went wrong.
    pub error: E,
    /// Whether the session got work done before it failed: the wait before the next one then
    /// starts over from the backoff's first delay, instead of doubling the last.
    pub after_progress: bool,
}

impl<E> SessionFailed<E> {
    /// A failure that keeps the backoff growing.
    pub fn new(error: E) -> Self {
        Self {
            error,
            after_progress: false,
        }
    }
}

/// Runs `session` again and again until one ends, or shutdown comes while waiting to start the
/// next.
///
/// A session that returns `Ok` is done: it saw the shutdown (itself, or through
/// [`Shutdown::unless_requested`]). One that fails is reported to `on_failure` with the delay
/// before the next start, which follows `backoff` (see [`SessionFailed::after_progress`]).
pub async fn restart_until_stopped<E, Session>(
    mut shutdown: Shutdown,
    mut backoff: Backoff,
    mut session: impl FnMut() -> Session,
    mut on_failure: impl FnMut(&E, Duration),
) where
    Session: Future<Output = Result<(), SessionFailed<E>>>,
{
    while let Err(failed) = session().await {
        if failed.after_progress {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        on_failure(&failed.error, delay);
        if !shutdown.sleep(delay).await {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use flexcore_domain::{ExpectedVersion, NewEvent, RawJson, StreamId};

    use super::*;
    use crate::store::{
        AllSlice, EventAppender, EventReader, InMemoryStore, ReadAll, ReadStream, StreamSlice,
    };
    use crate::subscription::SubscriptionOptions;
    use crate::{Error, Result};

    #[test]
    fn backoff_doubles_up_to_its_cap_and_starts_over_on_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
        let mut fixed = Backoff::fixed(READ_RETRY);
        assert_eq!(fixed.next_delay(), READ_RETRY);
        assert_eq!(fixed.next_delay(), READ_RETRY);
    }

    #[tokio::test]
    async fn a_dropped_sender_is_a_shutdown_request() {
        let (stop, receiver) = watch::channel(false);
        let mut shutdown = Shutdown::new(receiver);
        assert!(!shutdown.is_requested());
        drop(stop);
        assert!(shutdown.is_requested());
        assert!(!shutdown.sleep(Duration::from_secs(3600)).await);
    }

    /// An in-memory log whose first `failures` reads fail.
    struct FlakyReader {
        store: InMemoryStore,
        failures: AtomicU32,
    }

    #[async_trait]
    impl EventReader for FlakyReader {
        async fn read_stream(&self, request: ReadStream) -> Result<StreamSlice> {
            self.store.read_stream(request).await
        }

        async fn read_all(&self, request: ReadAll) -> Result<AllSlice> {
            let left = self.failures.load(Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, Ordering::SeqCst);
                return Err(Error::unavailable("store down"));
            }
            self.store.read_all(request).await
        }

        fn head(&self) -> watch::Receiver<u64> {
            self.store.head()
        }

        async fn ping(&self) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_reads_are_retried_after_the_backoff_even_when_the_wait_is_cancelled() {
        let store = InMemoryStore::new();
        let event = NewEvent::new(
            "thing.happened",
            RawJson::from_value(&serde_json::json!({})),
        )
        .unwrap();
        store
            .append(
                StreamId::new("thing-1").unwrap(),
                ExpectedVersion::Any,
                vec![event],
            )
            .await
            .unwrap();
        let reader = Arc::new(FlakyReader {
            store,
            failures: AtomicU32::new(2),
        });
        let (_stop, receiver) = watch::channel(false);
        let subscription = Subscription::new(reader, 0, SubscriptionOptions::default());
        let mut follower = LogFollower::new(
            "test",
            subscription,
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
            Shutdown::new(receiver),
        );
        let started = Instant::now();
        // Interrupt the follower every 30 ms, as a `select!` with a timer would.
        let event = loop {
            if let Ok(event) =
                tokio::time::timeout(Duration::from_millis(30), follower.next()).await
            {
                break event;
            }
        };
        assert_eq!(event.unwrap().global_position, 1);
        // Two failed reads: 100 ms, then 200 ms, whatever the interruptions.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(330),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_stops_at_shutdown_even_while_it_waits_to_retry() {
        let reader = Arc::new(FlakyReader {
            store: InMemoryStore::new(),
            failures: AtomicU32::new(u32::MAX),
        });
        let (stop, receiver) = watch::channel(false);
        let subscription = Subscription::new(reader, 0, SubscriptionOptions::default());
        let mut follower = LogFollower::new(
            "test",
            subscription,
            Backoff::fixed(Duration::from_secs(3600)),
            Shutdown::new(receiver),
        );
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            stop.send(true).unwrap();
        });
        let started = Instant::now();
        assert!(follower.next().await.is_none());
        assert!(started.elapsed() < Duration::from_secs(1));
        stopper.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_session_is_restarted_after_the_backoff_until_one_ends() {
        let (_stop, receiver) = watch::channel(false);
        let begun = Instant::now();
        let starts = std::sync::Mutex::new(Vec::new());
        let mut reported = Vec::new();
        restart_until_stopped(
            Shutdown::new(receiver),
            Backoff::new(Duration::from_millis(100), Duration::from_millis(150)),
            || {
                let mut starts = starts.lock().unwrap();
                starts.push(begun.elapsed().as_millis());
                let run = starts.len();
                async move {
                    match run {
                        // The third session got work done: the wait starts over.
                        3 => Err(SessionFailed {
                            error: "down",
                            after_progress: true,
                        }),
                        1..=4 => Err(SessionFailed::new("down")),
                        _ => Ok(()),
                    }
                }
            },
            |error, delay| reported.push((*error, delay.as_millis())),
        )
        .await;
        assert_eq!(starts.into_inner().unwrap(), [0, 100, 250, 350, 500]);
        let delays: Vec<u128> = reported.iter().map(|(_, delay)| *delay).collect();
        assert_eq!(delays, [100, 150, 100, 150]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_while_waiting_to_restart_ends_the_loop() {
        let (stop, receiver) = watch::channel(false);
        let begun = Instant::now();
        let stop = std::sync::Mutex::new(Some(stop));
        restart_until_stopped(
            Shutdown::new(receiver),
            Backoff::fixed(Duration::from_secs(3600)),
            || {
                // Fails once, and shutdown is requested during the wait.
                let stop = stop.lock().unwrap().take();
                async move {
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        stop.expect("started once").send(true).unwrap();
                    });
                    Err(SessionFailed::new("down"))
                }
            },
            |_: &&str, _| {},
        )
        .await;
        assert!(begun.elapsed() < Duration::from_secs(1));
    }
}
