//! FlexCore's message-broker adapters.
//!
//! * **Outbox publishers** ([`EventPublisher`]s for the
//!   [`OutboxRelay`]): [`RabbitPublisher`], [`RedisStreamPublisher`], [`NatsPublisher`]. Every
//!   message carries the event's `event_id` as its de-duplication id; the relay publishes at
//!   least once, in order per stream (see `docs/adr/0005-outbox.md`).
//! * **Inbound command gateway**: [`RabbitCommandConsumer`] (a queue) and
//!   [`RedisCommandConsumer`] (a stream and a consumer group) run command messages through the
//!   command bus, acknowledge them only after the command's events are committed, reply when
//!   asked, retry transient failures and dead-letter poison messages (see [`inbound`]).
//!
//! The composition root picks adapters from URLs: [`OutboxConfig::from_url`] +
//! [`spawn_relay`], and [`InboundConfig::from_url`] + [`spawn_inbound`], each stopped by a
//! `watch::Receiver<bool>` turning `true`. Nothing connects until the task runs, and a broker
//! that is down only delays the work: every task reconnects with a capped backoff.
//!
//! TLS (rustls, ring): `amqps://`, `rediss://` and `tls://` (NATS) connect over TLS and verify
//! the broker's certificate against `ca_file=` (else the system's roots); `cert_file=` with
//! `key_file=` presents a client certificate. These parameters on a plain URL are refused.
//!
//! # Outbox URLs
//!
//! | URL | parameters (defaults) |
//! |---|---|
//! | `amqp://guest:guest@127.0.0.1:5672/%2f?exchange=x` | `exchange` (`flexcore.events`): a durable topic exchange, routing key = event type; other parameters (`heartbeat`, …) go to lapin |
//! | `redis://127.0.0.1:6379/?stream=k` | `stream` (`flexcore.events`), `maxlen` (none: `XADD MAXLEN ~ n` when set) |
//! | `nats://127.0.0.1:4222?subject_prefix=p&stream=S` | `subject_prefix` (`flexcore.events`; subject `<prefix>.<event_type>`), `stream` (`FLEXCORE_EVENTS`, covering `<prefix>.>`), `duplicate_window_s` (120) |
//!
//! Every outbox URL also takes `relay` (the relay's name and checkpoint key `outbox:<relay>`;
//! default: the broker, `rabbitmq`/`redis`/`nats`) and `batch_size` (500).
//!
//! # Inbound URLs
//!
//! | URL | parameters (defaults) |
//! |---|---|
//! | `amqp://guest:guest@127.0.0.1:5672/%2f?queue=q` | `queue` (`flexcore.commands`), `dead_letter` (`<queue>.dead-letter`) |
//! | `redis://127.0.0.1:6379/?stream=k` | `stream` (`flexcore.commands`), `group` (`flexcore`), `consumer` (`<hostname>-<pid>`), `dead_letter` (`<stream>.dead-letter`), `claim_idle_ms` (30000: how long an entry stays unacknowledged before another member takes it over; keep it above the slowest command) |
//!
//! Both also take `max_attempts` (5), `retry_delay_ms` (1000), `concurrency` (16) and
//! `shutdown_grace_ms` (10000).
//!
//! # Command messages
//!
//! The message is JSON:
//!
//! ```json
//! {"command_type": "create_user",
//!  "payload": {"email": "ada@example.com", "profile": {}},
//!  "idempotency_key": "optional",
//!  "reply_to": "optional queue or stream",
//!  "correlation_id": "optional"}
//! ```
//!
//! * RabbitMQ: the message body. `command_type` may instead be the header `command_type` or
//!   the `type` property; `reply_to` and `correlation_id` may instead be the AMQP properties of
//!   the same names (`correlation_id` falls back to `message_id`). Without an
//!   `idempotency_key`, the key is `amqp:<message_id>` when the message has a `message_id` —
//!   send one, or a key, so that a redelivery never runs a command twice.
//! * Redis: the entry's `message` field, or flat fields `command_type`, `payload` (JSON text),
//!   `idempotency_key`, `reply_to`, `correlation_id`, `message_id`. Without an
//!   `idempotency_key` the key is the `message_id` field, else `redis:<stream>:<entry id>`.
//!
//! With authentication on, a message proves its sender like an HTTP request: `authorization`
//! (`Bearer <token>`) or `api_key` in the body, or the header (RabbitMQ) / field (Redis)
//! `authorization` or `x-api-key`. A missing or refused credential is replied `unauthorized`
//! and acknowledged; the command bus applies the roles (`forbidden`).
//!
//! The reply is JSON: `{"ok": true, "result": {command_id, stream_id, version, events}}` or
//! `{"ok": false, "error": {type, title, status, code, detail}}` with the HTTP gateway's stable
//! codes (`validation_failed`, `conflict`, `not_found`, `unauthorized`, `forbidden`,
//! `unavailable`, `internal`, `bad_request`), plus `correlation_id` when known. RabbitMQ sends
//! it to the queue `reply_to` through the default exchange with the `correlation_id` property;
//! Redis appends it to the stream `reply_to` with the fields `correlation_id`, `ok`
//! (`true`/`false`) and `reply` (the JSON).

