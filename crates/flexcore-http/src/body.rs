//! Reading JSON bodies defensively: media type, size, nesting depth, syntax, then types —
//! each failure with its own clear answer, before anything is written.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState};

/// How far over the limit a declared body is still read (and dropped) before the 413, so the
/// client gets the answer rather than a reset connection.
const DRAIN_ALLOWANCE: usize = 1024 * 1024;

/// A JSON request body, checked and decoded into `T`.
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let limits = state.limits;
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .is_some_and(|m| {
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::unsupported_media_type());
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(declared) = declared.filter(|n| *n > limits.max_request_bytes) {
            // Read a moderately oversized body before answering: a client still sending it
            // would otherwise see the connection reset instead of the 413. Far larger ones
            // are answered at once and the connection closes.
            if declared <= limits.max_request_bytes.saturating_add(DRAIN_ALLOWANCE) {
                let _ = axum::body::to_bytes(request.into_body(), declared).await;
            }
            return Err(ApiError::payload_too_large(limits.max_request_bytes));
        }
        let body: Body = request.into_body();
        let bytes = axum::body::to_bytes(body, limits.max_request_bytes)
            .await
            .map_err(|_| ApiError::payload_too_large(limits.max_request_bytes))?;
        if flexcore_domain::json_nesting_depth(&bytes) > limits.max_json_depth {
            return Err(ApiError::bad_request(format!(
                "the JSON body is nested deeper than {} levels",
                limits.max_json_depth
            )));
        }
        decode(&bytes).map(JsonBody)
    }
}

/// Decodes JSON: a syntax error is a 400, a well-formed document of the wrong shape a 422.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::validation(format!("invalid request body: {e}")),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::bad_request(format!("malformed JSON: {e}"))
            }
        }
    })
}
