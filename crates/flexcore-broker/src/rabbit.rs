//! RabbitMQ (AMQP 0-9-1, through lapin): the outbox publisher and the inbound command consumer.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::command::CommandBus;
use flexcore_app::follow::{SessionFailed, Shutdown, restart_until_stopped};
use flexcore_app::outbox::EventPublisher;
use flexcore_domain::EventEnvelope;
use flexcore_tls::ClientTlsFiles;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::{Mutex, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{BrokerError, Result};
use crate::inbound::{self, CommandMessage, Disposition, InboundOptions, MessageSecret};
use crate::url::{BrokerUrl, InboundParams};

/// The exchange the outbox publishes to unless the URL names one.
pub const DEFAULT_EXCHANGE: &str = "flexcore.events";
/// The queue the inbound gateway consumes unless the URL names one.
pub const DEFAULT_COMMAND_QUEUE: &str = "flexcore.commands";
/// The header that counts a message's attempts (set on the copies the gateway re-queues).
pub const ATTEMPT_HEADER: &str = "x-flexcore-attempt";

const PERSISTENT: u8 = 2;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to an `amqp://` or `amqps://` URI; on `amqps://`, `ca_file=` names the CA the
/// broker's certificate must chain to (else the system's roots), and `cert_file=` with
/// `key_file=` a client certificate (PKCS#8 PEM).
async fn connect(uri: &str) -> Result<Connection> {
    let (uri, files) = ClientTlsFiles::split(uri, &["amqps"])?;
    let tls = OwnedTLSConfig {
        identity: files.identity_pem()?.map(|identity| OwnedIdentity::PKCS8 {
            pem: identity.cert,
            key: identity.key,
        }),
        cert_chain: files
            .ca_pem()?
            .map(|pem| String::from_utf8_lossy(&pem).into_owned()),
    };
    let runtime = lapin::runtime::default_runtime()?;
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect_with_config(&uri, ConnectionProperties::default(), tls, runtime),
    )
    .await
    .map_err(|_| BrokerError::Timeout("rabbitmq connect".into()))?
    .map_err(BrokerError::from)
}

fn string(value: impl Into<String>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.into()))
}

/// Waits for one publisher confirm and turns a nack into an error.
async fn confirmed(confirm: lapin::PublisherConfirm, message_id: &str) -> Result<()> {
    match confirm.await? {
        Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        Confirmation::Nack(_) => Err(BrokerError::Refused {
            broker: "rabbitmq",
            message_id: message_id.to_owned(),
            reason: "negative publisher confirm".into(),
        }),
    }
}

/// Publishes events to a topic exchange with publisher confirms.
///
/// Each event is one persistent message: routing key = event type, `message_id` = event id,
/// `type` = event type, `content_type` = `application/json`, headers `stream_id`,
/// `stream_version`, `global_position`, `event_type`, and the body is the whole envelope as
/// JSON. The exchange (durable, `topic`) is declared on connect; binding queues to it is the
/// consumers' business. The connection is opened on first use and again after any failure.
pub struct RabbitPublisher {
    uri: String,
    exchange: String,
    channel: Mutex<Option<(Connection, Channel)>>,
}

