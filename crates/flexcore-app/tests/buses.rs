//! The buses and their middleware.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use flexcore_app::command::{
    AsyncCommands, Command, CommandBus, CommandBusExt, CommandContext, CommandHandler,
    CommandRouter, CommandStatus,
};
use flexcore_app::event_bus::{EventBus, EventHandler};
use flexcore_app::query::{Query, QueryBus, QueryBusExt, QueryContext, QueryHandler, QueryRouter};
use flexcore_app::repository::RetryPolicy;
use flexcore_app::store::{EventAppender, EventReader, InMemoryStore, StreamWriteResult};
use flexcore_app::{Error, ErrorKind, Result};
use flexcore_domain::{DomainError, EventEnvelope, ExpectedVersion, NewEvent, RawJson, StreamId};
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

/// Fails with a wrong expected version `failures` times, then succeeds.
struct Flaky {
    failures: u32,
    calls: AtomicU32,
}

#[async_trait]
impl CommandHandler for Flaky {
    async fn handle(&self, _ctx: &CommandContext, payload: &Value) -> Result<StreamWriteResult> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if payload["reject"] == true {
            return Err(DomainError::AlreadyExists("taken".into()).into());
        }
        if call < self.failures {
            return Err(DomainError::WrongExpectedVersion {
                stream_id: "s-1".into(),
                expected: ExpectedVersion::Exact(call.into()),
                current: Some(u64::from(call) + 1),
            }
            .into());
        }
        Ok(StreamWriteResult {
            stream_id: StreamId::new("s-1").unwrap(),
            current_version: Some(0),
            events: vec![],
        })
    }
}

fn router_with(handler: Arc<Flaky>) -> CommandRouter {
    let mut router = CommandRouter::new();
    router.register("do", handler).unwrap();
    router
}

fn command(payload: Value) -> Command {
    Command {
        command_type: "do".into(),
        payload,
    }
}

const FAST: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    base_delay: Duration::from_millis(1),
};

