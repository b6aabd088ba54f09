//! The operator routes: durable subscriptions with parked events (list, retry, skip) and
//! projections, driven through the router.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use flexcore_app::durable::{DurableConsumer, DurableOptions, InMemoryCheckpoints};
use flexcore_app::event_bus::EventHandler;
use flexcore_app::store::{EventAppender, EventStore, InMemoryStore};
use flexcore_domain::{EventEnvelope, ExpectedVersion, NewEvent, RawJson, StreamId};
use flexcore_http::{AppState, Operations, router};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::watch;
use tower::ServiceExt;

/// Fails on every event while `broken`.
struct Downstream {
    broken: AtomicBool,
}

#[async_trait]
impl EventHandler for Downstream {
    async fn handle(&self, _event: &EventEnvelope) -> flexcore_app::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(flexcore_app::Error::unavailable("smtp is down"));
        }
        Ok(())
    }
}

async fn call(app: &Router, method: Method, uri: &str) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn append(store: &InMemoryStore, stream: &str) -> u64 {
    let event = NewEvent::new("order.placed", RawJson::from_string("{}".into()).unwrap()).unwrap();
    store
        .append(
            StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            vec![event],
        )
        .await
        .unwrap()
        .last_position()
        .unwrap()
}

#[tokio::test]
async fn parked_events_are_listed_retried_and_skipped_over_http() {
    let store = Arc::new(InMemoryStore::new());
    let downstream = Arc::new(Downstream {
        broken: AtomicBool::new(true),
    });
    let (_stop, shutdown) = watch::channel(false);
    let (control, _task) = DurableConsumer::new(
        "mailer",
        downstream.clone(),
        store.clone(),
        Arc::new(InMemoryCheckpoints::new()),
    )
    .with_options(DurableOptions {
        max_attempts: 2,
        base_delay: Duration::from_millis(1),
        ..DurableOptions::default()
    })
    .spawn(shutdown)
    .await
    .unwrap();
    let first = append(&store, "order-1").await;
    let second = append(&store, "order-1").await;
    let other = append(&store, "order-2").await;

    let event_store: Arc<dyn EventStore> = store.clone();
    let (commands, queries) = flexcore_test_support::sample_buses(Arc::clone(&event_store));
    let app = router(AppState {
        operations: Operations {
            projections: None,
            consumers: vec![control].into(),
            gdpr: None,
            plugins: None,
        },
        ..AppState::new(commands, queries, event_store)
    });

    let mut letters = Value::Null;
    for _ in 0..200 {
        let (status, body) = call(&app, Method::GET, "/v1/subscriptions/mailer/dead-letters").await;
        assert_eq!(status, StatusCode::OK);
        if body.as_array().is_some_and(|l| l.len() == 3) {
            letters = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(letters[0]["global_position"], first);
    assert_eq!(letters[0]["reason"]["state"], "failed");
    assert_eq!(letters[0]["reason"]["attempts"], 2);
    assert_eq!(letters[0]["reason"]["error"], "unavailable: smtp is down");
    assert_eq!(letters[1]["reason"]["state"], "waiting");
    assert_eq!(
        letters[2]["global_position"], other,
        "order-2 failed on its own"
    );

    let (status, subscriptions) = call(&app, Method::GET, "/v1/subscriptions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(subscriptions[0]["consumer"], "mailer");
    assert_eq!(subscriptions[0]["parked"], 3);
    assert_eq!(subscriptions[0]["blocked_streams"], 2);

    // Out of order, unknown, still failing.
    let (status, body) = call(
        &app,
        Method::POST,
        &format!("/v1/subscriptions/mailer/dead-letters/{second}/retry"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/subscriptions/mailer/dead-letters/999/retry",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, Method::GET, "/v1/subscriptions/nobody/dead-letters").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, problem) = call(
        &app,
        Method::POST,
        "/v1/subscriptions/mailer/dead-letters/first/retry",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        problem["code"], "bad_request",
        "a problem+json answer: {problem}"
    );
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/v1/subscriptions/mailer/dead-letters/{first}/retry"),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // Repaired: the retry handles order-1 in order; order-2 is skipped.
    downstream.broken.store(false, Ordering::SeqCst);
    let (status, body) = call(
        &app,
        Method::POST,
        &format!("/v1/subscriptions/mailer/dead-letters/{first}/retry"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("/v1/subscriptions/mailer/dead-letters/{other}/skip"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, letters) = call(&app, Method::GET, "/v1/subscriptions/mailer/dead-letters").await;
    assert_eq!(letters, Value::Array(vec![]));

    let (status, _) = call(&app, Method::GET, "/v1/projections").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no projections on this server"
    );
}
