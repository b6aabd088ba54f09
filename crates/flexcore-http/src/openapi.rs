//! `GET /openapi.json`: the OpenAPI 3 document of the whole HTTP API, generated from the
//! handlers' `#[utoipa::path]` annotations and the schema types below.
//!
//! The domain and application crates stay free of documentation dependencies, so the shapes of
//! their types on the wire are described here, next to the gateway that serialises them.

use serde_json::{Map, Value};
use utoipa::{OpenApi, ToSchema};

/// A stored event as every read returns it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Envelope {
    /// The event's id (UUID).
    event_id: String,
    /// Its stream.
    stream_id: String,
    /// Its version in the stream (the first event is 0).
    stream_version: u64,
    /// Its position in the global log (strictly increasing).
    global_position: u64,
    /// What happened, e.g. `user.created`.
    event_type: String,
    /// The version of the data's schema.
    schema_version: u32,
    /// The payload (a JSON object).
    data: Map<String, Value>,
    /// correlation_id, causation_id, actor, tenant, traceparent, tracestate and any other keys.
    metadata: Map<String, Value>,
    /// When it was committed (RFC 3339, UTC).
    recorded_at: String,
}

/// Where an appended event landed.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Appended {
    event_id: String,
    event_type: String,
    stream_version: u64,
    global_position: u64,
}

/// What a command did.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct CommandOutcome {
    /// The command's id (the causation id of its events).
    command_id: String,
    /// The aggregate stream it changed.
    stream_id: String,
    /// That stream's version afterwards (null if it still does not exist).
    version: Option<u64>,
    /// The events written to that stream (empty when nothing changed).
    events: Vec<Appended>,
}

/// `POST /v1/commands/{command_type}?async=true`'s answer (202).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct CommandAccepted {
    /// The command's id.
    command_id: String,
    /// Where its status is: `/v1/commands/{command_id}` (also in the `Location` header).
    status_url: String,
}

/// The status of a command sent with `async=true`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AsyncCommandStatus {
    /// The command's id.
    command_id: String,
    #[schema(schema_with = async_command_states)]
    status: String,
    /// With `succeeded`: what the command did, as a synchronous send answers.
    outcome: Option<CommandOutcome>,
    /// With `failed`: the stable code of the error, as `Problem.code`.
    #[schema(schema_with = problem_codes)]
    code: Option<String>,
    /// With `failed`: what went wrong (no internal details: internal and unavailable errors
    /// give a fixed text).
    message: Option<String>,
}

/// `AsyncCommandStatus.status`.
fn async_command_states() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["pending", "succeeded", "failed"]))
        .description(Some(
            "pending: still running; succeeded: see `outcome`; failed: see `code` and `message`",
        ))
        .build()
}

/// An event to append.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct NewEvent {
    /// A UUID; re-sending an id already stored at the same place returns the first answer.
    event_id: Option<String>,
    /// Non-empty, no whitespace, at most 256 bytes.
    event_type: String,
    /// A JSON object.
    data: Map<String, Value>,
    /// Optional metadata object.
    metadata: Option<Map<String, Value>>,
    /// Defaults to 1.
    schema_version: Option<u32>,
}

/// A raw append.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AppendRequest {
    /// `"any"` (default), `"no_stream"`, `"exists"` or the exact current version.
    #[schema(schema_with = expected_version)]
    expected_version: Option<Value>,
    /// At least one event.
    events: Vec<NewEvent>,
}

/// The result of a raw append.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AppendResponse {
    /// The version of the last event written: the expected version of the next append.
    next_version: Option<u64>,
    first_position: Option<u64>,
    last_position: Option<u64>,
}

/// A page of one stream.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct StreamPage {
    stream_id: String,
    version: u64,
    events: Vec<Envelope>,
}

/// A page of the global log.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct LogPage {
    events: Vec<Envelope>,
    /// Continue from here to see every event exactly once.
    next_position: u64,
}

