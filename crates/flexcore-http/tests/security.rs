//! Authentication, RBAC and rate limits at the HTTP gateway (SPEC §9), with the shared test gate
//! of `flexcore_test_support::security`.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use flexcore_app::command::{CommandBus, CommandBusExt};
use flexcore_app::query::{QueryBus, QueryBusExt};
use flexcore_app::store::{EventFilter, EventStore, InMemoryStore, ReadAll};
use flexcore_auth::Bucket;
use flexcore_http::{AppState, router};
use flexcore_test_support::security::{
    REVOKED_API_KEY, TEST_API_KEY, forged_token, test_gate, token,
};
use serde_json::{Value, json};

use common::Answer;

struct SecuredApp {
    router: Router,
    store: Arc<dyn EventStore>,
}

fn app(rate_limit: Option<Bucket>) -> SecuredApp {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let (gate, policy) = test_gate(rate_limit);
    let (commands, queries) = flexcore_test_support::sample_buses(Arc::clone(&store));
    let commands: Arc<dyn CommandBus> = Arc::new(commands.with_authorization(Arc::clone(&policy)));
    let queries: Arc<dyn QueryBus> = Arc::new(queries.with_authorization(policy));
    let state = AppState {
        gate,
        ..AppState::new(commands, queries, Arc::clone(&store))
    };
    SecuredApp {
        router: router(state),
        store,
    }
}

/// How a request proves who sends it.
enum As<'a> {
    Nobody,
    Bearer(&'a str),
    Header(&'a str, &'a str),
}

impl SecuredApp {
    async fn call(&self, method: Method, uri: &str, who: As<'_>, body: Option<Value>) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        match who {
            As::Nobody => {}
            As::Bearer(token) => {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            As::Header(name, value) => request = request.header(name, value),
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        common::send(&self.router, request.body(body).unwrap()).await
    }

    async fn create_user(&self, who: As<'_>, email: &str) -> Answer {
        let body = json!({"email": email, "profile": {}});
        self.call(Method::POST, "/v1/commands/create_user", who, Some(body))
            .await
    }

    async fn events(&self) -> Vec<flexcore_domain::EventEnvelope> {
        self.store
            .read_all(ReadAll {
                from_position: 0,
                limit: 1000,
                filter: EventFilter::default(),
            })
            .await
            .unwrap()
            .events
    }
}

fn assert_unauthorized(answer: &Answer, what: &str) {
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        answer.json
    );
    assert_eq!(answer.json["code"], "unauthorized", "{what}");
    assert_eq!(
        answer.headers[header::WWW_AUTHENTICATE],
        "Bearer realm=\"flexcore\"",
        "{what}"
    );
}

