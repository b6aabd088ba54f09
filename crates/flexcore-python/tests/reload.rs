//! Hot reload: a changed module replaces the running one without dropping in-flight commands,
//! a broken one leaves it running and is reported; `creates=True` commands get their id from
//! the engine.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flexcore_app::command::{Command, CommandBus, CommandContext, CommandRouter};
use flexcore_app::event_bus::EventBus;
use flexcore_app::query::{Query, QueryBus, QueryContext, QueryRouter};
use flexcore_app::store::{EventStore, InMemoryStore, ReadStream};
use flexcore_app::{Error, ErrorKind};
use flexcore_python::{LivePython, PythonConfig};
use serde_json::{Value, json};

/// A module whose `create_thing` handler tags its event with `version`, sleeping `sleep_s`
/// first; `things` is a query answered from an event handler's dict.
fn module_source(version: u32, sleep_s: f64) -> String {
    format!(
        r#"
import time
from flexcore import Event, FlexCore, ValidationError

SEEN = {{}}

@FlexCore.aggregate("thing", id_field="thing_id")
class Thing:
    def __init__(self):
        self.exists = False

    @FlexCore.apply("thing.created")
    def created(self, event):
        self.exists = True

@FlexCore.command_handler("create_thing", aggregate=Thing, creates=True)
def create_thing(cmd):
    time.sleep({sleep_s})
    return Event("thing.created", {{"thing_id": cmd.thing_id, "version": {version}}})

@FlexCore.command_handler("touch_thing", aggregate=Thing)
def touch_thing(cmd, thing):
    if not thing.exists:
        raise ValidationError("no such thing")
    return Event("thing.touched", {{"version": {version}}})

@FlexCore.event_handler("thing.created")
def on_created(event):
    SEEN[event.data.thing_id] = {version}

@FlexCore.query_handler("things")
def things(params):
    return {{"module_version": {version}, "seen": len(SEEN)}}
"#
    )
}

fn write(path: &Path, text: &str) {
    // A different length always changes the stamp, even within the mtime's resolution.
    std::fs::write(path, text).unwrap();
}

struct Setup {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Arc<dyn EventStore>,
    live: LivePython,
    commands: Arc<CommandRouter>,
    queries: QueryRouter,
}

async fn setup(sleep_s: f64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("things.py");
    write(&path, &module_source(1, sleep_s));
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let live = LivePython::load(PythonConfig::new([&path]), Arc::clone(&store))
        .await
        .unwrap();
    let mut commands = CommandRouter::new();
    live.register_commands(&mut commands).unwrap();
    let mut queries = QueryRouter::new();
    live.register_queries(&mut queries).unwrap();
    Setup {
        _dir: dir,
        path,
        store,
        live,
        commands: Arc::new(commands),
        queries,
    }
}

async fn send(
    commands: &CommandRouter,
    command_type: &str,
    payload: Value,
) -> flexcore_app::Result<flexcore_app::command::CommandOutcome> {
    let command = Command {
        command_type: command_type.into(),
        payload,
    };
    commands.send(&CommandContext::default(), &command).await
}

async fn ask(queries: &QueryRouter, query_type: &str) -> Value {
    let query = Query {
        query_type: query_type.into(),
        params: json!({}),
    };
    queries.ask(&QueryContext::default(), &query).await.unwrap()
}

