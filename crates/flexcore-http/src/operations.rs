//! Operator routes: projections (status, blue-green rebuild) and durable subscriptions
//! (status, dead letters, retry, skip). `flexcore projections …` and `flexcore subscriptions …`
//! drive them. GDPR tools under `/v1/admin/gdpr/` (a subject's export, forget), driven by
//! `flexcore gdpr …`. Plugins (status, hot reload), driven by `flexcore plugins …`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flexcore_app::durable::{DeadLetter, SubscriptionControl, SubscriptionStatus};
use flexcore_app::gdpr::ShreddingStore;
use flexcore_app::plugin::{PluginOperations, PluginReport};
use flexcore_app::projection::{ProjectionStatus, ProjectionsHandle};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::{ApiError, AppState};

/// What operators can steer: the projections and the durable consumers of this server.
#[derive(Clone, Default)]
pub struct Operations {
    /// The running projections, if any.
    pub projections: Option<ProjectionsHandle>,
    /// The running durable consumers (shared: the state is cloned for every request).
    pub consumers: Arc<[SubscriptionControl]>,
    /// The crypto-shredding store, when GDPR tools are configured.
    pub gdpr: Option<Arc<ShreddingStore>>,
    /// The hosted plugins, when a plugins folder is configured.
    pub plugins: Option<Arc<dyn PluginOperations>>,
}

impl Operations {
    fn projections(&self) -> Result<&ProjectionsHandle, ApiError> {
        self.projections
            .as_ref()
            .ok_or_else(|| ApiError::not_found("this server runs no projections"))
    }

    fn plugins(&self) -> Result<&dyn PluginOperations, ApiError> {
        self.plugins
            .as_deref()
            .ok_or_else(|| ApiError::not_found("this server hosts no plugins: set plugins_dir"))
    }

    fn gdpr(&self) -> Result<&ShreddingStore, ApiError> {
        self.gdpr.as_deref().ok_or_else(|| {
            ApiError::not_found(
                "GDPR tools are off on this server: configure [gdpr] master_key_file",
            )
        })
    }

    fn consumer(&self, name: &str) -> Result<&SubscriptionControl, ApiError> {
        self.consumers
            .iter()
            .find(|c| c.consumer() == name)
            .ok_or_else(|| ApiError::not_found(format!("there is no subscription called '{name}'")))
    }
}

/// Every projection's state.
#[utoipa::path(get, path = "/v1/projections", tag = "operations",
    responses((status = 200, description = "Each projection's name, state (live, building, rebuilding), generations, positions and lag")))]
pub(crate) async fn list_projections(
    State(state): State<AppState>,
) -> Result<Json<Vec<ProjectionStatus>>, ApiError> {
    Ok(Json(state.operations.projections()?.status()))
}

/// One projection's state.
#[utoipa::path(get, path = "/v1/projections/{name}", tag = "operations",
    params(("name" = String, Path, description = "e.g. users")),
    responses((status = 200, description = "The projection's state"),
        (status = 404, description = "No such projection", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn projection(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ProjectionStatus>, ApiError> {
    Ok(Json(state.operations.projections()?.status_of(&name)?))
}

/// Starts a blue-green rebuild.
#[utoipa::path(post, path = "/v1/projections/{name}/rebuild", tag = "operations",
    params(("name" = String, Path, description = "e.g. users")),
    responses((status = 202, description = "The rebuild started: `{generation}`; follow it with GET /v1/projections/{name}"),
        (status = 404, description = "No such projection", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A rebuild is already running", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn rebuild_projection(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.check_admin(&state, "rebuild_projection")?;
    let generation = state.operations.projections()?.rebuild(&name).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "generation": generation })),
    ))
}

