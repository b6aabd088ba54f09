//! The gate in front of `/v1/`: who calls (a TLS client certificate, a bearer token, an API key,
//! or a live ticket), under which rate limit, and the [`Caller`] every handler acts for.
//! `/health`, `/ready`, `/metrics` and `/openapi.json` stay open: probes and scrapers reach
//! them without a credential.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use flexcore_app::security::{Presented, Principal, RouteClass};
use flexcore_app::store::EventStore;

use crate::{ApiError, AppState};

/// The header service clients send their API key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The route class a request's rate limit is counted in.
fn route_class(method: &Method, path: &str) -> RouteClass {
    if path.starts_with("/v1/events/live") {
        RouteClass::Live
    } else if path.starts_with("/v1/queries/") {
        RouteClass::Queries
    } else if *method == Method::GET {
        RouteClass::Reads
    } else {
        RouteClass::Commands
    }
}

/// The `ticket` query parameter, on the live route only (tokens never travel in URLs).
fn live_ticket<'a>(path: &str, query: Option<&'a str>) -> Option<&'a str> {
    if path != "/v1/events/live" {
        return None;
    }
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("ticket="))
        .filter(|ticket| !ticket.is_empty())
}

/// Authenticates and rate-limits every `/v1/` request; the principal rides on in the request's
/// extensions for [`Caller`].
pub(crate) async fn guard(
    State(state): State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    if !path.starts_with("/v1/") {
        return next.run(request).await;
    }
    let class = route_class(request.method(), path);
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string());
    let action = format!("{} {}", request.method(), path);
    let headers = request.headers();
    fn text(value: &axum::http::HeaderValue) -> &str {
        value.to_str().unwrap_or("")
    }
    let presented = Presented {
        principal: request.extensions().get::<Arc<Principal>>(),
        ticket: live_ticket(path, request.uri().query()),
        client: client.as_deref(),
        ..Presented::credentials(
            headers.get(header::AUTHORIZATION).map(text),
            headers.get(API_KEY_HEADER).map(text),
            &action,
        )
    };
    let admitted = state.gate.authenticate(&presented).and_then(|principal| {
        state
            .gate
            .admit(class, principal.as_deref(), client.as_deref())
            .map(|()| principal)
    });
    match admitted {
        Ok(principal) => {
            if let Some(principal) = principal {
                request.extensions_mut().insert(principal);
            }
            next.run(request).await
        }
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// The principal a request acts for (`None` when authentication is off).
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller(pub Option<Arc<Principal>>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<Arc<Principal>>().cloned()))
    }
}

impl Caller {
    /// The principal, if any.
    pub(crate) fn principal(&self) -> Option<&Principal> {
        self.0.as_deref()
    }

    /// The caller's tenant, if any.
    pub(crate) fn tenant(&self) -> Option<String> {
        self.0.as_ref().and_then(|p| p.tenant.clone())
    }

    /// The event store as this caller may use it.
    pub(crate) fn store(&self, state: &AppState) -> Result<Arc<dyn EventStore>, ApiError> {
        Ok(state.gate.store_for(&state.store, self.0.as_ref())?)
    }

    /// `Ok` when this caller may run the operator action `name`.
    pub(crate) fn check_admin(&self, state: &AppState, name: &str) -> Result<(), ApiError> {
        Ok(state.gate.check_admin(self.principal(), name)?)
    }
}

/// `POST /v1/events/live/ticket`: a one-use ticket that opens a live subscription within
/// seconds, for clients (browser `EventSource`) that cannot send an `Authorization` header.
#[utoipa::path(post, path = "/v1/events/live/ticket", tag = "events",
    responses((status = 200, description = "`{ticket, expires_in}`: pass it as `?ticket=` to GET /v1/events/live once, within `expires_in` seconds"),
        (status = 401, description = "No valid credential", body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn live_ticket_route(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<flexcore_app::security::Ticket>, ApiError> {
    let principal = caller.0.ok_or_else(|| {
        ApiError::bad_request("authentication is off: open GET /v1/events/live directly")
    })?;
    Ok(Json(state.gate.issue_ticket(principal)))
}
