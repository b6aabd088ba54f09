//! The HTTP contract of SPEC 7, driven through the router without a socket.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use flexcore_app::RequestLimits;
use flexcore_app::store::{EventFilter, EventStore, InMemoryStore, ReadAll};
use flexcore_http::{AppState, router};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct TestApp {
    router: Router,
    store: Arc<dyn EventStore>,
}

fn app() -> TestApp {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let (commands, queries) = flexcore_test_support::sample_buses(Arc::clone(&store));
    let state = AppState {
        limits: RequestLimits {
            max_request_bytes: 64 * 1024,
            max_json_depth: 32,
        },
        metrics: Some(Arc::new(|| "flexcore_test_metric 1\n".to_owned())),
        health_details: Some(Arc::new(|| {
            let mut details = serde_json::Map::new();
            details.insert("python".into(), json!({"ok": true, "error": null}));
            details
        })),
        ..AppState::new(commands, queries, Arc::clone(&store))
    };
    TestApp {
        router: router(state),
        store,
    }
}

impl TestApp {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> (StatusCode, Value, String) {
        let answer = common::call(&self.router, method, uri, content_type, body).await;
        let media = answer.media_type();
        (answer.status, answer.json, media)
    }

    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self
            .call(
                Method::POST,
                uri,
                Some("application/json"),
                body.to_string(),
            )
            .await;
        (s, v)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::GET, uri, None, Body::empty()).await;
        (s, v)
    }

    async fn event_count(&self) -> usize {
        self.store
            .read_all(ReadAll {
                from_position: 0,
                limit: 10_000,
                filter: EventFilter::default(),
            })
            .await
            .unwrap()
            .events
            .len()
    }
}

