//! Input validation over gRPC: the write limits and event schemas of the guarded store answer
//! `INVALID_ARGUMENT` with the HTTP gateway's message, for raw appends and for the events of
//! command handlers alike, and write nothing.

mod common;

use std::sync::Arc;

use flexcore_app::RequestLimits;
use flexcore_app::store::InMemoryStore;
use flexcore_app::validation::ValidatingStore;
use flexcore_grpc::ERROR_CODE_KEY;
use flexcore_grpc::pb::{AppendRequest, NewEvent, ReadAllRequest, SendCommandRequest};
use flexcore_test_support::validation::{TIGHT_LIMITS, guarded_store, required_strings};
use serde_json::{Value, json};
use tonic::{Code, Status};

fn event(event_type: &str, data: Value) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        data_json: data.to_string(),
        ..NewEvent::default()
    }
}

fn append(stream_id: &str, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        stream_id: stream_id.into(),
        expected_version: None,
        events,
    }
}

/// Asserts `INVALID_ARGUMENT`, `x-error-code: validation_failed` and a message containing
/// every one of `needles`.
fn assert_invalid<T: std::fmt::Debug>(case: &str, result: Result<T, Status>, needles: &[&str]) {
    let status = result.expect_err(case);
    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    assert_eq!(
        status
            .metadata()
            .get(ERROR_CODE_KEY)
            .and_then(|v| v.to_str().ok()),
        Some("validation_failed"),
        "{case}"
    );
    for needle in needles {
        assert!(status.message().contains(needle), "{case}: {status:?}");
    }
}

async fn event_count(server: &common::TestServer) -> usize {
    let mut client = server.events().await;
    let page = client
        .read_all(ReadAllRequest {
            from_position: 0,
            limit: 1000,
            ..ReadAllRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    page.events.len()
}

#[tokio::test]
async fn appends_over_a_limit_or_against_a_schema_are_invalid_arguments() {
    let server = common::start_with(guarded_store(), RequestLimits::default(), None).await;
    let mut client = server.events().await;
    let line = || event("order.line_added", json!({"line": 1}));

    let too_many = client
        .append(append("order-1", (0..4).map(|_| line()).collect()))
        .await;
    assert_invalid(
        "too many events",
        too_many,
        &["4 events", "max_events_per_append", "3"],
    );
    let too_big = client
        .append(append(
            "order-1",
            vec![event("order.note", json!({"text": "x".repeat(600)}))],
        ))
        .await;
    assert_invalid("an event too large", too_big, &["max_event_bytes", "512"]);
    let tabbed = client.append(append("order\t1", vec![line()])).await;
    assert_invalid("a control character", tabbed, &["control"]);
    let spaced = client.append(append("order 1", vec![line()])).await;
    assert_invalid("a space", spaced, &["U+0020", "'printable'"]);
    let bad_sku = client
        .append(append(
            "order-1",
            vec![
                event("order.placed", json!({"sku": "A-1"})),
                event("order.placed", json!({})),
            ],
        ))
        .await;
    assert_invalid(
        "a missing sku",
        bad_sku,
        &[
            "event 1 ('order.placed') of stream 'order-1' does not match its schema",
            "\"sku\" is a required property",
        ],
    );
    assert_eq!(event_count(&server).await, 0, "nothing was written");

    let within = client
        .append(append(
            "order-1",
            vec![event("order.placed", json!({"sku": "A-1"})), line()],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(within.next_version, 1);
    assert_eq!(event_count(&server).await, 2);
}

#[tokio::test]
async fn the_events_of_command_handlers_are_held_to_the_same_rules() {
    // `user.created` needs a `nickname` the sample's handler never writes.
    let store = Arc::new(ValidatingStore::new(
        Arc::new(InMemoryStore::new()),
        TIGHT_LIMITS,
        required_strings(&[("user.created", &["nickname"])]),
    ));
    let server = common::start_with(store, RequestLimits::default(), None).await;
    let mut commands = server.commands().await;
    let refused = commands
        .send(SendCommandRequest {
            command_type: "create_user".into(),
            payload_json: json!({"email": "ann@example.com"}).to_string(),
            idempotency_key: None,
        })
        .await;
    assert_invalid(
        "a handler's event against its schema",
        refused,
        &["('user.created')", "\"nickname\" is a required property"],
    );
    // The email reservation, appended atomically with the user's event, was not written
    // either.
    assert_eq!(event_count(&server).await, 0);
}
