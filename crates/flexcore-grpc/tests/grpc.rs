//! The gRPC contract of SPEC 7, driven by a real tonic client against `serve` on 127.0.0.1:0.

mod common;

use std::sync::Arc;
use std::time::Duration;

use flexcore_app::RequestLimits;
use flexcore_app::store::InMemoryStore;
use flexcore_grpc::pb::append_request::ExpectedVersion;
use flexcore_grpc::pb::{
    AppendRequest, AppendResponse, AskRequest, Direction, NewEvent, ReadAllRequest,
    ReadStreamRequest, RecordedEvent, SendCommandRequest, SubscribeAllRequest,
};
use flexcore_grpc::{CURRENT_VERSION_KEY, ERROR_CODE_KEY, SERVICE_NAMES};
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic::{Code, Request, Status, Streaming};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use common::TestServer;

fn send(command_type: &str, payload: Value) -> SendCommandRequest {
    SendCommandRequest {
        command_type: command_type.into(),
        payload_json: payload.to_string(),
        idempotency_key: None,
    }
}

fn event(event_type: &str, data: Value) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        data_json: data.to_string(),
        ..NewEvent::default()
    }
}

fn append(
    stream_id: &str,
    expected: Option<ExpectedVersion>,
    events: Vec<NewEvent>,
) -> AppendRequest {
    AppendRequest {
        stream_id: stream_id.into(),
        expected_version: expected,
        events,
    }
}

fn meta<'a>(status: &'a Status, key: &str) -> Option<&'a str> {
    status.metadata().get(key).and_then(|v| v.to_str().ok())
}

/// Asserts the code and the stable `x-error-code` of a failure.
fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    stable: &str,
    case: &str,
) -> Status {
    let status = result.expect_err(case);
    assert_eq!(status.code(), code, "{case}: {status:?}");
    assert_eq!(
        meta(&status, ERROR_CODE_KEY),
        Some(stable),
        "{case}: {status:?}"
    );
    assert!(!status.message().is_empty(), "{case}");
    status
}

