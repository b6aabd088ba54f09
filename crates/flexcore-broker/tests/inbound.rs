//! The inbound command gateway against the real RabbitMQ and Redis: commands run and reply;
//! refusals are replied and not retried; poison messages are dead-lettered after N attempts; a
//! message whose consumer dies between commit and acknowledgement is delivered again and does
//! not run twice.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use flexcore_app::command::CommandBus;
use flexcore_app::store::InMemoryStore;
use flexcore_broker::{InboundOptions, RabbitCommandConsumer, RedisCommandConsumer};
use flexcore_test_support::services::{rabbitmq_url, redis_url, unique_name};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

const TIMEOUT: Duration = Duration::from_secs(30);

fn options() -> InboundOptions {
    InboundOptions {
        max_attempts: 3,
        retry_delay: Duration::from_millis(100),
        claim_idle: Duration::from_millis(500),
        concurrency: 4,
        shutdown_grace: Duration::from_millis(200),
        max_backoff: Duration::from_millis(500),
        ..InboundOptions::default()
    }
}

/// A running consumer and the switch that stops it.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the consumer stops")
            .unwrap();
    }
}

// --- RabbitMQ ------------------------------------------------------------------------------

struct Rabbit {
    url: String,
    connection: Connection,
    channel: Channel,
    queue: String,
    replies: String,
    dead_letters: String,
}

impl Rabbit {
    async fn new(url: String) -> Self {
        let connection = Connection::connect(&url, Default::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let queue = unique_name("commands");
        let replies = unique_name("replies");
        for name in [&queue, &replies] {
            channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        Self {
            url,
            connection,
            channel,
            dead_letters: format!("{queue}.dead-letter"),
            queue,
            replies,
        }
    }

    fn start(&self, bus: Arc<dyn CommandBus>) -> Running {
        self.start_with(bus, options())
    }

    fn start_with(&self, bus: Arc<dyn CommandBus>, options: InboundOptions) -> Running {
        let (stop, shutdown) = watch::channel(false);
        let task = RabbitCommandConsumer::new(self.url.clone(), self.queue.clone())
            .with_options(options)
            .spawn(bus, shutdown);
        Running { stop, task }
    }

    /// Sends a command message with a message id, asking for a reply.
    async fn send(&self, body: Value, correlation_id: &str) {
        self.send_with_headers(body, correlation_id, FieldTable::default())
            .await;
    }

    /// [`Rabbit::send`], with these message headers.
    async fn send_with_headers(&self, body: Value, correlation_id: &str, headers: FieldTable) {
        let properties = BasicProperties::default()
            .with_message_id(uuid::Uuid::new_v4().to_string().into())
            .with_correlation_id(correlation_id.into())
            .with_reply_to(self.replies.as_str().into())
            .with_content_type("application/json".into())
            .with_headers(headers);
        self.channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&body).unwrap(),
                properties,
            )
            .await
            .unwrap();
    }