impl RabbitPublisher {
    /// Publishes to `exchange` on the broker at `uri` (an `amqp://` URI as lapin takes it).
    pub fn new(uri: impl Into<String>, exchange: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            exchange: exchange.into(),
            channel: Mutex::new(None),
        }
    }

    /// From `amqp://user:pass@host:port/vhost?exchange=name` (see the crate docs).
    pub fn from_url(url: &str) -> Result<Self> {
        let mut url = BrokerUrl::parse(url)?;
        let exchange = url.take_or("exchange", DEFAULT_EXCHANGE);
        Ok(Self::new(url.driver_url(), exchange))
    }

    /// The exchange published to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    async fn open(&self) -> Result<(Connection, Channel)> {
        let connection = connect(&self.uri).await?;
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((connection, channel))
    }

    async fn publish_on(&self, channel: &Channel, events: &[EventEnvelope]) -> Result<()> {
        // Send everything, then wait for the confirms: one round trip per batch, in order.
        let mut confirms = Vec::with_capacity(events.len());
        for event in events {
            let body = serde_json::to_vec(event)?;
            let mut headers = FieldTable::default();
            headers.insert("stream_id".into(), string(event.stream_id.as_str()));
            headers.insert(
                "stream_version".into(),
                AMQPValue::LongLongInt(event.stream_version as i64),
            );
            headers.insert(
                "global_position".into(),
                AMQPValue::LongLongInt(event.global_position as i64),
            );
            headers.insert("event_type".into(), string(event.event_type.as_str()));
            let event_id = event.event_id.to_string();
            let properties = BasicProperties::default()
                .with_message_id(ShortString::from(event_id.as_str()))
                .with_type(ShortString::from(event.event_type.as_str()))
                .with_content_type("application/json".into())
                .with_delivery_mode(PERSISTENT)
                .with_timestamp(event.recorded_at.unix_timestamp().max(0) as u64)
                .with_app_id("flexcore".into())
                .with_headers(headers);
            let confirm = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    event.event_type.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?;
            confirms.push((confirm, event_id));
        }
        for (confirm, event_id) in confirms {
            confirmed(confirm, &event_id).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl EventPublisher for RabbitPublisher {
    async fn publish(&self, events: &[EventEnvelope]) -> flexcore_app::Result<()> {
        let mut slot = self.channel.lock().await;
        if slot.as_ref().is_none_or(|(_, c)| !c.status().connected()) {
            *slot = Some(self.open().await?);
        }
        let (_, channel) = slot.as_ref().expect("just opened");
        let result = self.publish_on(channel, events).await;
        if result.is_err() {
            // Start over on a fresh connection next time; the relay re-sends the batch.
            if let Some((connection, _)) = slot.take() {
                let _ = connection.close(200, "reconnecting".into()).await;
            }
        }
        Ok(result?)
    }

    fn name(&self) -> &str {
        "rabbitmq"
    }
}

/// Consumes command messages from a RabbitMQ queue (see the crate docs for the format).
///
/// The queue and its dead-letter queue are declared durable on connect. Each delivery runs its
/// command; it is acknowledged only after the command returned (its events committed) and the
/// reply, if asked for, was confirmed. A transient failure re-queues a copy of the message at
/// the queue's tail with the attempt counter header [`ATTEMPT_HEADER`] incremented (after
/// [`InboundOptions::retry_delay`]), then acknowledges the original; after
/// [`InboundOptions::max_attempts`] the message goes to the dead-letter queue with headers
/// `x-flexcore-error`, `x-flexcore-error-code`, `x-flexcore-attempts` and
/// `x-flexcore-original-queue`. A consumer that dies before acknowledging leaves the message to
/// RabbitMQ, which delivers it again (at least once: see the inbound module on idempotency).
#[derive(Debug, Clone)]
pub struct RabbitCommandConsumer {
    uri: String,
    queue: String,
    dead_letter_queue: String,
    options: InboundOptions,
}

impl RabbitCommandConsumer {
    /// Consumes `queue` on the broker at `uri`; dead letters go to `{queue}.dead-letter`.
    pub fn new(uri: impl Into<String>, queue: impl Into<String>) -> Self {
        let queue = queue.into();
        Self {
            uri: uri.into(),
            dead_letter_queue: format!("{queue}.dead-letter"),
            queue,
            options: InboundOptions::default(),
        }
    }

    /// From `amqp://user:pass@host:port/vhost?queue=q&dead_letter=dlq&max_attempts=5&…` (see
    /// the crate docs).
    pub fn from_url(url: &str) -> Result<Self> {
        let mut url = BrokerUrl::parse(url)?;
        let queue = url.take_or("queue", DEFAULT_COMMAND_QUEUE);
        let dead_letter = url.take("dead_letter");
        let options = url.take_inbound_options()?;
        let mut consumer = Self::new(url.driver_url(), queue).with_options(options);
        if let Some(dead_letter) = dead_letter {
            consumer.dead_letter_queue = dead_letter;
        }
        Ok(consumer)
    }

    /// Authenticates each message's credential with `gate`.
    pub fn with_gate(mut self, gate: Arc<flexcore_app::security::Gatekeeper>) -> Self {
        self.options.gate = gate;
        self
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: InboundOptions) -> Self {
        self.options = options;
        self
    }

    /// Sends dead letters to `queue`.
    pub fn with_dead_letter_queue(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter_queue = queue.into();
        self
    }

    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The dead-letter queue.
    pub fn dead_letter_queue(&self) -> &str {
        &self.dead_letter_queue
    }

    /// Runs [`run`](Self::run) on a task.
    pub fn spawn(
        self,
        bus: Arc<dyn CommandBus>,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(self.run(bus, shutdown))
    }

    /// Consumes until `shutdown` turns `true` (or its sender is dropped), reconnecting with a
    /// capped backoff after broker failures.
    pub async fn run(self, bus: Arc<dyn CommandBus>, shutdown: watch::Receiver<bool>) {
        let shutdown = Shutdown::new(shutdown);
        let (this, bus) = (&self, &bus);
        restart_until_stopped(
            shutdown.clone(),
            inbound::reconnect_backoff(self.options.max_backoff),
            || {
                // The session sees the shutdown itself, to let in-flight messages finish.
                let mut shutdown = shutdown.clone();
                async move {
                    this.session(bus, &mut shutdown)
                        .await
                        .map_err(SessionFailed::new)
                }
            },
            |error, delay| {
                tracing::warn!(
                    queue = %self.queue,
                    error = %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "rabbitmq command consumer failed; reconnecting"
                );
            },
        )
        .await;
        tracing::info!(queue = %self.queue, "rabbitmq command consumer stopped");
    }

    /// One connection's life: `Ok` at shutdown, `Err` when the broker failed.
    async fn session(&self, bus: &Arc<dyn CommandBus>, shutdown: &mut Shutdown) -> Result<()> {
        let connection = connect(&self.uri).await?;
        let result = self.consume(&connection, bus, shutdown).await;
        let _ = connection.close(200, "bye".into()).await;
        result
    }

    async fn consume(
        &self,
        connection: &Connection,
        bus: &Arc<dyn CommandBus>,
        shutdown: &mut Shutdown,
    ) -> Result<()> {
        let consume_channel = connection.create_channel().await?;
        let publish_channel = connection.create_channel().await?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        for queue in [&self.queue, &self.dead_letter_queue] {
            consume_channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        let prefetch = u16::try_from(self.options.concurrency.max(1)).unwrap_or(u16::MAX);
        consume_channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = consume_channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.queue, "rabbitmq command consumer started");
        let shared = Arc::new(self.clone());
        // The handlers live in this set: when the session ends they are aborted, and their
        // unacknowledged messages go back to the queue with the connection.
        let mut handlers = JoinSet::new();
        let result = loop {
            tokio::select! {
                () = shutdown.requested() => break Ok(()),
                Some(done) = handlers.join_next(), if !handlers.is_empty() => {
                    match done {
                        Ok(Err(error)) => break Err(error),
                        Err(panic) if panic.is_panic() => {
                            tracing::error!("a command message handler panicked");
                        }
                        _ => {}
                    }
                }
                delivery = consumer.next() => match delivery {
                    None => break Err(BrokerError::Refused {
                        broker: "rabbitmq",
                        message_id: String::new(),
                        reason: format!("the consumer of '{}' was cancelled", self.queue),
                    }),
                    Some(Err(error)) => break Err(error.into()),
                    Some(Ok(delivery)) => {
                        let this = shared.clone();
                        let bus = bus.clone();
                        let channel = publish_channel.clone();
                        handlers.spawn(async move { this.handle(delivery, &bus, &channel).await });
                    }
                },
            }
        };
        let grace = self.options.shutdown_grace;
        let _ = tokio::time::timeout(grace, async {
            while handlers.join_next().await.is_some() {}
        })
        .await;
        handlers.abort_all();
        result
    }

    async fn handle(
        &self,
        delivery: lapin::message::Delivery,
        bus: &Arc<dyn CommandBus>,
        channel: &Channel,
    ) -> Result<()> {
        let properties = &delivery.properties;
        let attempt = attempt_of(properties);
        let reply_to = properties
            .reply_to()
            .as_ref()
            .map(|s| s.as_str().to_owned());
        let correlation = properties
            .correlation_id()
            .as_ref()
            .or(properties.message_id().as_ref())
            .map(|s| s.as_str().to_owned());
        let (disposition, reply_to, correlation) = match CommandMessage::from_json(&delivery.data) {
            Err(detail) => (
                inbound::malformed(&detail, correlation.as_deref()),
                reply_to,
                correlation,
            ),
            Ok(mut message) => {
                if message.command_type.is_none() {
                    message.command_type = header_string(properties, "command_type")
                        .or_else(|| properties.kind().as_ref().map(|s| s.as_str().to_owned()));
                }
                message.reply_to = message.reply_to.or(reply_to);
                message.correlation_id = message.correlation_id.or(correlation);
                message.authorization = message
                    .authorization
                    .or_else(|| header_string(properties, "authorization").map(MessageSecret));
                message.api_key = message
                    .api_key
                    .or_else(|| header_string(properties, "x-api-key").map(MessageSecret));
                let reply_to = message.reply_to.clone();
                let correlation = message.correlation_id.clone();
                let key = properties
                    .message_id()
                    .as_ref()
                    .map(|id| format!("amqp:{}", id.as_str()));
                let disposition = inbound::execute(bus, message, key, attempt, &self.options).await;
                (disposition, reply_to, correlation)
            }
        };
        match disposition {
            Disposition::Done { reply } => {
                self.reply(channel, reply_to.as_deref(), correlation.as_deref(), &reply)
                    .await?;
            }
            Disposition::Retry { error } => {
                tokio::time::sleep(self.options.retry_delay).await;
                let mut headers = properties.headers().clone().unwrap_or_default();
                headers.insert(
                    ATTEMPT_HEADER.into(),
                    AMQPValue::LongLongInt(i64::from(attempt) + 1),
                );
                headers.insert("x-flexcore-last-error".into(), string(error));
                let copy = properties.clone().with_headers(headers);
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        self.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &delivery.data,
                        copy,
                    )
                    .await?;
                confirmed(confirm, "retry").await?;
            }
            Disposition::DeadLetter { error, code, reply } => {
                let mut headers = properties.headers().clone().unwrap_or_default();
                headers.insert("x-flexcore-error".into(), string(error));
                headers.insert("x-flexcore-error-code".into(), string(code));
                headers.insert(
                    "x-flexcore-attempts".into(),
                    AMQPValue::LongLongInt(i64::from(attempt)),
                );
                headers.insert(
                    "x-flexcore-original-queue".into(),
                    string(self.queue.as_str()),
                );
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        self.dead_letter_queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &delivery.data,
                        properties.clone().with_headers(headers),
                    )
                    .await?;
                confirmed(confirm, "dead letter").await?;
                self.reply(channel, reply_to.as_deref(), correlation.as_deref(), &reply)
                    .await?;
            }
        }
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    async fn reply(
        &self,
        channel: &Channel,
        reply_to: Option<&str>,
        correlation: Option<&str>,
        reply: &serde_json::Value,
    ) -> Result<()> {
        let Some(reply_to) = reply_to.filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT);
        if let Some(id) = correlation {
            properties = properties.with_correlation_id(id.into());
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                reply_to.into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(reply)?,
                properties,
            )
            .await?;
        confirmed(confirm, "reply").await
    }
}

/// The attempt a delivery is: our counter header, or a quorum queue's `x-delivery-count`.
fn attempt_of(properties: &BasicProperties) -> u32 {
    let number = |key: &str| {
        properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(key))
            .and_then(|v| match v {
                AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
                AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
                AMQPValue::LongUInt(n) => Some(*n),
                AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
                AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
                _ => None,
            })
    };
    let ours = number(ATTEMPT_HEADER).unwrap_or(1);
    let quorum = number("x-delivery-count").map_or(1, |n| n + 1);
    ours.max(quorum).max(1)
}

fn header_string(properties: &BasicProperties, key: &str) -> Option<String> {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key))
        .and_then(|v| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        })
}
