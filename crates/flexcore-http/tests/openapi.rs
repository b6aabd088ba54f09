//! The OpenAPI document against what the server sends: the problem codes it lists are exactly
//! the codes the gateway can answer with, and real error answers validate against the schemas
//! it documents for them.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, StatusCode};
use flexcore_app::RequestLimits;
use flexcore_app::store::{EventStore, InMemoryStore};
use flexcore_app::validation::{SchemaViolation, Violation};
use flexcore_app::{Error, ErrorKind};
use flexcore_domain::{DomainError, ExpectedVersion};
use flexcore_http::{ApiError, AppState, router};
use flexcore_test_support::ProbedStore;
use http_body_util::BodyExt;
use serde_json::{Value, json};

/// Every error kind; [`an_error_of`] matches them exhaustively, so a new kind fails to compile
/// here until it is listed (and its code documented).
const EVERY_KIND: [ErrorKind; 9] = [
    ErrorKind::Validation,
    ErrorKind::Conflict,
    ErrorKind::Contended,
    ErrorKind::NotFound,
    ErrorKind::Unauthorized,
    ErrorKind::Forbidden,
    ErrorKind::RateLimited,
    ErrorKind::Unavailable,
    ErrorKind::Internal,
];

fn an_error_of(kind: ErrorKind) -> Error {
    match kind {
        ErrorKind::Validation => DomainError::validation("bad").into(),
        ErrorKind::Conflict => DomainError::AlreadyExists("taken".into()).into(),
        ErrorKind::Contended => Error::Contended("already rebuilding".into()),
        ErrorKind::NotFound => Error::UnknownCommand("nope".into()),
        ErrorKind::Unauthorized => DomainError::Unauthorized("who".into()).into(),
        ErrorKind::Forbidden => DomainError::Forbidden("no".into()).into(),
        ErrorKind::RateLimited => Error::RateLimited {
            class: flexcore_app::security::RouteClass::Commands,
            retry_after: std::time::Duration::from_millis(1500),
        },
        ErrorKind::Unavailable => Error::unavailable("down"),
        ErrorKind::Internal => Error::internal("bug"),
    }
}

struct TestApp {
    router: Router,
    store: Arc<ProbedStore>,
}

const MAX_BODY: usize = 1024;

fn app() -> TestApp {
    let store = Arc::new(ProbedStore::new(Arc::new(InMemoryStore::new())));
    let dyn_store: Arc<dyn EventStore> = Arc::clone(&store) as Arc<dyn EventStore>;
    let (commands, queries) = flexcore_test_support::sample_buses(Arc::clone(&dyn_store));
    let state = AppState {
        limits: RequestLimits {
            max_request_bytes: MAX_BODY,
            ..RequestLimits::default()
        },
        ..AppState::new(commands, queries, dyn_store)
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
    ) -> (StatusCode, Value) {
        let answer = common::call(&self.router, method, uri, content_type, body).await;
        (answer.status, answer.json)
    }

    async fn post_json(&self, uri: &str, body: &str) -> (StatusCode, Value) {
        self.call(Method::POST, uri, Some("application/json"), body.to_owned())
            .await
    }

    /// One problem answer of every kind the gateway itself produces, by asking for it.
    async fn provoke_every_gateway_problem(&self) -> Vec<(StatusCode, Value)> {
        let mut answers = vec![
            self.post_json("/v1/commands/create_user", "{").await,
            self.post_json("/v1/commands/create_user", "{}").await,
            self.call(Method::GET, "/no/such/route", None, Body::empty())
                .await,
            self.call(
                Method::DELETE,
                "/v1/commands/create_user",
                None,
                Body::empty(),
            )
            .await,
            self.post_json(
                "/v1/commands/create_user",
                &format!("{{\"pad\": \"{}\"}}", "x".repeat(MAX_BODY)),
            )
            .await,
            self.call(
                Method::POST,
                "/v1/commands/create_user",
                Some("text/plain"),
                "{}",
            )
            .await,
            self.wrong_expected_version().await,
        ];
        self.store.fail_pings_with("connection refused");
        answers.push(self.call(Method::GET, "/ready", None, Body::empty()).await);
        answers
    }

    /// A raw append expecting version 5 of a stream that does not exist: 409.
    async fn wrong_expected_version(&self) -> (StatusCode, Value) {
        let body = json!({
            "expected_version": 5,
            "events": [{"event_type": "thing.happened", "data": {}}],
        });
        self.post_json("/v1/streams/thing-1", &body.to_string())
            .await
    }

    async fn document(&self) -> Value {
        let (status, doc) = self
            .call(Method::GET, "/openapi.json", None, Body::empty())
            .await;
        assert_eq!(status, StatusCode::OK);
        doc
    }
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "the document has no schema {name}");
    schema
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The schema a documented response of `method path` with `status` refers to, by name.
fn response_schema(doc: &Value, path: &str, method: &str, status: u16) -> String {
    let content = &doc["paths"][path][method]["responses"][status.to_string()]["content"];
    let media = content
        .as_object()
        .and_then(|c| c.values().next())
        .unwrap_or_else(|| panic!("{method} {path} documents no {status} body"));
    let reference = media["schema"]["$ref"]
        .as_str()
        .unwrap_or_else(|| panic!("{method} {path} {status}: no schema reference"));
    reference
        .strip_prefix("#/components/schemas/")
        .unwrap()
        .to_owned()
}

