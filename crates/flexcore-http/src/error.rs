//! The one place where failures become HTTP answers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flexcore_app::{Error, ErrorKind};
use flexcore_domain::DomainError;
use serde_json::{Map, Value, json};

/// An error answer: `application/problem+json` with a stable machine-readable `code`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    extra: Map<String, Value>,
    /// `Retry-After`, in seconds (429 answers).
    retry_after: Option<u64>,
}

impl ApiError {
    /// Every `code` an answer of this gateway can carry: the error kinds' codes
    /// ([`ErrorKind::code`]) and the gateway's own. The OpenAPI document lists exactly these.
    pub const CODES: [&'static str; 12] = [
        "bad_request",
        "validation_failed",
        "not_found",
        "method_not_allowed",
        "conflict",
        "unauthorized",
        "forbidden",
        "rate_limited",
        "payload_too_large",
        "unsupported_media_type",
        "unavailable",
        "internal",
    ];

    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            extra: Map::new(),
            retry_after: None,
        }
    }

    /// 400 `bad_request`: the request cannot be parsed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    /// 422 `validation_failed`: the request parses but breaks a rule.
    pub fn validation(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Validation.code(),
            detail,
        )
    }

    /// 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::NotFound.code(), detail)
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method",
        )
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 415 `unsupported_media_type`.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be JSON, sent with 'Content-Type: application/json'",
        )
    }

    /// 503 `unavailable`.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Unavailable.code(),
            detail,
        )
    }

    /// Adds a member to the problem document (an RFC 9457 extension member).
    pub(crate) fn with_field(mut self, name: &str, value: Value) -> Self {
        self.extra.insert(name.to_owned(), value);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let kind = error.kind();
        let status =
            StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match kind {
            ErrorKind::Unavailable => tracing::warn!(error = %error.chain(), "backend unavailable"),
            ErrorKind::Internal => tracing::error!(error = %error.chain(), "internal error"),
            _ => {}
        }
        let mut answer = Self::new(status, kind.code(), error.client_message());
        if let Error::RateLimited { retry_after, .. } = &error {
            let seconds = flexcore_app::retry_after_secs(*retry_after);
            answer.retry_after = Some(seconds);
            answer.extra.insert("retry_after".into(), json!(seconds));
        }
        if !error.violations().is_empty() {
            answer
                .extra
                .insert("errors".into(), json!(error.violations()));
        }
        if let Error::Domain(DomainError::WrongExpectedVersion {
            current, expected, ..
        }) = &error
        {
            answer
                .extra
                .insert("current_version".into(), json!(current));
            answer
                .extra
                .insert("expected_version".into(), json!(expected));
        }
        answer
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("type".into(), json!("about:blank"));
        body.insert(
            "title".into(),
            json!(self.status.canonical_reason().unwrap_or("Error")),
        );
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("code".into(), json!(self.code));
        body.insert("detail".into(), json!(self.detail));
        body.extend(self.extra);
        let mut response = (self.status, Value::Object(body).to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: the scheme the client must use.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"flexcore\""),
            );
        }
        response
    }
}
