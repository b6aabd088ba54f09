//! `GET /ready`: a store that does not answer gives a stable reason; its error text stays in
//! the log (ADR 0003: internal details never reach clients).

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use flexcore_app::store::{EventStore, InMemoryStore};
use flexcore_http::{AppState, router};
use flexcore_test_support::ProbedStore;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// The driver's text, with what must never reach a client: a host, a user, a password.
const DRIVER_TEXT: &str =
    "error connecting to server 10.1.2.3:5432: password authentication failed for user \"svc\"";

fn state(store: Arc<dyn EventStore>) -> AppState {
    let (commands, queries) = flexcore_test_support::sample_buses(Arc::clone(&store));
    AppState::new(commands, queries, store)
}

async fn get_ready(state: AppState) -> (StatusCode, String, String) {
    let response = router(state)
        .oneshot(Request::get("/ready").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let media = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, media, String::from_utf8(bytes.to_vec()).unwrap())
}

/// Collects what `tracing` writes while a test runs on the current thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_unreachable_store_is_reported_by_a_stable_reason_and_logged_in_full() {
    let store = Arc::new(ProbedStore::new(Arc::new(InMemoryStore::new())));
    let (status, _, body) = get_ready(state(Arc::clone(&store) as Arc<dyn EventStore>)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    store.fail_pings_with(DRIVER_TEXT);
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let (status, media, body) = {
        let _guard = tracing::subscriber::set_default(subscriber);
        get_ready(state(Arc::clone(&store) as Arc<dyn EventStore>)).await
    };

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(media, "application/problem+json");
    assert!(
        !body.contains("10.1.2.3") && !body.contains("svc") && !body.contains("password"),
        "the store's error text reached the client: {body}"
    );
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "unavailable");
    assert_eq!(problem["status"], 503);
    assert_eq!(
        problem["store"],
        json!({"ok": false, "reason": "unreachable"})
    );
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains(DRIVER_TEXT),
        "the details belong in the log: {logged}"
    );
}