pub mod error;
pub mod inbound;
pub mod nats;
pub mod rabbit;
pub mod redis_streams;
mod url;

use std::sync::Arc;

use flexcore_app::command::CommandBus;
use flexcore_app::durable::CheckpointStore;
use flexcore_app::outbox::{EventPublisher, OutboxRelay};
use flexcore_app::store::EventReader;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The drivers, re-exported for callers that set up or inspect destinations (tests, benches).
pub use {async_nats, lapin, redis};

pub use error::{BrokerError, Result};
pub use inbound::{CommandMessage, InboundOptions};
pub use nats::NatsPublisher;
pub use rabbit::{RabbitCommandConsumer, RabbitPublisher};
pub use redis_streams::{RedisCommandConsumer, RedisStreamPublisher};

use crate::url::BrokerUrl;

/// A relay's configuration: its name, batch size and publisher, from one URL.
#[derive(Clone)]
pub struct OutboxConfig {
    /// The relay's name (its checkpoint is `outbox:<name>`).
    pub relay: String,
    /// Events per publish.
    pub batch_size: usize,
    /// Where events go.
    pub publisher: Arc<dyn EventPublisher>,
}

impl std::fmt::Debug for OutboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxConfig")
            .field("relay", &self.relay)
            .field("batch_size", &self.batch_size)
            .field("publisher", &self.publisher.name())
            .finish()
    }
}

impl OutboxConfig {
    /// Parses an outbox URL (see the crate docs). Connects to nothing.
    pub fn from_url(url: &str) -> Result<Self> {
        let mut parsed = BrokerUrl::parse(url)?;
        let relay = parsed.take("relay");
        let batch_size = parsed.take_number::<usize>("batch_size")?.unwrap_or(500);
        let rest = parsed.driver_url();
        let publisher: Arc<dyn EventPublisher> = match parsed.scheme() {
            "amqp" => Arc::new(RabbitPublisher::from_url(&rest)?),
            "redis" => Arc::new(RedisStreamPublisher::from_url(&rest)?),
            "nats" => Arc::new(NatsPublisher::from_url(&rest)?),
            other => {
                return Err(BrokerError::InvalidUrl(format!(
                    "unsupported outbox broker '{other}' (amqp, redis or nats)"
                )));
            }
        };
        Ok(Self {
            relay: relay.unwrap_or_else(|| publisher.name().to_owned()),
            batch_size: batch_size.max(1),
            publisher,
        })
    }

