//! Distributed tracing: OTLP export of our spans and W3C trace context in and out.
//!
//! With `FLEXCORE_OTLP_ENDPOINT` set (e.g. `http://127.0.0.1:4317`), every `tracing` span
//! (`http.request` → `command` → `store.append`, and the gRPC calls) is exported over OTLP/gRPC
//! in batches on the async runtime. A request's W3C `traceparent` becomes the parent of its
//! `http.request` span, so FlexCore's spans join the caller's trace; the same header is copied
//! into the metadata of the events the request writes.

use std::sync::Arc;

use anyhow::Context as _;
use flexcore_http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The exporting tracer provider; flushes on [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Builds an OTLP/gRPC exporter to `endpoint` (batched on the Tokio runtime) and the
    /// `tracing` layer that feeds it.
    pub fn otlp<S>(endpoint: &str) -> anyhow::Result<(Self, impl tracing_subscriber::Layer<S>)>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .with_context(|| format!("cannot build the OTLP exporter for {endpoint}"))?;
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("flexcore")
                    .build(),
            )
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("flexcore"));
        Ok((Self { provider }, layer))
    }

    /// Exports what is buffered and stops.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: could not flush traces: {e}");
        }
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes a request's W3C trace context the parent of its span (a no-op without `traceparent`).
pub fn parent_from_headers() -> flexcore_http::TraceParentHook {
    let propagator = TraceContextPropagator::new();
    Arc::new(move |headers, span| {
        if headers.contains_key("traceparent") {
            let parent = propagator.extract(&Headers(headers));
            let _ = span.set_parent(parent);
        }
    })
}
