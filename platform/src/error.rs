//! The platform's error type, and the HTTP error answer every service renders (status,
//! machine-readable code, message, per-field details; no internals on 500).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemas::api::{ErrorBody, ErrorDetail};
use schemas::event::{ErrorCode, FieldError};

/// Failures of the shared plumbing (keys, producer).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration or an argument is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The broker client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// ClickHouse failed.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An HTTP error answer: status, machine-readable code, message, field details.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human message (never internal details for 5xx).
    pub message: String,
    /// Per-field problems.
    pub details: Vec<FieldError>,
    /// Seconds after which a retry may succeed (503, 429): the `Retry-After` header.
    pub retry_after: Option<u64>,
    /// Request id, filled by the handler.
    pub request_id: Option<String>,
}

impl ApiError {
    /// An error without details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
            request_id: None,
        }
    }

    /// 401: no or unknown key.
    pub fn unauthorized(code: &'static str, message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// 500 that logs `cause` and tells the client only the request id.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; quote the request id",
        )
    }

    /// Attaches the request id.
    pub fn with_request_id(mut self, id: Option<String>) -> Self {
        self.request_id = id;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
                request_id: self.request_id,
                details: self.details,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A 400 naming the field and why.
pub fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
    let reason = reason.into();
    let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", reason.clone());
    e.details = vec![FieldError {
        index: 0,
        field: field.into(),
        code: ErrorCode::InvalidValue,
        reason,
    }];
    e
}
