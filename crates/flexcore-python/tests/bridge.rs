//! The Python bridge end to end: loading, commands with aggregate state and optimistic
//! concurrency, stateless handlers (the seed's form), typed events and commands, queries,
//! event handlers, context and metadata, errors, timeouts, and the async runtime staying free.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flexcore_app::command::{Command, CommandBus, CommandContext, CommandHandler, CommandRouter};
use flexcore_app::event_bus::EventBus;
use flexcore_app::query::{Query, QueryBus, QueryContext, QueryRouter};
use flexcore_app::store::{EventStore, InMemoryStore, ReadStream, StreamWriteResult};
use flexcore_app::{Error, ErrorKind};
use flexcore_domain::{EventEnvelope, ExpectedVersion, NewEvent, RawJson, StreamId};
use flexcore_python::{PythonConfig, PythonHandlers};
use serde_json::{Value, json};

fn module(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

struct Setup {
    store: Arc<dyn EventStore>,
    python: PythonHandlers,
    commands: CommandRouter,
}

async fn setup(config: PythonConfig) -> Setup {
    setup_with(config, Arc::new(InMemoryStore::new())).await
}

async fn setup_with(config: PythonConfig, store: Arc<dyn EventStore>) -> Setup {
    let python = PythonHandlers::load(config).await.expect("modules load");
    let mut commands = CommandRouter::new();
    python
        .register_commands(&mut commands, store.clone())
        .unwrap();
    Setup {
        store,
        python,
        commands,
    }
}

async fn users() -> Setup {
    setup(PythonConfig::new([module("users.py")])).await
}

async fn failures(timeout: Duration) -> Setup {
    setup(PythonConfig::new([module("failures.py")]).with_timeout(timeout)).await
}

async fn send(
    setup: &Setup,
    command_type: &str,
    payload: Value,
) -> flexcore_app::Result<flexcore_app::command::CommandOutcome> {
    send_with(setup, &CommandContext::default(), command_type, payload).await
}

async fn send_with(
    setup: &Setup,
    ctx: &CommandContext,
    command_type: &str,
    payload: Value,
) -> flexcore_app::Result<flexcore_app::command::CommandOutcome> {
    let command = Command {
        command_type: command_type.into(),
        payload,
    };
    setup.commands.send(ctx, &command).await
}

async fn stateless() -> Setup {
    setup(PythonConfig::new([module("stateless.py")])).await
}

fn create_user(id: &str, email: &str) -> Value {
    json!({"user_id": id, "email": email, "profile": {"name": "Ada"}})
}

/// Collects what `tracing` writes while a test runs on the current thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn the_embedded_interpreter_is_the_python3_on_the_path() {
    let expected = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.version)"])
        .output()
        .expect("python3 runs");
    let expected = String::from_utf8(expected.stdout).unwrap();
    let setup = users().await;
    let embedded = setup.python.python_version().await.unwrap();
    assert_eq!(embedded, expected.trim_end());
}

#[tokio::test]
async fn handlers_are_discovered_with_their_routes() {
    let setup = users().await;
    let routes: Vec<_> = setup
        .python
        .command_routes()
        .iter()
        .map(|(name, route)| {
            (
                name.as_str(),
                route.category.as_str(),
                route.id_field.as_str(),
            )
        })
        .collect();
    assert!(routes.contains(&("create_user", "user", "user_id")));
    assert_eq!(
        setup.commands.command_types(),
        ["create_user", "rename_user", "touch_user"]
    );
    assert_eq!(setup.python.query_types(), ["get_user"]);
    assert_eq!(setup.python.event_types(), ["user.created"]);
}

