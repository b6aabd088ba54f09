//! Authentication, RBAC and rate limits at the gRPC gateway: the same policy as HTTP, with
//! gRPC's status codes.

mod common;

use flexcore_auth::Bucket;
use flexcore_grpc::pb::{
    AppendRequest, NewEvent, ReadAllRequest, SendCommandRequest, SubscribeAllRequest,
};
use flexcore_test_support::security::{TEST_API_KEY, forged_token, token};
use serde_json::{Value, json};
use tonic::{Code, Request};

/// `message` with `authorization: Bearer <token>` (or nothing).
fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn create_user(email: &str) -> SendCommandRequest {
    SendCommandRequest {
        command_type: "create_user".into(),
        payload_json: json!({"email": email, "profile": {}}).to_string(),
        ..Default::default()
    }
}

fn note(stream: &str) -> AppendRequest {
    AppendRequest {
        stream_id: stream.into(),
        expected_version: None,
        events: vec![NewEvent {
            event_type: "note".into(),
            data_json: "{}".into(),
            metadata_json: Some(json!({"actor": {"sub": "root", "roles": ["all"]}}).to_string()),
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn every_service_needs_a_valid_credential() {
    let server = common::start_secured(None).await;
    let (mut commands, mut events) = (server.commands().await, server.events().await);
    let forged = forged_token("ann", &["all"]);
    for token in [None, Some(forged.as_str()), Some("not.a.token")] {
        let sent = commands
            .send(with_token(create_user("a@b.io"), token))
            .await
            .unwrap_err();
        assert_eq!(sent.code(), Code::Unauthenticated, "{token:?}: {sent:?}");
        let appended = events
            .append(with_token(note("user-1"), token))
            .await
            .unwrap_err();
        assert_eq!(appended.code(), Code::Unauthenticated);
        let read = events
            .read_all(with_token(ReadAllRequest::default(), token))
            .await
            .unwrap_err();
        assert_eq!(read.code(), Code::Unauthenticated);
        let live = events
            .subscribe_all(with_token(SubscribeAllRequest::default(), token))
            .await
            .unwrap_err();
        assert_eq!(live.code(), Code::Unauthenticated);
    }
    let mut by_key = Request::new(create_user("ci@b.io"));
    by_key
        .metadata_mut()
        .insert("x-api-key", TEST_API_KEY.parse().unwrap());
    commands
        .send(by_key)
        .await
        .expect("an API key in x-api-key metadata");
}

#[tokio::test]
async fn roles_decide_and_the_principal_is_stamped_on_events() {
    let server = common::start_secured(None).await;
    let (mut commands, mut events) = (server.commands().await, server.events().await);
    let writer = token("ann", &["writer"]);
    let created = commands
        .send(with_token(create_user("ann@b.io"), Some(&writer)))
        .await
        .unwrap()
        .into_inner();
    let change = SendCommandRequest {
        command_type: "change_email".into(),
        payload_json:
            json!({"user_id": created.stream_id.trim_start_matches("user-"), "email": "x@b.io"})
                .to_string(),
        ..Default::default()
    };
    let denied = commands
        .send(with_token(change, Some(&writer)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    for stream in ["order-1", "users"] {
        let denied = events
            .append(with_token(note(stream), Some(&writer)))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{stream}");
    }
    events
        .append(with_token(note("user-9"), Some(&writer)))
        .await
        .unwrap();
    events
        .append(with_token(note("order-2"), Some(&token("root", &["all"]))))
        .await
        .unwrap();
    let page = events
        .read_all(with_token(ReadAllRequest::default(), Some(&writer)))
        .await
        .unwrap()
        .into_inner();
    assert!(
        page.events.iter().all(|e| e.stream_id.starts_with("user-")),
        "filtered"
    );
    let note = page
        .events
        .iter()
        .find(|e| e.stream_id == "user-9")
        .unwrap();
    let metadata: Value = serde_json::from_str(&note.metadata_json).unwrap();
    assert_eq!(
        metadata["actor"],
        json!({"sub": "ann", "roles": ["writer"]})
    );
    let everything = events
        .read_all(with_token(
            ReadAllRequest::default(),
            Some(&token("root", &["all"])),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everything.next_position, page.next_position);
    assert!(everything.events.len() > page.events.len());
}

#[tokio::test]
async fn a_spent_bucket_is_resource_exhausted_for_that_principal_only() {
    let server = common::start_secured(Some(Bucket {
        per_second: 1.0,
        burst: 2,
    }))
    .await;
    let mut events = server.events().await;
    let flooder = token("flood", &["reader"]);
    for _ in 0..2 {
        events
            .read_all(with_token(ReadAllRequest::default(), Some(&flooder)))
            .await
            .unwrap();
    }
    let limited = events
        .read_all(with_token(ReadAllRequest::default(), Some(&flooder)))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert_eq!(
        limited.metadata().get("x-error-code").unwrap(),
        "rate_limited"
    );
    assert!(limited.metadata().get("retry-after").is_some());
    events
        .read_all(with_token(
            ReadAllRequest::default(),
            Some(&token("calm", &["reader"])),
        ))
        .await
        .expect("another principal has its own bucket");
}
