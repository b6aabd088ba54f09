//! Decisions over several streams: a handler's `Append`s (and an aggregate's own events) are
//! committed in one atomic append or not at all; `FlexCore.read_stream` reads any stream, the
//! version it saw becomes the expectation, and a conflict re-runs only a handler that read.

use std::path::PathBuf;
use std::sync::Arc;

use flexcore_app::command::{Command, CommandBus, CommandContext, CommandOutcome, CommandRouter};
use flexcore_app::query::{Query, QueryBus, QueryContext, QueryRouter};
use flexcore_app::store::{EventReader, EventStore, InMemoryStore, ReadStream};
use flexcore_app::{ErrorKind, Result};
use flexcore_domain::{EventEnvelope, StreamId};
use flexcore_python::{PythonConfig, PythonHandlers};
use flexcore_test_support::{ProbedStore, RACING_EVENT};
use serde_json::{Value, json};

struct Setup {
    /// The race of `race_next_append_on` is the one a handler loses between its read and its
    /// append.
    store: Arc<ProbedStore>,
    /// What `store` wraps: read directly, so a test can see what was written while reads
    /// through `store` fail.
    written: Arc<InMemoryStore>,
    commands: CommandRouter,
    queries: QueryRouter,
}

async fn setup() -> Setup {
    let module = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/atomic.py");
    let python = PythonHandlers::load(PythonConfig::new([module]))
        .await
        .expect("the module loads");
    let written = Arc::new(InMemoryStore::new());
    let store = Arc::new(ProbedStore::new(written.clone()));
    let mut commands = CommandRouter::new();
    python
        .register_commands(&mut commands, store.clone() as Arc<dyn EventStore>)
        .unwrap();
    let mut queries = QueryRouter::new();
    python.register_queries(&mut queries).unwrap();
    Setup {
        store,
        written,
        commands,
        queries,
    }
}

impl Setup {
    async fn send(&self, command_type: &str, payload: Value) -> Result<CommandOutcome> {
        let command = Command {
            command_type: command_type.into(),
            payload,
        };
        self.commands
            .send(&CommandContext::default(), &command)
            .await
    }

    async fn ask(&self, query_type: &str) -> Result<Value> {
        let query = Query {
            query_type: query_type.into(),
            params: json!({}),
        };
        self.queries.ask(&QueryContext::default(), &query).await
    }

    /// How many times the handler of `command_type` ran.
    async fn runs(&self, command_type: &str) -> u64 {
        self.ask("runs").await.unwrap()[command_type]
            .as_u64()
            .unwrap_or(0)
    }

    async fn stream(&self, stream_id: &str) -> Vec<EventEnvelope> {
        self.written
            .read_stream(ReadStream::forward(StreamId::new(stream_id).unwrap()))
            .await
            .unwrap()
            .events
    }

    /// `(event type, data)` of each event of a stream.
    async fn contents(&self, stream_id: &str) -> Vec<(String, Value)> {
        self.stream(stream_id)
            .await
            .into_iter()
            .map(|e| (e.event_type, serde_json::from_str(e.data.get()).unwrap()))
            .collect()
    }
}

