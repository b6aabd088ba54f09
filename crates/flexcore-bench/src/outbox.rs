//! `flexcore-bench outbox`: how fast the outbox relay empties the log into each broker.
//!
//! In one run: 16 writers append `--read-events` events (appends of 100) to a fresh store (the
//! store's append rate), then, for each broker that is up, an [`OutboxRelay`] with default
//! options (batches of 500, confirms awaited per batch) publishes the whole log from position 0
//! to a fresh destination, `--repeat` times; the median events/s is reported.
//!
//! * RabbitMQ: a durable topic exchange with one durable queue bound to `#` (persistent
//!   messages, publisher confirms), `FLEXCORE_BENCH_AMQP_URL` or
//!   `amqp://guest:guest@127.0.0.1:5672/%2f`;
//! * Redis: `XADD` pipelined per batch, `FLEXCORE_BENCH_REDIS_URL` or `redis://127.0.0.1:6379/`;
//! * NATS: a JetStream file stream, every publish ack awaited, `FLEXCORE_BENCH_NATS_URL` or
//!   `nats://127.0.0.1:4222`.
//!
//! Destinations are created per repetition and deleted afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flexcore_app::durable::{CheckpointStore, InMemoryCheckpoints};
use flexcore_app::outbox::{EventPublisher, OutboxRelay};
use flexcore_app::store::EventStore;
use flexcore_broker::{NatsPublisher, RabbitPublisher, RedisStreamPublisher};
use flexcore_broker::{async_nats, lapin, redis};
use serde::Serialize;
use tokio::sync::watch;

use crate::fixture::{CommitMode, TempStores};
use crate::{OutboxArgs, median};

/// The figures of `flexcore-bench outbox`.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxFigures {
    /// The store.
    pub store: &'static str,
    /// Events in the log.
    pub events: u64,
    /// Appending them, events/s (16 writers x 100 events per append).
    pub append_per_s: f64,
    /// Per broker: median relay events/s and every run's.
    pub relays: Vec<RelayFigure>,
}