#[tokio::test]
async fn a_command_handler_sees_the_aggregate_state_and_its_events_are_appended() {
    let setup = users().await;
    let outcome = send(&setup, "create_user", create_user("u1", "ada@example.com"))
        .await
        .unwrap();
    assert_eq!(outcome.stream_id.as_str(), "user-u1");
    assert_eq!(outcome.version, Some(0));
    assert_eq!(outcome.events[0].event_type, "user.created");

    // The state replayed from the stream: a second create is refused.
    let err = send(&setup, "create_user", create_user("u1", "ada@example.com"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("user u1 already exists"), "{err}");

    // A handler returning a list, computed from the current state.
    for _ in 0..2 {
        send(
            &setup,
            "rename_user",
            json!({"user_id": "u1", "name": "Bea"}),
        )
        .await
        .unwrap();
    }
    let slice = setup
        .store
        .read_stream(ReadStream::forward(StreamId::new("user-u1").unwrap()))
        .await
        .unwrap();
    let data: Vec<Value> = slice
        .events
        .iter()
        .map(|e| serde_json::from_str(e.data.get()).unwrap())
        .collect();
    assert_eq!(
        data[0],
        json!({"email": "ada@example.com", "name": "Ada", "tags": []})
    );
    assert_eq!(data[2], json!({"name": "Bea", "renames_before": 1}));
    // The command's metadata travels with the events.
    assert!(
        slice.events[0]
            .decode_metadata()
            .unwrap()
            .causation_id
            .is_some()
    );

    // None writes nothing.
    let outcome = send(&setup, "touch_user", json!({"user_id": "u1"}))
        .await
        .unwrap();
    assert!(outcome.events.is_empty());
    assert_eq!(outcome.version, Some(2));
}

#[tokio::test]
async fn missing_fields_and_validation_errors_are_validation_failures() {
    let setup = users().await;
    let err = send(&setup, "create_user", json!({"email": "a@b.c"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("user_id is required"), "{err}");

    let err = send(
        &setup,
        "create_user",
        json!({"user_id": "u2", "profile": {"name": "x"}}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("email is required"), "{err}");

    let err = send(&setup, "create_user", create_user("u2", "not-an-email"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Domain(flexcore_domain::DomainError::Validation(ref m)) if m == "email is not valid"),
        "{err}"
    );
}

#[tokio::test]
async fn an_event_handler_receives_user_created_and_a_query_reads_what_it_kept() {
    let setup = users().await;
    send(&setup, "create_user", create_user("u3", "cy@example.com"))
        .await
        .unwrap();
    let mut bus = EventBus::new();
    setup.python.subscribe_events(&mut bus);
    let slice = setup
        .store
        .read_stream(ReadStream::forward(StreamId::new("user-u3").unwrap()))
        .await
        .unwrap();
    bus.dispatch(&slice.events[0]).await;

    let mut queries = QueryRouter::new();
    setup.python.register_queries(&mut queries).unwrap();
    let query = Query {
        query_type: "get_user".into(),
        params: json!({"email": "cy@example.com"}),
    };
    let user = queries.ask(&QueryContext::default(), &query).await.unwrap();
    assert_eq!(
        user,
        json!({
            "email": "cy@example.com",
            "event_type": "user.created",
            "stream_id": "user-u3",
            "stream_version": 0,
            "global_position": slice.events[0].global_position,
        })
    );
    let no_email = Query {
        query_type: "get_user".into(),
        params: json!({}),
    };
    let err = queries
        .ask(&QueryContext::default(), &no_email)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("email is required"), "{err}");

    let missing = Query {
        query_type: "get_user".into(),
        params: json!({"email": "nobody@example.com"}),
    };
    let err = queries
        .ask(&QueryContext::default(), &missing)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
}

#[tokio::test]
async fn an_exception_is_internal_with_the_traceback_in_the_log() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let setup = failures(Duration::from_secs(5)).await;
    let err = send(&setup, "explode", json!({"job_id": "j1"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(err.to_string().contains("ZeroDivisionError"), "{err}");
    assert!(
        !err.to_string().contains("Traceback"),
        "the traceback is for the log only: {err}"
    );

    let log = logs.text();
    assert!(log.contains("Traceback (most recent call last)"), "{log}");
    assert!(log.contains("in helper_that_divides"), "{log}");
    assert!(log.contains("failures.py"), "{log}");
    assert!(log.contains("ZeroDivisionError: division by zero"), "{log}");
}

#[tokio::test]
async fn bad_return_values_are_reported_clearly() {
    let setup = failures(Duration::from_secs(5)).await;
    let cases = [
        ("return_number", "got int 42"),
        (
            "return_empty_type",
            "the event type must be a non-empty string; got str ''",
        ),
        (
            "return_non_string_type",
            "the event type must be a non-empty string; got int 7",
        ),
        (
            "return_list_data",
            "the data of event 'job.listed' must be a JSON object",
        ),
        (
            "return_unserialisable_data",
            "the data of event 'job.odd' must serialise to a JSON object: object is not JSON serialisable",
        ),
    ];
    for (command_type, expected) in cases {
        let err = send(&setup, command_type, json!({"job_id": "j1"}))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{command_type}: {err}");
        assert!(err.to_string().contains(expected), "{command_type}: {err}");
    }
    let err = send(&setup, "return_none_data", json!({"job_id": "j1"}))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the data of event 'job.empty' must be a JSON object; got NoneType None"),
        "{err}"
    );
    // A missing field read by the handler is the client's fault; optional ones can be probed.
    let err = send(&setup, "optional_fields", json!({"job_id": "j1"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("level is required"), "{err}");
    send(
        &setup,
        "optional_fields",
        json!({"job_id": "j2", "level": 3}),
    )
    .await
    .unwrap();
    // Nothing was written.
    let slice = setup
        .store
        .read_stream(ReadStream::forward(StreamId::new("job-j1").unwrap()))
        .await
        .unwrap();
    assert!(slice.events.is_empty());
}

#[tokio::test]
async fn a_handler_over_its_timeout_fails_fast_and_is_interrupted() {
    let setup = failures(Duration::from_millis(300)).await;
    let started = Instant::now();
    let err = send(&setup, "spin", json!({"job_id": "j1"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The spinning handler was interrupted: the next command runs promptly.
    let started = Instant::now();
    send(&setup, "count", json!({"job_id": "j1"}))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commands_on_one_stream_are_retried_and_all_land() {
    // Each conflict means another racer appended, so 8 racers need at most 8 attempts each.
    let mut config = PythonConfig::new([module("failures.py")]);
    config.retry.max_attempts = 10;
    let setup = Arc::new(setup(config).await);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let setup = setup.clone();
            tokio::spawn(async move { send(&setup, "count", json!({"job_id": "race"})).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let slice = setup
        .store
        .read_stream(ReadStream::forward(StreamId::new("job-race").unwrap()))
        .await
        .unwrap();
    let before: Vec<u64> = slice
        .events
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e.data.get()).unwrap()["count_before"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        before,
        (0..8).collect::<Vec<_>>(),
        "each handler run saw the state it appended to"
    );
}

/// A Rust handler that appends one event to its own stream.
struct RustPing(Arc<dyn EventStore>);

#[async_trait]
impl CommandHandler for RustPing {
    async fn handle(
        &self,
        _ctx: &CommandContext,
        payload: &Value,
    ) -> flexcore_app::Result<StreamWriteResult> {
        let id = payload["id"].as_u64().unwrap();
        let event = NewEvent::new("ping.sent", RawJson::from_value(&json!({}))).unwrap();
        self.0
            .append(
                StreamId::new(format!("ping-{id}")).unwrap(),
                ExpectedVersion::NoStream,
                vec![event],
            )
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_handlers_keep_answering_while_python_is_busy() {
    let mut setup = failures(Duration::from_secs(5)).await;
    setup
        .commands
        .register("ping", Arc::new(RustPing(setup.store.clone())))
        .unwrap();
    let setup = Arc::new(setup);

    let busy = {
        let setup = setup.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            // Several at once: the Python thread is busy for about 3 s.
            let a = send(&setup, "sleep_a_second", json!({"job_id": "a"}));
            let b = send(&setup, "sleep_a_second", json!({"job_id": "b"}));
            let c = send(&setup, "sleep_a_second", json!({"job_id": "c"}));
            let (a, b, c) = tokio::join!(a, b, c);
            a.unwrap();
            b.unwrap();
            c.unwrap();
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    while !busy.is_finished() {
        let started = Instant::now();
        send(&setup, "ping", json!({"id": answered})).await.unwrap();
        slowest = slowest.max(started.elapsed());
        answered += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let python_took = busy.await.unwrap();
    assert!(python_took >= Duration::from_secs(3), "{python_took:?}");
    assert!(
        answered > 50,
        "only {answered} Rust commands answered while Python slept"
    );
    assert!(
        slowest < Duration::from_millis(250),
        "a Rust command took {slowest:?}"
    );
}

#[tokio::test]
async fn a_module_that_fails_to_import_is_an_error_with_its_traceback() {
    let err = PythonHandlers::load(PythonConfig::new([module("broken_import.py")]))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("this module cannot be imported"), "{text}");
    assert!(text.contains("broken_import.py"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_in_one_process_keep_their_own_handlers() {
    // Two runtimes loading different modules at once: each has its modules' handlers only.
    let (users_runtime, failures_runtime) = tokio::join!(users(), failures(Duration::from_secs(5)));
    assert_eq!(
        users_runtime.commands.command_types(),
        ["create_user", "rename_user", "touch_user"]
    );
    assert_eq!(users_runtime.python.query_types(), ["get_user"]);
    assert_eq!(users_runtime.python.event_types(), ["user.created"]);
    let failure_types = failures_runtime.commands.command_types();
    assert!(failure_types.contains(&"count"), "{failure_types:?}");
    assert!(
        !failure_types.iter().any(|t| t.contains("user")),
        "{failure_types:?}"
    );
    assert!(failures_runtime.python.query_types().is_empty());
    assert!(failures_runtime.python.event_types().is_empty());
    let err = send(&users_runtime, "count", json!({"job_id": 1}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownCommand(_)), "{err}");

    // The same module in two runtimes: two copies, each with its own module state (USERS).
    let (a, b) = tokio::join!(users(), users());
    send(&a, "create_user", create_user("same", "a@example.com"))
        .await
        .unwrap();
    let created = a
        .store
        .read_stream(ReadStream::forward(StreamId::new("user-same").unwrap()))
        .await
        .unwrap();
    let mut a_events = EventBus::new();
    a.python.subscribe_events(&mut a_events);
    a_events.dispatch(&created.events[0]).await;

    let ask = |setup: &Setup| {
        let mut queries = QueryRouter::new();
        setup.python.register_queries(&mut queries).unwrap();
        async move {
            let query = Query {
                query_type: "get_user".into(),
                params: json!({"email": "a@example.com"}),
            };
            queries.ask(&QueryContext::default(), &query).await
        }
    };
    let seen_by_a = ask(&a).await.unwrap();
    assert_eq!(seen_by_a["stream_id"], "user-same");
    let err = ask(&b).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Validation,
        "b's copy of the module never saw a's event: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_gets_the_same_guarantees() {
    use flexcore_store_sqlite::{SqliteConfig, SqliteStore};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("events.db")))
        .await
        .unwrap();
    let mut config = PythonConfig::new([module("users.py"), module("failures.py")]);
    config.retry.max_attempts = 10;
    let setup = Arc::new(setup_with(config, Arc::new(store)).await);

    send(&setup, "create_user", create_user("s1", "s1@example.com"))
        .await
        .unwrap();
    let err = send(&setup, "create_user", create_user("s1", "s1@example.com"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);

    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let setup = setup.clone();
            tokio::spawn(async move { send(&setup, "count", json!({"job_id": 42})).await })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap().unwrap().version.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (0..6).collect::<Vec<_>>());
}

#[tokio::test]
async fn handlers_read_the_principal_they_act_for() {
    use flexcore_app::security::{AuthMethod, Principal};
    let setup = setup(PythonConfig::new([module("principals.py")])).await;
    let ann = Arc::new(Principal {
        tenant: Some("acme".into()),
        ..Principal::new("ann", vec!["writer".into()], AuthMethod::Token)
    });
    let command = Command {
        command_type: "write_note".into(),
        payload: json!({}),
    };
    let ctx = CommandContext {
        principal: Some(Arc::clone(&ann)),
        ..CommandContext::default()
    };
    let outcome = setup.commands.send(&ctx, &command).await.unwrap();
    let slice = setup
        .store
        .read_stream(ReadStream::forward(outcome.stream_id.clone()))
        .await
        .unwrap();
    let event = &slice.events[0];
    assert_eq!(
        serde_json::from_str::<Value>(event.data.get()).unwrap(),
        json!({"by": "ann"})
    );
    let metadata: Value = serde_json::from_str(event.metadata.get()).unwrap();
    assert_eq!(
        metadata["actor"],
        json!({"sub": "ann", "roles": ["writer"]})
    );
    let anonymous = setup
        .commands
        .send(&CommandContext::default(), &command)
        .await
        .unwrap();
    let slice = setup
        .store
        .read_stream(ReadStream::forward(anonymous.stream_id))
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(slice.events[0].data.get()).unwrap(),
        json!({"by": null}),
        "no principal leaks from the previous call"
    );

    let mut queries = QueryRouter::new();
    setup.python.register_queries(&mut queries).unwrap();
    let whoami = Query {
        query_type: "whoami".into(),
        params: json!({}),
    };
    let ctx = QueryContext {
        principal: Some(ann),
        ..QueryContext::default()
    };
    assert_eq!(
        queries.ask(&ctx, &whoami).await.unwrap(),
        json!({"sub": "ann", "roles": ["writer"], "tenant": "acme"})
    );
    assert_eq!(
        queries
            .ask(&QueryContext::default(), &whoami)
            .await
            .unwrap(),
        Value::Null
    );
}

// ---- stateless handlers (the seed's form): the stream rule, `Append`, typed events and
// commands, extra metadata, the handler's context, and refusals by kind.

async fn stored(setup: &Setup, stream_id: &StreamId) -> Vec<EventEnvelope> {
    setup
        .store
        .read_stream(ReadStream::forward(stream_id.clone()))
        .await
        .unwrap()
        .events
}

fn json_of(raw: &RawJson) -> Value {
    serde_json::from_str(raw.get()).unwrap()
}

#[tokio::test]
async fn a_stateless_handler_is_routed_by_its_returned_events() {
    let setup = stateless().await;
    let routes = setup.python.command_routes();
    let (_, route) = routes.iter().find(|(n, _)| n == "create_user").unwrap();
    assert!(route.stateless && route.category.is_empty());

    // A dataclass: `user.created` by its name, stream `user-<user_id>`, naive datetime as UTC.
    let outcome = send(
        &setup,
        "create_user",
        json!({"user_id": "42", "email": "a@b.c"}),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stream_id.as_str(), "user-42");
    let events = stored(&setup, &outcome.stream_id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "user.created");
    assert_eq!(
        json_of(&events[0].data),
        json!({"user_id": "42", "email": "a@b.c", "created_at": "2026-01-02T03:04:05+00:00"})
    );
    // No version check: the same id again appends to the same stream.
    let again = send(
        &setup,
        "create_user",
        json!({"user_id": "42", "email": "a@b.c"}),
    )
    .await
    .unwrap();
    assert_eq!(again.version, Some(1));

    // No `<category>_id` field: a fresh UUIDv7 in the category, shared by the command's events.
    let noted = send(&setup, "note", json!({})).await.unwrap();
    let id = noted.stream_id.as_str().strip_prefix("audit-").unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    let events = stored(&setup, &noted.stream_id).await;
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["audit.noted", "audit.noted"]);
    assert_eq!(json_of(&events[0].data), json!({"what": "first"}));

    // Events naming two streams are the handler's bug, and nothing is written.
    let err = send(&setup, "two_streams", json!({})).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(err.to_string().contains("user_id 'a' and 'b'"), "{err}");
    assert!(
        stored(&setup, &StreamId::new("user-a").unwrap())
            .await
            .is_empty()
    );

    // Nothing returned: nothing written.
    let nothing = send(&setup, "nothing", json!({})).await.unwrap();
    assert!(nothing.events.is_empty());
}

#[tokio::test]
async fn an_append_names_the_stream_and_its_expectation() {
    let setup = stateless().await;
    let opened = send(&setup, "open_account", json!({"account_id": "7"}))
        .await
        .unwrap();
    assert_eq!(opened.stream_id.as_str(), "account-7");
    assert_eq!(opened.version, Some(0));
    let err = send(&setup, "open_account", json!({"account_id": "7"}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert_eq!(stored(&setup, &opened.stream_id).await.len(), 1);
}

#[tokio::test]
async fn returned_metadata_is_added_without_overriding_the_engines() {
    use flexcore_app::security::{AuthMethod, Principal};
    let setup = stateless().await;
    let ctx = CommandContext {
        principal: Some(Arc::new(Principal::new("ann", vec![], AuthMethod::Token))),
        correlation_id: Some("corr-1".into()),
        ..CommandContext::default()
    };
    let noted = send_with(&setup, &ctx, "note", json!({})).await.unwrap();
    let events = stored(&setup, &noted.stream_id).await;
    let plain: Value = json_of(&events[0].metadata);
    assert!(plain.get("source").is_none(), "{plain}");
    let tagged: Value = json_of(&events[1].metadata);
    assert_eq!(tagged["source"], "import");
    assert_eq!(tagged["actor"], json!({"sub": "ann", "roles": []}));
    assert_eq!(tagged["correlation_id"], "corr-1");
}

/// What the stateless module's query `query_type` answers with no parameters.
async fn ask(setup: &Setup, query_type: &str) -> Value {
    let mut queries = QueryRouter::new();
    setup.python.register_queries(&mut queries).unwrap();
    let query = Query {
        query_type: query_type.into(),
        params: json!({}),
    };
    queries.ask(&QueryContext::default(), &query).await.unwrap()
}

#[tokio::test]
async fn command_and_typed_event_handlers_read_their_context() {
    use flexcore_app::security::{AuthMethod, Principal};
    let setup = stateless().await;
    let ctx = CommandContext {
        principal: Some(Arc::new(Principal::new("ann", vec![], AuthMethod::Token))),
        correlation_id: Some("corr-9".into()),
        idempotency_key: Some("key-9".into()),
        ..CommandContext::default()
    };
    let outcome = send_with(
        &setup,
        &ctx,
        "create_user",
        json!({"user_id": "9", "email": "x@y.z"}),
    )
    .await
    .unwrap();
    let command_id = ctx.command_id.to_string();
    assert_eq!(
        ask(&setup, "contexts").await,
        json!([{
            "command_id": command_id,
            "correlation_id": "corr-9",
            "causation_id": command_id,
            "idempotency_key": "key-9",
        }])
    );

    // The user.created handler is annotated with the event dataclass: it gets one, and the
    // stored event's correlation, causation and actor as its context.
    let mut bus = EventBus::new();
    setup.python.subscribe_events(&mut bus);
    bus.dispatch(&stored(&setup, &outcome.stream_id).await[0])
        .await;
    assert_eq!(
        ask(&setup, "events_seen").await,
        json!([{
            "class": "UserCreatedEvent",
            "created_at": "2026-01-02T03:04:05+00:00",
            "correlation_id": "corr-9",
            "causation_id": command_id,
            "actor": "ann",
        }])
    );
}

#[tokio::test]
async fn a_typed_command_refuses_missing_and_mistyped_fields() {
    let setup = stateless().await;
    let outcome = send(
        &setup,
        "register",
        json!({"user_id": "r1", "email": "e", "age": 3}),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stream_id.as_str(), "user-r1");
    for (payload, message) in [
        (json!({"user_id": "r1", "age": 3}), "email is required"),
        (
            json!({"user_id": "r1", "email": "e", "age": "three"}),
            "age must be an integer",
        ),
    ] {
        let err = send(&setup, "register", payload).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
        assert_eq!(err.client_message(), message);
    }
}

#[tokio::test]
async fn refusals_become_errors_of_their_kind_with_message_and_code() {
    let setup = stateless().await;
    for (kind, expected) in [
        ("validation", ErrorKind::Validation),
        ("conflict", ErrorKind::Conflict),
        ("not_found", ErrorKind::NotFound),
        ("forbidden", ErrorKind::Forbidden),
    ] {
        let err = send(&setup, "refuse", json!({"kind": kind, "code": "because"}))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), expected, "{err}");
        assert!(
            err.client_message()
                .contains(&format!("refused as {kind} [because]")),
            "{err}"
        );
        let uncoded = send(&setup, "refuse", json!({"kind": kind}))
            .await
            .unwrap_err();
        assert!(!uncoded.client_message().contains('['), "{uncoded}");
    }
}