    async fn get(&self, queue: &str) -> Option<lapin::message::Delivery> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .map(|m| m.delivery)
    }

    /// The next reply: `(correlation_id, body)`.
    async fn reply(&self) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(delivery) = self.get(&self.replies.clone()).await {
                let correlation = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                return (correlation, serde_json::from_slice(&delivery.data).unwrap());
            }
            assert!(tokio::time::Instant::now() < deadline, "no reply came");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn message_count(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    async fn cleanup(&self) {
        for queue in [&self.queue, &self.replies, &self.dead_letters] {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

#[tokio::test]
async fn rabbitmq_command_executes_and_replies() {
    let Some(url) = rabbitmq_url() else { return };
    let rabbit = Rabbit::new(url).await;
    let store = Arc::new(InMemoryStore::new());
    let (bus, _) = test_bus(store.clone());
    let running = rabbit.start(bus);

    let email = unique_email();
    rabbit
        .send(
            json!({"command_type": "create_user", "payload": {"email": email, "profile": {"n": 1}}}),
            "req-1",
        )
        .await;
    let (correlation, reply) = rabbit.reply().await;
    running.stop().await;
    rabbit.cleanup().await;

    assert_eq!(correlation, "req-1");
    assert_eq!(reply["ok"], json!(true), "{reply}");
    assert_eq!(reply["correlation_id"], json!("req-1"));
    assert_eq!(
        reply["result"]["events"][0]["event_type"],
        json!("user.created")
    );
    assert_eq!(users_created(store.as_ref()).await, 1);
}

#[tokio::test]
async fn rabbitmq_invalid_command_is_replied_and_not_retried() {
    let Some(url) = rabbitmq_url() else { return };
    let rabbit = Rabbit::new(url).await;
    let store = Arc::new(InMemoryStore::new());
    let (bus, _) = test_bus(store.clone());
    let running = rabbit.start(bus);

    rabbit
        .send(
            json!({"command_type": "create_user", "payload": {"email": "not-an-email"}}),
            "bad-1",
        )
        .await;
    let (_, reply) = rabbit.reply().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = rabbit.get(&rabbit.replies.clone()).await;
    let queued = rabbit.message_count(&rabbit.queue.clone()).await;
    let dead = rabbit.message_count(&rabbit.dead_letters.clone()).await;
    running.stop().await;
    rabbit.cleanup().await;

    assert_eq!(reply["ok"], json!(false));
    assert_eq!(reply["error"]["code"], json!("validation_failed"));
    assert_eq!(reply["error"]["status"], json!(422));
    assert!(second.is_none(), "one reply only: the command ran once");
    assert_eq!((queued, dead), (0, 0), "acknowledged, not retried");
    assert_eq!(users_created(store.as_ref()).await, 0);
}

#[tokio::test]
async fn rabbitmq_poison_message_is_dead_lettered_after_max_attempts() {
    let Some(url) = rabbitmq_url() else { return };
    let rabbit = Rabbit::new(url).await;
    let store = Arc::new(InMemoryStore::new());
    let (bus, poison_calls) = test_bus(store);
    let running = rabbit.start(bus);

    rabbit
        .send(json!({"command_type": "poison", "payload": {}}), "p-1")
        .await;
    let (_, reply) = rabbit.reply().await;
    let dead = rabbit.get(&rabbit.dead_letters.clone()).await;
    // A message that is not even JSON goes straight to the dead letters.
    rabbit.send(json!("not an object"), "m-1").await;
    let (_, malformed) = rabbit.reply().await;
    let dead_malformed = rabbit.get(&rabbit.dead_letters.clone()).await;
    running.stop().await;
    rabbit.cleanup().await;

    assert_eq!(poison_calls.load(Ordering::SeqCst), 3, "three attempts");
    assert_eq!(reply["error"]["code"], json!("unavailable"));
    let dead = dead.expect("the poison message is in the dead-letter queue");
    let headers = dead.properties.headers().as_ref().unwrap().inner();
    assert_eq!(
        headers.get("x-flexcore-attempts"),
        Some(&AMQPValue::LongLongInt(3))
    );
    let Some(AMQPValue::LongString(error)) = headers.get("x-flexcore-error") else {
        panic!("the last error is in a header")
    };
    assert!(error.to_string().contains("poison"), "{error}");
    let body: Value = serde_json::from_slice(&dead.data).unwrap();
    assert_eq!(body["command_type"], json!("poison"));

    assert_eq!(malformed["error"]["code"], json!("bad_request"));
    assert!(dead_malformed.is_some());
}

#[tokio::test]
async fn rabbitmq_message_redelivered_after_a_crash_before_ack_does_not_run_twice() {
    let Some(url) = rabbitmq_url() else { return };
    let rabbit = Rabbit::new(url).await;
    let store = Arc::new(InMemoryStore::new());
    let (bus, _) = test_bus(store.clone());
    let committed = Arc::new(Notify::new());
    let hanging = Arc::new(HangAfterFirstCommit {
        inner: bus.clone(),
        committed: committed.clone(),
        calls: AtomicU32::new(0),
    });
    let first = rabbit.start(hanging);

    rabbit
        .send(
            json!({"command_type": "create_user", "payload": {"email": unique_email()}}),
            "c-1",
        )
        .await;
    tokio::time::timeout(TIMEOUT, committed.notified())
        .await
        .expect("the command committed");
    // The consumer dies after the commit, before the ack: nothing was replied or acknowledged.
    first.stop().await;
    assert_eq!(users_created(store.as_ref()).await, 1);
    assert!(rabbit.get(&rabbit.replies.clone()).await.is_none());

    let second = rabbit.start(bus);
    let (correlation, reply) = rabbit.reply().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued = rabbit.message_count(&rabbit.queue.clone()).await;
    second.stop().await;
    rabbit.cleanup().await;

    assert_eq!(correlation, "c-1");
    assert_eq!(reply["ok"], json!(true), "{reply}");
    assert_eq!(users_created(store.as_ref()).await, 1, "not appended twice");
    assert_eq!(queued, 0, "acknowledged the second time");
}

#[tokio::test]
async fn rabbitmq_commands_are_authenticated_from_message_headers() {
    use flexcore_app::command::CommandBusExt;
    use flexcore_test_support::security::{test_gate, token};
    let Some(url) = rabbitmq_url() else { return };
    let rabbit = Rabbit::new(url).await;
    let store = Arc::new(InMemoryStore::new());
    let (bus, _) = test_bus(store.clone());
    let (gate, policy) = test_gate(None);
    let bus: Arc<dyn CommandBus> = Arc::new(bus.with_authorization(policy));
    let running = rabbit.start_with(bus, InboundOptions { gate, ..options() });
    let create = json!({"command_type": "create_user", "payload": {"email": unique_email()}});
    rabbit.send(create.clone(), "anonymous").await;
    let mut headers = FieldTable::default();
    headers.insert(
        "authorization".into(),
        AMQPValue::LongString(format!("Bearer {}", token("ann", &["writer"])).into()),
    );
    rabbit.send_with_headers(create, "ann", headers).await;
    let mut replies = HashMap::new();
    for _ in 0..2 {
        let (correlation, body) = rabbit.reply().await;
        replies.insert(correlation, body);
    }
    running.stop().await;
    rabbit.cleanup().await;
    assert_eq!(replies["anonymous"]["error"]["code"], json!("unauthorized"));
    assert_eq!(replies["ann"]["ok"], json!(true), "{}", replies["ann"]);
    assert_eq!(users_created(store.as_ref()).await, 1);
}

// --- Redis Streams ---------------------------------------------------------------------------

struct Redis {
    url: String,
    conn: redis::aio::MultiplexedConnection,
    stream: String,
    replies: String,
    dead_letters: String,
    group: String,
}

impl Redis {
    async fn new(url: String) -> Self {
        let client = redis::Client::open(url.as_str()).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        let stream = unique_name("commands");
        Self {
            url,
            conn,
            replies: unique_name("replies"),
            dead_letters: format!("{stream}.dead-letter"),
            group: unique_name("group"),
            stream,
        }
    }

    fn start(&self, bus: Arc<dyn CommandBus>, consumer: &str) -> Running {
        self.start_with(bus, consumer, options())
    }

    fn start_with(
        &self,
        bus: Arc<dyn CommandBus>,
        consumer: &str,
        options: InboundOptions,
    ) -> Running {
        let (stop, shutdown) = watch::channel(false);
        let task = RedisCommandConsumer::new(self.url.clone(), self.stream.clone())
            .with_group(self.group.clone(), consumer)
            .with_options(options)
            .spawn(bus, shutdown);
        Running { stop, task }
    }

    async fn send(&self, fields: &[(&str, String)]) {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(v);
        }
        let _: String = cmd.query_async(&mut self.conn.clone()).await.unwrap();
    }

    async fn entries(&self, key: &str) -> Vec<HashMap<String, String>> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        reply
            .ids
            .into_iter()
            .map(|entry| {
                entry
                    .map
                    .into_iter()
                    .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap()))
                    .collect()
            })
            .collect()
    }

    async fn replies(&self, at_least: usize) -> Vec<HashMap<String, String>> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let replies = self.entries(&self.replies).await;
            if replies.len() >= at_least {
                return replies;
            }
            assert!(tokio::time::Instant::now() < deadline, "no reply came");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn pending(&self) -> usize {
        let reply: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        reply.count()
    }

    async fn cleanup(&self) {
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(&self.stream)
            .arg(&self.replies)
            .arg(&self.dead_letters)
            .query_async(&mut self.conn.clone())
            .await;
    }
}

