//! Routes and handlers.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flexcore_app::command::{Command, CommandContext, CommandStatus};
use flexcore_app::query::{Query, QueryContext};
use flexcore_app::store::{Direction, EventFilter, ReadAll, ReadStream};
use flexcore_domain::{
    EventEnvelope, EventId, EventMetadata, ExpectedVersion, NewEvent, RawJson, StreamId,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::auth::Caller;
use crate::body::JsonBody;
use crate::{ApiError, AppState};

/// The default page size of stream and global reads.
const DEFAULT_PAGE: usize = 100;

/// Builds the whole HTTP API.
pub fn router(state: AppState) -> Router {
    use crate::operations as ops;
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        // One pattern for both: the router cannot tell `{command_type}` from a command id.
        .route(
            "/v1/commands/{command_type}",
            post(send_command).get(command_status),
        )
        .route("/v1/queries/{query_type}", get(ask_get).post(ask_post))
        .route("/v1/streams/{stream_id}", post(append).get(read_stream))
        .route("/v1/events", get(read_all))
        .route("/v1/events/live", get(crate::live::live))
        .route(
            "/v1/events/live/ticket",
            post(crate::auth::live_ticket_route),
        )
        .route("/metrics", get(metrics))
        .route("/v1/projections", get(ops::list_projections))
        .route("/v1/projections/{name}", get(ops::projection))
        .route(
            "/v1/projections/{name}/rebuild",
            post(ops::rebuild_projection),
        )
        .route("/v1/subscriptions", get(ops::list_subscriptions))
        .route(
            "/v1/subscriptions/{name}/dead-letters",
            get(ops::dead_letters),
        )
        .route(
            "/v1/subscriptions/{name}/dead-letters/{position}/retry",
            post(ops::retry_dead_letter),
        )
        .route(
            "/v1/subscriptions/{name}/dead-letters/{position}/skip",
            post(ops::skip_dead_letter),
        )
        .route("/v1/plugins", get(ops::list_plugins))
        .route("/v1/plugins/{name}/reload", post(ops::reload_plugin))
        .route(
            "/v1/admin/gdpr/subjects/{subject}/events",
            get(ops::gdpr_export),
        )
        .route(
            "/v1/admin/gdpr/subjects/{subject}/forget",
            post(ops::gdpr_forget),
        )
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Runs every request in an `http.request` span (the parent of the command, bus and store
/// spans), counts it by route pattern and status (`flexcore_http_requests_total`) and times it
/// (`flexcore_http_request_duration_seconds`).
async fn count_requests(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "http.request",
        method = %request.method(),
        route = %route,
        status = tracing::field::Empty,
    );
    if let Some(adopt_parent) = &state.trace_parent {
        adopt_parent(request.headers(), &span);
    }
    let started = std::time::Instant::now();
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("status", response.status().as_u16());
    let status = response.status().as_u16().to_string();
    metrics::counter!("flexcore_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("flexcore_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let render = state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::not_found("metrics are not enabled"))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/health", tag = "meta", responses((status = 200, description = "The process is alive")))]
pub(crate) async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(with_details(json!({ "status": "ok" }), &state))
}

/// Adds the composition root's health details to a status object.
fn with_details(mut status: Value, state: &AppState) -> Value {
    if let (Some(details), Some(fields)) = (&state.health_details, status.as_object_mut()) {
        fields.extend(details());
    }
    status
}

#[utoipa::path(get, path = "/ready", tag = "meta", responses(
    (status = 200, description = "The event store answers"),
    (status = 503, description = "The event store does not answer: `code` is `unavailable` and `store.reason` says why, as a stable code (`unreachable`: it cannot be reached; `failing`: it answered with an error). The backend's own message goes to the log only.", body = crate::openapi::NotReady, content_type = "application/problem+json")))]
