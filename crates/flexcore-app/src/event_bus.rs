//! The event bus: after commit, events go to subscribers asynchronously.
//!
//! The bus follows the store's global log with a catch-up [`Subscription`], so delivery starts
//! only after the events are durable and keeps commit order. A failing handler is retried with
//! exponential backoff; after the last attempt the failure is logged and delivery goes on.
//! (Durable checkpoints and dead letters are the durable subscriptions' job.)

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flexcore_domain::EventEnvelope;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Result;
use crate::follow::{Backoff, LogFollower, READ_RETRY, Shutdown};
use crate::store::EventReader;
use crate::subscription::{Subscription, SubscriptionOptions};

/// Reacts to committed events.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// Handles one event; an error asks for a retry.
    async fn handle(&self, event: &EventEnvelope) -> Result<()>;
}

/// Fans committed events out to the handlers registered for their type.
#[derive(Default, Clone)]
pub struct EventBus {
    handlers: Vec<(String, Arc<dyn EventHandler>)>,
    max_attempts: u32,
    base_delay: Duration,
}

impl EventBus {
    /// A bus with no handlers, three attempts per delivery and a 50 ms first backoff.
    pub fn new() -> Self {
        Self {
            handlers: Vec::new(),
            max_attempts: 3,
            base_delay: Duration::from_millis(50),
        }
    }

    /// Delivers events of `event_type` (or every event, for `*`) to `handler`.
    pub fn subscribe(&mut self, event_type: impl Into<String>, handler: Arc<dyn EventHandler>) {
        self.handlers.push((event_type.into(), handler));
    }

    /// Sets the attempts per delivery and the first backoff delay.
    pub fn with_retries(mut self, max_attempts: u32, base_delay: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.base_delay = base_delay;
        self
    }

    /// Delivers one event to every matching handler.
    pub async fn dispatch(&self, event: &EventEnvelope) {
        for (event_type, handler) in &self.handlers {
            if event_type != "*" && *event_type != event.event_type {
                continue;
            }
            // Uncapped: the attempts are few, and a delivery in progress is not cut short by
            // shutdown, so the last wait is bounded by the attempts alone.
            let mut backoff = Backoff::new(self.base_delay, Duration::MAX);
            for attempt in 1..=self.max_attempts {
                match handler.handle(event).await {
                    Ok(()) => break,
                    Err(e) if attempt < self.max_attempts => {
                        tracing::warn!(event_id = %event.event_id, attempt, error = %e.chain(), "event handler failed; retrying");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(e) => {
                        tracing::error!(event_id = %event.event_id, event_type = %event.event_type, error = %e.chain(), "event handler gave up");
                    }
                }
            }
        }
    }

    /// Follows the log from `from_position` and dispatches every event until `shutdown` turns
    /// true (or its sender is dropped). Shutdown is seen between events: a delivery in progress
    /// ends first. A failed read of the log is retried every [`READ_RETRY`].
    pub fn spawn(
        self,
        reader: Arc<dyn EventReader>,
        from_position: u64,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let options = SubscriptionOptions {
                name: Some("event_bus".into()),
                ..SubscriptionOptions::default()
            };
            let mut follower = LogFollower::new(
                "event_bus",
                Subscription::new(reader, from_position, options),
                Backoff::fixed(READ_RETRY),
                Shutdown::new(shutdown),
            );
            while let Some(event) = follower.next().await {
                self.dispatch(&event).await;
            }
        })
    }
}