fn reply_body(entry: &HashMap<String, String>) -> Value {
    serde_json::from_str(&entry["reply"]).unwrap()
}

#[tokio::test]
async fn redis_command_executes_and_replies() {
    let Some(url) = redis_url() else { return };
    let redis = Redis::new(url).await;
    let store = Arc::new(InMemoryStore::new());
    let (bus, _) = test_bus(store.clone());
    let running = redis.start(bus, "c1");

    // Flat fields this time (the JSON `message` field is tested below).
    let email = unique_email();
    redis
        .send(&[
            ("command_type", "create_user".into()),
            ("payload", json!({"email": email}).to_string()),
            ("reply_to", redis.replies.clone()),
            ("correlation_id", "req-1".into()),
        ])
        .await;
    let replies = redis.replies(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pending = redis.pending().await;
    running.stop().await;
    redis.cleanup().await;

    assert_eq!(replies[0]["correlation_id"], "req-1");
    assert_eq!(replies[0]["ok"], "true");
    let reply = reply_body(&replies[0]);
    assert_eq!(
        reply["result"]["events"][0]["event_type"],
        json!("user.created")
    );
    assert_eq!(pending, 0, "acknowledged");
    assert_eq!(users_created(store.as_ref()).await, 1);
}

#[tokio::test]
async fn redis_invalid_command_is_replied_and_not_retried() {
    let Some(url) = redis_url() else { return };
    let redis = Redis::new(url).await;
    let store = Arc::new(InMemoryStore::new());
    let (bus, _) = test_bus(store.clone());
    let running = redis.start(bus, "c1");

    let message = json!({
        "command_type": "create_user",
        "payload": {"email": "not-an-email"},
        "reply_to": redis.replies,
    });
    redis.send(&[("message", message.to_string())]).await;
    redis.replies(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let replies = redis.entries(&redis.replies).await;
    let pending = redis.pending().await;
    let dead = redis.entries(&redis.dead_letters).await;
    running.stop().await;
    redis.cleanup().await;

    assert_eq!(replies.len(), 1, "one reply only: the command ran once");
    assert_eq!(replies[0]["ok"], "false");
    let reply = reply_body(&replies[0]);
    assert_eq!(reply["error"]["code"], json!("validation_failed"));
    assert_eq!((pending, dead.len()), (0, 0), "acknowledged, not retried");
    assert_eq!(users_created(store.as_ref()).await, 0);
}

#[tokio::test]
async fn redis_poison_message_is_dead_lettered_after_max_attempts() {
    let Some(url) = redis_url() else { return };
    let redis = Redis::new(url).await;
    let store = Arc::new(InMemoryStore::new());
    let (bus, poison_calls) = test_bus(store);
    let running = redis.start(bus, "c1");

    let message = json!({"command_type": "poison", "reply_to": redis.replies});
    redis.send(&[("message", message.to_string())]).await;
    let replies = redis.replies(1).await;
    let dead = redis.entries(&redis.dead_letters).await;
    let pending = redis.pending().await;
    running.stop().await;
    redis.cleanup().await;

    assert_eq!(poison_calls.load(Ordering::SeqCst), 3, "three attempts");
    assert_eq!(
        reply_body(&replies[0])["error"]["code"],
        json!("unavailable")
    );
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["attempts"], "3");
    assert_eq!(dead[0]["error_code"], "unavailable");
    assert!(dead[0]["error"].contains("poison"), "{:?}", dead[0]);
    assert_eq!(
        dead[0]["message"],
        message.to_string(),
        "the original fields"
    );
    assert_eq!(pending, 0);
}

#[tokio::test]
async fn redis_entry_reclaimed_after_a_crash_before_ack_does_not_run_twice() {
    let Some(url) = redis_url() else { return };
    let redis = Redis::new(url).await;
    let store = Arc::new(InMemoryStore::new());
    let (bus, _) = test_bus(store.clone());
    let committed = Arc::new(Notify::new());
    let hanging = Arc::new(HangAfterFirstCommit {
        inner: bus.clone(),
        committed: committed.clone(),
        calls: AtomicU32::new(0),
    });
    let first = redis.start(hanging, "dies");

    let message = json!({
        "command_type": "create_user",
        "payload": {"email": unique_email()},
        "reply_to": redis.replies,
        "correlation_id": "c-1",
    });
    redis.send(&[("message", message.to_string())]).await;
    tokio::time::timeout(TIMEOUT, committed.notified())
        .await
        .expect("the command committed");
    first.stop().await;
    assert_eq!(users_created(store.as_ref()).await, 1);
    assert_eq!(redis.pending().await, 1, "left pending, not acknowledged");
    assert!(redis.entries(&redis.replies).await.is_empty());

    // Another member of the group claims the idle entry.
    let second = redis.start(bus, "survives");
    let replies = redis.replies(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending = redis.pending().await;
    second.stop().await;
    redis.cleanup().await;

    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["correlation_id"], "c-1");
    assert_eq!(replies[0]["ok"], "true", "{:?}", replies[0]);
    assert_eq!(users_created(store.as_ref()).await, 1, "not appended twice");
    assert_eq!(pending, 0, "acknowledged the second time");
}

/// Runs every command through `inner` after `delay`, counting the calls.
struct Slow {
    inner: Arc<dyn CommandBus>,
    delay: Duration,
    calls: Arc<AtomicU32>,
}

#[async_trait::async_trait]
impl CommandBus for Slow {
    async fn send(
        &self,
        ctx: &flexcore_app::command::CommandContext,
        command: &flexcore_app::command::Command,
    ) -> flexcore_app::Result<flexcore_app::command::CommandOutcome> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.inner.send(ctx, command).await
    }
}