pub(crate) async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if let Err(error) = state.store.ping().await {
        // The driver's text may name hosts, users or SQL: it goes to the log, not to clients.
        tracing::warn!(error = %error, "readiness check: the event store does not answer");
        let reason = match error.kind() {
            flexcore_app::ErrorKind::Unavailable => StoreNotReady::Unreachable,
            _ => StoreNotReady::Failing,
        };
        return Err(ApiError::unavailable("the event store does not answer")
            .with_field("store", json!({ "ok": false, "reason": reason.code() })));
    }
    Ok(Json(with_details(json!({ "status": "ready" }), &state)))
}

/// Why `GET /ready` says the event store is not ready: a stable code for clients and probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreNotReady {
    /// The store cannot be reached (connection refused or lost, timeout, overload).
    Unreachable,
    /// The store answered, with an error.
    Failing,
}

impl StoreNotReady {
    /// Every reason, for the OpenAPI document.
    pub(crate) const ALL: [Self; 2] = [Self::Unreachable, Self::Failing];

    /// The code in `store.reason`.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Failing => "failing",
        }
    }
}

/// The caller and the trace and correlation headers, as a command context.
fn command_context(caller: &Caller, headers: &HeaderMap) -> CommandContext {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 512)
            .map(str::to_owned)
    };
    CommandContext {
        correlation_id: header("x-correlation-id"),
        traceparent: header("traceparent"),
        tracestate: header("tracestate"),
        idempotency_key: headers
            .get("idempotency-key")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        tenant: caller.tenant(),
        principal: caller.0.clone(),
        ..CommandContext::default()
    }
}

