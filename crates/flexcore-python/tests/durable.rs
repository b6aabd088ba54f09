//! Durable Python event handlers (`@FlexCore.event_handler(type, durable="name")`): run under a
//! durable consumer with a checkpoint, never replayed from the start, failures parked.

use std::sync::Arc;
use std::time::Duration;

use flexcore_app::durable::{
    DeadLetterStore, DurableConsumer, DurableOptions, InMemoryCheckpoints, ParkReason,
};
use flexcore_app::event_bus::EventBus;
use flexcore_app::store::{
    EventAppender, EventFilter, EventReader, EventStore, InMemoryStore, ReadAll,
};
use flexcore_domain::{ExpectedVersion, NewEvent, RawJson, StreamId};
use flexcore_python::{LivePython, PythonConfig};
use tokio::sync::watch;

fn module(sent: &std::path::Path) -> String {
    format!(
        r#"
from flexcore import FlexCore

REPLAYED = []

@FlexCore.event_handler("order.placed", durable="mailer")
def send_confirmation(event):
    if event.data.get("fail"):
        raise RuntimeError("smtp is down")
    with open({sent:?}, "a") as out:
        out.write(event.stream_id + "\n")

@FlexCore.event_handler("order.placed")
def remember(event):
    REPLAYED.append(event.stream_id)
"#,
        sent = sent.display().to_string()
    )
}

async fn place(store: &InMemoryStore, stream: &str, fail: bool) {
    let data = RawJson::from_string(format!("{{\"fail\":{fail}}}")).unwrap();
    store
        .append(
            StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            vec![NewEvent::new("order.placed", data).unwrap()],
        )
        .await
        .unwrap();
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_handlers_resume_from_their_checkpoint_and_park_failures() {
    let dir = tempfile::tempdir().unwrap();
    let sent = dir.path().join("sent.txt");
    let path = dir.path().join("orders.py");
    std::fs::write(&path, module(&sent)).unwrap();
    let store = Arc::new(InMemoryStore::new());
    let python = LivePython::load(
        PythonConfig::new([&path]),
        store.clone() as Arc<dyn EventStore>,
    )
    .await
    .unwrap();
    let consumers = python.durable_consumers();
    assert_eq!(consumers.len(), 1);
    assert_eq!(
        (consumers[0].0.as_str(), consumers[0].1.as_str()),
        ("mailer", "order.placed")
    );
    assert!(
        !python.handlers().events.is_empty(),
        "the plain handler stays on the replayed bus"
    );

    place(&store, "order-1", false).await;
    place(&store, "order-2", true).await;
    place(&store, "order-3", false).await;
    let state = Arc::new(InMemoryCheckpoints::new());
    let start = |python: &LivePython| {
        let (_, event_type, handler) = python.durable_consumers().remove(0);
        let (stop, shutdown) = watch::channel(false);
        let consumer = DurableConsumer::new("python:mailer", handler, store.clone(), state.clone())
            .with_options(DurableOptions {
                max_attempts: 2,
                base_delay: Duration::from_millis(1),
                filter: EventFilter {
                    type_prefix: Some(event_type),
                    ..EventFilter::default()
                },
                ..DurableOptions::default()
            });
        (stop, consumer.spawn(shutdown))
    };

    let (stop, spawned) = start(&python);
    let (_control, task) = spawned.await.unwrap();
    for _ in 0..500 {
        if lines(&sent).len() == 2 && state.dead_letters("python:mailer").await.unwrap().len() == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(lines(&sent), ["order-1", "order-3"]);
    let letters = state.dead_letters("python:mailer").await.unwrap();
    assert_eq!(letters[0].stream_id.as_str(), "order-2");
    match &letters[0].reason {
        ParkReason::Failed { attempts, error } => {
            assert_eq!(*attempts, 2);
            assert!(error.contains("smtp is down"), "{error}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    stop.send(true).unwrap();
    task.await.unwrap();

    // A restart resumes from the checkpoint: nothing is sent twice. (The plain handler would
    // see the whole log again on its bus.)
    place(&store, "order-4", false).await;
    let (stop, spawned) = start(&python);
    let (_control, task) = spawned.await.unwrap();
    for _ in 0..500 {
        if lines(&sent).len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(lines(&sent), ["order-1", "order-3", "order-4"]);
    stop.send(true).unwrap();
    task.await.unwrap();

    // The replayed bus never runs durable handlers.
    let mut bus = EventBus::new();
    python.subscribe_events(&mut bus);
    let (stop, shutdown) = watch::channel(false);
    let replay = bus.spawn(store.clone(), 0, shutdown);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(true).unwrap();
    replay.await.unwrap();
    assert_eq!(lines(&sent).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_a_durable_type_fails_old_events_instead_of_dropping_them() {
    let dir = tempfile::tempdir().unwrap();
    let sent = dir.path().join("sent.txt");
    let path = dir.path().join("orders.py");
    std::fs::write(&path, module(&sent)).unwrap();
    let store = Arc::new(InMemoryStore::new());
    let python = LivePython::load(
        PythonConfig::new([&path]),
        store.clone() as Arc<dyn EventStore>,
    )
    .await
    .unwrap();
    let (_, subscribed, handler) = python.durable_consumers().remove(0);
    assert_eq!(subscribed, "order.placed");
    place(&store, "order-1", false).await;
    store
        .append(
            StreamId::new("order-2").unwrap(),
            ExpectedVersion::Any,
            vec![
                NewEvent::new(
                    "order.placed_late",
                    RawJson::from_string("{}".into()).unwrap(),
                )
                .unwrap(),
            ],
        )
        .await
        .unwrap();
    let events = store
        .read_all(ReadAll {
            from_position: 0,
            limit: 10,
            filter: EventFilter::default(),
        })
        .await
        .unwrap()
        .events;

    // A type that merely shares the subscription's prefix is not the consumer's: skipped.
    handler.handle(&events[1]).await.unwrap();
    handler.handle(&events[0]).await.unwrap();
    assert_eq!(lines(&sent), ["order-1"]);

    // The reloaded consumer wants another type: the subscribed type's events now fail (and
    // would be parked) instead of being acknowledged unhandled.
    let shipped = module(&sent).replace("\"order.placed\", durable", "\"order.shipped\", durable");
    std::fs::write(&path, shipped).unwrap();
    python.reload().await.unwrap();
    let error = handler.handle(&events[0]).await.unwrap_err();
    assert!(
        error.to_string().contains("now handles 'order.shipped'"),
        "{error}"
    );
    assert_eq!(lines(&sent), ["order-1"]);
}