#[tokio::test]
async fn redis_slow_command_is_not_taken_over_by_another_member_while_it_runs() {
    let Some(url) = redis_url() else { return };
    let redis = Redis::new(url).await;
    let store = Arc::new(InMemoryStore::new());
    let (bus, _) = test_bus(store.clone());
    let calls = Arc::new(AtomicU32::new(0));
    let slow = Arc::new(Slow {
        inner: bus,
        delay: Duration::from_millis(1500),
        calls: calls.clone(),
    });
    // The command runs 15× longer than the retry delay, and within the take-over time.
    let options = InboundOptions {
        claim_idle: Duration::from_secs(10),
        ..options()
    };
    let first = redis.start_with(slow.clone(), "m1", options.clone());
    let second = redis.start_with(slow, "m2", options);

    let message = json!({
        "command_type": "create_user",
        "payload": {"email": unique_email()},
        "reply_to": redis.replies,
    });
    redis.send(&[("message", message.to_string())]).await;
    redis.replies(1).await;
    // Long enough for a second run to finish too, had one started.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let replies = redis.entries(&redis.replies).await;
    let pending = redis.pending().await;
    first.stop().await;
    second.stop().await;
    redis.cleanup().await;

    assert_eq!(calls.load(Ordering::SeqCst), 1, "the command ran once");
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["ok"], "true", "{:?}", replies[0]);
    assert_eq!(pending, 0);
    assert_eq!(users_created(store.as_ref()).await, 1);
}