async fn event_version(store: &Arc<dyn EventStore>, stream_id: &str) -> Value {
    let slice = store
        .read_stream(ReadStream::forward(
            flexcore_domain::StreamId::new(stream_id).unwrap(),
        ))
        .await
        .unwrap();
    let data: Value = serde_json::from_str(slice.events[0].data.get()).unwrap();
    data["version"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_handlers_without_dropping_in_flight_commands() {
    let s = setup(1.0).await;
    assert_eq!(s.live.status().generation, 1);
    let before = send(&s.commands, "create_thing", json!({})).await.unwrap();

    // A slow command on version 1 is running while the module changes.
    let in_flight = {
        let commands = Arc::clone(&s.commands);
        tokio::spawn(async move { send(&commands, "create_thing", json!({})).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    write(&s.path, &module_source(2, 0.0));
    assert!(s.live.changed());
    s.live.reload().await.unwrap();
    assert!(!s.live.changed());
    assert_eq!(s.live.status().generation, 2);
    assert!(s.live.status().ok());

    let old = in_flight.await.unwrap().unwrap();
    assert_eq!(event_version(&s.store, old.stream_id.as_str()).await, 1);
    let new = send(&s.commands, "create_thing", json!({})).await.unwrap();
    assert_eq!(event_version(&s.store, new.stream_id.as_str()).await, 2);

    assert_eq!(event_version(&s.store, before.stream_id.as_str()).await, 1);

    // The new version's event handlers were caught up with what was committed before the
    // swap; the event bus brings the rest (at least once: redelivery is harmless here).
    let answer = ask(&s.queries, "things").await;
    assert_eq!(answer, json!({"module_version": 2, "seen": 1}));
    let mut bus = EventBus::new();
    s.live.subscribe_events(&mut bus);
    let head = s
        .store
        .read_all(flexcore_app::store::ReadAll {
            from_position: 0,
            limit: 100,
            filter: Default::default(),
        })
        .await
        .unwrap();
    for event in &head.events {
        bus.dispatch(event).await;
    }
    assert_eq!(head.events.len(), 3);
    assert_eq!(ask(&s.queries, "things").await["seen"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_module_keeps_the_previous_version_and_is_reported() {
    let s = setup(0.0).await;
    write(&s.path, "from flexcore import FlexCore\n\ndef broken(:\n");
    let err = s.live.reload().await.unwrap_err();
    assert!(err.to_string().contains("SyntaxError"), "{err}");
    let status = s.live.status();
    assert!(!status.ok());
    assert_eq!(status.generation, 1);
    let reported = status.error.clone().unwrap();
    assert!(reported.contains("SyntaxError"), "{reported}");
    assert_eq!(status.to_json()["ok"], false);
    // The broken file is not retried until it changes again.
    assert!(!s.live.changed());

    let outcome = send(&s.commands, "create_thing", json!({})).await.unwrap();
    assert_eq!(event_version(&s.store, outcome.stream_id.as_str()).await, 1);

    // A module that raises while importing is reported the same way.
    write(&s.path, "raise RuntimeError('configuration is missing')\n");
    s.live.reload().await.unwrap_err();
    assert_eq!(
        s.live.status().error.as_deref(),
        Some("RuntimeError: configuration is missing")
    );

    // Fixed: the new version runs and the error is gone.
    write(&s.path, &module_source(3, 0.0));
    s.live.reload().await.unwrap();
    assert_eq!(s.live.status().error, None);
    assert_eq!(s.live.status().generation, 2);
    let outcome = send(&s.commands, "create_thing", json!({})).await.unwrap();
    assert_eq!(event_version(&s.store, outcome.stream_id.as_str()).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_reloads_a_changed_file() {
    let s = setup(0.0).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let watcher = s.live.watch(Duration::from_millis(50), stopped);
    write(&s.path, &module_source(7, 0.0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.live.status().generation < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ask(&s.queries, "things").await["module_version"], 7);
    stop.send(true).unwrap();
    watcher.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_command_type_is_unknown_after_a_reload() {
    let s = setup(0.0).await;
    let created = send(&s.commands, "create_thing", json!({})).await.unwrap();
    let id = created
        .stream_id
        .as_str()
        .trim_start_matches("thing-")
        .to_owned();
    send(&s.commands, "touch_thing", json!({"thing_id": id}))
        .await
        .unwrap();
    write(
        &s.path,
        &module_source(2, 0.0).replace("\"touch_thing\"", "\"poke_thing\""),
    );
    s.live.reload().await.unwrap();
    let err = send(&s.commands, "touch_thing", json!({"thing_id": id}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnknownCommand(ref t) if t == "touch_thing"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creating_command_gets_its_id_from_the_engine() {
    let s = setup(0.0).await;
    let outcome = send(&s.commands, "create_thing", json!({})).await.unwrap();
    let id = outcome.stream_id.as_str().strip_prefix("thing-").unwrap();
    let uuid = uuid_version(id);
    assert_eq!(uuid, Some(7), "{id}");
    assert_eq!(outcome.version, Some(0));
    let err = send(&s.commands, "create_thing", json!({"thing_id": "mine"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("assigned by the server"), "{err}");
    let err = send(&s.commands, "create_thing", json!([1]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
}

/// The version digit of a hyphenated UUID.
fn uuid_version(id: &str) -> Option<u32> {
    let parts: Vec<&str> = id.split('-').collect();
    (parts.len() == 5).then(|| parts[2].chars().next()?.to_digit(16))?
}
