//! Stateless Python command handlers (the seed's form): the stream rule, `Append`, typed
//! events and commands, extra metadata, the handler's context, and refusals by kind.

use std::path::PathBuf;
use std::sync::Arc;

use flexcore_app::command::{Command, CommandBus, CommandContext, CommandOutcome, CommandRouter};
use flexcore_app::query::{Query, QueryBus, QueryContext, QueryRouter};
use flexcore_app::store::{EventStore, InMemoryStore, ReadStream};
use flexcore_app::{ErrorKind, Result};
use flexcore_domain::{EventEnvelope, StreamId};
use flexcore_python::{PythonConfig, PythonHandlers};
use serde_json::{Value, json};

struct Setup {
    store: Arc<dyn EventStore>,
    python: PythonHandlers,
    commands: CommandRouter,
}

async fn setup() -> Setup {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/stateless.py");
    let python = PythonHandlers::load(PythonConfig::new([path]))
        .await
        .expect("modules load");
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
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

async fn send_with(
    setup: &Setup,
    ctx: &CommandContext,
    command_type: &str,
    payload: Value,
) -> Result<CommandOutcome> {
    let command = Command {
        command_type: command_type.into(),
        payload,
    };
    setup.commands.send(ctx, &command).await
}

async fn send(setup: &Setup, command_type: &str, payload: Value) -> Result<CommandOutcome> {
    send_with(setup, &CommandContext::default(), command_type, payload).await
}

async fn stored(setup: &Setup, stream_id: &StreamId) -> Vec<EventEnvelope> {
    setup
        .store
        .read_stream(ReadStream::forward(stream_id.clone()))
        .await
        .unwrap()
        .events
}

fn json_of(raw: &flexcore_domain::RawJson) -> Value {
    serde_json::from_str(raw.get()).unwrap()
}

#[tokio::test]
async fn a_stateless_handler_is_routed_by_its_returned_events() {
    let setup = setup().await;
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
    let setup = setup().await;
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
    let setup = setup().await;
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

#[tokio::test]
async fn handlers_read_the_commands_context() {
    let setup = setup().await;
    let ctx = CommandContext {
        correlation_id: Some("corr-9".into()),
        idempotency_key: Some("key-9".into()),
        ..CommandContext::default()
    };
    send_with(
        &setup,
        &ctx,
        "create_user",
        json!({"user_id": "9", "email": "x@y.z"}),
    )
    .await
    .unwrap();
    let mut queries = QueryRouter::new();
    setup.python.register_queries(&mut queries).unwrap();
    let seen = queries
        .ask(
            &QueryContext::default(),
            &Query {
                query_type: "contexts".into(),
                params: json!({}),
            },
        )
        .await
        .unwrap();
    let command_id = ctx.command_id.to_string();
    assert_eq!(
        seen,
        json!([{
            "command_id": command_id,
            "correlation_id": "corr-9",
            "causation_id": command_id,
            "idempotency_key": "key-9",
        }])
    );
}

#[tokio::test]
async fn a_typed_command_refuses_missing_and_mistyped_fields() {
    let setup = setup().await;
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
    let setup = setup().await;
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