/// One broker's relay rate.
#[derive(Debug, Clone, Serialize)]
pub struct RelayFigure {
    /// `rabbitmq`, `redis` or `nats`.
    pub broker: String,
    /// Median events/s, `None` when the broker was not reachable.
    pub events_per_s: Option<f64>,
    /// Every run's events/s.
    pub runs: Vec<f64>,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Runs the outbox cases and prints a table (or JSON).
pub async fn run(args: &OutboxArgs) -> anyhow::Result<()> {
    let stores = TempStores::new(&args.store.store)?.with_committers(args.committers.committers);
    let store = stores
        .open(&stores.fresh(), CommitMode::GroupCommit, 16)
        .await?;
    // The log holds exactly what was written (a multiple of 16 writers' shares).
    let (events, append_per_s) =
        super::append_history(&store, args.read_events.max(1000) as u64).await?;

    let mut relays = Vec::new();
    for broker in ["rabbitmq", "redis", "nats"] {
        let mut runs = Vec::new();
        let mut skipped = None;
        for rep in 0..args.run.repeat.max(1) {
            match relay_once(broker, &store, events, rep).await {
                Ok(rate) => runs.push(rate),
                Err(e) => {
                    skipped = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        relays.push(RelayFigure {
            broker: broker.to_owned(),
            events_per_s: (skipped.is_none() && !runs.is_empty())
                .then(|| median(&mut runs.clone())),
            runs,
            skipped,
        });
    }
    let backend = stores.backend_name();
    stores.close().await;

    let figures = OutboxFigures {
        store: backend,
        events,
        append_per_s,
        relays,
    };
    if args.run.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    println!(
        "outbox relay on {} ({} events, batches of 500, median of {})",
        figures.store,
        figures.events,
        args.run.repeat.max(1)
    );
    println!(
        "  {:<40} {:>12.0} events/s",
        "append (16 writers x 100 events)", figures.append_per_s
    );
    for relay in &figures.relays {
        let label = match relay.broker.as_str() {
            "rabbitmq" => "relay -> RabbitMQ (persistent, confirms)",
            "redis" => "relay -> Redis Streams (pipelined XADD)",
            _ => "relay -> NATS JetStream (acks awaited)",
        };
        match (relay.events_per_s, &relay.skipped) {
            (Some(rate), _) => println!("  {label:<40} {rate:>12.0} events/s"),
            (None, Some(why)) => println!("  {label:<40} {:>12} ({why})", "skipped"),
            (None, None) => println!("  {label:<40} {:>12}", "-"),
        }
    }
    Ok(())
}

fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// Relays the whole log once to a fresh destination on `broker`; returns events/s.
async fn relay_once(
    broker: &str,
    store: &Arc<dyn EventStore>,
    events: u64,
    rep: usize,
) -> anyhow::Result<f64> {
    let name = format!("bench_{}_{rep}", uuid::Uuid::new_v4().simple());
    let destination = Destination::create(broker, &name).await?;
    let publisher = destination.publisher(&name)?;
    let checkpoints = Arc::new(InMemoryCheckpoints::new());
    let relay = OutboxRelay::new(
        "bench",
        publisher,
        Arc::clone(store) as Arc<_>,
        checkpoints.clone(),
    );
    let (stop, shutdown) = watch::channel(false);
    let started = Instant::now();
    let task = relay.spawn(shutdown);
    // The log holds positions 1..=events; the relay is done when it continues from events + 1.
    let result = async {
        let deadline = started + Duration::from_secs(600);
        loop {
            if checkpoints.load_checkpoint("outbox:bench").await? > Some(events) {
                break anyhow::Ok(events as f64 / started.elapsed().as_secs_f64());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{broker}: the relay did not finish"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    .await;
    let _ = stop.send(true);
    let _ = task.await;
    destination.delete(&name).await;
    result
}

/// A fresh exchange + queue, stream key, or JetStream stream.
enum Destination {
    Rabbit {
        url: String,
        connection: Box<lapin::Connection>,
        channel: lapin::Channel,
    },
    Redis {
        url: String,
    },
    Nats {
        url: String,
    },
}

impl Destination {
    async fn create(broker: &str, name: &str) -> anyhow::Result<Self> {
        match broker {
            "rabbitmq" => {
                use lapin::options::{
                    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
                };
                use lapin::types::FieldTable;
                let url = url(
                    "FLEXCORE_BENCH_AMQP_URL",
                    "amqp://guest:guest@127.0.0.1:5672/%2f",
                );
                let connection = tokio::time::timeout(
                    Duration::from_secs(5),
                    lapin::Connection::connect(&url, Default::default()),
                )
                .await
                .context("RabbitMQ did not answer")?
                .context("RabbitMQ is not reachable")?;
                let channel = connection.create_channel().await?;
                channel
                    .exchange_declare(
                        name.into(),
                        lapin::ExchangeKind::Topic,
                        ExchangeDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                let durable = QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                channel
                    .queue_declare(name.into(), durable, FieldTable::default())
                    .await?;
                channel
                    .queue_bind(
                        name.into(),
                        name.into(),
                        "#".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                Ok(Self::Rabbit {
                    url,
                    connection: Box::new(connection),
                    channel,
                })
            }
            "redis" => {
                let url = url("FLEXCORE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/");
                let client = redis::Client::open(url.as_str())?;
                tokio::time::timeout(
                    Duration::from_secs(5),
                    client.get_multiplexed_async_connection(),
                )
                .await
                .context("Redis did not answer")?
                .context("Redis is not reachable")?;
                Ok(Self::Redis { url })
            }
            _ => {
                let url = url("FLEXCORE_BENCH_NATS_URL", "nats://127.0.0.1:4222");
                tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url.as_str()))
                    .await
                    .context("NATS did not answer")?
                    .context("NATS is not reachable")?;
                Ok(Self::Nats { url })
            }
        }
    }

    fn publisher(&self, name: &str) -> anyhow::Result<Arc<dyn EventPublisher>> {
        Ok(match self {
            Self::Rabbit { url, .. } => Arc::new(RabbitPublisher::new(url.clone(), name)),
            Self::Redis { url } => Arc::new(RedisStreamPublisher::new(url, name)?),
            Self::Nats { url } => Arc::new(NatsPublisher::from_url(&format!(
                "{url}?subject_prefix={name}&stream={name}"
            ))?),
        })
    }

    async fn delete(&self, name: &str) {
        match self {
            Self::Rabbit {
                connection,
                channel,
                ..
            } => {
                use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
                let _ = channel
                    .queue_delete(name.into(), QueueDeleteOptions::default())
                    .await;
                let _ = channel
                    .exchange_delete(name.into(), ExchangeDeleteOptions::default())
                    .await;
                let _ = connection.close(200, "bye".into()).await;
            }
            Self::Redis { url } => {
                if let Ok(client) = redis::Client::open(url.as_str())
                    && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                {
                    let _: redis::RedisResult<()> =
                        redis::cmd("DEL").arg(name).query_async(&mut conn).await;
                }
            }
            Self::Nats { url } => {
                if let Ok(client) = async_nats::connect(url.as_str()).await {
                    let _ = async_nats::jetstream::new(client).delete_stream(name).await;
                }
            }
        }
    }
}
