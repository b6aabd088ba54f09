//! `POST /v1/commands/{type}?async=true` and `GET /v1/commands/{id}`: a command accepted at
//! once and followed through its status URL.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use flexcore_app::command::{AsyncCommands, Command, CommandBus, CommandContext, CommandOutcome};
use flexcore_app::store::{EventStore, InMemoryStore};
use flexcore_app::{Error, Result};
use flexcore_http::{AppState, router};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// The sample domain's buses, remembering at most `capacity` statuses.
fn app_with_capacity(capacity: usize) -> Router {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let (commands, queries) = flexcore_test_support::sample_buses(Arc::clone(&store));
    app_over(commands, queries, store, capacity)
}

fn app_over(
    commands: Arc<dyn CommandBus>,
    queries: Arc<dyn flexcore_app::query::QueryBus>,
    store: Arc<dyn EventStore>,
    capacity: usize,
) -> Router {
    router(AppState {
        async_commands: Arc::new(AsyncCommands::new(Arc::clone(&commands), capacity)),
        ..AppState::new(commands, queries, store)
    })
}

/// Answers the request: status, `Location` header, JSON body.
async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let location = response
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        location,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn post(app: &Router, uri: &str, body: Value) -> (StatusCode, Option<String>, Value) {
    let request = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    call(app, request).await
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let (status, _, body) = call(app, Request::get(uri).body(Body::empty()).unwrap()).await;
    (status, body)
}

/// Polls a status URL until the command is no longer pending.
async fn settled(app: &Router, status_url: &str) -> Value {
    for _ in 0..500 {
        let (status, body) = get(app, status_url).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["status"] != "pending" {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{status_url} still pending");
}

/// Sends a command with `async=true`; checks the 202 answer and returns its status URL.
async fn send_async(app: &Router, command_type: &str, payload: Value) -> (String, String) {
    let (status, location, body) = post(
        app,
        &format!("/v1/commands/{command_type}?async=true"),
        payload,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let command_id = body["command_id"].as_str().unwrap().to_owned();
    let status_url = body["status_url"].as_str().unwrap().to_owned();
    assert_eq!(status_url, format!("/v1/commands/{command_id}"));
    assert_eq!(location.as_deref(), Some(status_url.as_str()));
    (command_id, status_url)
}

fn a_user() -> Value {
    json!({"email": format!("{}@example.com", uuid::Uuid::new_v4()), "profile": {"name": "Ada"}})
}

#[tokio::test]
async fn an_async_command_is_accepted_at_once_and_its_outcome_is_at_the_status_url() {
    let app = app_with_capacity(100);
    let (command_id, status_url) = send_async(&app, "create_user", a_user()).await;

    let answer = settled(&app, &status_url).await;
    assert_eq!(answer["command_id"], command_id.as_str());
    assert_eq!(answer["status"], "succeeded", "{answer}");
    let outcome = &answer["outcome"];
    assert_eq!(outcome["command_id"], command_id.as_str());
    assert_eq!(outcome["version"], 0);
    assert_eq!(outcome["events"][0]["event_type"], "user.created");

    let stream = outcome["stream_id"].as_str().unwrap();
    let (status, page) = get(&app, &format!("/v1/streams/{stream}")).await;
    assert_eq!(status, StatusCode::OK, "the command really ran: {page}");
}

#[tokio::test]
async fn a_rejected_async_command_reports_the_stable_code_every_gateway_uses() {
    let app = app_with_capacity(100);
    let (_, status_url) = send_async(&app, "create_user", json!({"email": "not an email"})).await;
    let answer = settled(&app, &status_url).await;
    assert_eq!(answer["status"], "failed", "{answer}");
    assert_eq!(answer["code"], "validation_failed");
    assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));

    let (_, _, sync) = post(
        &app,
        "/v1/commands/create_user",
        json!({"email": "not an email"}),
    )
    .await;
    assert_eq!(
        answer["code"], sync["code"],
        "the same code as a synchronous send"
    );
    assert_eq!(answer["message"], sync["detail"]);
}

/// Fails every command the way a broken backend would, with details no client may see.
struct BrokenBackend;

const BACKEND_DETAILS: &str = "connection to 10.9.8.7:5432 failed for user \"svc\"";

#[async_trait]
impl CommandBus for BrokenBackend {
    async fn send(&self, _: &CommandContext, command: &Command) -> Result<CommandOutcome> {
        Err(match command.command_type.as_str() {
            "unavailable" => Error::unavailable(BACKEND_DETAILS),
            _ => Error::internal(BACKEND_DETAILS),
        })
    }
}

#[tokio::test]
async fn internal_and_unavailable_failures_keep_their_details_out_of_the_status() {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let (_, queries) = flexcore_test_support::sample_buses(Arc::clone(&store));
    let app = app_over(Arc::new(BrokenBackend), queries, store, 100);
    for (command_type, code) in [("internal", "internal"), ("unavailable", "unavailable")] {
        let (_, status_url) = send_async(&app, command_type, json!({})).await;
        let answer = settled(&app, &status_url).await;
        assert_eq!(answer["status"], "failed", "{answer}");
        assert_eq!(answer["code"], code);
        let text = answer.to_string();
        assert!(
            !text.contains("10.9.8.7") && !text.contains("svc"),
            "internal details reached the client: {text}"
        );
    }
}

#[tokio::test]
async fn unknown_forgotten_and_malformed_command_ids() {
    let app = app_with_capacity(2);
    let (_, first) = send_async(&app, "create_user", a_user()).await;
    settled(&app, &first).await;
    for _ in 0..2 {
        let (_, later) = send_async(&app, "create_user", a_user()).await;
        settled(&app, &later).await;
    }
    let (status, body) = get(&app, &first).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "only the latest statuses are kept: {body}"
    );
    let (status, _) = get(&app, &format!("/v1/commands/{}", uuid::Uuid::now_v7())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get(&app, "/v1/commands/create_user").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
}

#[tokio::test]
async fn without_async_a_command_still_answers_when_done() {
    let app = app_with_capacity(100);
    for uri in [
        "/v1/commands/create_user",
        "/v1/commands/create_user?async=false",
    ] {
        let (status, location, body) = post(&app, uri, a_user()).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert_eq!(location, None);
        assert_eq!(body["version"], 0);
    }
    let (status, _, body) = post(&app, "/v1/commands/create_user?async=soon", a_user()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
}