/// Every field of `body` is a documented property of `schema`, and every required one is there.
fn assert_fields_documented(doc: &Value, schema_name: &str, body: &Value) {
    let schema = schema(doc, schema_name);
    let documented: BTreeSet<String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let sent: BTreeSet<String> = body.as_object().unwrap().keys().cloned().collect();
    let undocumented: Vec<_> = sent.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "{schema_name} does not describe {undocumented:?}, which the server sends: {body}"
    );
    let missing: Vec<_> = strings(&schema["required"])
        .into_iter()
        .filter(|field| !sent.contains(field))
        .collect();
    assert!(
        missing.is_empty(),
        "{schema_name} requires {missing:?}, which the server did not send: {body}"
    );
}

#[tokio::test]
async fn the_documented_problem_codes_are_the_codes_the_gateway_answers_with() {
    let app = app();
    let doc = app.document().await;
    let documented = strings(&schema(&doc, "Problem")["properties"]["code"]["enum"]);

    let mut produced: BTreeSet<String> = EVERY_KIND
        .into_iter()
        .map(|kind| ApiError::from(an_error_of(kind)).code().to_owned())
        .collect();
    for (status, problem) in app.provoke_every_gateway_problem().await {
        assert!(problem["code"].is_string(), "{status}: {problem}");
        produced.insert(problem["code"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        documented, produced,
        "Problem.code must list exactly the codes the server sends"
    );
}

#[tokio::test]
async fn error_answers_validate_against_their_documented_schemas() {
    let app = app();
    let doc = app.document().await;

    let (status, conflict) = app.wrong_expected_version().await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["current_version"], Value::Null);
    assert_eq!(conflict["expected_version"], json!(5));
    let conflict_schema = response_schema(&doc, "/v1/streams/{stream_id}", "post", 409);
    assert_fields_documented(&doc, &conflict_schema, &conflict);
    let mut cases = vec![json!({"schema": conflict_schema, "body": conflict})];

    // Every expected version the server can report fits the documented shape.
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::StreamExists,
        ExpectedVersion::Exact(3),
    ] {
        let error = Error::from(DomainError::WrongExpectedVersion {
            stream_id: "s".into(),
            expected,
            current: Some(2),
        });
        let (_, body) = problem_body(ApiError::from(error)).await;
        assert_fields_documented(&doc, "Problem", &body);
        cases.push(json!({"schema": "Problem", "body": body}));
    }

    // A schema violation lists each failing JSON pointer.
    let violation = Error::from(SchemaViolation {
        subject: "command 'create_user'".into(),
        violations: vec![Violation {
            path: "/email".into(),
            message: "value is not a \"email\"".into(),
        }],
    });
    let (status, body) = problem_body(ApiError::from(violation)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["errors"],
        json!([{"path": "/email", "message": "value is not a \"email\""}])
    );
    assert_fields_documented(&doc, "Problem", &body);
    cases.push(json!({"schema": "Problem", "body": body}));

    for (status, problem) in app.provoke_every_gateway_problem().await {
        let schema_name = if problem.get("store").is_some() {
            response_schema(&doc, "/ready", "get", status.as_u16())
        } else {
            "Problem".to_owned()
        };
        assert_fields_documented(&doc, &schema_name, &problem);
        cases.push(json!({"schema": schema_name, "body": problem}));
    }
    validate_with_json_schema(&doc, &cases);
}

async fn problem_body(error: ApiError) -> (StatusCode, Value) {
    use axum::response::IntoResponse;
    let response = error.into_response();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// Validates each `{schema, body}` case with a JSON Schema 2020-12 validator (OpenAPI 3.1's
/// dialect), where undescribed fields fail too; Python's `jsonschema` comes with
/// openapi-spec-validator, which CI installs.
fn validate_with_json_schema(doc: &Value, cases: &[Value]) {
    const SCRIPT: &str = r##"
import json, sys
from jsonschema import Draft202012Validator
data = json.load(open(sys.argv[1]))
for case in data["cases"]:
    schema = dict(data["doc"])
    schema["$ref"] = "#/components/schemas/" + case["schema"]
    schema["unevaluatedProperties"] = False
    Draft202012Validator(schema).validate(case["body"])
print("valid")
"##;
    flexcore_test_support::python_check::check_json(
        SCRIPT,
        &json!({"doc": doc, "cases": cases}),
        "jsonschema (with openapi-spec-validator)",
        "an error answer does not match its documented schema",
    );
}

#[tokio::test]
async fn async_command_answers_validate_against_their_documented_schemas() {
    let app = app();
    let doc = app.document().await;
    let mut cases = Vec::new();
    for payload in [
        json!({"email": "ada@example.com", "profile": {"name": "Ada"}}),
        json!({"email": "not an email"}),
    ] {
        let (status, accepted) = app
            .post_json("/v1/commands/create_user?async=true", &payload.to_string())
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
        let accepted_schema = response_schema(&doc, "/v1/commands/{command_type}", "post", 202);
        assert_fields_documented(&doc, &accepted_schema, &accepted);
        cases.push(json!({"schema": accepted_schema, "body": accepted}));

        let status_schema = response_schema(&doc, "/v1/commands/{command_id}", "get", 200);
        let status_url = accepted["status_url"].as_str().unwrap();
        let mut answer = Value::Null;
        for _ in 0..500 {
            answer = app
                .call(Method::GET, status_url, None, Body::empty())
                .await
                .1;
            assert_fields_documented(&doc, &status_schema, &answer);
            cases.push(json!({"schema": status_schema, "body": answer}));
            if answer["status"] != "pending" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert_ne!(answer["status"], "pending", "{answer}");
    }
    validate_with_json_schema(&doc, &cases);
}