#[tokio::test]
async fn v1_needs_a_valid_credential_and_probes_stay_open() {
    let app = app(None);
    let good = token("ann", &["writer"]);
    let cases = [
        (As::Nobody, "no credential"),
        (As::Bearer(&forged_token("ann", &["all"])), "a forged token"),
        (
            As::Header("authorization", "Basic YW5uOnB3"),
            "another scheme",
        ),
        (As::Header("x-api-key", "fck_unknown"), "an unknown API key"),
        (
            As::Header("x-api-key", REVOKED_API_KEY),
            "a revoked API key",
        ),
    ];
    for (who, what) in cases {
        let answer = app.create_user(who, "a@b.io").await;
        assert_unauthorized(&answer, what);
    }
    // A token in the query string is never read.
    let uri = format!("/v1/events?access_token={good}");
    assert_unauthorized(
        &app.call(Method::GET, &uri, As::Nobody, None).await,
        "query token",
    );
    assert!(app.events().await.is_empty(), "nothing was written");
    for open in ["/health", "/ready", "/openapi.json"] {
        let answer = app.call(Method::GET, open, As::Nobody, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{open}");
    }
}

#[tokio::test]
async fn commands_carry_the_principal_into_every_event() {
    let app = app(None);
    let answer = app
        .create_user(As::Bearer(&token("ann", &["writer"])), "ann@b.io")
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    let by_key = app
        .create_user(As::Header("x-api-key", TEST_API_KEY), "ci@b.io")
        .await;
    assert_eq!(by_key.status, StatusCode::OK, "{}", by_key.json);
    let mut actors: Vec<Value> = app
        .events()
        .await
        .iter()
        .map(|e| serde_json::to_value(&e.decode_metadata().unwrap().actor).unwrap())
        .collect();
    assert_eq!(
        actors.len(),
        4,
        "each command writes the user and its email claim"
    );
    actors.dedup();
    assert_eq!(
        actors,
        [
            json!({"sub": "ann", "roles": ["writer"]}),
            json!({"sub": "ci", "roles": ["writer"]})
        ],
        "every event names the principal that caused it"
    );
}

#[tokio::test]
async fn roles_allow_only_their_commands_queries_and_streams() {
    let app = app(None);
    let writer = token("ann", &["writer"]);
    let reader = token("rob", &["reader"]);
    let created = app.create_user(As::Bearer(&writer), "ann@b.io").await;
    let user_id = created.json["stream_id"]
        .as_str()
        .unwrap()
        .trim_start_matches("user-")
        .to_owned();
    let forbidden = [
        (
            Method::POST,
            "/v1/commands/change_email".to_owned(),
            &writer,
            Some(json!({"user_id": user_id, "email": "x@b.io"})),
        ),
        (
            Method::POST,
            "/v1/commands/create_user".to_owned(),
            &reader,
            Some(json!({"email": "r@b.io", "profile": {}})),
        ),
        (
            Method::GET,
            format!("/v1/queries/get_user?user_id={user_id}"),
            &writer,
            None,
        ),
        // `user-*` does not reach `users` or `order-…`.
        (
            Method::POST,
            "/v1/streams/users".to_owned(),
            &writer,
            Some(json!({"events": [{"event_type": "x", "data": {}}]})),
        ),
        (
            Method::POST,
            "/v1/streams/order-1".to_owned(),
            &writer,
            Some(json!({"events": [{"event_type": "x", "data": {}}]})),
        ),
        (Method::GET, "/v1/streams/order-1".to_owned(), &reader, None),
        (
            Method::POST,
            "/v1/projections/users/rebuild".to_owned(),
            &writer,
            None,
        ),
        (
            Method::POST,
            "/v1/subscriptions/s/dead-letters/1/skip".to_owned(),
            &reader,
            None,
        ),
        (
            Method::GET,
            "/v1/admin/gdpr/subjects/u-1/events".to_owned(),
            &writer,
            None,
        ),
        (
            Method::POST,
            "/v1/admin/gdpr/subjects/u-1/forget".to_owned(),
            &reader,
            None,
        ),
    ];
    let before = app.events().await.len();
    for (method, uri, who, body) in forbidden {
        let answer = app.call(method.clone(), &uri, As::Bearer(who), body).await;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {}",
            answer.json
        );
        assert_eq!(answer.json["code"], "forbidden");
    }
    assert_eq!(app.events().await.len(), before, "nothing was written");
    let asked = app
        .call(
            Method::GET,
            &format!("/v1/queries/get_user?user_id={user_id}"),
            As::Bearer(&reader),
            None,
        )
        .await;
    assert_ne!(asked.status, StatusCode::FORBIDDEN, "{}", asked.json);
    let operator = app
        .call(
            Method::POST,
            "/v1/projections/users/rebuild",
            As::Bearer(&token("op", &["operator"])),
            None,
        )
        .await;
    assert_eq!(
        operator.status,
        StatusCode::NOT_FOUND,
        "allowed, but this server has no projections"
    );
}

