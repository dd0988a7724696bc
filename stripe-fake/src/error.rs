//! The Stripe-shaped API error (HTTP status and `{"error": {...}}` body) every operation returns.

use serde_json::Value;

use crate::objects;

/// A Stripe-shaped error: HTTP status and body.
#[derive(Debug, Clone)]
pub(crate) struct ApiErr {
    /// HTTP status.
    pub(crate) status: u16,
    /// `{"error": {...}}`.
    pub(crate) body: Value,
}

impl ApiErr {
    /// Whether the endpoint began executing (so Stripe saves the answer for the idempotency key):
    /// not for parameters that failed validation (`parameter_*` codes, a timestamp out of range),
    /// which are refused before. <https://docs.stripe.com/error-low-level#content-errors>
    pub(crate) fn began_execution(&self) -> bool {
        let code = self.body["error"]["code"].as_str().unwrap_or_default();
        !(code.starts_with("parameter_") || code.starts_with("timestamp_"))
    }

    /// 400 `invalid_request_error`.
    pub(crate) fn invalid(code: &str, message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: 400,
            body: objects::error("invalid_request_error", Some(code), &message.into(), param),
        }
    }

    /// 404 `resource_missing`.
    pub(crate) fn missing(what: &str, id: &str, param: Option<&str>) -> Self {
        Self {
            status: 404,
            body: objects::error(
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such {what}: '{id}'"),
                param,
            ),
        }
    }

    /// 400 `parameter_missing`.
    pub(crate) fn param_missing(param: &str) -> Self {
        Self::invalid(
            "parameter_missing",
            format!("Missing required param: {param}."),
            Some(param),
        )
    }
}

/// Result of an API operation.
pub(crate) type ApiResult = Result<Value, ApiErr>;