#[tokio::test]
async fn appends_to_several_streams_commit_together_or_not_at_all() {
    let setup = setup().await;
    let booked = setup
        .send("book_pair", json!({"booking": "b1", "seats": ["1a", "1b"]}))
        .await
        .unwrap();
    assert_eq!(
        booked.stream_id.as_str(),
        "seat-1a",
        "the first write answers"
    );
    let (a, b) = (setup.stream("seat-1a").await, setup.stream("seat-1b").await);
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(b[0].global_position, a[0].global_position + 1, "one append");

    // 1c is free but 1b is taken: the failed expectation on 1b writes nothing on 1c either,
    // and a handler that read nothing is not re-run (it would decide the same).
    let err = setup
        .send("book_pair", json!({"booking": "b2", "seats": ["1c", "1b"]}))
        .await
        .unwrap_err();
    assert!(err.is_wrong_expected_version(), "{err}");
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(setup.stream("seat-1c").await.is_empty());
    assert_eq!(setup.stream("seat-1b").await.len(), 1);
    assert_eq!(setup.runs("book_pair").await, 2, "one run per command");

    // Two Appends to one stream are the handler's bug.
    let err = setup
        .send("book_pair", json!({"booking": "b3", "seats": ["2a", "2a"]}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(err.to_string().contains("written twice"), "{err}");
    assert!(setup.stream("seat-2a").await.is_empty());
}

#[tokio::test]
async fn the_version_read_is_expected_and_a_stale_read_is_run_again() {
    let setup = setup().await;
    setup
        .store
        .race_next_append_on(StreamId::new("counter-c").unwrap());
    let counted = setup.send("count", json!({"counter": "c"})).await.unwrap();
    assert_eq!(counted.version, Some(1));
    assert_eq!(
        setup.contents("counter-c").await,
        [
            (RACING_EVENT.to_owned(), json!({})),
            ("counter.counted".to_owned(), json!({"seen": 0})),
        ],
        "the first run expected no stream and lost; the second saw the racing event"
    );
    assert_eq!(setup.runs("count").await, 2);

    // An explicit expectation wins over the version read: no conflict, no re-run.
    setup
        .store
        .race_next_append_on(StreamId::new("counter-d").unwrap());
    setup
        .send("count_blindly", json!({"counter": "d"}))
        .await
        .unwrap();
    assert_eq!(
        setup.contents("counter-d").await[1],
        ("counter.counted".to_owned(), json!({"seen": null}))
    );
    assert_eq!(setup.runs("count_blindly").await, 1);
}

#[tokio::test]
async fn an_aggregate_commits_its_events_with_appends_elsewhere_atomically() {
    let setup = setup().await;
    let placed = setup
        .send("place_order", json!({"order_id": "o1", "voucher": "v1"}))
        .await
        .unwrap();
    assert_eq!(
        placed.stream_id.as_str(),
        "order-o1",
        "the aggregate's write answers"
    );
    assert_eq!(
        setup.contents("voucher-v1").await,
        [("voucher.used".to_owned(), json!({"order_id": "o1"}))]
    );

    // Someone uses voucher v2 between the read and the append: nothing is written for o2,
    // the handler runs again, sees the voucher used and refuses.
    setup
        .store
        .race_next_append_on(StreamId::new("voucher-v2").unwrap());
    let err = setup
        .send("place_order", json!({"order_id": "o2", "voucher": "v2"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("voucher v2 is used"), "{err}");
    assert!(setup.stream("order-o2").await.is_empty());
    assert_eq!(setup.stream("voucher-v2").await.len(), 1);
    assert_eq!(setup.runs("place_order").await, 3);

    // An Append to the aggregate's own stream is the handler's bug.
    let err = setup
        .send("own_stream_twice", json!({"order_id": "o3"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(err.to_string().contains("own stream"), "{err}");
    assert!(setup.stream("order-o3").await.is_empty());
}

#[tokio::test]
async fn read_stream_builds_declared_event_classes_and_only_works_in_a_command() {
    let setup = setup().await;
    setup
        .send("book_pair", json!({"booking": "b9", "seats": ["9a"]}))
        .await
        .unwrap();
    let probed = setup
        .send("read_typed", json!({"seat": "9a"}))
        .await
        .unwrap();
    let [(event_type, data)] = &setup.contents(probed.stream_id.as_str()).await[..] else {
        panic!("one probe event");
    };
    assert_eq!(event_type, "probe.read");
    assert_eq!(
        *data,
        json!({
            "types": ["SeatBooked"],
            "booking": "b9",
            "version": 0,
            "exists": true,
            "missing": [null, false, 0],
        })
    );

    let err = setup.ask("read_outside").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(err.to_string().contains("RuntimeError"), "{err}");
}

#[tokio::test]
async fn a_store_failure_while_reading_answers_with_its_own_kind() {
    let setup = setup().await;
    setup.store.fail_stream_reads_with("the database went away");
    let err = setup
        .send("count_carelessly", json!({"counter": "e"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("went away"), "{err}");
    assert!(
        setup.stream("counter-e").await.is_empty(),
        "nothing was appended"
    );
}
