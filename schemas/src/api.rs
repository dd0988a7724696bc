//! Request and response types of the HTTP API shared by services, clients and tests.

use serde::{Deserialize, Serialize};

use crate::event::FieldError;

/// Body of every error response: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A machine-readable code, a human message and, for invalid events, the failing fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code (`invalid_events`, `payload_too_large`, `unauthorized`, ...).
    pub code: String,
    /// Human explanation.
    pub message: String,
    /// Request id to quote in support requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Per-event, per-field problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// Answer to an accepted `POST /v1/events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Number of events the broker acknowledged.
    pub accepted: usize,
}