/// An error (`application/problem+json`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Problem {
    #[schema(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    #[schema(schema_with = problem_codes)]
    code: String,
    detail: String,
    /// Only on a wrong expected version (409 `conflict`): the stream's version when the check
    /// ran (null: no stream).
    current_version: Option<u64>,
    /// Only on a wrong expected version (409 `conflict`): what the writer expected.
    #[schema(schema_with = expected_version)]
    expected_version: Option<Value>,
    /// Only on a schema violation (422 `validation_failed`): the rules the command payload or
    /// the event data broke, each at its JSON pointer (at most 10).
    errors: Option<Vec<SchemaError>>,
}

/// One rule a payload breaks (`Problem.errors`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SchemaError {
    /// Where in the payload, as a JSON pointer (`/email`; `""` is the whole payload).
    path: String,
    /// What is wrong there (without the offending value).
    message: String,
}

/// `Problem.code`: the stable codes, straight from the gateway's own list.
fn problem_codes() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(crate::ApiError::CODES))
        .description(Some(
            "Stable and machine-readable; branch on this, not on `detail`",
        ))
        .build()
}

/// An expected version on the wire: `"any"`, `"no_stream"`, `"exists"` or a version number.
fn expected_version() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["any", "no_stream", "exists"])),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        )
        .description(Some(
            "\"any\", \"no_stream\", \"exists\" or the exact version of the stream's last event",
        ))
        .build()
        .into()
}

/// `GET /ready`'s 503 answer: a problem document (`code` `unavailable`) with the store's state.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct NotReady {
    #[schema(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    /// Always `unavailable`.
    code: String,
    detail: String,
    store: StoreReadiness,
}

/// The event store's readiness.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct StoreReadiness {
    /// Always false in a 503.
    ok: bool,
    /// Why, as a stable code.
    #[schema(schema_with = store_not_ready_reasons)]
    reason: String,
}

/// One plugin, as `GET /v1/plugins` lists it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct PluginStatus {
    /// The plugin's name (its folder's, when its manifest is unreadable).
    name: String,
    /// The version serving or last tried (`null` when the manifest is unusable).
    version: Option<String>,
    /// starting, ready, backoff, refused, broken, stopped, or rejected (left out at start).
    state: String,
    /// Restarts after its process died.
    restarts: u64,
    /// The last failure, or why it was left out.
    last_error: Option<String>,
    /// Calls made to it.
    calls: u64,
    /// The 99th percentile of its recent calls, in milliseconds.
    p99_ms: Option<f64>,
}

/// The reasons `GET /ready` can give, straight from the handler's own list.
fn store_not_ready_reasons() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(
            crate::routes::StoreNotReady::ALL.map(crate::routes::StoreNotReady::code),
        ))
        .description(Some(
            "unreachable: the store cannot be reached; failing: it answered with an error",
        ))
        .build()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "FlexCore",
        description = "Commands, queries, event streams and the global log of a FlexCore server."
    ),
    paths(
        crate::routes::send_command,
        crate::routes::command_status,
        crate::routes::ask_get,
        crate::routes::ask_post,
        crate::routes::append,
        crate::routes::read_stream,
        crate::routes::read_all,
        crate::live::live,
        crate::auth::live_ticket_route,
        crate::routes::health,
        crate::routes::ready,
        crate::routes::metrics,
        crate::operations::list_projections,
        crate::operations::projection,
        crate::operations::rebuild_projection,
        crate::operations::list_subscriptions,
        crate::operations::list_plugins,
        crate::operations::reload_plugin,
        crate::operations::dead_letters,
        crate::operations::retry_dead_letter,
        crate::operations::skip_dead_letter,
        crate::operations::gdpr_export,
        crate::operations::gdpr_forget,
        openapi_json,
    ),
    components(schemas(
        Envelope,
        Appended,
        CommandOutcome,
        CommandAccepted,
        AsyncCommandStatus,
        NewEvent,
        AppendRequest,
        AppendResponse,
        StreamPage,
        LogPage,
        Problem,
        SchemaError,
        NotReady,
        StoreReadiness,
        PluginStatus
    )),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("api_key" = []))
)]
struct ApiDoc;

/// The credentials `/v1/` accepts when authentication is on: a JWT bearer token or an API key.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(crate::API_KEY_HEADER))),
        );
    }
}

/// The OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub(crate) async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi().to_pretty_json().unwrap_or_default(),
    )
        .into_response()
}