#[tokio::test]
async fn the_router_routes_by_type_and_refuses_unknown_types() {
    let handler = Arc::new(Flaky {
        failures: 0,
        calls: AtomicU32::new(0),
    });
    let mut router = router_with(Arc::clone(&handler));
    assert!(
        router.register("do", handler).is_err(),
        "one handler per type"
    );
    assert_eq!(router.command_types(), ["do"]);
    let ctx = CommandContext::default();
    let outcome = router.send(&ctx, &command(json!({}))).await.unwrap();
    assert_eq!(outcome.command_id, ctx.command_id);
    let err = router
        .send(
            &ctx,
            &Command {
                command_type: "nope".into(),
                payload: json!({}),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownCommand(ref t) if t == "nope"));
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn retry_middleware_reruns_only_concurrency_conflicts() {
    let handler = Arc::new(Flaky {
        failures: 2,
        calls: AtomicU32::new(0),
    });
    let bus = router_with(Arc::clone(&handler))
        .with_retry(FAST)
        .with_tracing();
    bus.send(&CommandContext::default(), &command(json!({})))
        .await
        .unwrap();
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3);

    let stubborn = Arc::new(Flaky {
        failures: 10,
        calls: AtomicU32::new(0),
    });
    let bus = router_with(Arc::clone(&stubborn)).with_retry(FAST);
    let err = bus
        .send(&CommandContext::default(), &command(json!({})))
        .await
        .unwrap_err();
    assert!(err.is_wrong_expected_version());
    assert_eq!(
        stubborn.calls.load(Ordering::SeqCst),
        3,
        "gives up after max_attempts"
    );

    let rejecting = Arc::new(Flaky {
        failures: 0,
        calls: AtomicU32::new(0),
    });
    let bus = router_with(Arc::clone(&rejecting)).with_retry(FAST);
    let err = bus
        .send(
            &CommandContext::default(),
            &command(json!({"reject": true})),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(
        rejecting.calls.load(Ordering::SeqCst),
        1,
        "business conflicts are not retried"
    );
}

#[tokio::test]
async fn async_commands_report_their_status() {
    let ok = Arc::new(Flaky {
        failures: 0,
        calls: AtomicU32::new(0),
    });
    let commands = AsyncCommands::new(Arc::new(router_with(ok)), 2);
    let id = commands.send_async(CommandContext::default(), command(json!({})));
    let failed = commands.send_async(CommandContext::default(), command(json!({"reject": true})));
    let mut statuses = (None, None);
    for _ in 0..200 {
        statuses = (commands.status(id), commands.status(failed));
        if !matches!(
            statuses,
            (Some(CommandStatus::Pending), _) | (_, Some(CommandStatus::Pending))
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        matches!(statuses.0, Some(CommandStatus::Succeeded { .. })),
        "{statuses:?}"
    );
    assert!(
        matches!(
            statuses.1,
            Some(CommandStatus::Failed {
                code: "conflict",
                ..
            })
        ),
        "{statuses:?}"
    );
    commands.send_async(CommandContext::default(), command(json!({})));
    assert!(
        commands.status(id).is_none(),
        "only the latest statuses are kept"
    );
}

struct Echo;

#[async_trait]
impl QueryHandler for Echo {
    async fn handle(&self, _ctx: &QueryContext, params: &Value) -> Result<Value> {
        Ok(json!({ "echo": params }))
    }
}

#[tokio::test]
async fn the_query_bus_routes_by_type() {
    let mut router = QueryRouter::new();
    router.register("echo", Arc::new(Echo)).unwrap();
    assert!(router.register("echo", Arc::new(Echo)).is_err());
    let bus = router.with_tracing();
    let ctx = QueryContext::default();
    let answer = bus
        .ask(
            &ctx,
            &Query {
                query_type: "echo".into(),
                params: json!({"a": 1}),
            },
        )
        .await
        .unwrap();
    assert_eq!(answer, json!({"echo": {"a": 1}}));
    let err = bus
        .ask(
            &ctx,
            &Query {
                query_type: "nope".into(),
                params: json!({}),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownQuery(_)));
}

/// Records what it sees; fails the first delivery of every event when asked to.
struct Recorder {
    seen: Mutex<Vec<EventEnvelope>>,
    fail_first: bool,
    attempts: AtomicU32,
}

#[async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, event: &EventEnvelope) -> Result<()> {
        if self.fail_first
            && self
                .attempts
                .fetch_add(1, Ordering::SeqCst)
                .is_multiple_of(2)
        {
            return Err(Error::unavailable("flaky downstream"));
        }
        self.seen.lock().await.push(event.clone());
        Ok(())
    }
}

