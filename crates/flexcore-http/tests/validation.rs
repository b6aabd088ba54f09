//! Input validation over HTTP: write limits and event schemas on raw appends, command schemas
//! before handlers; every refusal is a 422 `validation_failed` that writes nothing.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode};
use flexcore_app::command::{CommandBus, CommandBusExt};
use flexcore_app::store::{EventFilter, EventStore, ReadAll};
use flexcore_http::{AppState, router};
use flexcore_test_support::validation::{guarded_store, required_strings};
use serde_json::{Value, json};

struct TestApp {
    router: Router,
    store: Arc<dyn EventStore>,
}

/// The sample domain over a store guarded by the tight test limits (`order.placed` needs a
/// string `sku`), with `create_user` needing a string `email`.
fn app() -> TestApp {
    let store = guarded_store();
    let (commands, queries) = flexcore_test_support::sample_buses(Arc::clone(&store));
    let commands: Arc<dyn CommandBus> =
        Arc::new(commands.with_schemas(required_strings(&[("create_user", &["email"])])));
    let state = AppState::new(commands, queries, Arc::clone(&store));
    TestApp {
        router: router(state),
        store,
    }
}

impl TestApp {
    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        let answer = common::call(
            &self.router,
            Method::POST,
            uri,
            Some("application/json"),
            body.to_string(),
        )
        .await;
        (answer.status, answer.json)
    }

    async fn event_count(&self) -> usize {
        let page = self
            .store
            .read_all(ReadAll {
                from_position: 0,
                limit: 1000,
                filter: EventFilter::default(),
            })
            .await
            .unwrap();
        page.events.len()
    }
}

fn events(n: usize) -> Value {
    (0..n)
        .map(|i| json!({"event_type": "order.line_added", "data": {"line": i}}))
        .collect()
}

/// Asserts a 422 `validation_failed` whose detail contains every one of `needles`.
fn assert_refused(case: &str, (status, problem): &(StatusCode, Value), needles: &[&str]) {
    assert_eq!(
        status,
        &StatusCode::UNPROCESSABLE_ENTITY,
        "{case}: {problem}"
    );
    assert_eq!(problem["code"], "validation_failed", "{case}: {problem}");
    let detail = problem["detail"].as_str().unwrap();
    for needle in needles {
        assert!(detail.contains(needle), "{case}: {detail}");
    }
}

#[tokio::test]
async fn raw_appends_over_a_limit_are_refused_naming_the_limit_and_write_nothing() {
    let app = app();
    let too_many = app
        .post("/v1/streams/order-1", json!({"events": events(4)}))
        .await;
    assert_refused(
        "too many events",
        &too_many,
        &["4 events", "max_events_per_append", "3"],
    );
    let big = json!({"events": [
        {"event_type": "order.note", "data": {"text": "small"}},
        {"event_type": "order.note", "data": {"text": "x".repeat(600)}},
    ]});
    let too_big = app.post("/v1/streams/order-1", big).await;
    assert_refused(
        "an event too large",
        &too_big,
        &[
            "event 1 ('order.note') of stream 'order-1'",
            "max_event_bytes",
            "512",
        ],
    );
    let long_id = "o".repeat(49);
    let too_long = app
        .post(
            &format!("/v1/streams/{long_id}"),
            json!({"events": events(1)}),
        )
        .await;
    assert_refused(
        "a long stream id",
        &too_long,
        &["49 bytes", "max_stream_id_len"],
    );
    let spaced = app
        .post("/v1/streams/order%201", json!({"events": events(1)}))
        .await;
    assert_refused(
        "a stream id with a space",
        &spaced,
        &["U+0020", "'printable'"],
    );
    assert_eq!(
        app.event_count().await,
        0,
        "no refused append wrote anything"
    );

    let within = app
        .post("/v1/streams/order-1", json!({"events": events(3)}))
        .await;
    assert_eq!(within.0, StatusCode::OK, "{}", within.1);
    assert_eq!(app.event_count().await, 3);
}

#[tokio::test]
async fn event_data_must_match_the_schema_of_its_type() {
    let app = app();
    // The first event is valid, the second is not: the atomic append writes neither.
    let (status, problem) = app
        .post(
            "/v1/streams/order-7",
            json!({"events": [
                {"event_type": "order.placed", "data": {"sku": "A-1"}},
                {"event_type": "order.placed", "data": {"sku": 42}},
            ]}),
        )
        .await;
    assert_refused(
        "a bad sku",
        &(status, problem.clone()),
        &["event 1 ('order.placed') of stream 'order-7'", "/sku"],
    );
    assert_eq!(
        problem["errors"],
        json!([{"path": "/sku", "message": "value is not of type \"string\""}])
    );
    assert_eq!(app.event_count().await, 0);

    let (status, body) = app
        .post(
            "/v1/streams/order-7",
            json!({"events": [{"event_type": "order.placed", "data": {"sku": "A-1"}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test]
async fn command_payloads_are_checked_against_their_schema_before_the_handler() {
    let app = app();
    let (status, problem) = app
        .post(
            "/v1/commands/create_user",
            json!({"email": ["ann@example.com"]}),
        )
        .await;
    assert_refused(
        "email not a string",
        &(status, problem.clone()),
        &["command 'create_user' does not match its schema", "/email"],
    );
    assert_eq!(problem["errors"][0]["path"], "/email");
    let (_, problem) = app.post("/v1/commands/create_user", json!({})).await;
    assert_eq!(
        problem["errors"],
        json!([{"path": "", "message": "\"email\" is a required property"}])
    );
    assert_eq!(app.event_count().await, 0, "no handler ran");

    let (status, body) = app
        .post(
            "/v1/commands/create_user",
            json!({"email": "ann@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The user's event and the email reservation.
    assert_eq!(app.event_count().await, 2);
}
