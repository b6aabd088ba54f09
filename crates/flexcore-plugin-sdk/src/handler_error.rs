//! The errors a handler answers with (section 2.2 of the protocol).

use serde::Serialize;
use serde_json::{Value, json};

/// One invalid field of a `validation_failed` error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// A JSON pointer into the call's data, e.g. `/email`.
    pub path: String,
    /// What is wrong with the field.
    pub message: String,
}

/// A refusal from a handler; the engine answers its caller by the variant's code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// `validation_failed`: 422 / `INVALID_ARGUMENT`, with the invalid fields.
    #[error("{message}")]
    Validation {
        /// The summary.
        message: String,
        /// The invalid fields (may be empty).
        errors: Vec<FieldError>,
    },
    /// `not_found`: 404 / `NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// `conflict`: 409 / `ABORTED`.
    #[error("{0}")]
    Conflict(String),
    /// `forbidden`: 403 / `PERMISSION_DENIED`.
    #[error("{0}")]
    Forbidden(String),
    /// `internal`: 500; the engine logs the message and does not show it to its caller.
    #[error("{0}")]
    Internal(String),
}

impl HandlerError {
    /// A `validation_failed` error naming one invalid field.
    pub fn validation(
        message: impl Into<String>,
        path: impl Into<String>,
        field_message: impl Into<String>,
    ) -> Self {
        HandlerError::Validation {
            message: message.into(),
            errors: vec![FieldError {
                path: path.into(),
                message: field_message.into(),
            }],
        }
    }

    /// The protocol's error code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            HandlerError::Validation { .. } => "validation_failed",
            HandlerError::NotFound(_) => "not_found",
            HandlerError::Conflict(_) => "conflict",
            HandlerError::Forbidden(_) => "forbidden",
            HandlerError::Internal(_) => "internal",
        }
    }

    /// The `error` object of a `result` message: `{code, message}`, plus `errors` for a
    /// validation failure that names fields.
    pub fn to_protocol(&self) -> Value {
        let mut error = json!({"code": self.code(), "message": self.to_string()});
        if let HandlerError::Validation { errors, .. } = self
            && !errors.is_empty()
        {
            error["errors"] = json!(errors);
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_becomes_its_protocol_code() {
        let cases = [
            (
                HandlerError::validation("bad", "/email", "blocked"),
                "validation_failed",
            ),
            (HandlerError::NotFound("no user".into()), "not_found"),
            (HandlerError::Conflict("taken".into()), "conflict"),
            (HandlerError::Forbidden("no".into()), "forbidden"),
            (HandlerError::Internal("boom".into()), "internal"),
        ];
        for (error, code) in cases {
            assert_eq!(error.to_protocol()["code"], code);
            assert_eq!(error.to_protocol()["message"], error.to_string());
        }
    }

    #[test]
    fn a_validation_error_carries_its_fields_and_others_carry_none() {
        let error = HandlerError::validation("email is blocked", "/email", "domain is blocked");
        assert_eq!(
            error.to_protocol(),
            json!({"code": "validation_failed", "message": "email is blocked",
                   "errors": [{"path": "/email", "message": "domain is blocked"}]})
        );
        assert!(
            HandlerError::NotFound("x".into())
                .to_protocol()
                .get("errors")
                .is_none()
        );
    }
}