#[tokio::test]
async fn raw_appends_are_stamped_with_the_principal_and_reads_are_filtered() {
    let app = app(None);
    let all = token("root", &["all"]);
    let writer = token("ann", &["writer"]);
    let forged_actor = json!({"events": [{"event_type": "note", "data": {}, "metadata": {"actor": {"sub": "root", "roles": ["all"]}}}]});
    let appended = app
        .call(
            Method::POST,
            "/v1/streams/user-7",
            As::Bearer(&writer),
            Some(forged_actor),
        )
        .await;
    assert_eq!(appended.status, StatusCode::OK, "{}", appended.json);
    let order = json!({"events": [{"event_type": "placed", "data": {}}]});
    let other = app
        .call(
            Method::POST,
            "/v1/streams/order-1",
            As::Bearer(&all),
            Some(order),
        )
        .await;
    assert_eq!(other.status, StatusCode::OK);
    let stream = app
        .call(Method::GET, "/v1/streams/user-7", As::Bearer(&writer), None)
        .await;
    assert_eq!(
        stream.json["events"][0]["metadata"]["actor"],
        json!({"sub": "ann", "roles": ["writer"]}),
        "a client cannot claim another actor"
    );
    let page = app
        .call(Method::GET, "/v1/events", As::Bearer(&writer), None)
        .await;
    let streams: Vec<&str> = page.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        streams,
        ["user-7"],
        "only the streams the principal may read"
    );
    assert_eq!(
        page.json["next_position"], 3,
        "but the reader moves past the others"
    );
    let everything = app
        .call(Method::GET, "/v1/events", As::Bearer(&all), None)
        .await;
    assert_eq!(everything.json["events"].as_array().unwrap().len(), 2);
    let operator = app
        .call(
            Method::GET,
            "/v1/events",
            As::Bearer(&token("op", &["operator"])),
            None,
        )
        .await;
    assert_eq!(
        operator.status,
        StatusCode::FORBIDDEN,
        "no stream may be read at all"
    );
}

#[tokio::test]
async fn a_live_ticket_opens_the_stream_once() {
    let app = app(None);
    let reader = token("rob", &["reader"]);
    let ticket = app
        .call(
            Method::POST,
            "/v1/events/live/ticket",
            As::Bearer(&reader),
            None,
        )
        .await;
    assert_eq!(ticket.status, StatusCode::OK, "{}", ticket.json);
    let uri = format!(
        "/v1/events/live?ticket={}",
        ticket.json["ticket"].as_str().unwrap()
    );
    let request = Request::get(&uri).body(Body::empty()).unwrap();
    let response = tower::ServiceExt::oneshot(app.router.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    drop(response);
    assert_unauthorized(
        &app.call(Method::GET, &uri, As::Nobody, None).await,
        "a used ticket",
    );
    let anonymous = app
        .call(Method::POST, "/v1/events/live/ticket", As::Nobody, None)
        .await;
    assert_unauthorized(&anonymous, "a ticket needs a credential");
}

#[tokio::test]
async fn a_flood_from_one_principal_does_not_starve_another() {
    let app = app(Some(Bucket {
        per_second: 1.0,
        burst: 3,
    }));
    let flooder = token("flood", &["reader"]);
    let statuses: Vec<StatusCode> = sequential_statuses(&app, &flooder, 10).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        3,
        "{statuses:?}"
    );
    let limited = app
        .call(Method::GET, "/v1/events", As::Bearer(&flooder), None)
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.json["code"], "rate_limited");
    let retry_after: u64 = limited.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let other = app
        .call(
            Method::GET,
            "/v1/events",
            As::Bearer(&token("calm", &["reader"])),
            None,
        )
        .await;
    assert_eq!(
        other.status,
        StatusCode::OK,
        "another principal has its own bucket"
    );
    let write = app
        .create_user(As::Bearer(&token("flood", &["writer"])), "f@b.io")
        .await;
    assert_eq!(
        write.status,
        StatusCode::OK,
        "another route class has its own bucket"
    );
}

async fn sequential_statuses(app: &SecuredApp, token: &str, n: usize) -> Vec<StatusCode> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(
            app.call(Method::GET, "/v1/events", As::Bearer(token), None)
                .await
                .status,
        );
    }
    statuses
}