#[tokio::test]
async fn create_user_returns_the_written_event() {
    let app = app();
    let (status, body) = app
        .post(
            "/v1/commands/create_user",
            json!({"email": "Ann@Example.com", "profile": {"name": "Ann"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["command_id"].is_string());
    assert!(body["stream_id"].as_str().unwrap().starts_with("user-"));
    assert_eq!(body["version"], 0);
    assert_eq!(body["events"][0]["event_type"], "user.created");
    assert_eq!(body["events"][0]["stream_version"], 0);
    assert!(body["events"][0]["global_position"].as_u64().unwrap() >= 1);
    assert!(body["events"][0]["event_id"].is_string());

    let (status, stream) = app
        .get(&format!(
            "/v1/streams/{}",
            body["stream_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stream["events"][0]["data"]["email"], "ann@example.com");
    assert_eq!(stream["events"][0]["data"]["profile"]["name"], "Ann");
    let meta = &stream["events"][0]["metadata"];
    assert_eq!(meta["causation_id"], body["command_id"]);
}

#[tokio::test]
async fn duplicate_and_invalid_emails_are_refused() {
    let app = app();
    let (status, _) = app
        .post(
            "/v1/commands/create_user",
            json!({"email": "dup@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .post(
            "/v1/commands/create_user",
            json!({"email": "DUP@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "conflict");
    let (status, body) = app
        .post("/v1/commands/create_user", json!({"email": "not-an-email"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["code"], "validation_failed");
    let (status, body) = app
        .post("/v1/commands/create_user", json!({"email": 42}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = app.post("/v1/commands/nope", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn concurrent_creates_with_one_email_have_one_winner() {
    let app = Arc::new(app());
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let app = Arc::clone(&app);
        tasks.push(tokio::spawn(async move {
            app.post(
                "/v1/commands/create_user",
                json!({"email": "race@example.com"}),
            )
            .await
            .0
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    let created = app
        .store
        .read_all(ReadAll {
            from_position: 0,
            limit: 1000,
            filter: EventFilter {
                type_prefix: Some("user.created".into()),
                category: None,
            },
        })
        .await
        .unwrap();
    assert_eq!(created.events.len(), 1);
}

#[tokio::test]
async fn change_email_moves_the_reservation() {
    let app = app();
    let (_, ann) = app
        .post(
            "/v1/commands/create_user",
            json!({"email": "ann@example.com"}),
        )
        .await;
    let (_, _bob) = app
        .post(
            "/v1/commands/create_user",
            json!({"email": "bob@example.com"}),
        )
        .await;
    let ann_id = ann["stream_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("user-")
        .to_owned();

    let (status, body) = app
        .post(
            "/v1/commands/change_email",
            json!({"user_id": ann_id, "email": "ann@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["events"],
        json!([]),
        "no event when the email does not change"
    );
    assert_eq!(body["version"], 0);

    let (status, body) = app
        .post(
            "/v1/commands/change_email",
            json!({"user_id": ann_id, "email": "bob@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, body) = app
        .post(
            "/v1/commands/change_email",
            json!({"user_id": ann_id, "email": "ann2@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events"][0]["event_type"], "user.email_changed");
    assert_eq!(body["version"], 1);
    let moved = body["events"][0]["global_position"].as_u64().unwrap();

    let (status, _) = app
        .post(
            "/v1/commands/create_user",
            json!({"email": "ann@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the released address is free again");
    let (status, _) = app
        .post(
            "/v1/commands/create_user",
            json!({"email": "ann2@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let unknown = uuid::Uuid::now_v7();
    let (status, body) = app
        .post(
            "/v1/commands/change_email",
            json!({"user_id": unknown, "email": "x@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "not_found");

    let (status, user) = app
        .get(&format!(
            "/v1/queries/get_user?user_id={ann_id}&min_position={moved}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["email"], "ann2@example.com");
    let (status, page) = app
        .get(&format!(
            "/v1/queries/list_users?email_contains=ann&min_position={moved}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 2, "ann2@ and the re-registered ann@");
}

#[tokio::test]
async fn idempotency_keys_make_command_retries_safe() {
    let app = app();
    let send = |key: &'static str, email: &'static str| {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1/commands/create_user")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(Body::from(json!({"email": email}).to_string()))
            .unwrap();
        let router = app.router.clone();
        async move {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };
    let (status, first) = send("retry-1", "idem@example.com").await;
    assert_eq!(status, StatusCode::OK);
    let (status, again) = send("retry-1", "idem@example.com").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        again, first,
        "the same key and body return the first answer"
    );
    assert_eq!(
        app.event_count().await,
        2,
        "user.created + email.reserved, written once"
    );
    let (status, other) = send("retry-1", "other@example.com").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other["code"], "validation_failed");
    assert_eq!(app.event_count().await, 2);
}

#[tokio::test]
async fn raw_append_checks_expectations() {
    let app = app();
    let event = json!({"event_type": "order.placed", "data": {"total": 5}});
    let (status, body) = app
        .post(
            "/v1/streams/order-1",
            json!({"expected_version": "no_stream", "events": [event, event]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["next_version"], 1);
    assert_eq!(
        body["last_position"].as_u64().unwrap(),
        body["first_position"].as_u64().unwrap() + 1
    );

    let (status, body) = app
        .post(
            "/v1/streams/order-1",
            json!({"expected_version": 0, "events": [event]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "conflict");
    assert_eq!(body["current_version"], 1);
    let (status, body) = app
        .post(
            "/v1/streams/order-2",
            json!({"expected_version": "exists", "events": [event]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["current_version"], Value::Null);
    let (status, body) = app
        .post(
            "/v1/streams/order-1",
            json!({"expected_version": 1, "events": [event]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["next_version"], 2);

    let id = uuid::Uuid::now_v7();
    let with_id = json!({"event_id": id, "event_type": "order.placed", "data": {}});
    let (_, first) = app
        .post("/v1/streams/order-3", json!({"events": [with_id]}))
        .await;
    let (status, again) = app
        .post("/v1/streams/order-3", json!({"events": [with_id]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        first, again,
        "an idempotent re-send answers as the first time"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_writes_nothing() {
    let app = app();
    let ok_event = json!({"event_type": "t", "data": {}});
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let long_id = "s".repeat(257);
    let cases: Vec<(&str, String, Option<&str>, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            "/v1/streams/s-1".into(),
            Some("{\"events\": ["),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "events not a list",
            "/v1/streams/s-1".into(),
            Some(r#"{"events": "x"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "empty events",
            "/v1/streams/s-1".into(),
            Some(r#"{"events": []}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "empty event_type",
            "/v1/streams/s-1".into(),
            Some(r#"{"events": [{"event_type": "", "data": {}}]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "data not an object",
            "/v1/streams/s-1".into(),
            Some(r#"{"events": [{"event_type": "t", "data": [1]}]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "missing data",
            "/v1/streams/s-1".into(),
            Some(r#"{"events": [{"event_type": "t"}]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "bad event_id",
            "/v1/streams/s-1".into(),
            Some(r#"{"events": [{"event_id": "nope", "event_type": "t", "data": {}}]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "expected_version word",
            "/v1/streams/s-1".into(),
            Some(r#"{"expected_version": "latest", "events": [{"event_type": "t", "data": {}}]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "expected_version negative",
            "/v1/streams/s-1".into(),
            Some(r#"{"expected_version": -1, "events": [{"event_type": "t", "data": {}}]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "expected_version fraction",
            "/v1/streams/s-1".into(),
            Some(r#"{"expected_version": 1.5, "events": [{"event_type": "t", "data": {}}]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "unknown field",
            "/v1/streams/s-1".into(),
            Some(r#"{"expectedVersion": 3, "events": [{"event_type": "t", "data": {}}]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "stream id too long",
            format!("/v1/streams/{long_id}"),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "control character in stream id",
            "/v1/streams/a%01b".into(),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "deep nesting",
            "/v1/streams/s-1".into(),
            Some(&*Box::leak(
                format!(r#"{{"events": [{{"event_type": "t", "data": {{"x": {deep}}}}}]}}"#)
                    .into_boxed_str(),
            )),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (name, uri, body, status, code) in cases {
        let body = body.map_or_else(|| json!({"events": [ok_event]}).to_string(), str::to_owned);
        let (got, json, media) = app
            .call(Method::POST, &uri, Some("application/json"), body)
            .await;
        assert_eq!(got, status, "{name}: {json}");
        assert_eq!(json["code"], code, "{name}");
        assert_eq!(media, "application/problem+json", "{name}");
        assert!(!json["detail"].as_str().unwrap().is_empty(), "{name}");
    }
    let body = json!({"events": [ok_event]}).to_string();
    let (status, json, _) = app
        .call(
            Method::POST,
            "/v1/streams/s-1",
            Some("text/plain"),
            body.clone(),
        )
        .await;
    assert_eq!(
        (status, json["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    let (status, _, _) = app.call(Method::POST, "/v1/streams/s-1", None, body).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = json!({"events": [{"event_type": "t", "data": {"pad": "x".repeat(70 * 1024)}}]})
        .to_string();
    let (status, json, _) = app
        .call(
            Method::POST,
            "/v1/streams/s-1",
            Some("application/json"),
            huge,
        )
        .await;
    assert_eq!(
        (status, json["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    let (status, _, _) = app
        .call(
            Method::POST,
            "/v1/commands/create_user",
            Some("application/json"),
            "[1,2]",
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    assert_eq!(app.event_count().await, 0, "no bad request wrote anything");
}

#[tokio::test]
async fn sql_looking_stream_ids_are_stored_literally() {
    let app = app();
    let id = "x'); DROP TABLE events; --";
    let encoded = "x%27%29%3B%20DROP%20TABLE%20events%3B%20--";
    let (status, _) = app
        .post(
            &format!("/v1/streams/{encoded}"),
            json!({"events": [{"event_type": "t", "data": {"a": 1}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.get(&format!("/v1/streams/{encoded}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["stream_id"], id);
    assert_eq!(body["events"][0]["stream_id"], id);
}

#[tokio::test]
async fn stream_and_global_reads_page() {
    let app = app();
    let events: Vec<Value> = (0..5)
        .map(|i| json!({"event_type": "order.line_added", "data": {"i": i}}))
        .collect();
    app.post("/v1/streams/order-9", json!({"events": events}))
        .await;
    app.post(
        "/v1/streams/invoice-9",
        json!({"events": [{"event_type": "invoice.sent", "data": {}}]}),
    )
    .await;

    let (status, body) = app.get("/v1/streams/order-9?from_version=1&limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"], 4);
    let versions: Vec<u64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    let (_, body) = app
        .get("/v1/streams/order-9?direction=backward&limit=2")
        .await;
    let versions: Vec<u64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [4, 3]);
    let envelope = &body["events"][0];
    for field in [
        "event_id",
        "stream_id",
        "stream_version",
        "global_position",
        "event_type",
        "schema_version",
        "data",
        "metadata",
        "recorded_at",
    ] {
        assert!(!envelope[field].is_null(), "envelope has {field}");
    }
    let (status, body) = app.get("/v1/streams/order-404").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body) = app.get("/v1/streams/order-9?limit=abc").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let (status, _) = app.get("/v1/streams/order-9?direction=sideways").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (_, page) = app.get("/v1/events?limit=4").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 4);
    let next = page["next_position"].as_u64().unwrap();
    let (_, rest) = app
        .get(&format!("/v1/events?from_position={next}&limit=100"))
        .await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 2);
    let (_, by_category) = app.get("/v1/events?category=invoice").await;
    assert_eq!(by_category["events"].as_array().unwrap().len(), 1);
    let (_, by_type) = app.get("/v1/events?type_prefix=order.").await;
    assert_eq!(by_type["events"].as_array().unwrap().len(), 5);
    let (status, _) = app.get("/v1/events?from_position=-3").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Reads SSE frames until `count` events arrived; returns their (id, data) pairs.
async fn sse_events(body: &mut Body, count: usize) -> Vec<(u64, Value)> {
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < count {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await
            .expect("an SSE frame in time")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let id = block
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .map(|v| v.parse().unwrap());
            let data = block.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(id), Some(data)) = (id, data) {
                events.push((id, serde_json::from_str(data).unwrap()));
            }
        }
    }
    events
}

#[tokio::test]
async fn live_events_stream_history_then_live_and_resume_after_the_last_id() {
    let app = app();
    let event = |i: u64| json!({"event_type": "live.tick", "data": {"i": i}});
    app.post(
        "/v1/streams/tick-1",
        json!({"events": [event(0), event(1)]}),
    )
    .await;

    let request = Request::builder()
        .uri("/v1/events/live")
        .body(Body::empty())
        .unwrap();
    let response = app.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.into_body();
    let history = sse_events(&mut body, 2).await;
    assert_eq!(
        history
            .iter()
            .map(|(_, e)| e["data"]["i"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1]
    );

    // Written while the subscriber is connected.
    app.post("/v1/streams/tick-1", json!({"events": [event(2)]}))
        .await;
    let live = sse_events(&mut body, 1).await;
    assert_eq!(live[0].1["data"]["i"], 2);
    assert_eq!(
        live[0].0,
        live[0].1["global_position"].as_u64().unwrap(),
        "the SSE id is the position"
    );
    drop(body);

    app.post("/v1/streams/tick-1", json!({"events": [event(3)]}))
        .await;
    let request = Request::builder()
        .uri("/v1/events/live")
        .header("Last-Event-ID", history[1].0.to_string())
        .body(Body::empty())
        .unwrap();
    let mut body = app
        .router
        .clone()
        .oneshot(request)
        .await
        .unwrap()
        .into_body();
    let resumed = sse_events(&mut body, 2).await;
    assert_eq!(
        resumed
            .iter()
            .map(|(_, e)| e["data"]["i"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3],
        "no gap, no duplicate"
    );

    let request = Request::builder()
        .uri("/v1/events/live")
        .header("Last-Event-ID", "abc")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.router.clone().oneshot(request).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn health_and_unknown_routes() {
    let app = app();
    assert_eq!(
        app.get("/health").await,
        (
            StatusCode::OK,
            json!({"status": "ok", "python": {"ok": true, "error": null}})
        )
    );
    assert_eq!(
        app.get("/ready").await,
        (
            StatusCode::OK,
            json!({"status": "ready", "python": {"ok": true, "error": null}})
        )
    );
    let (status, _, media) = app.call(Method::GET, "/metrics", None, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(media.starts_with("text/plain"), "{media}");
    let (status, body, media) = app.call(Method::GET, "/nope", None, Body::empty()).await;
    assert_eq!(
        (status, media.as_str(), body["code"].as_str()),
        (
            StatusCode::NOT_FOUND,
            "application/problem+json",
            Some("not_found")
        )
    );
    let (status, _, _) = app
        .call(
            Method::DELETE,
            "/v1/commands/create_user",
            None,
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_and_validates() {
    let app = app();
    let (status, doc, media) = app
        .call(Method::GET, "/openapi.json", None, Body::empty())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(media, "application/json");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/v1/commands/{command_type}", "post"),
        ("/v1/commands/{command_id}", "get"),
        ("/v1/queries/{query_type}", "get"),
        ("/v1/queries/{query_type}", "post"),
        ("/v1/streams/{stream_id}", "post"),
        ("/v1/streams/{stream_id}", "get"),
        ("/v1/events", "get"),
        ("/v1/events/live", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    assert!(doc["components"]["schemas"]["Envelope"].is_object());

    // The OpenAPI 3 validator, when the machine has it (CI installs it).
    flexcore_test_support::python_check::check_json(
        "import sys; from openapi_spec_validator import validate; from openapi_spec_validator.readers import read_from_filename; validate(read_from_filename(sys.argv[1])[0]); print('valid')",
        &doc,
        "openapi-spec-validator",
        "the OpenAPI document is invalid",
    );
}
