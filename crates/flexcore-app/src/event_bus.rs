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
            let mut delay = self.base_delay;
            for attempt in 1..=self.max_attempts {
                match handler.handle(event).await {
                    Ok(()) => break,
                    Err(e) if attempt < self.max_attempts => {
                        tracing::warn!(event_id = %event.event_id, attempt, error = %e, "event handler failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = delay.saturating_mul(2);
                    }
                    Err(e) => {
                        tracing::error!(event_id = %event.event_id, event_type = %event.event_type, error = %e, "event handler gave up");
                    }
                }
            }
        }
    }

    /// Follows the log from `from_position` and dispatches every event until `shutdown` turns
    /// true.
    pub fn spawn(
        self,
        reader: Arc<dyn EventReader>,
        from_position: u64,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let options = SubscriptionOptions {
                name: Some("event_bus".into()),
                ..SubscriptionOptions::default()
            };
            let mut subscription = Subscription::new(reader, from_position, options);
            loop {
                tokio::select! {
                    _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => return,
                    next = subscription.next() => match next {
                        Ok(event) => self.dispatch(&event).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "event bus cannot read the log; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    },
                }
            }
        })
    }
}