/// Every plugin's state: those serving, in start order, then those left out.
#[utoipa::path(get, path = "/v1/plugins", tag = "operations",
    responses((status = 200, description = "Each plugin's name, version, state (starting, ready, backoff, refused, broken, stopped, rejected), restarts, last_error, calls and p99_ms", body = [crate::openapi::PluginStatus]),
        (status = 404, description = "This server hosts no plugins", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_plugins(
    State(state): State<AppState>,
) -> Result<Json<Vec<PluginReport>>, ApiError> {
    Ok(Json(state.operations.plugins()?.reports()))
}

/// Hot-swaps a plugin for its current files: the new process takes new calls once it has
/// handshaken, the old one finishes its calls and stops.
#[utoipa::path(post, path = "/v1/plugins/{name}/reload", tag = "operations",
    params(("name" = String, Path, description = "e.g. email-enricher")),
    responses((status = 200, description = "Reloaded: the plugin's state afterwards", body = crate::openapi::PluginStatus),
        (status = 404, description = "No such plugin, or no plugins hosted", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The new version failed to start; the old one keeps serving", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn reload_plugin(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<PluginReport>, ApiError> {
    caller.check_admin(&state, "reload_plugin")?;
    Ok(Json(state.operations.plugins()?.reload(&name).await?))
}

/// Every durable consumer's state.
#[utoipa::path(get, path = "/v1/subscriptions", tag = "operations",
    responses((status = 200, description = "Each consumer's position, lag and parked events")))]
pub(crate) async fn list_subscriptions(
    State(state): State<AppState>,
) -> Result<Json<Vec<SubscriptionStatus>>, ApiError> {
    let mut all = Vec::new();
    for consumer in state.operations.consumers.iter() {
        all.push(consumer.status().await?);
    }
    Ok(Json(all))
}

/// A consumer's parked events.
#[utoipa::path(get, path = "/v1/subscriptions/{name}/dead-letters", tag = "operations",
    params(("name" = String, Path, description = "The consumer, e.g. `events:user.created` (percent-encode `#` and `/` of group members)")),
    responses((status = 200, description = "Parked events in position order: failed ones with attempts and error, and those waiting behind them"),
        (status = 404, description = "No such subscription", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn dead_letters(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    Ok(Json(
        state.operations.consumer(&name)?.dead_letters().await?,
    ))
}

/// Retries a parked event (then the events waiting behind it).
#[utoipa::path(post, path = "/v1/subscriptions/{name}/dead-letters/{position}/retry", tag = "operations",
    params(("name" = String, Path, description = "The consumer"), ("position" = u64, Path, description = "The parked event's global position")),
    responses((status = 200, description = "Handled; the stream's waiting events were handled in order"),
        (status = 404, description = "No such subscription or parked event", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The event waits behind an earlier one of its stream", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn retry_dead_letter(
    State(state): State<AppState>,
    caller: Caller,
    target: Result<Path<(String, u64)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.check_admin(&state, "retry_dead_letter")?;
    let (name, position) = parked_event(target)?;
    state.operations.consumer(&name)?.retry(position).await?;
    Ok(Json(json!({ "retried": position })))
}

/// Skips a parked event (then handles the events waiting behind it).
#[utoipa::path(post, path = "/v1/subscriptions/{name}/dead-letters/{position}/skip", tag = "operations",
    params(("name" = String, Path, description = "The consumer"), ("position" = u64, Path, description = "The parked event's global position")),
    responses((status = 200, description = "Skipped; the stream's waiting events were handled in order"),
        (status = 404, description = "No such subscription or parked event", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The event waits behind an earlier one of its stream", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn skip_dead_letter(
    State(state): State<AppState>,
    caller: Caller,
    target: Result<Path<(String, u64)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.check_admin(&state, "skip_dead_letter")?;
    let (name, position) = parked_event(target)?;
    state.operations.consumer(&name)?.skip(position).await?;
    Ok(Json(json!({ "skipped": position })))
}

/// The consumer and position of a dead-letter route; a position that is not an unsigned
/// integer is a 400 problem, like every other bad request.
fn parked_event(
    target: Result<Path<(String, u64)>, PathRejection>,
) -> Result<(String, u64), ApiError> {
    target.map(|Path(target)| target).map_err(|e| {
        ApiError::bad_request(format!(
            "the position must be a global position (an unsigned integer): {}",
            e.body_text()
        ))
    })
}

/// Every event about a data subject, as JSON lines (`application/x-ndjson`): the events its
/// principal wrote (`metadata.actor.sub`) and those naming it in a declared subject field,
/// personal fields opened (or `"[forgotten]"`). The whole log is scanned before the first line
/// is sent, so a failure (e.g. a tampered value) is a problem answer, never a cut-off export.
#[utoipa::path(get, path = "/v1/admin/gdpr/subjects/{subject}/events", tag = "gdpr",
    params(("subject" = String, Path, description = "The data subject, e.g. a user id")),
    responses((status = 200, description = "One event envelope per line, in log order", content_type = "application/x-ndjson", body = String),
        (status = 404, description = "GDPR tools are off on this server", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 500, description = "A sealed value fails authentication (tampered) or a key is missing", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn gdpr_export(
    State(state): State<AppState>,
    caller: Caller,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    caller.check_admin(&state, "gdpr_export")?;
    let store = state.operations.gdpr()?;
    let mut lines = String::new();
    let mut from = 0;
    loop {
        let page = store.export_page(&subject, from).await?;
        for event in &page.events {
            // An envelope always serialises: its data and metadata are JSON text already.
            lines.push_str(&serde_json::to_string(event).map_err(|e| {
                ApiError::from(flexcore_app::Error::internal_from(
                    "cannot encode an event",
                    e,
                ))
            })?);
            lines.push('\n');
        }
        if page.finished {
            break;
        }
        from = page.next_position;
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        lines,
    )
        .into_response())
}

/// Forgets a data subject: destroys its data key, so its personal fields read as
/// `"[forgotten]"` in every read, subscription, projection (rebuilds included) and outbox
/// message from now on, and it can take no new personal data. Cannot be undone.
#[utoipa::path(post, path = "/v1/admin/gdpr/subjects/{subject}/forget", tag = "gdpr",
    params(("subject" = String, Path, description = "The data subject, e.g. a user id")),
    responses((status = 200, description = "`{subject, forgotten: true, key_destroyed}`; `key_destroyed` is false when the subject had no key (it is blocked from now on all the same)"),
        (status = 404, description = "GDPR tools are off on this server", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn gdpr_forget(
    State(state): State<AppState>,
    caller: Caller,
    Path(subject): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.check_admin(&state, "gdpr_forget")?;
    let destroyed = state.operations.gdpr()?.forget(&subject).await?;
    Ok(Json(
        json!({ "subject": subject, "forgotten": true, "key_destroyed": destroyed }),
    ))
}
