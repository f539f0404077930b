//! The management API's errors, rendered in one flat JSON shape:
//! `{"error", "message", "statusCode", "requestId", "validationErrors"?, "retryAfter"?}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keygate_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::request_id;

/// One invalid field of a request.
#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FieldError {
    pub field: String,
    pub message: String,
    /// Where in the field's text the problem is (1-based), for fields holding source text
    /// (policy text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            line: None,
            column: None,
        }
    }

    /// A problem at a line and column of the field's text.
    pub fn at(
        field: impl Into<String>,
        message: impl Into<String>,
        line: Option<usize>,
        column: Option<usize>,
    ) -> Self {
        Self {
            line,
            column,
            ..Self::new(field, message)
        }
    }
}

/// Everything a management request can fail with. Each variant maps to exactly one status and
/// code in [`ApiError::parts`]; there is no catch-all.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Validation {
        message: String,
        errors: Vec<FieldError>,
    },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    MethodNotAllowed(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    #[error("too many requests")]
    RateLimited { retry_after: u64 },
    /// A fault of the gateway; the detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

/// The error body, for the OpenAPI document.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error: &'static str,
    pub message: String,
    pub status_code: u16,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_errors: Option<Vec<FieldError>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        let error = FieldError::new(field, message);
        ApiError::Validation {
            message: format!("Invalid request: `{}` {}", error.field, error.message),
            errors: vec![error],
        }
    }

    pub fn fields(errors: Vec<FieldError>) -> Self {
        let message = match errors.as_slice() {
            [one] => format!("Invalid request: `{}` {}", one.field, one.message),
            _ => format!("Invalid request: {} fields are invalid", errors.len()),
        };
        ApiError::Validation { message, errors }
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Validation { .. } => (StatusCode::BAD_REQUEST, "validation_error"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "authorization_required"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let request_id = request_id::current();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, %request_id, "management request failed");
        }
        let body = ErrorBody {
            error: code,
            message: match &self {
                ApiError::Internal(_) => "Internal server error".to_owned(),
                other => other.to_string(),
            },
            status_code: status.as_u16(),
            request_id,
            validation_errors: match &self {
                ApiError::Validation { errors, .. } => Some(errors.clone()),
                _ => None,
            },
            retry_after: match &self {
                ApiError::RateLimited { retry_after } => Some(*retry_after),
                _ => None,
            },
        };
        let mut resp = (status, Json(body)).into_response();
        let headers = resp.headers_mut();
        match &self {
            ApiError::RateLimited { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("Resource not found"),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Maps the store's `NotFound` to a resource-specific message.
pub trait OrNotFound<T> {
    fn or_not_found(self, message: &'static str) -> Result<T, ApiError>;
}

impl<T> OrNotFound<T> for Result<T, StoreError> {
    fn or_not_found(self, message: &'static str) -> Result<T, ApiError> {
        self.map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound(message),
            other => other.into(),
        })
    }
}