#[tokio::test]
async fn the_event_bus_delivers_committed_events_by_type_and_retries_failures() {
    let store = Arc::new(InMemoryStore::new());
    let created = Arc::new(Recorder {
        seen: Mutex::default(),
        fail_first: true,
        attempts: AtomicU32::new(0),
    });
    let everything = Arc::new(Recorder {
        seen: Mutex::default(),
        fail_first: false,
        attempts: AtomicU32::new(0),
    });
    let mut bus = EventBus::new().with_retries(3, Duration::from_millis(1));
    bus.subscribe(
        "user.created",
        Arc::clone(&created) as Arc<dyn EventHandler>,
    );
    bus.subscribe("*", Arc::clone(&everything) as Arc<dyn EventHandler>);
    let (stop, stopped) = watch::channel(false);
    let reader: Arc<dyn EventReader> = Arc::clone(&store) as Arc<dyn EventReader>;
    let task = bus.spawn(reader, 0, stopped);

    let event = |t: &str| NewEvent::new(t, RawJson::from_value(&json!({}))).unwrap();
    store
        .append(
            StreamId::new("user-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![event("user.created"), event("user.renamed")],
        )
        .await
        .unwrap();
    store
        .append(
            StreamId::new("user-2").unwrap(),
            ExpectedVersion::NoStream,
            vec![event("user.created")],
        )
        .await
        .unwrap();
    for _ in 0..400 {
        if everything.seen.lock().await.len() == 3 && created.seen.lock().await.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let types: Vec<String> = everything
        .seen
        .lock()
        .await
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(types, ["user.created", "user.renamed", "user.created"]);
    let created_streams: Vec<String> = created
        .seen
        .lock()
        .await
        .iter()
        .map(|e| e.stream_id.to_string())
        .collect();
    assert_eq!(
        created_streams,
        ["user-1", "user-2"],
        "each delivered once, after a retry"
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

/// Counts executions; answers with a fresh command id each time.
struct Counting {
    calls: AtomicU32,
    delay: Duration,
}

#[async_trait]
impl CommandHandler for Counting {
    async fn handle(&self, _ctx: &CommandContext, payload: &Value) -> Result<StreamWriteResult> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        match payload["outcome"].as_str() {
            Some("unavailable") => Err(Error::unavailable("try later")),
            Some("taken") => Err(DomainError::AlreadyExists("taken".into()).into()),
            _ => Ok(StreamWriteResult {
                stream_id: StreamId::new("s-1").unwrap(),
                current_version: Some(0),
                events: vec![],
            }),
        }
    }
}

#[tokio::test]
async fn idempotency_keys_answer_retries_with_the_first_answer() {
    let handler = Arc::new(Counting {
        calls: AtomicU32::new(0),
        delay: Duration::from_millis(20),
    });
    let mut router = CommandRouter::new();
    router
        .register("do", Arc::clone(&handler) as Arc<dyn CommandHandler>)
        .unwrap();
    let bus = Arc::new(router.with_idempotency(Duration::from_secs(60), 100));
    let keyed = |key: &str| CommandContext {
        idempotency_key: Some(key.into()),
        ..CommandContext::default()
    };

    // Concurrent duplicates: one execution, one answer.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let bus = Arc::clone(&bus);
        let ctx = keyed("k-1");
        tasks.push(tokio::spawn(async move {
            bus.send(&ctx, &command(json!({"a": 1}))).await.unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().command_id);
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "every retry gets the first answer"
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    let later = bus
        .send(&keyed("k-1"), &command(json!({"a": 1})))
        .await
        .unwrap();
    assert_eq!(later.command_id, ids[0]);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);

    let other_body = bus
        .send(&keyed("k-1"), &command(json!({"a": 2})))
        .await
        .unwrap_err();
    assert_eq!(other_body.kind(), ErrorKind::Validation);
    assert!(other_body.to_string().contains("different command"));

    let rejected = bus
        .send(&keyed("k-2"), &command(json!({"outcome": "taken"})))
        .await
        .unwrap_err();
    assert_eq!(rejected.kind(), ErrorKind::Conflict);
    let again = bus
        .send(&keyed("k-2"), &command(json!({"outcome": "taken"})))
        .await
        .unwrap_err();
    assert_eq!(
        again.kind(),
        ErrorKind::Conflict,
        "a refusal is remembered too"
    );
    assert_eq!(handler.calls.load(Ordering::SeqCst), 2);

    bus.send(&keyed("k-3"), &command(json!({"outcome": "unavailable"})))
        .await
        .unwrap_err();
    bus.send(&keyed("k-3"), &command(json!({"outcome": "unavailable"})))
        .await
        .unwrap_err();
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        4,
        "a transient failure is retried for real"
    );

    bus.send(&CommandContext::default(), &command(json!({"a": 1})))
        .await
        .unwrap();
    bus.send(&CommandContext::default(), &command(json!({"a": 1})))
        .await
        .unwrap();
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        6,
        "no key, no deduplication"
    );
    let bad = bus.send(&keyed(""), &command(json!({}))).await.unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::Validation);
}