#[utoipa::path(post, path = "/v1/commands/{command_type}", tag = "commands",
    params(("command_type" = String, Path, description = "e.g. create_user"),
           ("async" = Option<bool>, Query, description = "true: answer 202 at once and run the command in the background; follow it at `status_url`"),
           ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key get the first answer")),
    request_body(content = Object, description = "The command (a JSON object)", content_type = "application/json"),
    responses(
        (status = 200, description = "Done", body = crate::openapi::CommandOutcome),
        (status = 202, description = "Accepted (`async=true`): the command runs in the background", body = crate::openapi::CommandAccepted,
            headers(("Location" = String, description = "The status URL"))),
        (status = 404, description = "Unknown command type or aggregate", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Conflict (e.g. email already in use)", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 400, description = "Malformed request", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input", body = crate::openapi::Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn send_command(
    State(state): State<AppState>,
    Path(command_type): Path<String>,
    caller: Caller,
    params: Result<QueryParams<SendParams>, QueryRejection>,
    headers: HeaderMap,
    JsonBody(payload): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let QueryParams(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !payload.is_object() {
        return Err(ApiError::validation("a command body must be a JSON object"));
    }
    let ctx = command_context(&caller, &headers);
    let command = Command {
        command_type,
        payload,
    };
    if params.run_async {
        let command_id = state.async_commands.send_async(ctx, command);
        let status_url = format!("/v1/commands/{command_id}");
        return Ok((
            axum::http::StatusCode::ACCEPTED,
            [(axum::http::header::LOCATION, status_url.clone())],
            Json(json!({ "command_id": command_id, "status_url": status_url })),
        )
            .into_response());
    }
    let outcome = state.commands.send(&ctx, &command).await?;
    Ok(Json(outcome).into_response())
}

/// `POST /v1/commands/{command_type}`'s query parameters (others are ignored, as before).
#[derive(Deserialize)]
pub(crate) struct SendParams {
    /// Run in the background and answer 202 with a status URL.
    #[serde(rename = "async", default)]
    run_async: bool,
}

#[utoipa::path(get, path = "/v1/commands/{command_id}", tag = "commands",
    params(("command_id" = String, Path, description = "The `command_id` a `POST …?async=true` answered with")),
    responses(
        (status = 200, description = "The command's status: `pending`, `succeeded` (with the outcome) or `failed` (with a stable `code`)", body = crate::openapi::AsyncCommandStatus),
        (status = 400, description = "Not a command id", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown, or too old to be remembered", body = crate::openapi::Problem, content_type = "application/problem+json"))
)]
pub(crate) async fn command_status(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Json<StatusAnswer>, ApiError> {
    let command_id = Uuid::parse_str(&raw_id)
        .map_err(|_| ApiError::bad_request(format!("'{raw_id}' is not a command id (a UUID)")))?;
    let status = state
        .async_commands
        .status(command_id)
        .ok_or_else(|| ApiError::not_found(format!("no status for command {command_id}")))?;
    Ok(Json(StatusAnswer { command_id, status }))
}

/// `GET /v1/commands/{command_id}`'s answer: the id, then the status's own fields.
#[derive(Serialize)]
pub(crate) struct StatusAnswer {
    command_id: Uuid,
    #[serde(flatten)]
    status: CommandStatus,
}

#[utoipa::path(get, path = "/v1/queries/{query_type}", tag = "queries",
    params(("query_type" = String, Path, description = "e.g. get_user")),
    responses((status = 200, description = "The query's JSON result"),
        (status = 404, description = "Unknown query type or not found", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 400, description = "Malformed request", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn ask_get(
    State(state): State<AppState>,
    Path(query_type): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    params: Result<QueryParams<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let QueryParams(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let params: Map<String, Value> = params
        .into_iter()
        .map(|(k, v)| {
            let value = match v.parse::<i64>() {
                Ok(n) => json!(n),
                Err(_) => match v.as_str() {
                    "true" => json!(true),
                    "false" => json!(false),
                    _ => json!(v),
                },
            };
            (k, value)
        })
        .collect();
    ask(&state, &caller, &headers, query_type, Value::Object(params)).await
}

#[utoipa::path(post, path = "/v1/queries/{query_type}", tag = "queries",
    params(("query_type" = String, Path, description = "e.g. get_user")),
    request_body(content = Object, description = "The query's parameters", content_type = "application/json"),
    responses((status = 200, description = "The query's JSON result"),
        (status = 404, description = "Unknown query type or not found", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 400, description = "Malformed request", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn ask_post(
    State(state): State<AppState>,
    Path(query_type): Path<String>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(params): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    ask(&state, &caller, &headers, query_type, params).await
}

/// Read-your-writes: the query waits until read models have applied the event at this
/// global position (same as a `min_position` parameter).
pub const MIN_POSITION_HEADER: &str = "flexcore-min-position";

async fn ask(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    query_type: String,
    params: Value,
) -> Result<Json<Value>, ApiError> {
    let min_position = match headers.get(MIN_POSITION_HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "the {MIN_POSITION_HEADER} header must be a global position (an unsigned integer)"
                    ))
                })?,
        ),
    };
    let ctx = QueryContext {
        principal: caller.0.clone(),
        tenant: caller.tenant(),
        min_position,
    };
    let answer = state
        .queries
        .ask(&ctx, &Query { query_type, params })
        .await?;
    Ok(Json(answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendBody {
    #[serde(default)]
    expected_version: ExpectedVersion,
    events: Vec<AppendEvent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendEvent {
    #[serde(default)]
    event_id: Option<String>,
    event_type: String,
    data: RawJson,
    #[serde(default)]
    metadata: Option<EventMetadata>,
    #[serde(default)]
    schema_version: Option<u32>,
}

fn stream_id(raw: String) -> Result<StreamId, ApiError> {
    StreamId::new(raw).map_err(|e| ApiError::validation(e.to_string()))
}

#[utoipa::path(post, path = "/v1/streams/{stream_id}", tag = "streams",
    params(("stream_id" = String, Path, description = "1 to 256 bytes, no control characters")),
    request_body(content = crate::openapi::AppendRequest, content_type = "application/json"),
    responses((status = 200, description = "Appended", body = crate::openapi::AppendResponse),
        (status = 409, description = "Wrong expected version (with current_version and expected_version)", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 400, description = "Malformed request", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn append(
    State(state): State<AppState>,
    Path(raw_stream_id): Path<String>,
    caller: Caller,
    JsonBody(body): JsonBody<AppendBody>,
) -> Result<Json<Value>, ApiError> {
    let stream_id = stream_id(raw_stream_id)?;
    if body.events.is_empty() {
        return Err(ApiError::validation(
            "'events' must contain at least one event",
        ));
    }
    let events = body
        .events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let at = |message: String| ApiError::validation(format!("events[{i}]: {message}"));
            let mut event = NewEvent::new(e.event_type, e.data).map_err(|err| {
                at(err
                    .to_string()
                    .trim_start_matches("validation failed: ")
                    .to_owned())
            })?;
            if let Some(raw) = e.event_id {
                let id = Uuid::parse_str(&raw)
                    .map_err(|_| at(format!("event_id '{raw}' is not a UUID")))?;
                event = event.with_id(EventId(id));
            }
            if let Some(version) = e.schema_version {
                event.schema_version = version;
            }
            let mut metadata = e.metadata.unwrap_or_default();
            if let Some(principal) = caller.principal() {
                // Written on the principal's behalf: a client cannot claim another actor.
                metadata.actor = Some(principal.actor());
            }
            Ok(event.with_metadata(metadata))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let result = caller
        .store(&state)?
        .append(stream_id, body.expected_version, events)
        .await?;
    Ok(Json(json!({
        "next_version": result.current_version,
        "first_position": result.first_position(),
        "last_position": result.last_position(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamParams {
    from_version: Option<u64>,
    limit: Option<usize>,
    #[serde(default)]
    direction: Direction,
}

#[utoipa::path(get, path = "/v1/streams/{stream_id}", tag = "streams",
    params(("stream_id" = String, Path),
           ("from_version" = Option<u64>, Query), ("limit" = Option<usize>, Query, description = "1 to 10000, default 100"),
           ("direction" = Option<String>, Query, description = "forward (default) or backward")),
    responses((status = 200, description = "A page of the stream", body = crate::openapi::StreamPage),
        (status = 404, description = "No such stream", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 400, description = "Malformed request", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn read_stream(
    State(state): State<AppState>,
    Path(raw_stream_id): Path<String>,
    caller: Caller,
    params: Result<QueryParams<StreamParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let stream_id = stream_id(raw_stream_id)?;
    let QueryParams(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let slice = caller
        .store(&state)?
        .read_stream(ReadStream {
            stream_id,
            from_version: params.from_version,
            limit: params.limit.unwrap_or(DEFAULT_PAGE),
            direction: params.direction,
        })
        .await?;
    let Some(version) = slice.current_version else {
        return Err(ApiError::not_found(format!(
            "stream '{}' does not exist",
            slice.stream_id
        )));
    };
    Ok(Json(StreamPage {
        stream_id: slice.stream_id,
        version,
        events: slice.events,
    })
    .into_response())
}

/// `GET /v1/streams/{id}`'s answer, serialised straight from the envelopes (their payloads are
/// raw JSON text, embedded as is).
#[derive(Serialize)]
struct StreamPage {
    stream_id: StreamId,
    version: u64,
    events: Vec<EventEnvelope>,
}

/// `GET /v1/events`'s answer.
#[derive(Serialize)]
struct LogPage {
    events: Vec<EventEnvelope>,
    next_position: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AllParams {
    #[serde(default)]
    from_position: u64,
    limit: Option<usize>,
    type_prefix: Option<String>,
    category: Option<String>,
}

#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(("from_position" = Option<u64>, Query), ("limit" = Option<usize>, Query, description = "1 to 10000, default 100"),
           ("type_prefix" = Option<String>, Query), ("category" = Option<String>, Query)),
    responses((status = 200, description = "A page of the global log", body = crate::openapi::LogPage),
    (status = 400, description = "Malformed request", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn read_all(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<QueryParams<AllParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let QueryParams(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let slice = caller
        .store(&state)?
        .read_all(ReadAll {
            from_position: params.from_position,
            limit: params.limit.unwrap_or(DEFAULT_PAGE),
            filter: EventFilter {
                type_prefix: params.type_prefix.filter(|p| !p.is_empty()),
                category: params.category.filter(|c| !c.is_empty()),
            },
        })
        .await?;
    Ok(Json(LogPage {
        events: slice.events,
        next_position: slice.next_position,
    })
    .into_response())
}