async fn all_events(server: &TestServer) -> Vec<RecordedEvent> {
    let mut client = server.events().await;
    let (mut events, mut from) = (Vec::new(), 0);
    loop {
        let page = client
            .read_all(ReadAllRequest {
                from_position: from,
                limit: 1000,
                ..ReadAllRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        if page.events.is_empty() {
            return events;
        }
        from = page.next_position;
        events.extend(page.events);
    }
}

#[tokio::test]
async fn commands_and_queries_mirror_the_http_gateway() {
    let server = common::start().await;
    let mut commands = server.commands().await;

    let mut request = Request::new(send(
        "create_user",
        json!({"email": "Ann@Example.com", "profile": {"name": "Ann"}}),
    ));
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
        .metadata_mut()
        .insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-correlation-id", "corr-42".parse().unwrap());
    let outcome = commands.send(request).await.unwrap().into_inner();
    assert!(uuid::Uuid::parse_str(&outcome.command_id).is_ok());
    assert!(outcome.stream_id.starts_with("user-"), "{outcome:?}");
    assert_eq!(outcome.version, Some(0));
    assert_eq!(outcome.events.len(), 1);
    assert_eq!(outcome.events[0].event_type, "user.created");
    assert_eq!(outcome.events[0].stream_version, 0);
    assert!(outcome.events[0].global_position >= 1);

    // The trace and correlation metadata landed in the event's metadata.
    let stream = server
        .events()
        .await
        .read_stream(ReadStreamRequest {
            stream_id: outcome.stream_id.clone(),
            ..ReadStreamRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let data: Value = serde_json::from_str(&stream.events[0].data_json).unwrap();
    assert_eq!(data["email"], "ann@example.com");
    assert_eq!(data["profile"]["name"], "Ann");
    let metadata: Value = serde_json::from_str(&stream.events[0].metadata_json).unwrap();
    assert_eq!(metadata["traceparent"], traceparent);
    assert_eq!(metadata["tracestate"], "congo=t61rcWkgMzE");
    assert_eq!(metadata["correlation_id"], "corr-42");
    assert_eq!(metadata["causation_id"], outcome.command_id.as_str());

    // The query side answers from the read model once it has applied the command's event.
    let user_id = outcome.stream_id.trim_start_matches("user-").to_owned();
    let position = outcome.events[0].global_position;
    let mut queries = server.queries().await;
    let answer = queries
        .ask(AskRequest {
            query_type: "get_user".into(),
            params_json: json!({ "user_id": user_id, "min_position": position }).to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let user: Value = serde_json::from_str(&answer.result_json).unwrap();
    assert_eq!(user["email"], "ann@example.com");

    // An idempotency key makes a retry safe: the first answer again, nothing run twice.
    let with_key = |email: &str| SendCommandRequest {
        idempotency_key: Some("attempt-1".into()),
        ..send("create_user", json!({ "email": email }))
    };
    let first = commands
        .send(with_key("bob@example.com"))
        .await
        .unwrap()
        .into_inner();
    let again = commands
        .send(with_key("bob@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first, "the same key and body get the first answer");
    assert_status(
        commands.send(with_key("other@example.com")).await,
        Code::InvalidArgument,
        "validation_failed",
        "a reused key with another body",
    );

    let cases = [
        (
            "duplicate email",
            send("create_user", json!({"email": "ANN@example.com"})),
            Code::Aborted,
            "conflict",
        ),
        (
            "invalid email",
            send("create_user", json!({"email": "not-an-email"})),
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            "email of the wrong type",
            send("create_user", json!({"email": 42})),
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            "unknown command",
            send("nope", json!({})),
            Code::NotFound,
            "not_found",
        ),
        (
            "payload not an object",
            send("create_user", json!([1, 2])),
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            "malformed payload",
            SendCommandRequest {
                payload_json: "{\"email\": ".into(),
                ..send("create_user", json!({}))
            },
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            "empty payload",
            SendCommandRequest {
                payload_json: String::new(),
                ..send("create_user", json!({}))
            },
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            "deep payload",
            SendCommandRequest {
                payload_json: format!("{{\"email\": {}1{}}}", "[".repeat(70), "]".repeat(70)),
                ..send("create_user", json!({}))
            },
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            "over-long idempotency key",
            SendCommandRequest {
                idempotency_key: Some("k".repeat(256)),
                ..send("create_user", json!({"email": "carl@example.com"}))
            },
            Code::InvalidArgument,
            "validation_failed",
        ),
        (
            "change_email of an unknown user",
            send(
                "change_email",
                json!({"user_id": uuid::Uuid::now_v7(), "email": "x@example.com"}),
            ),
            Code::NotFound,
            "not_found",
        ),
    ];
    for (case, request, code, stable) in cases {
        assert_status(commands.send(request).await, code, stable, case);
    }

    let ask = |query_type: &str, params: &str| AskRequest {
        query_type: query_type.into(),
        params_json: params.into(),
    };
    assert_status(
        queries.ask(ask("nope", "{}")).await,
        Code::NotFound,
        "not_found",
        "unknown query",
    );
    let unknown_user = json!({"user_id": uuid::Uuid::now_v7()}).to_string();
    assert_status(
        queries.ask(ask("get_user", &unknown_user)).await,
        Code::NotFound,
        "not_found",
        "unknown user",
    );
    assert_status(
        queries.ask(ask("get_user", "{")).await,
        Code::InvalidArgument,
        "validation_failed",
        "malformed params",
    );
    assert_status(
        queries.ask(ask("get_user", "")).await,
        Code::InvalidArgument,
        "validation_failed",
        "missing user_id",
    );

    let created = all_events(&server)
        .await
        .into_iter()
        .filter(|e| e.event_type == "user.created")
        .count();
    assert_eq!(created, 2, "only ann and bob were created");
}

#[tokio::test]
async fn append_checks_expectations() {
    let server = common::start().await;
    let mut client = server.events().await;
    let placed = || event("order.placed", json!({"total": 5}));

    let first = client
        .append(append(
            "order-1",
            Some(ExpectedVersion::NoStream(())),
            vec![placed(), placed()],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.next_version, 1);
    assert_eq!(first.last_position, first.first_position + 1);

    let status = assert_status(
        client
            .append(append(
                "order-1",
                Some(ExpectedVersion::Exact(0)),
                vec![placed()],
            ))
            .await,
        Code::FailedPrecondition,
        "conflict",
        "stale exact version",
    );
    assert_eq!(meta(&status, CURRENT_VERSION_KEY), Some("1"));
    assert!(status.message().contains("current 1"), "{status:?}");
    let status = assert_status(
        client
            .append(append(
                "order-2",
                Some(ExpectedVersion::Exists(())),
                vec![placed()],
            ))
            .await,
        Code::FailedPrecondition,
        "conflict",
        "exists on a missing stream",
    );
    assert_eq!(meta(&status, CURRENT_VERSION_KEY), Some("null"));
    assert_status(
        client
            .append(append(
                "order-1",
                Some(ExpectedVersion::NoStream(())),
                vec![placed()],
            ))
            .await,
        Code::FailedPrecondition,
        "conflict",
        "no_stream on an existing stream",
    );

    let next = client
        .append(append(
            "order-1",
            Some(ExpectedVersion::Exact(1)),
            vec![placed()],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.next_version, 2);
    let any = client
        .append(append(
            "order-1",
            Some(ExpectedVersion::Any(())),
            vec![placed()],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(any.next_version, 3);
    let unset = client
        .append(append("order-1", None, vec![placed()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unset.next_version, 4, "an unset expectation means any");
    let exists = client
        .append(append(
            "order-1",
            Some(ExpectedVersion::Exists(())),
            vec![placed()],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exists.next_version, 5);

    // Re-sending the same event ids answers as the first time and writes nothing.
    let with_id = NewEvent {
        event_id: Some(uuid::Uuid::now_v7().to_string()),
        metadata_json: Some(
            json!({"actor": {"sub": "ann", "roles": ["importer"]}, "source": "import"}).to_string(),
        ),
        schema_version: Some(3),
        ..placed()
    };
    let once: AppendResponse = client
        .append(append("order-3", None, vec![with_id.clone()]))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .append(append("order-3", None, vec![with_id]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        once, again,
        "an idempotent re-send answers as the first time"
    );
    let stream = client
        .read_stream(ReadStreamRequest {
            stream_id: "order-3".into(),
            ..ReadStreamRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.events.len(), 1);
    assert_eq!(stream.events[0].schema_version, 3);
    let metadata: Value = serde_json::from_str(&stream.events[0].metadata_json).unwrap();
    assert_eq!(
        metadata,
        json!({"actor": {"sub": "ann", "roles": ["importer"]}, "source": "import"})
    );
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_and_writes_nothing() {
    let limits = RequestLimits {
        max_request_bytes: 64 * 1024,
        max_json_depth: 32,
    };
    let server = common::start_with(Arc::new(InMemoryStore::new()), limits, None).await;
    let mut client = server.events().await;
    let ok = || event("t", json!({}));
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let cases: Vec<(&str, AppendRequest)> = vec![
        ("empty events", append("s-1", None, vec![])),
        ("empty stream id", append("", None, vec![ok()])),
        (
            "stream id too long",
            append(&"s".repeat(257), None, vec![ok()]),
        ),
        (
            "control character in stream id",
            append("a\u{1}b", None, vec![ok()]),
        ),
        (
            "empty event_type",
            append("s-1", None, vec![event("", json!({}))]),
        ),
        (
            "whitespace in event_type",
            append("s-1", None, vec![event("a b", json!({}))]),
        ),
        (
            "data not an object",
            append("s-1", None, vec![event("t", json!([1]))]),
        ),
        (
            "missing data",
            append(
                "s-1",
                None,
                vec![NewEvent {
                    data_json: String::new(),
                    ..ok()
                }],
            ),
        ),
        (
            "malformed data",
            append(
                "s-1",
                None,
                vec![NewEvent {
                    data_json: "{\"a\": ".into(),
                    ..ok()
                }],
            ),
        ),
        (
            "deep data",
            append(
                "s-1",
                None,
                vec![event("t", json!({}))]
                    .into_iter()
                    .map(|e| NewEvent {
                        data_json: format!("{{\"x\": {deep}}}"),
                        ..e
                    })
                    .collect(),
            ),
        ),
        (
            "bad event_id",
            append(
                "s-1",
                None,
                vec![NewEvent {
                    event_id: Some("nope".into()),
                    ..ok()
                }],
            ),
        ),
        (
            "metadata not an object",
            append(
                "s-1",
                None,
                vec![NewEvent {
                    metadata_json: Some("[1]".into()),
                    ..ok()
                }],
            ),
        ),
        (
            "metadata with an ill-formed actor",
            append(
                "s-1",
                None,
                vec![NewEvent {
                    metadata_json: Some(r#"{"actor": 7}"#.into()),
                    ..ok()
                }],
            ),
        ),
        (
            "deep metadata",
            append(
                "s-1",
                None,
                vec![NewEvent {
                    metadata_json: Some(format!("{{\"x\": {deep}}}")),
                    ..ok()
                }],
            ),
        ),
        (
            "one bad event among good ones",
            append("s-1", None, vec![ok(), event("t", json!(1)), ok()]),
        ),
    ];
    for (case, request) in cases {
        assert_status(
            client.append(request).await,
            Code::InvalidArgument,
            "validation_failed",
            case,
        );
    }
    let status = client
        .append(append(
            "s-1",
            None,
            vec![event("t", json!({"pad": "x".repeat(70 * 1024)}))],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::OutOfRange,
        "over the size limit: {status:?}"
    );
    assert_status(
        client
            .read_stream(ReadStreamRequest {
                stream_id: "s-1".into(),
                direction: 7,
                ..ReadStreamRequest::default()
            })
            .await,
        Code::InvalidArgument,
        "validation_failed",
        "unknown direction",
    );
    assert_status(
        client.read_stream(ReadStreamRequest::default()).await,
        Code::InvalidArgument,
        "validation_failed",
        "read of an empty stream id",
    );
    assert!(
        all_events(&server).await.is_empty(),
        "no bad request wrote anything"
    );
}

#[tokio::test]
async fn stream_and_global_reads_page() {
    let server = common::start().await;
    let mut client = server.events().await;
    let lines = (0..5)
        .map(|i| event("order.line_added", json!({"i": i})))
        .collect();
    client.append(append("order-9", None, lines)).await.unwrap();
    client
        .append(append(
            "invoice-9",
            None,
            vec![event("invoice.sent", json!({}))],
        ))
        .await
        .unwrap();

    let read = |from_version: Option<u64>, limit: u32, direction: Direction| ReadStreamRequest {
        stream_id: "order-9".into(),
        from_version,
        limit,
        direction: direction as i32,
    };
    let versions =
        |events: &[RecordedEvent]| events.iter().map(|e| e.stream_version).collect::<Vec<_>>();
    let page = client
        .read_stream(read(Some(1), 2, Direction::Forward))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((page.stream_id.as_str(), page.version), ("order-9", 4));
    assert_eq!(versions(&page.events), [1, 2]);
    let page = client
        .read_stream(read(None, 2, Direction::Backward))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(versions(&page.events), [4, 3]);
    let page = client
        .read_stream(read(None, 0, Direction::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        versions(&page.events),
        [0, 1, 2, 3, 4],
        "limit 0 means the default page"
    );

    let envelope = &page.events[0];
    assert!(uuid::Uuid::parse_str(&envelope.event_id).is_ok());
    assert_eq!(envelope.stream_id, "order-9");
    assert_eq!(envelope.event_type, "order.line_added");
    assert_eq!(envelope.schema_version, 1);
    assert_eq!(
        serde_json::from_str::<Value>(&envelope.data_json).unwrap(),
        json!({"i": 0})
    );
    assert_eq!(envelope.metadata_json, "{}");
    let recorded_at = time::OffsetDateTime::parse(
        &envelope.recorded_at,
        &time::format_description::well_known::Rfc3339,
    );
    assert!(recorded_at.is_ok(), "RFC 3339: {}", envelope.recorded_at);

    let status = assert_status(
        client
            .read_stream(ReadStreamRequest {
                stream_id: "order-404".into(),
                ..ReadStreamRequest::default()
            })
            .await,
        Code::NotFound,
        "not_found",
        "missing stream",
    );
    assert!(status.message().contains("order-404"));

    let read_all = |from_position: u64,
                    limit: u32,
                    type_prefix: Option<&str>,
                    category: Option<&str>| ReadAllRequest {
        from_position,
        limit,
        type_prefix: type_prefix.map(Into::into),
        category: category.map(Into::into),
    };
    let page = client
        .read_all(read_all(0, 4, None, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 4);
    let rest = client
        .read_all(read_all(page.next_position, 100, None, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.events.len(), 2);
    let positions: Vec<u64> = page
        .events
        .iter()
        .chain(&rest.events)
        .map(|e| e.global_position)
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let by_category = client
        .read_all(read_all(0, 0, None, Some("invoice")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_category.events.len(), 1);
    let by_type = client
        .read_all(read_all(0, 0, Some("order."), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_type.events.len(), 5);
    let unfiltered = client
        .read_all(read_all(0, 0, Some(""), Some("")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unfiltered.events.len(), 6, "empty filters mean no filter");
}

async fn next_event(stream: &mut Streaming<RecordedEvent>) -> RecordedEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event arrives in time")
        .expect("the stream is open")
        .expect("not an error")
}

#[tokio::test]
async fn subscribe_all_catches_up_goes_live_and_resumes_without_gap_or_duplicate() {
    let server = common::start_sqlite().await;
    let mut client = server.events().await;
    let mut commands = server.commands().await;
    let history = (0..3)
        .map(|i| event("order.placed", json!({"i": i})))
        .collect();
    client
        .append(append("order-1", None, history))
        .await
        .unwrap();

    let subscribe = |from_position: u64| SubscribeAllRequest {
        from_position,
        ..SubscribeAllRequest::default()
    };
    let mut live = client
        .subscribe_all(subscribe(0))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_event(&mut live).await);
    }
    assert_eq!(
        seen.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [0, 1, 2]
    );

    // Written while the subscriber is connected: a raw append and a command (two streams).
    client
        .append(append(
            "order-1",
            Some(ExpectedVersion::Exact(2)),
            vec![event("order.shipped", json!({}))],
        ))
        .await
        .unwrap();
    commands
        .send(send("create_user", json!({"email": "live@example.com"})))
        .await
        .unwrap();
    for _ in 0..3 {
        seen.push(next_event(&mut live).await);
    }
    assert_eq!(seen[3].event_type, "order.shipped");
    let mut types: Vec<&str> = seen[4..].iter().map(|e| e.event_type.as_str()).collect();
    types.sort_unstable();
    assert_eq!(types, ["email.reserved", "user.created"]);
    drop(live);

    // Missed while disconnected, then resumed from the last position + 1.
    let missed = (0..2)
        .map(|i| event("order.note", json!({"i": i})))
        .collect();
    client
        .append(append("order-2", None, missed))
        .await
        .unwrap();
    let resume_from = seen.last().unwrap().global_position + 1;
    let mut resumed = client
        .subscribe_all(subscribe(resume_from))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        seen.push(next_event(&mut resumed).await);
    }
    let nothing_more = tokio::time::timeout(Duration::from_millis(600), resumed.next()).await;
    assert!(
        nothing_more.is_err(),
        "no duplicate or extra event: {nothing_more:?}"
    );

    let ids = |events: &[RecordedEvent]| {
        events
            .iter()
            .map(|e| (e.global_position, e.event_id.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&seen),
        ids(&all_events(&server).await),
        "every event exactly once, in order"
    );

    // Filters apply to the live stream too.
    let mut orders = client
        .subscribe_all(SubscribeAllRequest {
            from_position: 0,
            category: Some("order".into()),
            type_prefix: Some("order.n".into()),
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..2 {
        let e = next_event(&mut orders).await;
        assert_eq!(
            (e.stream_id.as_str(), e.event_type.as_str()),
            ("order-2", "order.note"),
            "{i}"
        );
    }
}

#[tokio::test]
async fn shutdown_ends_live_subscriptions_and_serve_returns() {
    let server = common::start().await;
    let mut client = server.events().await;
    let mut live = client
        .subscribe_all(SubscribeAllRequest::default())
        .await
        .unwrap()
        .into_inner();
    client
        .append(append("s-1", None, vec![event("t", json!({}))]))
        .await
        .unwrap();
    next_event(&mut live).await;

    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    server.stop().await.expect("serve stops cleanly");
    let end = tokio::time::timeout(Duration::from_secs(10), live.next())
        .await
        .expect("the stream ends");
    match end {
        Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    let last = watch.next().await.unwrap().unwrap();
    assert_eq!(last.status(), ServingStatus::NotServing);
    assert!(watch.next().await.is_none(), "the health watch ends");
}

#[tokio::test]
async fn health_reports_serving_and_reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = common::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in std::iter::once("").chain(SERVICE_NAMES) {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "'{service}'");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = tokio_stream::iter([
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "flexcore.v1.EventStore".into(),
        )),
    ]);
    let mut answers = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("a list of services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in SERVICE_NAMES.into_iter().chain([
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ]) {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("the file of flexcore.v1.EventStore");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}
