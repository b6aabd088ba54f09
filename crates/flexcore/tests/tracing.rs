//! OTLP export: the spans of a request reach a collector, inside the caller's trace.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde_json::json;

/// A minimal OTLP/gRPC collector that keeps (trace id, span name) pairs.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let trace_id: String =
                        span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    spans.push((trace_id, span.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_in_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("flexcore.db").display());
    let mut server = Server::start_with_env(
        data.path(),
        &url,
        &[
            ("FLEXCORE_OTLP_ENDPOINT", &endpoint),
            ("FLEXCORE_LOG", "info"),
        ],
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .post(format!("{}/v1/commands/create_user", server.base))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"email": "traced@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let outcome: serde_json::Value = response.json().await.unwrap();
    let stream = outcome["stream_id"].as_str().unwrap();
    let page: serde_json::Value = reqwest::get(format!("{}/v1/streams/{stream}", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        page["events"][0]["metadata"]["traceparent"]
            .as_str()
            .unwrap()
            .contains(trace_id),
        "the trace context is in the event's metadata"
    );

    // Shutting down flushes the batch exporter.
    assert_eq!(server.terminate().await.code(), Some(0));
    let mut names = Vec::new();
    for _ in 0..50 {
        names = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == trace_id)
            .map(|(_, n)| n.clone())
            .collect();
        if names.iter().any(|n| n == "command") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(names.iter().any(|n| n == "http.request"), "{names:?}");
    assert!(names.iter().any(|n| n == "command"), "{names:?}");
}