    /// The relay over `reader`, keeping its checkpoint in `checkpoints`.
    pub fn relay(
        &self,
        reader: Arc<dyn EventReader>,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> OutboxRelay {
        OutboxRelay::new(
            self.relay.clone(),
            self.publisher.clone(),
            reader,
            checkpoints,
        )
        .with_batch_size(self.batch_size)
    }
}

/// The publisher an outbox URL names (see the crate docs). Connects to nothing.
pub fn publisher_from_url(url: &str) -> Result<Arc<dyn EventPublisher>> {
    Ok(OutboxConfig::from_url(url)?.publisher)
}

/// Starts the relay `config` describes; it stops when `shutdown` turns `true`.
pub fn spawn_relay(
    config: &OutboxConfig,
    reader: Arc<dyn EventReader>,
    checkpoints: Arc<dyn CheckpointStore>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    config.relay(reader, checkpoints).spawn(shutdown)
}

/// An inbound gateway's configuration, from one URL.
#[derive(Debug, Clone)]
pub enum InboundConfig {
    /// Commands from a RabbitMQ queue.
    RabbitMq(RabbitCommandConsumer),
    /// Commands from a Redis stream.
    Redis(RedisCommandConsumer),
}

impl InboundConfig {
    /// Parses an inbound URL (see the crate docs). Connects to nothing.
    pub fn from_url(url: &str) -> Result<Self> {
        match BrokerUrl::parse(url)?.scheme() {
            "amqp" => Ok(Self::RabbitMq(RabbitCommandConsumer::from_url(url)?)),
            "redis" => Ok(Self::Redis(RedisCommandConsumer::from_url(url)?)),
            other => Err(BrokerError::InvalidUrl(format!(
                "unsupported inbound broker '{other}' (amqp or redis)"
            ))),
        }
    }

    /// Authenticates each message's credential (`authorization` / `x-api-key`) with `gate`.
    pub fn with_gate(self, gate: Arc<flexcore_app::security::Gatekeeper>) -> Self {
        match self {
            Self::RabbitMq(consumer) => Self::RabbitMq(consumer.with_gate(gate)),
            Self::Redis(consumer) => Self::Redis(consumer.with_gate(gate)),
        }
    }
}

/// Starts the inbound gateway `config` describes, sending commands through `bus`; it stops
/// when `shutdown` turns `true`.
pub fn spawn_inbound(
    config: InboundConfig,
    bus: Arc<dyn CommandBus>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    match config {
        InboundConfig::RabbitMq(consumer) => consumer.spawn(bus, shutdown),
        InboundConfig::Redis(consumer) => consumer.spawn(bus, shutdown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_broker_and_its_parameters() {
        let config =
            OutboxConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f?exchange=x&relay=r")
                .unwrap();
        assert_eq!(config.relay, "r");
        assert_eq!(config.publisher.name(), "rabbitmq");
        let config =
            OutboxConfig::from_url("redis://127.0.0.1:6379/?stream=k&batch_size=7").unwrap();
        assert_eq!((config.relay.as_str(), config.batch_size), ("redis", 7));
        let config =
            OutboxConfig::from_url("nats://127.0.0.1:4222?subject_prefix=p&stream=S").unwrap();
        assert_eq!(config.publisher.name(), "nats");
        assert!(OutboxConfig::from_url("nats://127.0.0.1:4222?nope=1").is_err());
        assert!(OutboxConfig::from_url("kafka://x").is_err());

        let InboundConfig::Redis(consumer) = InboundConfig::from_url(
            "redis://127.0.0.1:6379/?stream=c&group=g&consumer=me&max_attempts=3&claim_idle_ms=45000",
        )
        .unwrap() else {
            panic!("redis")
        };
        assert_eq!(consumer.stream(), "c");
        assert_eq!(consumer.options().max_attempts, 3);
        assert_eq!(
            consumer.options().claim_idle,
            std::time::Duration::from_secs(45)
        );
        assert_eq!(
            consumer.options().retry_delay,
            std::time::Duration::from_secs(1),
            "default"
        );
        assert_eq!(consumer.dead_letter_stream(), "c.dead-letter");
        let InboundConfig::RabbitMq(consumer) =
            InboundConfig::from_url("amqp://127.0.0.1:5672/%2f?queue=q&dead_letter=d").unwrap()
        else {
            panic!("rabbitmq")
        };
        assert_eq!((consumer.queue(), consumer.dead_letter_queue()), ("q", "d"));
    }
}