#[tokio::test]
async fn redis_commands_need_a_credential_when_authentication_is_on() {
    use flexcore_app::command::CommandBusExt;
    use flexcore_test_support::security::{TEST_API_KEY, test_gate, token};
    let Some(url) = redis_url() else { return };
    let redis = Redis::new(url).await;
    let store = Arc::new(InMemoryStore::new());
    let (bus, _) = test_bus(store.clone());
    let (gate, policy) = test_gate(None);
    let bus: Arc<dyn CommandBus> = Arc::new(bus.with_authorization(policy));
    let running = redis.start_with(bus, "c1", InboundOptions { gate, ..options() });

    let create = |email: &str| json!({"email": email}).to_string();
    let writer = format!("Bearer {}", token("ann", &["writer"]));
    let reader = format!("Bearer {}", token("rob", &["reader"]));
    let sends: [(&str, Vec<(&str, String)>); 5] = [
        ("none", vec![]),
        ("forged", vec![("authorization", "Bearer x.y.z".into())]),
        ("reader", vec![("authorization", reader)]),
        ("writer", vec![("authorization", writer)]),
        ("key", vec![("x-api-key", TEST_API_KEY.into())]),
    ];
    for (i, (name, credential)) in sends.iter().enumerate() {
        let mut fields = vec![
            ("command_type", "create_user".to_owned()),
            ("payload", create(&format!("u{i}-{}", unique_email()))),
            ("reply_to", redis.replies.clone()),
            ("correlation_id", (*name).to_owned()),
        ];
        fields.extend(credential.iter().cloned());
        redis.send(&fields).await;
    }
    let replies = redis.replies(sends.len()).await;
    let pending = redis.pending().await;
    running.stop().await;
    redis.cleanup().await;

    let code = |name: &str| {
        let entry = replies
            .iter()
            .find(|r| r["correlation_id"] == name)
            .unwrap();
        let body = reply_body(entry);
        body["error"]["code"].as_str().unwrap_or("ok").to_owned()
    };
    assert_eq!(code("none"), "unauthorized");
    assert_eq!(code("forged"), "unauthorized");
    assert_eq!(code("reader"), "forbidden");
    assert_eq!(code("writer"), "ok");
    assert_eq!(code("key"), "ok");
    assert_eq!(pending, 0, "refusals are acknowledged, not retried");
    assert_eq!(users_created(store.as_ref()).await, 2);
}
